"""The third attack pass on refusals that cost nothing: every refused credential counts.

A key refused because it is used from outside its ``allowed_networks``, or because its
organization is switched off, did not count toward the address's failed-attempt block, nor
take from any rate limit (they apply after authentication). Whoever holds such a key (a
leaked, network-bound one: what allowlists are for) could send it without limit, and each
request with a user agent of its own wrote one more hash-chained audit record.
"""

from __future__ import annotations

from typing import Any

import pytest
import sqlalchemy as sa
from flask import Flask

from flask_apikeys import APIKeys
from flask_apikeys.models import AuditRecord

from .helpers import bearer, new_key


@pytest.fixture
def app_config() -> dict[str, Any]:
    return {"APIKEYS_FAILED_AUTH_LIMIT": "3/minute", "APIKEYS_USAGE_MODE": "sync"}


def refused_records(app: Flask) -> int:
    with app.app_context():
        session = app.extensions["sqlalchemy"].session
        query = sa.select(sa.func.count()).where(AuditRecord.event == "auth.refused")
        return int(session.scalar(query.select_from(AuditRecord)) or 0)


def hammer(app: Flask, secret: str, times: int = 8) -> list[int]:
    client = app.test_client()
    client.environ_base["REMOTE_ADDR"] = "203.0.113.50"
    return [
        client.get(
            "/v1/presentations", headers={**bearer(secret), "User-Agent": f"agent/{number}"}
        ).status_code
        for number in range(times)
    ]


def test_a_key_used_from_outside_its_networks_counts_as_a_failed_attempt(app: Flask) -> None:
    key = new_key(app, allowed_networks=["198.51.100.0/24"])
    statuses = hammer(app, key.secret)
    assert statuses[:3] == [403, 403, 403]
    assert set(statuses[3:]) == {429}
    assert refused_records(app) <= 4


def test_a_key_of_an_inactive_organization_counts_as_a_failed_attempt(
    app: Flask, apikeys: APIKeys
) -> None:
    key = new_key(app)
    with app.app_context():
        apikeys.update_organization(key.organization_id, is_active=False)
    statuses = hammer(app, key.secret)
    assert statuses[:3] == [403, 403, 403]
    assert set(statuses[3:]) == {429}
    assert refused_records(app) <= 4
