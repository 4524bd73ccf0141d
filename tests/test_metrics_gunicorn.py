"""Metrics under a real 2-worker gunicorn: one scrape adds up what both workers counted."""

from __future__ import annotations

import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from flask_apikeys.metrics import SYNC_INTERVAL

from .factory import create_app
from .servers import gunicorn_workers

REQUESTS = 60
REFUSED = 7
#: Seconds between two flushes of a worker's usage rows in the buffered mode.
FLUSH_INTERVAL = 0.5
#: How usage is written, and so what counts the requests: the usage rows a worker's writer
#: takes at each flush (buffered), or Flask's request_finished (sync).
USAGE_MODES = {
    "buffered": {"APIKEYS_USAGE_FLUSH_INTERVAL": str(FLUSH_INTERVAL)},
    "sync": {"APIKEYS_USAGE_MODE": "sync"},
}


@pytest.fixture(params=list(USAGE_MODES))
def usage_mode(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def gunicorn(
    redis_url: str, tmp_path: Path, usage_mode: str
) -> Iterator[tuple[str, str, str, str]]:
    """gunicorn -w 2 with PROMETHEUS_MULTIPROC_DIR and the quota in Redis: base URL, key,
    metrics key, organization."""
    database_url = f"sqlite:///{tmp_path / 'keys.sqlite'}"
    app, db, apikeys = create_app(database_url)
    with app.app_context():
        apikeys.create_all()
        org = apikeys.create_organization(
            name="Acme", email="a@acme.io", plan="enterprise", monthly_request_limit=10_000
        )
        key = apikeys.create_key(org, "shared").key
        reader = apikeys.create_key(org, "prometheus", scopes=["apikeys:metrics"]).key
        organization_id = str(org.id)
        db.engine.dispose()
    multiprocess_directory = tmp_path / "prometheus"
    multiprocess_directory.mkdir()
    environment = {
        "TEST_DATABASE_URL": database_url,
        "PROMETHEUS_MULTIPROC_DIR": str(multiprocess_directory),
        **USAGE_MODES[usage_mode],
        "APIKEYS_RATELIMIT_STORAGE_URI": redis_url,
        # Every request takes its unit from Redis itself: the quota figure is exact.
        "APIKEYS_RATELIMIT_LEASE_SECONDS": "0",
    }
    with gunicorn_workers(environment, tmp_path / "gunicorn.log") as (_, port):
        yield f"http://127.0.0.1:{port}", key, reader, organization_id


def call(url: str, key: str) -> tuple[int, str, str]:
    request = urllib.request.Request(url, headers={"X-API-Key": key})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, response.headers["X-Worker-Pid"], response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.headers["X-Worker-Pid"], error.read().decode()


@pytest.mark.slow
@pytest.mark.redis
def test_a_scrape_of_one_worker_adds_up_the_requests_both_workers_served(
    gunicorn: tuple[str, str, str, str], usage_mode: str
) -> None:
    base, key, reader, organization = gunicorn
    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda _: call(f"{base}/v1/pid", key), range(REQUESTS)))
        refusals = list(pool.map(lambda _: call(f"{base}/v1/pid", key + "x"), range(REFUSED)))
    assert {status for status, _, _ in answers} == {200}
    assert {status for status, _, _ in refusals} == {401}
    assert len({pid for _, pid, _ in answers}) == 2, "both workers should have served requests"

    # Each worker adds up its requests (and keeps its quota figure and key-cache lookups) and
    # moves them into the shared files every SYNC_INTERVAL seconds: the scraped worker moves
    # its own first, the other's are at most one interval late; buffered, a request reaches
    # the other worker's metrics when its writer takes the row, at most a flush interval
    # later (docs/observability.rst). Only the refusals are there at once.
    time.sleep((FLUSH_INTERVAL if usage_mode == "buffered" else 0) + SYNC_INTERVAL * 1.5)
    status, _, text = call(f"{base}/apikeys/metrics", reader)
    assert status == 200, text
    samples = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }
    served = (("endpoint", "/v1/pid"), ("organization", organization), ("status_class", "2xx"))
    assert samples[("apikeys_requests_total", served)] == REQUESTS
    assert samples[("apikeys_credential_refusals_total", (("code", "invalid_api_key"),))] == REFUSED
    # the scrape's own verification is observed after its response
    accepted, refused = (("outcome", "accepted"),), (("outcome", "refused"),)
    assert samples[("apikeys_verification_seconds_count", accepted)] == REQUESTS
    assert samples[("apikeys_verification_seconds_count", refused)] == REFUSED
    assert samples[("apikeys_usage_rows_written_total", ())] == REQUESTS
    month = time.strftime("%Y-%m", time.gmtime())
    quota = (("month", month), ("organization", organization))
    assert samples[("apikeys_quota_used_requests", quota)] == REQUESTS
    # one verified-key cache lookup per presented credential, the scrape's own included
    hits = samples[("apikeys_key_cache_hits_total", ())]
    misses = samples[("apikeys_key_cache_misses_total", ())]
    assert hits + misses == REQUESTS + REFUSED + 1
