"""The shipped Alembic branch: upgrade, downgrade and upgrade again, and nothing left to migrate."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from flask import Flask
from flask_migrate import Migrate
from flask_sqlalchemy import SQLAlchemy

from flask_apikeys import APIKeys
from flask_apikeys.migrations import alembic_head, copy_revisions, shipped_revisions
from flask_apikeys.models import metadata

EXTENSION_TABLES = set(metadata.tables)


@pytest.fixture
def database_url(backend_url: str) -> str:
    return backend_url


def run(app: Flask, *args: str) -> str:
    result = app.test_cli_runner().invoke(args=list(args))
    assert result.exit_code == 0, f"flask {' '.join(args)}: {result.output}"
    return result.output


def tables(app: Flask) -> set[str]:
    with app.app_context():
        return set(sa.inspect(app.extensions["sqlalchemy"].engine).get_table_names())


def schema_differences(app: Flask) -> list[Any]:
    """What autogenerate would change in the extension's tables (the shipped DDL vs the models)."""

    def ours(name: str | None, type_: str, parent_names: Any) -> bool:
        return type_ != "table" or name in EXTENSION_TABLES

    with app.app_context(), app.extensions["sqlalchemy"].engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"include_name": ours})
        return compare_metadata(context, metadata)


def test_example_app_upgrades_downgrades_to_empty_and_upgrades_again(database_url: str) -> None:
    from example_app import apikeys, create_app

    app = create_app({"SQLALCHEMY_DATABASE_URI": database_url})
    run(app, "db", "upgrade")
    assert EXTENSION_TABLES <= tables(app)
    run(app, "db", "check")  # exits non-zero when models and database differ
    assert schema_differences(app) == []
    run(app, "db", "downgrade", "base")
    assert tables(app) <= {"alembic_version"}
    run(app, "db", "upgrade")
    assert schema_differences(app) == []
    with app.app_context():
        organization, created = apikeys.seed()
        assert organization.slug == "default" and created is not None
    response = app.test_client().get("/v1/presentations", headers={"X-API-Key": created.key})
    assert response.status_code == 200
    # Write the request's usage row while the database exists: a writer left running would
    # retry against the dropped database for the rest of the worker's session.
    apikeys.close(app)
    with app.app_context():
        app.extensions["sqlalchemy"].engine.dispose()


# ``flask db init`` writes Flask-Migrate's env.py template, which still tries get_engine() first.
@pytest.mark.filterwarnings("ignore:'get_engine' is deprecated:DeprecationWarning")
def test_an_app_with_its_own_history_gets_the_revisions_chained_and_stays_clean(
    database_url: str, tmp_path: Path
) -> None:
    db = SQLAlchemy()

    class Widget(db.Model):  # type: ignore[name-defined, misc]
        id = sa.Column(sa.Integer, primary_key=True)
        name = sa.Column(sa.String(50))

    directory = tmp_path / "migrations"
    app = Flask(__name__)
    app.config.update(SQLALCHEMY_DATABASE_URI=database_url, TESTING=True)
    db.init_app(app)
    Migrate(app, db, directory=str(directory))
    APIKeys(app, db=db)
    run(app, "db", "init", "--directory", str(directory))

    # The app's own first revision, written before it adopted flask-apikeys.
    (directory / "versions" / "aaaa_widgets.py").write_text(WIDGETS_REVISION)
    assert alembic_head(directory) == "aaaa"
    written = copy_revisions(directory, alembic_head(directory))
    shipped = shipped_revisions()
    assert [path.name for path in written] == [path.name for _, path in shipped]
    assert copy_revisions(directory, alembic_head(directory)) == []  # idempotent
    assert alembic_head(directory) == shipped[-1][0]

    run(app, "db", "upgrade")  # plain upgrade: one linear history, one head
    assert {"widget", *EXTENSION_TABLES} <= tables(app)
    run(app, "db", "check")  # the app's autogenerate sees models and database agree
    assert schema_differences(app) == []
    run(app, "db", "downgrade", "base")
    assert tables(app) <= {"alembic_version"}
    with app.app_context():
        db.engine.dispose()


def test_a_table_name_the_app_already_uses_is_refused(tmp_path: Path) -> None:
    db = SQLAlchemy()

    class Organization(db.Model):  # type: ignore[name-defined, misc]
        __tablename__ = "organizations"
        id = sa.Column(sa.Integer, primary_key=True)

    app = Flask(__name__)
    app.config.update(SQLALCHEMY_DATABASE_URI=f"sqlite:///{tmp_path / 'x.sqlite'}")
    db.init_app(app)
    with pytest.raises(RuntimeError, match="already has a table named 'organizations'"):
        APIKeys(app, db=db)


WIDGETS_REVISION = """
from alembic import op
import sqlalchemy as sa

revision = "aaaa"
down_revision = None
branch_labels = None
depends_on = None


def upgrade():
    op.create_table(
        "widget",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=50), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )


def downgrade():
    op.drop_table("widget")
"""


def test_revisions_that_change_existing_tables_keep_them_writable_on_postgresql() -> None:
    """A revision on tables that already exist (and may hold millions of rows) builds its
    indexes ``CONCURRENTLY`` on PostgreSQL: a plain ``CREATE INDEX`` holds off every write to
    the table while it builds (the usage writer's flushes waited 0.6 s for apikeys_0005 on the
    rollups of a million requests). Rendered offline (``flask db upgrade --sql``)."""
    from example_app import create_app

    app = create_app({"SQLALCHEMY_DATABASE_URI": "postgresql+psycopg://offline@127.0.0.1/none"})
    revisions = [revision for revision, _ in shipped_revisions()]
    first_index_only = next(
        revision
        for revision, path in shipped_revisions()
        if "create_index" in path.read_text() and "create_table" not in path.read_text()
    )
    previous = revisions[revisions.index(first_index_only) - 1]
    sql = run(app, "db", "upgrade", "--sql", f"{previous}:head")
    text = "\n".join(line for line in sql.splitlines() if not line.startswith(("INFO ", "--")))
    statements = [" ".join(statement.split()) for statement in text.split(";")]
    changes = [
        statement
        for statement in statements
        if statement not in ("", "BEGIN", "COMMIT") and "alembic_version" not in statement
    ]
    assert changes, "no revision after the tables' changes anything"
    assert [s for s in changes if not s.startswith("CREATE INDEX CONCURRENTLY ")] == []
