"""The rules that count keys hold when the organization's plan changes at the same moment.

A key's creation takes the organization's row lock and counts the keys that authenticate,
but it compared the count with the plan read *before* the lock: a downgrade committed in
between (plan, or ``max_api_keys``) was not seen, and the organization ended above its new
limit, where the same request a moment later is refused with 409.
"""

from __future__ import annotations

from typing import Any

import pytest
import sqlalchemy as sa
from flask import Flask

from flask_apikeys import APIKeys
from flask_apikeys.errors import AlreadyRevoked, KeyLimitReached
from flask_apikeys.models import APIKey, Organization


@pytest.fixture
def database_url(backend_url: str) -> str:
    return backend_url


@pytest.mark.parametrize(
    "downgrade", [{"max_api_keys": 1}, {"plan": "free"}], ids=["max_api_keys", "plan"]
)
def test_a_key_created_while_the_plan_is_lowered_is_counted_against_the_new_limit(
    app: Flask, apikeys: APIKeys, db: Any, downgrade: dict[str, Any]
) -> None:
    with app.app_context():
        organization = apikeys.create_organization(name="Acme", email="a@acme.io", plan="pro")
        organization_id = organization.id
        free_keys = apikeys.state.settings.plans["free"].max_keys
        limit_after = 1 if "max_api_keys" in downgrade else free_keys
        assert limit_after is not None
        for index in range(limit_after):
            apikeys.create_key(organization, f"existing-{index}")
        engine = db.engine
        committed: list[bool] = []

        def downgrade_commits_first(connection: Any, cursor: Any, statement: str, *_: Any) -> None:
            """Just before the creation takes the organization's lock, another request's
            downgrade commits (on a connection of its own)."""
            if committed or not statement.lstrip().upper().startswith("UPDATE ORGANIZATIONS"):
                return
            committed.append(True)
            with engine.connect() as other:
                other.execute(
                    sa.update(Organization)
                    .where(Organization.id == organization_id)
                    .values(**downgrade)
                )
                other.commit()

        sa.event.listen(engine, "before_cursor_execute", downgrade_commits_first)
        try:
            with pytest.raises(KeyLimitReached):
                apikeys.create_key(organization, "one-too-many")
        finally:
            sa.event.remove(engine, "before_cursor_execute", downgrade_commits_first)
        assert committed, "the race was not staged"
        count = sa.select(sa.func.count()).select_from(APIKey)
        assert db.session.scalar(count) == limit_after
        # Not a stale view either way: the next creation, with nothing racing, is refused too.
        with pytest.raises(KeyLimitReached):
            apikeys.create_key(organization_id, "still-too-many")


def test_a_key_revoked_while_it_is_being_changed_is_not_changed(
    app: Flask, apikeys: APIKeys, db: Any
) -> None:
    """ "A revoked key cannot be changed" held only for a revocation committed before the
    change read the key: one committed in between let the change through (200, a
    ``key.updated`` after the ``key.revoked``) onto a revoked key."""
    with app.app_context():
        organization = apikeys.create_organization(name="Acme", email="a@acme.io", plan="pro")
        key_id = apikeys.create_key(organization, "k", scopes=["reports:read"]).api_key.id
        engine = db.engine
        committed: list[bool] = []

        def revocation_commits_first(connection: Any, cursor: Any, statement: str, *_: Any) -> None:
            """Just before the change is written, another request's revocation commits."""
            if committed or not statement.lstrip().upper().startswith("UPDATE API_KEYS"):
                return
            committed.append(True)
            with engine.connect() as other:
                other.execute(
                    sa.update(APIKey)
                    .where(APIKey.id == key_id)
                    .values(is_active=False, revoked_at=sa.func.now(), revoked_reason="leaked")
                )
                other.commit()

        sa.event.listen(engine, "before_cursor_execute", revocation_commits_first)
        try:
            with pytest.raises(AlreadyRevoked):
                apikeys.update_key(key_id, name="renamed", scopes=["reports:write"])
        finally:
            sa.event.remove(engine, "before_cursor_execute", revocation_commits_first)
        assert committed, "the race was not staged"
        db.session.rollback()
        stored = db.session.execute(
            sa.select(APIKey.name, APIKey.scopes, APIKey.revoked_at).where(APIKey.id == key_id)
        ).one()
        assert (stored.name, list(stored.scopes)) == ("k", ["reports:read"])
        assert stored.revoked_at is not None
