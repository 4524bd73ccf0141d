"""A key revoked through one gunicorn worker is refused by every worker within a second,
whatever the cache TTL: the change is announced (:mod:`flask_apikeys.cache_generation`)."""

from __future__ import annotations

import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from .factory import create_app
from .servers import gunicorn_workers

#: The promise: every worker refuses a revoked key within this many seconds.
BOUND = 1.0


@pytest.fixture(params=[1.0, 300.0], ids=["ttl-1s", "ttl-300s"])
def gunicorn(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[tuple[str, str]]:
    """gunicorn -w 2 on SQLite, verified keys cached for 1 s or 300 s in each worker."""
    database_url = f"sqlite:///{tmp_path / 'keys.sqlite'}"
    app, db, apikeys = create_app(database_url)
    with app.app_context():
        apikeys.create_all()
        org = apikeys.create_organization(name="Acme", email="a@acme.io", plan="enterprise")
        key = apikeys.create_key(org, "shared").key
        db.engine.dispose()
    environment = {
        "TEST_DATABASE_URL": database_url,
        "APIKEYS_CACHE_TTL": str(request.param),
        # Hundreds of requests with one key in two seconds: rate limits would answer 429.
        "APIKEYS_RATELIMIT_ENABLED": "false",
    }
    with gunicorn_workers(environment, tmp_path / "gunicorn.log") as (_, port):
        yield f"http://127.0.0.1:{port}", key


def call(url: str, key: str, method: str = "GET") -> tuple[int, str]:
    request = urllib.request.Request(url, method=method, headers={"X-API-Key": key})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


@pytest.mark.slow
def test_revocation_through_one_worker_reaches_the_others_within_the_bound(
    gunicorn: tuple[str, str],
) -> None:
    base, key = gunicorn
    # Warm both workers: each has verified (and cached) the key. Requests go in fours, so a
    # worker busy with one leaves the next to the other (once it has booted: wait for that).
    pids: set[str] = set()
    deadline = time.monotonic() + 15
    with ThreadPoolExecutor(4) as pool:
        while len(pids) < 2 and time.monotonic() < deadline:
            for status, body in pool.map(lambda _: call(f"{base}/v1/pid", key), range(4)):
                assert status == 200
                pids.add(body)
    assert len(pids) == 2, "both workers should have served the key"

    status, _ = call(f"{base}/v1/self/revoke", key, method="POST")
    revoked_at = time.monotonic()
    assert status == 200
    last_accepted_after = 0.0
    refusals_after_bound = 0
    while time.monotonic() - revoked_at < BOUND + 1.0:
        status, body = call(f"{base}/v1/pid", key)
        elapsed = time.monotonic() - revoked_at
        if status == 200:
            last_accepted_after = elapsed
        else:
            assert status == 401 and "revoked_api_key" in body
            refusals_after_bound += elapsed > BOUND
    assert last_accepted_after <= BOUND + 0.1, last_accepted_after
    # After the bound, every request (whichever worker took it) was refused.
    assert refusals_after_bound > 10
