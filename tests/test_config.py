from __future__ import annotations

import importlib.util
import logging
from typing import Any

import pytest
from flask import Flask
from flask_sqlalchemy import SQLAlchemy
from hypothesis import assume, given
from hypothesis import strategies as st

from flask_apikeys import APIKeys
from flask_apikeys.config import DEFAULT_PLANS, OPTIONS, ConfigError, load_settings
from flask_apikeys.config_parsers import STORAGE_CLIENTS, storage_schemes


def test_defaults_match_the_documented_interface() -> None:
    settings = load_settings({}, {})
    assert settings.enabled and not settings.allow_unauthenticated
    assert settings.key_prefix == "pk"
    assert settings.default_rate_limit == "60/minute"
    assert settings.ratelimit_storage_uri == "memory://"
    assert settings.admin_url_prefix == "/admin"
    assert "/health" in settings.public_paths
    free, pro, enterprise = (settings.plans[n] for n in ("free", "pro", "enterprise"))
    assert (free.requests_per_minute, free.monthly_requests, free.max_keys) == (10, 1_000, 2)
    assert (pro.requests_per_minute, pro.monthly_requests, pro.max_keys) == (60, 100_000, 10)
    assert (enterprise.requests_per_minute, enterprise.monthly_requests, enterprise.max_keys) == (
        300,
        1_000_000,
        50,
    )
    assert settings.hash_schemes == ("hex_sha256",)


def test_app_config_wins_over_environment_which_wins_over_default() -> None:
    environ = {"APIKEYS_KEY_PREFIX": "envpfx", "APIKEYS_DEFAULT_RATE_LIMIT": "5/second"}
    settings = load_settings({"APIKEYS_KEY_PREFIX": "apppfx"}, environ)
    assert settings.key_prefix == "apppfx"
    assert settings.default_rate_limit == "5/second"


def test_environment_values_are_parsed_from_text_and_json() -> None:
    environ = {
        "APIKEYS_ENABLED": "false",
        "APIKEYS_PUBLIC_PATHS": '["/status", "/ping"]',
        "APIKEYS_PLANS": '{"solo": {"requests_per_minute": 5, "monthly_requests": null, '
        '"max_keys": 1}}',
        "APIKEYS_HASH_SECRET": '["new-secret-1234567", "old-secret-1234567"]',
        "APIKEYS_CACHE_TTL": "0.5",
    }
    settings = load_settings({}, environ)
    assert settings.enabled is False
    assert settings.public_paths == ("/status", "/ping")
    assert settings.plans["solo"].monthly_requests is None
    assert settings.hash_secret == ("new-secret-1234567", "old-secret-1234567")
    assert settings.hash_schemes == ("hmac_sha256", "hex_sha256")
    assert settings.cache_ttl == 0.5


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("APIKEYS_ENABLED", "maybe", "true or false"),
        ("APIKEYS_KEY_PREFIX", "Bad Prefix", "lowercase"),
        ("APIKEYS_DEFAULT_RATE_LIMIT", "lots", "rate limit"),
        ("APIKEYS_PLANS", '{"free": {"requests_per_minute": 1}}', "must give exactly"),
        ("APIKEYS_PLANS", "{not json", "JSON"),
        ("APIKEYS_HASH_SECRET", "short", "16 characters"),
        ("APIKEYS_HASH_SCHEMES", '["bcrypt"]', "cannot be looked up"),
        ("APIKEYS_CACHE_TTL", "-1", "0 or more"),
        ("APIKEYS_PUBLIC_PATHS", "42", "start with"),
    ],
)
def test_a_bad_value_stops_init_app_naming_the_key(name: str, value: str, message: str) -> None:
    app = Flask(__name__)
    app.config.update(SQLALCHEMY_DATABASE_URI="sqlite://", **{name: value})
    db = SQLAlchemy(app)
    with pytest.raises(ConfigError, match=name) as raised:
        APIKeys(app, db=db)
    assert message in str(raised.value)


def test_hmac_scheme_without_secret_is_refused() -> None:
    with pytest.raises(ConfigError, match="APIKEYS_HASH_SECRET"):
        load_settings({"APIKEYS_HASH_SCHEMES": ["hmac_sha256"]}, {})


