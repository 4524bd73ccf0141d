"""Faults and attacks: a database that goes away, and what a wrong key's timing reveals."""

from __future__ import annotations

import random
import statistics
import time
import uuid
from collections.abc import Callable
from typing import Any

import pytest
import sqlalchemy as sa
from flask import Flask

from flask_apikeys import keys
from flask_apikeys.errors import InvalidAPIKey

from .factory import create_app
from .helpers import assert_problem
from .servers import PostgreSQLServer


@pytest.mark.slow  # stops and restarts PostgreSQL, waits out the cache: seconds
@pytest.mark.postgres
def test_database_gone_means_503_never_a_pass_and_recovery_needs_no_restart(
    postgresql_server: PostgreSQLServer,
) -> None:
    name = f"fault_{uuid.uuid4().hex[:8]}"
    url = postgresql_server.create_database(name)
    # A TTL long enough that dropping the database on a loaded machine stays within it.
    app, db, apikeys = create_app(url, APIKEYS_CACHE_TTL=1.0)
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
    time.sleep(1.05)
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
    # Stop the writer, or it retries rows of the lost keys every second for the whole session.
    apikeys.close(app)
    with app.app_context():
        db.engine.dispose()
    postgresql_server.drop_database(name)


@pytest.fixture
def app_config() -> dict[str, Any]:
    """Thousands of wrong keys from one address: the failed-attempt limit would answer them,
    and the audit writer's bursts would land on one side of the timing comparison."""
    return {"APIKEYS_FAILED_AUTH_LIMIT": None, "APIKEYS_AUDIT": False}


def interleaved_medians(
    calls: dict[str, Callable[[], Any]], rounds: int = 1000
) -> dict[str, float]:
    """Median seconds of one call of each candidate, the candidates taking turns call by call.

    Taking turns (in a shuffled order each round) spreads drift, a background thread or
    another process on the machine over every candidate alike, rather than over whichever
    happened to run while the machine was busy.
    """
    samples: dict[str, list[float]] = {name: [] for name in calls}
    order = list(calls)
    shuffler = random.Random(0)
    for _ in range(rounds):
        shuffler.shuffle(order)
        for name in order:
            call = calls[name]
            started = time.perf_counter()
            call()
            samples[name].append(time.perf_counter() - started)
    return {name: statistics.median(values) for name, values in samples.items()}


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

    medians = interleaved_medians(
        {"near": attempt(nearly_right), "far": attempt(unknown)}, rounds=500
    )
    near, far = medians["near"], medians["far"]
    print(f"\nnear {near * 1e6:.0f} µs, far {far * 1e6:.0f} µs")
    assert abs(near - far) / max(near, far) < 0.15, (near, far)


@pytest.mark.slow
def test_service_verification_of_a_nearly_right_key_costs_what_an_unknown_key_costs(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Through the service layer's verify path, cache off: a near miss looks like a miss.

    Two well-formed keys (valid checksum) that are not stored: one unknown, sharing nothing
    with the real key, and one with the real key's prefix and all but the last character of
    its secret. Both must be refused with the same error, run the same SQL statements and
    compare no stored hash, and their median verification times (taking turns call by call)
    must agree within a factor of 1.5.

    What it proves: a near miss costs what a miss costs, and nothing in the verify path
    depends on how much of a guess was right: each is one HMAC of the whole key and one
    indexed query for a digest the client cannot steer. It would catch a design that finds
    rows by part of the key and then does more work (a second query, a slow hash, a
    comparison) for a near miss; the statement and comparison count catch it even when that
    work is too cheap to time.

    What it does not prove: constant time to the microsecond (differences of a few percent
    are lost in the noise of a shared machine), timing seen over a network, or the timing of
    valid keys (cached, hence faster; telling them apart needs the key itself).
    """
    app, db, apikeys = create_app(
        f"sqlite:///{tmp_path / 'timing.sqlite'}", APIKEYS_CACHE_TTL=0, APIKEYS_AUDIT=False
    )
    with app.app_context():
        apikeys.create_all()
        org = apikeys.create_organization(name="Acme", email="a@acme.io")
        real = apikeys.create_key(org, "real").key
        assert apikeys.verify_key(real).name == "real"
        body = real[: -keys.CHECKSUM_LENGTH - 1]
        body += "A" if real[-keys.CHECKSUM_LENGTH - 1] != "A" else "B"
        candidates = {
            "unknown": keys.generate_key("pk", "live"),
            "nearly right": body + keys.compute_checksum(body),
        }

        statements: list[str] = []
        comparisons: list[str] = []
        hasher = app.extensions["apikeys"].hasher
        compare = hasher.match_index

        def counted_compare(candidates: list[str], stored_hash: str) -> int | None:
            comparisons.append(stored_hash)
            return compare(candidates, stored_hash)

        def record_statement(_connection: Any, _cursor: Any, statement: str, *_: Any) -> None:
            statements.append(statement)

        monkeypatch.setattr(hasher, "match_index", counted_compare)
        sa.event.listen(db.engine, "before_cursor_execute", record_statement)
        work = []
        for candidate in candidates.values():
            assert keys.parse_key(candidate, "pk") is not None  # past the format check
            statements.clear()
            comparisons.clear()
            with pytest.raises(InvalidAPIKey) as raised:
                apikeys.verify_key(candidate)
            work.append((raised.value.description, statements[:], comparisons[:]))
        assert work[0] == work[1]
        assert len(work[0][1]) == 1 and work[0][2] == []  # one query, no stored hash compared

        def verify(candidate: str) -> Callable[[], None]:
            def attempt() -> None:
                try:
                    apikeys.verify_key(candidate)
                except InvalidAPIKey:
                    return
                raise AssertionError("a key that is not stored was accepted")

            return attempt

        medians = interleaved_medians({name: verify(key) for name, key in candidates.items()})
    with app.app_context():
        db.engine.dispose()
    ratio = medians["nearly right"] / medians["unknown"]
    print(
        f"\nmedian verification: unknown {medians['unknown'] * 1e6:.0f} µs, "
        f"nearly right {medians['nearly right'] * 1e6:.0f} µs, ratio {ratio:.3f}"
    )
    assert 1 / 1.5 < ratio < 1.5, medians
