"""Faults and attacks: a database that goes away, and what a wrong key's timing reveals."""

from __future__ import annotations

import statistics
import time
import uuid
from collections.abc import Callable
from typing import Any

import pytest
from flask import Flask

from flask_apikeys import keys

from .factory import create_app
from .servers import PostgreSQLServer
from .test_auth import assert_problem


@pytest.mark.postgres
def test_database_gone_means_503_never_a_pass_and_recovery_needs_no_restart(
    postgresql_server: PostgreSQLServer,
) -> None:
    name = f"fault_{uuid.uuid4().hex[:8]}"
    url = postgresql_server.create_database(name)
    app, db, apikeys = create_app(url, APIKEYS_CACHE_TTL=0.2)
    with app.app_context():
        apikeys.create_all()
        org = apikeys.create_organization(name="Acme", email="a@acme.io")
        cached, uncached = (apikeys.create_key(org, n).key for n in ("cached", "uncached"))
    client = app.test_client()
    assert client.get("/v1/whoami", headers={"X-API-Key": cached}).status_code == 200

    postgresql_server.drop_database(name)  # terminates every connection, then the data is gone
    # A key verified a moment ago keeps working for at most APIKEYS_CACHE_TTL...
    assert client.get("/v1/whoami", headers={"X-API-Key": cached}).status_code == 200
    # ...but a key that must be looked up is refused with 503, not let through, not a 500.
    response = client.get("/v1/whoami", headers={"X-API-Key": uncached})
    body = assert_problem(response, 503, "backend_unavailable")
    assert uncached not in body["detail"]
    time.sleep(0.25)
    assert_problem(
        client.get("/v1/whoami", headers={"X-API-Key": cached}), 503, "backend_unavailable"
    )
    # Malformed keys never needed the database: still 401.
    assert_problem(
        client.get("/v1/whoami", headers={"X-API-Key": "pk_live_x"}), 401, "invalid_api_key"
    )

    # The database comes back (restored from a backup): requests work again, no restart.
    postgresql_server.create_database(name)
    with app.app_context():
        apikeys.create_all()
        org = apikeys.create_organization(name="Acme", email="a@acme.io")
        restored = apikeys.create_key(org, "restored").key
    assert client.get("/v1/whoami", headers={"X-API-Key": restored}).status_code == 200
    with app.app_context():
        db.engine.dispose()
    postgresql_server.drop_database(name)


@pytest.fixture
def app_config() -> dict[str, Any]:
    """Thousands of wrong keys from one address: the failed-attempt limit would answer them,
    and the audit writer's bursts would land on one side of the timing comparison."""
    return {"APIKEYS_FAILED_AUTH_LIMIT": None, "APIKEYS_AUDIT": False}


def interleaved_medians(
    first: Callable[[], Any], second: Callable[[], Any], rounds: int = 61, per_round: int = 25
) -> tuple[float, float]:
    """Median seconds per call of two calls timed in alternating rounds.

    Alternating keeps a burst of load on a shared machine from landing on one side only.
    """
    samples: tuple[list[float], list[float]] = ([], [])
    for _ in range(rounds):
        for call, bucket in ((first, samples[0]), (second, samples[1])):
            started = time.perf_counter()
            for _ in range(per_round):
                call()
            bucket.append((time.perf_counter() - started) / per_round)
    return statistics.median(samples[0]), statistics.median(samples[1])


@pytest.mark.slow
def test_a_nearly_right_key_takes_as_long_as_an_unknown_one(
    app: Flask, make_key: Callable[..., str]
) -> None:
    """Timing must not tell how much of a guess was right.

    Both candidates are well-formed keys (valid checksum) that are not stored: one shares all
    but the last secret characters with a real key, the other nothing. Both cost one hash and
    one indexed lookup of a digest the client cannot steer, so their medians must agree to
    within noise; a byte-by-byte comparison of the key itself would separate them.
    """
    real = make_key()  # unknown keys are never cached: each attempt hashes and queries
    body = real[: -keys.CHECKSUM_LENGTH - 1] + (
        "A" if real[-keys.CHECKSUM_LENGTH - 1] != "A" else "B"
    )
    nearly_right = body + keys.compute_checksum(body)
    unknown = keys.generate_key("pk", "live")
    client = app.test_client()
    for candidate in (nearly_right, unknown):
        assert client.get("/v1/whoami", headers={"X-API-Key": candidate}).status_code == 401

    def attempt(candidate: str) -> Callable[[], Any]:
        return lambda: client.get("/v1/whoami", headers={"X-API-Key": candidate})

    near, far = interleaved_medians(attempt(nearly_right), attempt(unknown))
    assert abs(near - far) / max(near, far) < 0.2, (near, far)