def test_defaults_are_written_to_app_config_as_flask_sqlalchemy_does(
    make_app: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("APIKEYS_KEY_PREFIX", "envpfx")
    monkeypatch.setenv("APIKEYS_ADMIN_KEY", "e" * 40)
    app = make_app(APIKEYS_CACHE_TTL=0.5)
    config = app.config
    assert config["APIKEYS_CACHE_TTL"] == 0.5  # set by the app: left alone
    assert config["APIKEYS_DEFAULT_RATE_LIMIT"] == "60/minute"
    assert config["APIKEYS_USAGE_FLUSH_INTERVAL"] == 1.0
    assert config["APIKEYS_PLANS"] == DEFAULT_PLANS
    assert config["APIKEYS_PLANS"] is not DEFAULT_PLANS  # a copy the app may change
    assert {option.name for option in OPTIONS} - {"APIKEYS_ADMIN_KEY"} <= set(config)
    assert config["APIKEYS_KEY_PREFIX"] == "envpfx"  # what the app runs with
    assert "APIKEYS_ADMIN_KEY" not in config  # a secret stays in the environment only


def test_settings_from_the_environment_are_logged_by_name(
    make_app: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    secret = "s" * 40
    monkeypatch.setenv("APIKEYS_KEY_PREFIX", "envpfx")
    monkeypatch.setenv("APIKEYS_ADMIN_KEY", secret)
    monkeypatch.setenv("APIKEYS_ENABLED", "true")
    with caplog.at_level(logging.INFO, logger="flask_apikeys"):
        make_app(APIKEYS_CACHE_TTL=0.5)
    logged = [record for record in caplog.records if "environment" in record.getMessage()]
    assert len(logged) == 1 and logged[0].levelno == logging.INFO
    message = logged[0].getMessage()
    for name in ("APIKEYS_KEY_PREFIX", "APIKEYS_ADMIN_KEY", "APIKEYS_ENABLED"):
        assert name in message
    assert "APIKEYS_CACHE_TTL" not in message and secret not in caplog.text
    assert not [record for record in caplog.records if record.levelno >= logging.WARNING]


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("APIKEYS_ALLOW_UNAUTHENTICATED", "true"),
        ("APIKEYS_ENABLED", "false"),
        ("APIKEYS_PUBLIC_PATHS", "/health,/v1"),
        ("APIKEYS_RATELIMIT_ENABLED", "0"),
        ("APIKEYS_FAILED_AUTH_LIMIT", ""),
        ("APIKEYS_AUDIT", "off"),
        ("APIKEYS_MASK_KEYS_IN_LOGS", "no"),
        ("APIKEYS_CACHE_TTL", "60"),
        ("APIKEYS_JWT_CHECK_REVOCATION", "false"),
    ],
)
def test_an_environment_variable_that_weakens_security_is_warned_about_by_name(
    make_app: Any,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    name: str,
    value: str,
) -> None:
    monkeypatch.setenv(name, value)
    with caplog.at_level(logging.WARNING, logger="flask_apikeys"):
        make_app()
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert [message for message in warnings if name in message and "SECURITY" in message]


def test_the_same_value_set_in_app_config_is_not_warned_about(
    make_app: Any, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="flask_apikeys"):
        app = make_app(APIKEYS_ALLOW_UNAUTHENTICATED=True)
    assert "SECURITY" not in caplog.text and "environment" not in caplog.text
    assert app.test_client().get("/v1/whoami").json == {"anonymous": True}


@pytest.mark.parametrize("value", ["60", " 60 ", 60])
def test_a_bare_number_rate_limit_means_per_minute(value: Any) -> None:
    assert load_settings({"APIKEYS_DEFAULT_RATE_LIMIT": value}, {}).default_rate_limit == (
        "60/minute"
    )
    from_environment = load_settings({}, {"APIKEYS_FAILED_AUTH_LIMIT": str(value)})
    assert from_environment.failed_auth_limit == "60/minute"


def test_a_bare_number_default_limit_is_enforced_per_minute(
    make_app: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("APIKEYS_DEFAULT_RATE_LIMIT", "3")
    app = make_app(APIKEYS_ALLOW_UNAUTHENTICATED=True)
    client = app.test_client()
    responses = [client.get("/v1/whoami") for _ in range(4)]
    assert [response.status_code for response in responses] == [200, 200, 200, 429]
    assert responses[3].json["window_seconds"] == 60


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("APIKEYS_USAGE_BATCH_SIZE", 2.5, "a whole number, 1 or more"),
        ("APIKEYS_TRUSTED_PROXIES", True, "proxies in front of the app, 0 or more"),
        ("APIKEYS_CACHE_TTL", "nan", "a number of seconds, 0 or more"),
        ("APIKEYS_USAGE_FLUSH_INTERVAL", float("inf"), "a number of seconds, 0 or more"),
        ("APIKEYS_JWT_LIFETIME", 86_401, "from 1 to 86400"),
        ("APIKEYS_INTROSPECTION_PATH", "auth", "or an empty value (not mounted)"),
        ("APIKEYS_ADMIN_URL_PREFIX", "/", "or an empty value (no admin API)"),
    ],
)
def test_a_number_or_path_out_of_bounds_is_refused_saying_what_is_accepted(
    name: str, value: Any, message: str
) -> None:
    with pytest.raises(ConfigError, match=name) as raised:
        load_settings({name: value}, {})
    assert message in str(raised.value)


