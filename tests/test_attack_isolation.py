"""Attack pass: what a lookup shares between keys must not carry one tenant's changes to another.

A cold lookup converts the values keys share (scope lists, metadata's JSON) once per distinct
value. A key's metadata is a read-only mapping, but the lists and objects inside it are plain
Python values a view can change; if every key with the same metadata text got the same nested
objects, a view of one organization changing its key's metadata would change the metadata of
every other organization's keys too, for as long as the process runs.
"""

from __future__ import annotations

import time
from typing import Any

import pytest
from flask import Flask, request

from flask_apikeys import APIKeys, current_key


@pytest.fixture
def app_config() -> dict[str, Any]:
    return {"APIKEYS_CACHE_TTL": 0.01}  # every request a cold lookup, soon


def test_a_view_changing_its_keys_nested_metadata_changes_no_other_key(
    app: Flask, apikeys: APIKeys
) -> None:
    @app.get("/v1/features")
    def features() -> dict[str, Any]:
        listed = current_key.metadata["features"]
        if "enable" in request.args:  # an app bug, in one organization's request
            listed.append("beta")
            current_key.metadata["limits"]["seats"] = 1000
        return {"features": list(listed), "seats": current_key.metadata["limits"]["seats"]}

    metadata = {"features": [], "limits": {"seats": 1}}
    with app.app_context():
        first = apikeys.create_organization(name="First", email="a@first.io", plan="pro")
        second = apikeys.create_organization(name="Second", email="b@second.io", plan="pro")
        first_key = apikeys.create_key(first.id, "k", scopes=["*"], metadata=metadata).key
        second_key = apikeys.create_key(second.id, "k", scopes=["*"], metadata=metadata).key
    client = app.test_client()
    changed = client.get("/v1/features?enable", headers={"X-API-Key": first_key})
    assert changed.json == {"features": ["beta"], "seats": 1000}
    time.sleep(0.02)  # past the TTL: each key read again
    for key in (second_key, first_key):
        answer = client.get("/v1/features", headers={"X-API-Key": key})
        assert answer.json == {"features": [], "seats": 1}
