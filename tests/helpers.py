"""Helpers shared by several test modules (fixtures live in ``conftest.py``)."""

from __future__ import annotations

import uuid
from typing import Any, NamedTuple

from cryptography.hazmat.primitives import serialization
from flask import Flask

from flask_apikeys import APIKeys

PROBLEM = "application/problem+json"
#: An HS256 secret and the settings that turn access tokens on with it.
SECRET = "a-jwt-secret-of-at-least-32-characters!"
HS256 = {"APIKEYS_JWT_ENABLED": True, "APIKEYS_JWT_SECRET": SECRET}
TOKEN_PATH = "/auth/token"


def assert_problem(response: Any, status: int, code: str) -> dict[str, Any]:
    """Assert an RFC 9457 problem document with this status and code; return its body."""
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.mimetype == PROBLEM
    body = response.get_json(force=True)
    assert body["status"] == status and body["code"] == code
    assert set(body) >= {"type", "title", "status", "detail", "code"}
    assert body["type"].endswith("#" + code)
    return body  # type: ignore[no-any-return]


class Key(NamedTuple):
    secret: str
    id: uuid.UUID
    organization_id: uuid.UUID


def new_key(app: Flask, scopes: Any = ("*",), **options: Any) -> Key:
    """A key in organization "acme" (created on first use)."""
    with app.app_context():
        apikeys: APIKeys = app.extensions["apikeys"].extension
        organizations, _ = apikeys.list_organizations()
        organization = next((o for o in organizations if o.slug == "acme"), None)
        if organization is None:
            organization = apikeys.create_organization(name="Acme", email="a@acme.com", plan="pro")
        created = apikeys.create_key(organization, "Token key", scopes=scopes, **options)
        return Key(created.key, created.api_key.id, organization.id)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def private_pem(private_key: Any) -> str:
    """A private key as the PKCS#8 PEM that ``APIKEYS_JWT_PRIVATE_KEYS`` takes."""
    return str(
        private_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ).decode()
    )