def test_every_settings_field_is_one_declared_option() -> None:
    settings = load_settings({}, {})
    attributes = [option.attribute for option in OPTIONS]
    assert sorted(attributes) == sorted(settings.__slots__)
    assert len({option.name for option in OPTIONS}) == len(OPTIONS)
    assert all(option.name.startswith("APIKEYS_") and option.doc for option in OPTIONS)


def test_secrets_are_kept_out_of_the_settings_repr() -> None:
    secret = "a-hash-secret-nobody-should-see"
    settings = load_settings({"APIKEYS_HASH_SECRET": secret, "APIKEYS_ADMIN_KEY": "k" * 40}, {})
    assert secret not in repr(settings) and "admin_key_digest" not in repr(settings)
    assert "key_prefix='pk'" in repr(settings)


@pytest.mark.parametrize(
    "uri",
    [
        "reddis://:hunter2@localhost:6379/0",  # a typo in the scheme
        "async+redis://:hunter2@localhost:6379/0",  # limits' asyncio storage: no event loop here
        "localhost:6379",  # no scheme at all
    ],
)
def test_a_storage_uri_limits_cannot_use_stops_init_app_without_echoing_it(uri: str) -> None:
    """Before, the app started and every authenticated request was a 500 (limits refused the
    scheme at the first counter), with the URI and its password in the logged traceback."""
    app = Flask(__name__)
    app.config.update(SQLALCHEMY_DATABASE_URI="sqlite://", APIKEYS_RATELIMIT_STORAGE_URI=uri)
    with pytest.raises(ConfigError, match="APIKEYS_RATELIMIT_STORAGE_URI") as raised:
        APIKeys(app, db=SQLAlchemy(app))
    assert "redis://host:6379/0" in str(raised.value)  # says what it accepts
    assert "hunter2" not in str(raised.value)


#: Storages the installed limits has (valkey's arrived in limits 5) whose client is missing.
MISSING_STORAGE_CLIENTS = [
    (family, module, install)
    for family, (module, install) in STORAGE_CLIENTS.items()
    if importlib.util.find_spec(module) is None and family in storage_schemes()
]


@pytest.mark.parametrize(("family", "module", "install"), MISSING_STORAGE_CLIENTS)
def test_a_storage_whose_client_library_is_missing_stops_init_app_naming_the_install(
    family: str, module: str, install: str
) -> None:
    """Before, a Redis URI without redis-py installed started fine and answered 500 on every
    authenticated request ("'redis' prerequisite not available")."""
    app = Flask(__name__)
    app.config.update(
        SQLALCHEMY_DATABASE_URI="sqlite://",
        APIKEYS_RATELIMIT_STORAGE_URI=f"{family}://localhost:1",
    )
    with pytest.raises(ConfigError, match="APIKEYS_RATELIMIT_STORAGE_URI") as raised:
        APIKeys(app, db=SQLAlchemy(app))
    assert f"needs the {module} package: {install}" in str(raised.value)


def test_at_least_one_storage_client_is_missing_so_the_test_above_runs() -> None:
    assert MISSING_STORAGE_CLIENTS, "every storage client is installed: test another way"


@pytest.mark.parametrize(
    "uri",
    [
        "memory://",
        "database",
        "database://",
        "redis://:secret@localhost:6379/0",
        "rediss://localhost:6380",
        "redis+cluster://localhost:7000",
        "redis+sentinel://localhost:26379/mymaster",
    ],
)
def test_storage_uris_limits_can_use_are_taken_as_given(uri: str) -> None:
    assert load_settings({"APIKEYS_RATELIMIT_STORAGE_URI": uri}, {}).ratelimit_storage_uri == uri


@given(st.text(max_size=60))
def test_any_storage_uri_is_taken_or_refused_by_name_never_echoing_its_password(
    text: str,
) -> None:
    assume("hunter2" not in text)
    uri = f"{text}://:hunter2@localhost:6379/0"
    try:
        settings = load_settings({"APIKEYS_RATELIMIT_STORAGE_URI": uri}, {})
    except ConfigError as error:
        assert str(error).startswith("APIKEYS_RATELIMIT_STORAGE_URI is invalid")
        assert "hunter2" not in str(error)
    else:
        assert settings.ratelimit_storage_uri == uri
