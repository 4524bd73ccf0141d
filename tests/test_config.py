from __future__ import annotations

import pytest
from flask import Flask
from flask_sqlalchemy import SQLAlchemy

from flask_apikeys import APIKeys
from flask_apikeys.config import ConfigError, load_settings


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
