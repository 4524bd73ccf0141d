"""The usage row as the response step captures it: what it computes once and reuses is the
same value as computed fresh, and what it remembers stays bounded.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import sqlalchemy as sa
from flask import Flask, request

from flask_apikeys import APIKeys
from flask_apikeys.boundedcache import BoundedCache
from flask_apikeys.environ import OUTCOME_ENVIRON_KEY
from flask_apikeys.models import APIKeyUsage
from flask_apikeys.storable import storable_text
from flask_apikeys.usage import rows


def remembered_routes(recorder: Callable[..., Any]) -> BoundedCache[Any, Any]:
    """The (rule, method) texts a recorder made by :func:`rows.make_usage_recorder` keeps."""
    closure = recorder.__closure__ or ()
    (cache,) = [cell.cell_contents for cell in closure if isinstance(cell.cell_contents, dict)]
    return cache


def test_route_texts_are_the_storable_ones_and_stay_within_their_bound(
    app: Flask, apikeys: APIKeys, make_key: Callable[..., str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(rows, "MAX_REMEMBERED_ROUTES", 4)
    methods = [f"M{index}" for index in range(10)] + ["PROPFIND-EXTENDED"]  # cut to 10
    rule = "/v1/caf\u00e9/<int:number>"
    app.add_url_rule(rule, "any_method", lambda number: {}, methods=methods)
    state = app.extensions["apikeys"]
    recorder = rows.make_usage_recorder(state.writer, None)
    cache = remembered_routes(recorder)
    key = make_key()
    with app.app_context():
        verified = apikeys.verify_key(key)
    expected = []
    sent = [("/v1/caf\u00e9/7", method) for method in methods * 2]
    sent.insert(5, ("/nowhere", "WHATEVER-THEY-SEND"))  # no rule: never remembered
    for path, method in sent:
        with app.test_request_context(path, method=method):
            request.environ[OUTCOME_ENVIRON_KEY] = verified
            recorder(200, request.environ)
        matched = path != "/nowhere"
        expected.append(
            (
                storable_text(rule, 300) if matched else rows.UNMATCHED_ENDPOINT,
                storable_text(method, 10),
            )
        )
        assert len(cache) <= 4
    with app.app_context():
        assert apikeys.flush_usage() == len(sent)
        session = app.extensions["sqlalchemy"].session
        stored = session.execute(
            sa.select(APIKeyUsage.endpoint, APIKeyUsage.method).order_by(APIKeyUsage.id)
        ).all()
    assert [tuple(row) for row in stored] == expected
    assert ("PROPFIND-E" in {method for _, method in expected}) and len(cache) >= 1
