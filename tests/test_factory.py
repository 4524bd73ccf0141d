"""The test app factory's shared parts stay isolated: a table one test's app adds to its
metadata never reaches the apps built after it (``tests/factory.py``)."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from flask_apikeys.models import metadata as extension_metadata

from .factory import app_metadata, create_app


def test_apps_share_the_extensions_tables_copied_once(tmp_path: Any) -> None:
    _, first, _ = create_app(f"sqlite:///{tmp_path / 'a.sqlite'}")
    _, second, _ = create_app(f"sqlite:///{tmp_path / 'b.sqlite'}")
    assert first.metadata is second.metadata is app_metadata()
    assert set(first.metadata.tables) == set(extension_metadata.tables)
    # Copies with plain types, as register_tables makes for any app: not the models' tables.
    assert all(
        table is not extension_metadata.tables[name]
        for name, table in first.metadata.tables.items()
    )


def test_a_model_one_app_defines_does_not_reach_the_next_app(tmp_path: Any) -> None:
    app, db, _ = create_app(f"sqlite:///{tmp_path / 'own.sqlite'}")

    class Widget(db.Model):  # type: ignore[name-defined, misc]
        id = sa.Column(sa.Integer, primary_key=True)

    with app.app_context():
        db.create_all()
        assert "widget" in sa.inspect(db.engine).get_table_names()
        db.engine.dispose()

    app_after, db_after, _ = create_app(f"sqlite:///{tmp_path / 'next.sqlite'}")
    assert "widget" not in db_after.metadata.tables
    assert set(db_after.metadata.tables) == set(extension_metadata.tables)
    with app_after.app_context():
        db_after.create_all()
        assert set(sa.inspect(db_after.engine).get_table_names()) == set(extension_metadata.tables)
        db_after.engine.dispose()
