"""The third attack pass on credentials in URLs: a key is refused wherever it sits in the query.

A key (or access token) sent as a query parameter's *name* (``?pk_live_…``, what a client
sends when it appends the key itself, ``?`` and all) was not refused: the request was served
with 200, so nothing told the client that its key now sits in every proxy's access log, and
the admin API printed the key back in its 422 document as an unknown field.
"""

from __future__ import annotations

from typing import Any

import pytest
from flask import Flask

from .helpers import HS256, TOKEN_PATH, assert_problem, bearer, new_key


@pytest.fixture
def app_config() -> dict[str, Any]:
    return dict(HS256)


@pytest.mark.parametrize("query", ["{secret}", "page=2&{secret}", "{secret}=", "%70{rest}"])
def test_a_key_as_a_query_parameter_name_is_refused(app: Flask, query: str) -> None:
    key = new_key(app, scopes=["*"])
    client = app.test_client()
    url = "/v1/presentations?" + query.format(secret=key.secret, rest=key.secret[1:])
    response = client.get(url, headers=bearer(key.secret))
    body = assert_problem(response, 400, "api_key_in_url")
    assert key.secret not in response.get_data(as_text=True) and "revoke" in body["detail"]


def test_an_access_token_as_a_query_parameter_name_is_refused(app: Flask) -> None:
    key = new_key(app, scopes=["*"])
    client = app.test_client()
    token = client.post(TOKEN_PATH, headers=bearer(key.secret)).get_json()["access_token"]
    response = client.get("/v1/presentations?" + token, headers=bearer(token))
    assert_problem(response, 400, "api_key_in_url")
    assert token not in response.get_data(as_text=True)


def test_the_admin_api_refuses_a_key_named_in_its_query_instead_of_echoing_it(app: Flask) -> None:
    key = new_key(app, scopes=["admin"])
    response = app.test_client().get(
        f"/admin/organizations/{key.organization_id}/keys?{key.secret}", headers=bearer(key.secret)
    )
    assert_problem(response, 400, "api_key_in_url")
    assert key.secret not in response.get_data(as_text=True)
