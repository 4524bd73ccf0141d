"""A key stored under a retired hashing scheme, presented by two requests at once.

The first request to find it by a retired digest stores it again under the current scheme.
A second request that looked for the current digest just before that commit, and for the
retired ones just after, found neither: it answered 401 and remembered the key as unknown
(the negative cache), so a valid key was refused in that worker until the entry expired.
"""

from __future__ import annotations

from typing import Any

import pytest
import sqlalchemy as sa

from flask_apikeys.models import APIKey

from .factory import create_app


@pytest.fixture
def database_url(backend_url: str) -> str:
    return backend_url


def test_a_key_rehashed_by_another_request_between_the_two_lookups_still_verifies(
    database_url: str,
) -> None:
    legacy_app, _, legacy = create_app(database_url)
    with legacy_app.app_context():
        legacy.create_all()
        organization = legacy.create_organization(name="Acme", email="a@acme.com")
        key = legacy.create_key(organization, "k").key
        old_hash = legacy_app.extensions["sqlalchemy"].session.scalar(sa.select(APIKey.key_hash))
    legacy.close(legacy_app)
    with legacy_app.app_context():
        legacy_app.extensions["sqlalchemy"].engine.dispose()

    keyed_app, keyed_db, keyed = create_app(database_url, APIKEYS_HASH_SECRET="s" * 32)
    with keyed_app.app_context():
        engine = keyed_db.engine
        new_hash = keyed.state.hasher.hash(key)
        rehashed_elsewhere: list[bool] = []

        def other_request_commits_its_rehash(
            connection: Any, cursor: Any, statement: str, parameters: Any, *_: Any
        ) -> None:
            """Just before this request looks for the retired digest, another request's
            rehash of the same key commits (on a connection of its own)."""
            values = parameters.values() if isinstance(parameters, dict) else parameters
            if rehashed_elsewhere or not statement.lstrip().upper().startswith("SELECT"):
                return
            if old_hash not in tuple(values):
                return
            rehashed_elsewhere.append(True)
            with engine.connect() as other:
                other.execute(sa.update(APIKey).values(key_hash=new_hash))
                other.commit()

        sa.event.listen(engine, "before_cursor_execute", other_request_commits_its_rehash)
        try:
            verified = keyed.verify_key(key)
        finally:
            sa.event.remove(engine, "before_cursor_execute", other_request_commits_its_rehash)
        assert rehashed_elsewhere, "the race was not staged"
        assert verified.name == "k"
        # Nothing remembered it as unknown: the next lookup (cache emptied) finds it too.
        keyed.state.cache.clear()
        assert keyed.verify_key(key).name == "k"
        assert keyed_db.session.scalar(sa.select(APIKey.key_hash)) == new_hash
        keyed_db.session.remove()
    keyed.close(keyed_app)
    with keyed_app.app_context():
        keyed_db.engine.dispose()
