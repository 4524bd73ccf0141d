"""Attack pass: a change to a key or its organization while another request is reading it.

A request that misses the cache reads the key, then caches what it read. If the key is revoked
(or its organization switched off) between the read and the caching, and a cache check empties
the cache in between (another thread's request, after the change was announced), what was read
before the change must not be cached: it would be served until the TTL ends, however long, and
the docs promise every worker stops within ``APIKEYS_CACHE_CHECK_INTERVAL`` whatever the TTL.
On PostgreSQL, where the read finishes on the server before the change commits.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from flask import Flask

from .helpers import HS256, assert_problem

pytestmark = pytest.mark.postgres

#: A TTL far longer than the check interval: a stale entry would outlive the promise by far.
LONG_TTL = 60


def change_key_or_organization(app: Flask, change: str, key_id: Any, organization_id: Any) -> None:
    apikeys = app.extensions["apikeys"].extension
    with app.app_context():
        if change.startswith("revoke"):
            apikeys.revoke_key(key_id)
        else:
            apikeys.update_organization(organization_id, is_active=False)


@pytest.fixture
def engine_listener(app_for_race: Flask) -> Iterator[Callable[[Callable[..., None]], None]]:
    """Register an ``after_cursor_execute`` listener on the app's engine for one test."""
    with app_for_race.app_context():
        engine = app_for_race.extensions["sqlalchemy"].engine
    listeners: list[Callable[..., None]] = []

    def listen(listener: Callable[..., None]) -> None:
        sa.event.listen(engine, "after_cursor_execute", listener)
        listeners.append(listener)

    yield listen
    for listener in listeners:
        sa.event.remove(engine, "after_cursor_execute", listener)


@pytest.fixture
def app_for_race(postgresql_url_with_tables: str, make_app: Callable[..., Flask]) -> Flask:
    return make_app(
        postgresql_url_with_tables,
        APIKEYS_CACHE_TTL=LONG_TTL,
        APIKEYS_CACHE_CHECK_INTERVAL=0,
        **HS256,
    )


@pytest.mark.parametrize("change", ["revoke", "deactivate", "revoke-under-token"])
def test_what_a_lookup_read_before_a_change_is_not_cached_past_it(
    app_for_race: Flask, engine_listener: Callable[[Callable[..., None]], None], change: str
) -> None:
    app = app_for_race
    apikeys = app.extensions["apikeys"].extension
    with app.app_context():
        organization = apikeys.create_organization(name="Acme", email="a@acme.com", plan="pro")
        organization_id = organization.id
        victim = apikeys.create_key(organization_id, "victim", scopes=["*"])
        bystander = apikeys.create_key(organization_id, "bystander", scopes=["*"])
        victim_id = victim.api_key.id
    client = app.test_client()
    credential = {"X-API-Key": victim.key}
    if change == "revoke-under-token":  # an access token of the key: its snapshot by id
        issued = client.post("/auth/token", headers=credential)
        credential = {"Authorization": f"Bearer {issued.json['access_token']}"}
    fired = threading.Event()
    bystander_answers: list[int] = []

    # A miss reads the key by its digest, then its organization by id: the change comes
    # just after the read of what it changes.
    def reads_what_changes(statement: str) -> bool:
        if change == "revoke":
            return "api_keys.key_hash =" in statement
        if change == "revoke-under-token":
            return "api_keys.id =" in statement
        return "FROM organizations" in statement and "FROM api_keys" not in statement

    def change_during_the_read(connection: Any, cursor: Any, statement: str, *_: Any) -> None:
        if fired.is_set() or not reads_what_changes(statement):
            return
        fired.set()
        # The victim's row is read; now the change commits and is announced …
        changer = threading.Thread(
            target=change_key_or_organization,
            args=(app, change, victim_id, organization_id),
        )
        changer.start()
        changer.join()

        # … and another thread's request checks for announcements, emptying the cache.
        def bystander_request() -> None:
            response = app.test_client().get("/v1/whoami", headers={"X-API-Key": bystander.key})
            bystander_answers.append(response.status_code)

        other = threading.Thread(target=bystander_request)
        other.start()
        other.join()

    engine_listener(change_during_the_read)
    # The request whose read began before the change may still be answered as before it.
    first = client.get("/v1/whoami", headers=credential)
    assert fired.is_set()
    assert first.status_code in {200, 401, 403}, first.get_data(as_text=True)
    assert bystander_answers == [403 if change == "deactivate" else 200]
    # Any later request is refused: what it read must not have been cached for the TTL.
    later = client.get("/v1/whoami", headers=credential)
    if change == "revoke":
        assert_problem(later, 401, "revoked_api_key")
    elif change == "revoke-under-token":
        assert_problem(later, 401, "invalid_token")
    else:
        assert_problem(later, 403, "organization_inactive")
