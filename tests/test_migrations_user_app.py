"""Flask-Migrate in a user's own app: both documented paths, with the real ``flask db`` commands.

The app is ``docs/examples/migrate_app.py`` as the docs show it, with a model and a migration
history of its own before it adds flask-apikeys. Each test runs on SQLite and PostgreSQL.
"""

from __future__ import annotations

import importlib.util
import uuid
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import pytest
import sqlalchemy as sa
from flask import Flask

from flask_apikeys.models import metadata

EXAMPLE = Path(__file__).resolve().parent.parent / "docs" / "examples" / "migrate_app.py"
EXTENSION_TABLES = set(metadata.tables)

pytestmark = [
    # ``flask db init`` writes Flask-Migrate's env.py template, which still tries get_engine().
    pytest.mark.filterwarnings("ignore:'get_engine' is deprecated:DeprecationWarning"),
]


@pytest.fixture
def database_url(backend_url: str) -> str:
    return backend_url


def load_example() -> ModuleType:
    """The docs' module afresh: its ``db.metadata`` is global, and the extension adds to it."""
    spec = importlib.util.spec_from_file_location(f"migrate_app_{uuid.uuid4().hex}", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def flask(make_app: Callable[[], Flask], *args: str) -> str:
    """``flask <args>`` on a freshly made app, as each real ``flask`` command starts afresh.

    (Flask-Migrate's env.py keeps its first command's options in the ``Migrate`` object, so
    reusing one app for ``migrate`` and then ``check`` would not be what a shell does.)
    """
    app = make_app()
    result = app.test_cli_runner().invoke(args=list(args))
    with app.app_context():
        app.extensions["sqlalchemy"].engine.dispose()
    assert result.exit_code == 0, f"flask {' '.join(args)}: {result.output}"
    return result.output


def tables(app: Flask) -> set[str]:
    with app.app_context():
        engine = app.extensions["sqlalchemy"].engine
        names = set(sa.inspect(engine).get_table_names())
        engine.dispose()
        return names


def app_before_the_extension(database_url: str) -> None:
    """The app as it was before: its own model, its own first revision, applied."""

    def make_app() -> Flask:
        example = load_example()
        app = Flask(__name__)
        app.config["SQLALCHEMY_DATABASE_URI"] = database_url
        example.db.init_app(app)
        example.migrate.init_app(app, example.db)
        return app

    flask(make_app, "db", "init")
    flask(make_app, "db", "migrate", "-m", "invoices")
    flask(make_app, "db", "upgrade")
    assert tables(make_app()) == {"invoice", "alembic_version"}


def app_factory(database_url: str) -> Callable[[], Flask]:
    """The docs' ``create_app``, with flask-apikeys, on this test's database."""

    def make_app() -> Flask:
        app: Flask = load_example().create_app(database_url)
        app.config["TESTING"] = True
        return app

    return make_app


def upgrades_downgrades_and_upgrades_again(make_app: Callable[[], Flask]) -> None:
    flask(make_app, "db", "upgrade")
    assert {"invoice", *EXTENSION_TABLES} <= tables(make_app())
    flask(make_app, "db", "check")  # models and database agree
    flask(make_app, "db", "downgrade", "base")
    assert tables(make_app()) == {"alembic_version"}
    flask(make_app, "db", "upgrade")
    assert {"invoice", *EXTENSION_TABLES} <= tables(make_app())
    app = make_app()
    with app.app_context():  # and the extension works on what the migrations made
        apikeys = app.extensions["apikeys"].extension
        organization, created = apikeys.seed()
        assert created is not None and apikeys.verify_key(created.key) is not None
    with app.app_context():  # the request's session is closed now
        app.extensions["sqlalchemy"].engine.dispose()


@pytest.mark.slow
def test_autogenerate_in_the_apps_own_history_upgrades_and_downgrades(
    database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    app_before_the_extension(database_url)
    app = app_factory(database_url)
    flask(app, "db", "migrate", "-m", "add flask-apikeys")
    (revision,) = (tmp_path / "migrations" / "versions").glob("*add_flask_apikeys.py")
    assert "flask_apikeys" not in revision.read_text()  # no type it cannot import
    upgrades_downgrades_and_upgrades_again(app)
    # Running install-migrations afterwards copies nothing the history already does.
    output = flask(app, "apikeys", "install-migrations")
    assert "apikeys_0001 not copied" in output and "Already up to date." in output
    assert not list((tmp_path / "migrations" / "versions").glob("0001_*.py"))
    upgrades_downgrades_and_upgrades_again(app)


@pytest.mark.slow
def test_shipped_revisions_stamp_tables_that_already_exist(
    database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    app_before_the_extension(database_url)
    app = app_factory(database_url)
    made = app()
    with made.app_context():  # tables made outside the migrations, e.g. by create_all()
        made.extensions["apikeys"].extension.create_all()
        made.extensions["sqlalchemy"].engine.dispose()
    output = flask(app, "apikeys", "install-migrations")
    assert "wrote migrations/versions/0001_apikeys_initial.py" in output
    assert "stamped it at apikeys_0001" in output
    upgrades_downgrades_and_upgrades_again(app)


@pytest.mark.slow
def test_shipped_revisions_on_a_database_without_the_tables(
    database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    app_before_the_extension(database_url)
    app = app_factory(database_url)
    output = flask(app, "apikeys", "install-migrations")
    assert "wrote" in output and "stamped" not in output
    upgrades_downgrades_and_upgrades_again(app)


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--directory", "nowhere"], "nowhere is not a Flask-Migrate folder"),
        ([], "is at revision none, not at"),
    ],
)
def test_install_migrations_errors_are_one_line(
    database_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    arguments: list[str],
    message: str,
) -> None:
    monkeypatch.chdir(tmp_path)
    app_before_the_extension(database_url)
    app = app_factory(database_url)()
    with app.app_context():
        app.extensions["apikeys"].extension.create_all()
        with app.extensions["sqlalchemy"].engine.begin() as connection:
            connection.execute(sa.text("DELETE FROM alembic_version"))  # behind its history
        app.extensions["sqlalchemy"].engine.dispose()
    result = app.test_cli_runner().invoke(args=["apikeys", "install-migrations", *arguments])
    with app.app_context():
        app.extensions["sqlalchemy"].engine.dispose()
    assert result.exit_code == 1
    assert message in result.output
    assert "Traceback" not in result.output and len(result.output.strip().splitlines()) == 1
