"""Limits hold under concurrency and chains: 20 requests at once, on SQLite and PostgreSQL.

Each thread has its own test client (so its own app context and database session) and waits at
a barrier, so the requests really overlap; the database, not a check in Python, must decide.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest
import sqlalchemy as sa
from flask import Flask

from flask_apikeys import APIKeys
from flask_apikeys.models import APIKey, AuditRecord

ADMIN_KEY = "bootstrap-" + "c" * 32
THREADS = 20
NINETY_DAYS = 24 * 90


@pytest.fixture
def database_url(backend_url: str) -> str:
    return backend_url


@pytest.fixture
def app_config() -> dict[str, Any]:
    return {"APIKEYS_ADMIN_KEY": ADMIN_KEY, "APIKEYS_USAGE_MODE": "sync"}


def at_once(app: Flask, requests: list[Callable[[Any], Any]]) -> list[Any]:
    """Run each ``request(client)`` in its own thread, all released together; the responses."""
    barrier = threading.Barrier(len(requests))
    responses: list[Any] = [None] * len(requests)

    def run(index: int) -> None:
        client = app.test_client()
        barrier.wait()
        responses[index] = requests[index](client)

    threads = [threading.Thread(target=run, args=(index,)) for index in range(len(requests))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert all(response is not None for response in responses), "a request never finished"
    return responses


def statuses(responses: list[Any]) -> Counter[int]:
    return Counter(response.status_code for response in responses)


def assert_conflicts(responses: list[Any], code: str) -> None:
    for response in responses:
        if response.status_code == 409:
            assert response.content_type == "application/problem+json"
            assert response.json["code"] == code, response.json


def working_keys(app: Flask, secrets: list[str]) -> int:
    """How many of ``secrets`` authenticate on the app's API right now."""
    client = app.test_client()
    return sum(
        client.get("/v1/whoami", headers={"X-API-Key": secret}).status_code == 200
        for secret in secrets
    )


def admin(path: str, method: str = "POST", body: Any = None) -> Callable[[Any], Any]:
    return lambda client: client.open(
        path, method=method, json=body, headers={"X-API-Key": ADMIN_KEY}
    )


@pytest.fixture
def organization(app: Flask, apikeys: APIKeys) -> str:
    with app.app_context():
        return str(apikeys.create_organization("Busy", "b@busy.io", "enterprise").id)


def test_twenty_rotations_of_one_key_make_exactly_one_successor(
    app: Flask, apikeys: APIKeys, organization: str
) -> None:
    with app.app_context():
        created = apikeys.create_key(organization, "rotated at once")
    path = f"/admin/organizations/{organization}/keys/{created.api_key.id}/rotate"
    responses = at_once(app, [admin(path, body={"overlap_hours": 24})] * THREADS)
    assert statuses(responses) == {201: 1, 409: THREADS - 1}, statuses(responses)
    assert_conflicts(responses, "already_rotated")
    successors = [response.json["key"] for response in responses if response.status_code == 201]
    with app.app_context():
        session = app.extensions["sqlalchemy"].session
        assert session.scalar(sa.select(sa.func.count()).select_from(APIKey)) == 2
        assert apikeys.get_key(created.api_key.id).replaced_by_id is not None
    assert working_keys(app, [created.key, *successors]) == 2  # the old one, in its overlap


def test_twenty_revocations_of_one_key_record_exactly_one(
    app: Flask, apikeys: APIKeys, organization: str
) -> None:
    with app.app_context():
        created = apikeys.create_key(organization, "revoked at once")
    path = f"/admin/organizations/{organization}/keys/{created.api_key.id}"
    responses = at_once(app, [admin(path, "DELETE", {"reason": "leak"})] * THREADS)
    assert statuses(responses) == {200: 1, 409: THREADS - 1}, statuses(responses)
    assert_conflicts(responses, "already_revoked")
    with app.app_context():
        session = app.extensions["sqlalchemy"].session
        revocations = session.scalar(
            sa.select(sa.func.count())
            .select_from(AuditRecord)
            .where(AuditRecord.event == "key.revoked")
        )
        assert revocations == 1
    assert working_keys(app, [created.key]) == 0


def test_twenty_creations_never_pass_the_key_limit(
    app: Flask, apikeys: APIKeys, organization: str
) -> None:
    with app.app_context():
        apikeys.update_organization(organization, max_api_keys=2)
    path = f"/admin/organizations/{organization}/keys"
    responses = at_once(app, [admin(path, body={"name": "racing"})] * THREADS)
    assert statuses(responses) == {201: 2, 409: THREADS - 2}, statuses(responses)
    assert_conflicts(responses, "key_limit_reached")
    with app.app_context():
        assert len(apikeys.list_keys(organization)[0]) == 2


def test_chained_rotations_with_long_overlaps_stay_within_the_key_limit(
    app: Flask, apikeys: APIKeys, organization: str
) -> None:
    with app.app_context():
        apikeys.update_organization(organization, max_api_keys=2)
        current = apikeys.create_key(organization, "chained")
    base = f"/admin/organizations/{organization}/keys"
    secrets = [current.key]
    key_id = str(current.api_key.id)
    client = app.test_client()
    outcomes = []
    for _ in range(8):
        response = admin(f"{base}/{key_id}/rotate", body={"overlap_hours": NINETY_DAYS})(client)
        outcomes.append(response.status_code)
        if response.status_code == 201:
            secrets.append(response.json["key"])
            key_id = response.json["id"]
        else:
            assert response.json["code"] == "key_limit_reached"
    assert outcomes == [201] + [409] * 7
    assert working_keys(app, secrets) == 2
    zero_overlap = admin(f"{base}/{key_id}/rotate", body={"overlap_hours": 0})(client)
    assert zero_overlap.status_code == 201  # without an overlap the count does not grow
    assert working_keys(app, [*secrets, zero_overlap.json["key"]]) == 2


def test_twenty_rotations_and_creations_at_once_stay_within_the_key_limit(
    app: Flask, apikeys: APIKeys, organization: str
) -> None:
    with app.app_context():
        apikeys.update_organization(organization, max_api_keys=3)
        first, second = (apikeys.create_key(organization, name) for name in ("one", "two"))
        secrets = [first.key, second.key]
        ids = [first.api_key.id, second.api_key.id]
    base = f"/admin/organizations/{organization}/keys"
    requests = []
    for index in range(THREADS):
        if index % 3 == 2:
            requests.append(admin(base, body={"name": f"new {index}"}))
        else:
            body = {"overlap_hours": NINETY_DAYS}
            requests.append(admin(f"{base}/{ids[index % 3]}/rotate", body=body))
    responses = at_once(app, requests)
    assert set(statuses(responses)) <= {201, 409}, statuses(responses)
    secrets += [response.json["key"] for response in responses if response.status_code == 201]
    assert working_keys(app, secrets) == 3
    assert statuses(responses)[201] == 1
