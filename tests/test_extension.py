"""Wiring: app factories, several apps in one process, misconfiguration."""

from __future__ import annotations

from typing import Any

import pytest
from flask import Flask
from flask_sqlalchemy import SQLAlchemy

from flask_apikeys import APIKeys, current_key

from .factory import create_app


def test_state_lives_in_app_extensions(app: Flask, apikeys: APIKeys) -> None:
    state = app.extensions["apikeys"]
    assert state.extension is apikeys
    assert state.settings.key_prefix == "pk"


def test_two_apps_in_one_process_do_not_share_keys_or_settings(tmp_path: Any) -> None:
    first, _, first_ext = create_app(f"sqlite:///{tmp_path / 'a.sqlite'}")
    second, _, second_ext = create_app(
        f"sqlite:///{tmp_path / 'b.sqlite'}", APIKEYS_KEY_PREFIX="sk"
    )
    keys = {}
    for app, extension in ((first, first_ext), (second, second_ext)):
        with app.app_context():
            extension.create_all()
            org = extension.create_organization(name="Org", email="o@o.io")
            keys[app] = extension.create_key(org, "k").key
    assert keys[first].startswith("pk_") and keys[second].startswith("sk_")
    assert (
        first.test_client().get("/v1/whoami", headers={"X-API-Key": keys[first]}).status_code == 200
    )
    assert (
        second.test_client().get("/v1/whoami", headers={"X-API-Key": keys[second]}).status_code
        == 200
    )
    crossed = first.test_client().get("/v1/whoami", headers={"X-API-Key": keys[second]})
    assert crossed.status_code == 401
    assert first.extensions["apikeys"].cache is not second.extensions["apikeys"].cache


def test_one_extension_object_serves_several_apps(tmp_path: Any) -> None:
    shared = APIKeys()
    apps = []
    for name in ("one", "two"):
        app = Flask(name)
        app.config.update(
            SQLALCHEMY_DATABASE_URI=f"sqlite:///{tmp_path / name}.sqlite", TESTING=True
        )
        db = SQLAlchemy(app)
        shared.init_app(app, db=db)
        apps.append(app)
    for app in apps:
        with app.app_context():
            shared.create_all()
            shared.create_organization(name=app.name, email="x@y.io")
            assert [org.name for org in shared.list_organizations()[0]] == [app.name]


def test_second_init_app_on_the_same_app_raises(app: Flask, apikeys: APIKeys) -> None:
    with pytest.raises(RuntimeError, match="already initialised"):
        apikeys.init_app(app)


def test_init_app_without_flask_sqlalchemy_says_what_to_do() -> None:
    with pytest.raises(RuntimeError, match="Flask-SQLAlchemy"):
        APIKeys(Flask(__name__))


def test_db_registered_on_the_app_is_found_without_passing_it(tmp_path: Any) -> None:
    app = Flask(__name__)
    app.config.update(SQLALCHEMY_DATABASE_URI=f"sqlite:///{tmp_path / 'x.sqlite'}", TESTING=True)
    db = SQLAlchemy(app)
    APIKeys(app)
    assert app.extensions["apikeys"].db is db


def test_python_api_outside_an_initialised_app_explains_itself() -> None:
    app = Flask(__name__)
    with app.app_context(), pytest.raises(RuntimeError, match="init_app"):
        APIKeys().create_organization(name="x", email="x@y.io")


def test_current_key_is_falsy_outside_authenticated_requests(app: Flask) -> None:
    with app.test_request_context("/health"):
        assert not current_key


def test_missing_hash_secret_warns_outside_debug_and_testing(
    tmp_path: Any, caplog: pytest.LogCaptureFixture
) -> None:
    app = Flask(__name__)
    app.config.update(SQLALCHEMY_DATABASE_URI=f"sqlite:///{tmp_path / 'x.sqlite'}")
    APIKeys(app, db=SQLAlchemy(app))
    assert "APIKEYS_HASH_SECRET is not set" in caplog.text
