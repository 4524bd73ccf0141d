"""The uncached key lookup (service/lookup.py): its bare-cursor path and who still sees it."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from flask_apikeys.errors import InvalidAPIKey
from flask_apikeys.keys import generate_key

from .factory import create_app


def test_cursor_listeners_see_the_lookups_made_while_they_are_registered(tmp_path: Path) -> None:
    """Without a cursor listener the lookup runs on the bare DB-API cursor; a listener added
    later (tracing, query counting) sees every lookup from then on, and removing it changes
    no answer."""
    app, db, apikeys = create_app(
        f"sqlite:///{tmp_path / 'lookup.sqlite'}", APIKEYS_CACHE_TTL=0, APIKEYS_AUDIT=False
    )
    with app.app_context():
        apikeys.create_all()
        org = apikeys.create_organization(name="Acme", email="a@acme.io")
        created = apikeys.create_key(org, "one", scopes=["read"], metadata={"team": "a"})
        before = apikeys.verify_key(created.key)  # opens the kept connection, no listener
        lookup = app.extensions["apikeys"].service.verification.lookup
        assert lookup._connection is not None  # the lookup did not fall back to the session

        seen: list[str] = []

        def record(_connection: Any, _cursor: Any, statement: str, *_: Any) -> None:
            seen.append(statement)

        sa.event.listen(db.engine, "before_cursor_execute", record)
        watched = apikeys.verify_key(created.key)
        assert len(seen) == 1 and "key_hash" in seen[0]
        sa.event.remove(db.engine, "before_cursor_execute", record)
        unwatched = apikeys.verify_key(created.key)
        assert len(seen) == 1
        for verified in (watched, unwatched):
            assert verified == before
            assert verified.id == created.api_key.id and verified.scopes == frozenset({"read"})
            assert dict(verified.metadata) == {"team": "a"}
        db.engine.dispose()


def test_a_kept_connection_that_died_is_replaced_once(tmp_path: Path) -> None:
    """The driver's own error on the bare cursor (not SQLAlchemy's) still means: open a fresh
    connection and look again, and the request is served."""
    app, db, apikeys = create_app(
        f"sqlite:///{tmp_path / 'lookup.sqlite'}", APIKEYS_CACHE_TTL=0, APIKEYS_AUDIT=False
    )
    with app.app_context():
        apikeys.create_all()
        org = apikeys.create_organization(name="Acme", email="a@acme.io")
        created = apikeys.create_key(org, "one")
        apikeys.verify_key(created.key)
        lookup = app.extensions["apikeys"].service.verification.lookup
        dead = lookup._connection
        dead.connection.dbapi_connection.close()  # the server went away under it
        assert apikeys.verify_key(created.key).id == created.api_key.id
        assert lookup._connection is not None and lookup._connection is not dead
        db.engine.dispose()


def test_keys_of_one_organization_share_what_they_have_in_common(tmp_path: Path) -> None:
    """A cache miss builds only what is the key's own: keys with the same organization, scopes
    and networks get the very same objects for them, and a change to any of those (the
    organization's limits, a role's definition) gives the next lookup new ones."""
    app, db, apikeys = create_app(
        f"sqlite:///{tmp_path / 'lookup.sqlite'}", APIKEYS_CACHE_TTL=0, APIKEYS_AUDIT=False
    )
    with app.app_context():
        apikeys.create_all()
        org = apikeys.create_organization(name="Acme", email="a@acme.io", plan="enterprise")
        created = [
            apikeys.create_key(org, name, scopes=["read"], allowed_networks=["10.0.0.0/8"]).key
            for name in ("one", "two")
        ]
        other = apikeys.create_key(org, "three", scopes=["write"]).key
        first, second = (apikeys.verify_key(key) for key in created)
        assert first.id != second.id
        assert first.organization is second.organization
        assert first.scopes is second.scopes and first.scopes == frozenset({"read"})
        assert first.allowed_networks is second.allowed_networks
        assert [str(network) for network in first.allowed_networks] == ["10.0.0.0/8"]
        third = apikeys.verify_key(other)
        assert third.organization is first.organization
        assert third.scopes == frozenset({"write"})

        apikeys.update_organization(org, rate_limit_per_minute=7)
        changed = apikeys.verify_key(created[0])
        assert changed.organization is not first.organization
        assert changed.organization.rate_limit_per_minute == 7

        apikeys.service.keys.define_role("viewer", ["reports:read"])
        roled = apikeys.create_key(org, "roled", scopes=[], roles=["viewer"]).key
        assert apikeys.verify_key(roled).scopes == frozenset({"reports:read"})
        apikeys.service.keys.define_role("viewer", ["reports:write"])
        assert apikeys.verify_key(roled).scopes == frozenset({"reports:write"})
        db.engine.dispose()


def test_a_lookup_leaves_no_statement_open_that_would_lock_writers_out(tmp_path: Path) -> None:
    """The kept cursor reads every row of its statement: SQLite releases the read lock at once,
    so another process can take the write lock right after a lookup (rollback journal)."""
    path = tmp_path / "lookup.sqlite"
    app, db, apikeys = create_app(f"sqlite:///{path}", APIKEYS_CACHE_TTL=0, APIKEYS_AUDIT=False)
    with app.app_context():
        apikeys.create_all()
        org = apikeys.create_organization(name="Acme", email="a@acme.io")
        created = apikeys.create_key(org, "one")
        for _ in range(2):
            assert apikeys.verify_key(created.key).id == created.api_key.id
            writer = sqlite3.connect(path, timeout=0, isolation_level=None)
            try:
                writer.execute("BEGIN EXCLUSIVE")  # fails at once if a reader holds a lock
                writer.execute("ROLLBACK")
            finally:
                writer.close()
        db.engine.dispose()


def test_a_key_stored_under_the_current_scheme_is_found_by_one_digest(backend_url: str) -> None:
    """With a retired scheme configured, a current key costs one point lookup by one digest
    (no ``IN`` over every scheme's digest); a key under the retired scheme is found by a
    second lookup and stored again under the current one, after which it is one lookup too;
    an unknown key is looked for under both."""
    url = backend_url
    legacy_app, legacy_db, legacy = create_app(url, APIKEYS_AUDIT=False)
    with legacy_app.app_context():
        legacy.create_all()
        org = legacy.create_organization(name="Acme", email="a@acme.io")
        old_key = legacy.create_key(org, "old").key  # plain SHA-256: no secret yet
        organization_id = org.id
        legacy.close(legacy_app)
        legacy_db.session.remove()
        legacy_db.engine.dispose()
    app, db, apikeys = create_app(
        url, APIKEYS_CACHE_TTL=0, APIKEYS_AUDIT=False, APIKEYS_HASH_SECRET="s" * 32
    )
    with app.app_context():
        organization = apikeys.get_organization(organization_id)
        current_key = apikeys.create_key(organization, "current").key
        seen: list[tuple[str, Any]] = []

        def record(
            _connection: Any, _cursor: Any, statement: str, parameters: Any, *_: Any
        ) -> None:
            if "key_hash" in statement and statement.lstrip().upper().startswith("SELECT"):
                seen.append((statement, parameters))

        sa.event.listen(db.engine, "before_cursor_execute", record)
        assert apikeys.verify_key(current_key).name == "current"
        assert len(seen) == 1 and " IN " not in seen[0][0] and len(seen[0][1]) == 1
        seen.clear()
        assert apikeys.verify_key(old_key).name == "old"  # found under the retired scheme
        assert len(seen) == 2
        seen.clear()
        assert apikeys.verify_key(old_key).name == "old"  # rehashed: the current digest now
        assert len(seen) == 1
        seen.clear()
        with pytest.raises(InvalidAPIKey):
            apikeys.verify_key(generate_key("pk", "live"))
        assert len(seen) == 2
        sa.event.remove(db.engine, "before_cursor_execute", record)
        apikeys.close(app)
        db.session.remove()
        db.engine.dispose()


def test_keys_with_the_same_metadata_each_get_a_read_only_view_of_it(tmp_path: Path) -> None:
    """The metadata's JSON text is parsed once per distinct text and shared by the lookup; each
    snapshot gets its own read-only copy, so nothing done with one reaches another."""
    app, db, apikeys = create_app(
        f"sqlite:///{tmp_path / 'lookup.sqlite'}", APIKEYS_CACHE_TTL=0, APIKEYS_AUDIT=False
    )
    with app.app_context():
        apikeys.create_all()
        org = apikeys.create_organization(name="Acme", email="a@acme.io", plan="enterprise")
        same = [apikeys.create_key(org, name, metadata={"team": "a"}).key for name in "xy"]
        other = apikeys.create_key(org, "z", metadata={"team": "b"}).key
        plain = apikeys.create_key(org, "none").key
        first, second = (apikeys.verify_key(key).metadata for key in same)
        assert dict(first) == dict(second) == {"team": "a"}
        with pytest.raises(TypeError):
            first["team"] = "changed"  # type: ignore[index]
        assert dict(apikeys.verify_key(same[0]).metadata) == {"team": "a"}
        assert dict(apikeys.verify_key(other).metadata) == {"team": "b"}
        assert dict(apikeys.verify_key(plain).metadata) == {}
        db.engine.dispose()


def test_a_listener_on_every_engine_sees_the_lookups_too(tmp_path: Path) -> None:
    """A cursor listener registered for all engines (on the ``Engine`` class, as some tracers
    do) after the kept connection was opened sees the lookups, as one on the engine does."""
    app, db, apikeys = create_app(
        f"sqlite:///{tmp_path / 'lookup.sqlite'}", APIKEYS_CACHE_TTL=0, APIKEYS_AUDIT=False
    )
    with app.app_context():
        apikeys.create_all()
        org = apikeys.create_organization(name="Acme", email="a@acme.io")
        created = apikeys.create_key(org, "one")
        apikeys.verify_key(created.key)
        assert app.extensions["apikeys"].service.verification.lookup._connection is not None
        seen: list[str] = []

        def record(_connection: Any, _cursor: Any, statement: str, *_: Any) -> None:
            seen.append(statement)

        sa.event.listen(sa.Engine, "after_cursor_execute", record)
        try:
            assert apikeys.verify_key(created.key).id == created.api_key.id
        finally:
            sa.event.remove(sa.Engine, "after_cursor_execute", record)
        assert len(seen) == 1 and "key_hash" in seen[0]
        apikeys.verify_key(created.key)
        assert len(seen) == 1
        db.engine.dispose()
