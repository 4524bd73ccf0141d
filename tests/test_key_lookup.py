"""The uncached key lookup (service/lookup.py): its bare-cursor path and who still sees it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import sqlalchemy as sa

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
