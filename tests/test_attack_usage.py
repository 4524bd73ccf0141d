"""Attack pass: request text that a fast write path could mangle or choke on.

PostgreSQL takes usage rows through ``COPY`` and SQLite through prepared tuples: a tab, a
backslash or COPY's own ``\\N`` null marker in a client's text must be stored as
sent, in its own row, without touching the rows of other requests in the same batch (HTTP
carries no line break in a header, so those are not tried).
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import sqlalchemy as sa
from flask import Flask

from flask_apikeys import APIKeys
from flask_apikeys.models import APIKeyUsage

#: What COPY's text format treats as syntax (column and row separators, escapes, NULL).
COPY_SYNTAX_AGENTS = ["a\tb", "tab\t\tend\t", "back\\slash", "\\N", "\\.", "end\\"]


@pytest.fixture
def database_url(backend_url: str) -> str:
    return backend_url


def test_copy_syntax_in_a_user_agent_is_stored_as_sent_in_its_own_row(
    app: Flask, apikeys: APIKeys, make_key: Callable[..., str]
) -> None:
    key = make_key()
    client = app.test_client()
    sent = []
    for agent in COPY_SYNTAX_AGENTS:
        sent.append(agent)
        response = client.get("/v1/presentations", headers={"X-API-Key": key, "User-Agent": agent})
        assert response.status_code == 200
        # A plain neighbour after each: a row boundary moved would show here.
        sent.append("plain")
        assert (
            client.get(
                "/v1/presentations", headers={"X-API-Key": key, "User-Agent": "plain"}
            ).status_code
            == 200
        )
    assert apikeys.flush_usage() == len(sent)
    with app.app_context():
        session = app.extensions["sqlalchemy"].session
        stored = list(session.scalars(sa.select(APIKeyUsage.user_agent).order_by(APIKeyUsage.id)))
    assert stored == sent
