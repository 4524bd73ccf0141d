"""The third attack pass on text fields: a key pasted where text belongs is never stored or echoed.

A key fits the scope grammar (letters, digits, ``_``), so ``"scopes": ["pk_live_…"]`` made a
key whose scope *was* another key, stored in clear, listed, copied into the audit trail and
into every access token of that key; and free text (names, descriptions, metadata, revocation
reasons) took a key as well. Error documents repeated a pasted key in their field names and
messages (an unknown field, a bad network, an unknown role), where clients and gateways log
them. The service layer now refuses a key or access token in anything a caller asks it to
store (422), and an ``invalid_input`` document masks what it repeats.
"""

from __future__ import annotations

from typing import Any

import pytest
import sqlalchemy as sa
from flask import Flask

from flask_apikeys import APIKeys
from flask_apikeys.errors import InvalidInput
from flask_apikeys.models import APIKey, AuditRecord, Organization

from .helpers import HS256, TOKEN_PATH, assert_problem, bearer, new_key

FORM = "application/x-www-form-urlencoded"


@pytest.fixture
def app_config() -> dict[str, Any]:
    return dict(HS256)


def stored_text(app: Flask) -> str:
    """Every value of every key, organization and audit row, as text."""
    with app.app_context():
        session = app.extensions["sqlalchemy"].session
        rows = []
        for model in (APIKey, Organization, AuditRecord):
            rows += [repr(tuple(row)) for row in session.execute(sa.select(model.__table__))]
        return "\n".join(rows)


BODIES = {
    "scope": lambda secret: {"name": "k", "scopes": ["reports:read", secret]},
    "name": lambda secret: {"name": secret},
    "description": lambda secret: {"name": "k", "description": f"for CI, key {secret}"},
    "metadata value": lambda secret: {"name": "k", "metadata": {"ci": {"key": secret}}},
    "metadata name": lambda secret: {"name": "k", "metadata": {secret: 1}},
    "body field name": lambda secret: {"name": "k", secret: 1},
    "network": lambda secret: {"name": "k", "allowed_networks": [secret]},
    "role": lambda secret: {"name": "k", "roles": [secret]},
}


@pytest.mark.parametrize("field", list(BODIES))
def test_a_key_pasted_into_a_new_keys_field_is_refused_and_not_repeated(
    app: Flask, field: str
) -> None:
    admin = new_key(app, scopes=["*"])
    pasted = new_key(app, scopes=["reports:read"]).secret
    before = stored_text(app)
    response = app.test_client().post(
        f"/admin/organizations/{admin.organization_id}/keys",
        headers=bearer(admin.secret),
        json=BODIES[field](pasted),
    )
    assert_problem(response, 422, "invalid_input")
    assert pasted not in response.get_data(as_text=True)
    assert stored_text(app) == before  # nothing written


def test_a_key_pasted_into_an_update_or_a_revocation_reason_is_refused(app: Flask) -> None:
    admin = new_key(app, scopes=["*"])
    leaked = new_key(app, scopes=["reports:read"])
    client = app.test_client()
    path = f"/admin/organizations/{admin.organization_id}/keys/{leaked.id}"
    changed = client.patch(path, headers=bearer(admin.secret), json={"scopes": [leaked.secret]})
    assert_problem(changed, 422, "invalid_input")
    revoked = client.delete(
        path, headers=bearer(admin.secret), json={"reason": f"leaked: {leaked.secret}"}
    )
    body = assert_problem(revoked, 422, "invalid_input")
    assert "revoke it" in str(body["errors"])
    assert leaked.secret not in changed.get_data(as_text=True) + revoked.get_data(as_text=True)
    assert leaked.secret not in stored_text(app)
    # Said without the key, the revocation goes through at once.
    revoked_plainly = client.delete(path, headers=bearer(admin.secret), json={"reason": "leaked"})
    assert revoked_plainly.status_code == 200


def test_a_token_is_not_issued_with_a_key_as_its_scope(app: Flask) -> None:
    """A ``*`` key handed out a token whose ``scope`` claim was another key, readable by
    anyone who saw the token (its payload is only base64)."""
    holder = new_key(app, scopes=["*"])
    pasted = new_key(app, scopes=["reports:read"]).secret
    client = app.test_client()
    exchanged = client.post(TOKEN_PATH, headers=bearer(holder.secret), json={"scope": pasted})
    assert_problem(exchanged, 422, "invalid_input")
    granted = client.post(
        TOKEN_PATH,
        headers=bearer(holder.secret),
        data={"grant_type": "client_credentials", "scope": pasted},
        content_type=FORM,
    )
    assert granted.status_code == 400 and granted.get_json()["error"] == "invalid_scope"
    for response in (exchanged, granted):
        assert pasted not in response.get_data(as_text=True)
        assert "access_token" not in (response.get_json() or {})


def test_the_python_api_refuses_a_key_in_what_it_stores(app: Flask, apikeys: APIKeys) -> None:
    pasted = new_key(app, scopes=["reports:read"]).secret
    with app.app_context():
        with pytest.raises(InvalidInput) as refused:
            apikeys.create_organization(name=f"Acme {pasted}", email="a@acme.io")
        assert pasted not in str(refused.value.problem())
        with pytest.raises(InvalidInput):
            apikeys.create_key("acme", "ci", scopes=[pasted])
    assert pasted not in stored_text(app)


def test_an_unknown_admin_path_holding_a_key_is_not_printed_back(app: Flask) -> None:
    admin = new_key(app, scopes=["*"])
    pasted = new_key(app, scopes=["reports:read"]).secret
    response = app.test_client().get(f"/admin/keys/{pasted}", headers=bearer(admin.secret))
    assert_problem(response, 404, "not_found")
    assert pasted not in response.get_data(as_text=True)
