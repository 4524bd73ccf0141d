"""The metrics count exactly: dropped usage rows, refused credentials' latency, key-cache
lookups from many threads, and the figures a process moves in by itself."""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from flask import Flask
from flask.testing import FlaskClient
from prometheus_client.parser import text_string_to_metric_families

from flask_apikeys import APIKeys
from flask_apikeys.cache import VerifiedKeyCache
from flask_apikeys.metrics import APIKeysMetrics
from flask_apikeys.models import APIKey

from .factory import tampered

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(client: FlaskClient, reader: str) -> Samples:
    response = client.get("/apikeys/metrics", headers={"X-API-Key": reader})
    assert response.status_code == 200, response.text
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(response.get_data(as_text=True))
        for sample in family.samples
    }


def keys_of(app: Flask, count: int, **options: Any) -> tuple[list[str], str]:
    """``count`` keys of one organization, and a key that may read the metrics."""
    apikeys: APIKeys = app.extensions["apikeys"].extension
    with app.app_context():
        organization = apikeys.create_organization(
            name="Count", email="c@count.test", plan="enterprise"
        )
        keys = [
            apikeys.create_key(organization, f"k{n}", scopes=["*"], **options).key
            for n in range(count)
        ]
        reader = apikeys.create_key(organization, "prometheus", scopes=["apikeys:metrics"]).key
    return keys, reader


# -- rows dropped -------------------------------------------------------------------------------


@pytest.mark.postgres
def test_rows_of_a_key_deleted_behind_our_back_are_counted_as_dropped(
    make_app: Any, postgresql_url: str
) -> None:
    """PostgreSQL refuses the rows of a key deleted since the request (a foreign key): the
    writer drops exactly those, and the metric says how many."""
    app = make_app(postgresql_url, APIKEYS_USAGE_FLUSH_INTERVAL=3600)
    APIKeysMetrics(app)
    (doomed, kept), reader = keys_of(app, 2)
    client = app.test_client()
    for key in (doomed, kept, doomed, doomed, kept):
        assert client.get("/v1/whoami", headers={"X-API-Key": key}).status_code == 200
    apikeys: APIKeys = app.extensions["apikeys"].extension
    with app.app_context():
        session = app.extensions["sqlalchemy"].session
        session.execute(sa.delete(APIKey).where(APIKey.id == apikeys.verify_key(doomed).id))
        session.commit()
        assert apikeys.flush_usage() == 2
    samples = scrape(client, reader)
    assert samples[("apikeys_usage_rows_dropped_total", ())] == 3
    assert samples[("apikeys_usage_rows_written_total", ())] == 2


# -- verification latency -----------------------------------------------------------------------


def test_refused_credentials_are_timed_apart_from_accepted_ones(
    app: Flask, apikeys: APIKeys, client: FlaskClient
) -> None:
    APIKeysMetrics(app)
    (key, doomed), reader = keys_of(app, 2)
    with app.app_context():
        apikeys.revoke_key(apikeys.verify_key(doomed).id, reason="test")
    for presented in (key, key, key):
        assert client.get("/v1/whoami", headers={"X-API-Key": presented}).status_code == 200
    for presented in (tampered(key), doomed, "not-a-key-at-all", key + "x"):
        assert client.get("/v1/whoami", headers={"X-API-Key": presented}).status_code == 401
    assert client.get("/v1/whoami").status_code == 401  # nothing presented: nothing timed
    samples = scrape(client, reader)
    count = "apikeys_verification_seconds_count"
    assert samples[(count, (("outcome", "accepted"),))] == 3
    assert samples[(count, (("outcome", "refused"),))] == 4
    refused_codes = {
        labels: value
        for (name, labels), value in samples.items()
        if name == "apikeys_credential_refusals_total"
    }
    assert sum(refused_codes.values()) == 4
    infinite = (("le", "+Inf"), ("outcome", "refused"))
    assert samples[("apikeys_verification_seconds_bucket", infinite)] == 4
    assert samples[("apikeys_verification_seconds_sum", (("outcome", "refused"),))] > 0


# -- key-cache lookups from many threads --------------------------------------------------------


@pytest.fixture
def frequent_thread_switches() -> Iterator[None]:
    """Make the interpreter switch threads as often as it can, so that a count that is not
    safe under threads loses increments within a test's run."""
    before = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    yield
    sys.setswitchinterval(before)


def test_key_cache_lookups_from_many_threads_are_all_counted(
    frequent_thread_switches: None,
) -> None:
    cache = VerifiedKeyCache(ttl_seconds=3600)
    cache._entries[b"present"] = (time.monotonic(), object(), 1)  # type: ignore[assignment]
    threads, lookups = 8, 20_000
    start = threading.Barrier(threads)

    def look_up() -> None:
        start.wait()
        for number in range(lookups):
            cache.get(b"present" if number % 2 else b"absent")

    workers = [threading.Thread(target=look_up) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert (cache.hits.value, cache.misses.value) == (threads * lookups // 2,) * 2
    assert cache.hits.value == threads * lookups // 2  # reading does not count as a lookup


def test_key_cache_counters_add_up_to_the_requests_of_many_threads(
    app: Flask, frequent_thread_switches: None
) -> None:
    APIKeysMetrics(app)
    keys, reader = keys_of(app, 4)
    requests_per_thread = 40
    start = threading.Barrier(len(keys))
    statuses: list[int] = []

    def call(key: str) -> None:
        client = app.test_client()
        start.wait()
        for _ in range(requests_per_thread):
            statuses.append(client.get("/v1/whoami", headers={"X-API-Key": key}).status_code)

    workers = [threading.Thread(target=call, args=(key,)) for key in keys]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert statuses == [200] * len(keys) * requests_per_thread
    samples = scrape(app.test_client(), reader)
    lookups = samples[("apikeys_key_cache_hits_total", ())]
    lookups += samples[("apikeys_key_cache_misses_total", ())]
    assert lookups == len(keys) * requests_per_thread + 1  # and the scrape's own


# -- the figures a process keeps itself ---------------------------------------------------------


def test_cache_and_queue_figures_reach_the_registry_without_a_scrape(app: Flask) -> None:
    """A scrape of another worker reads the shared files: each process moves its own figures
    in every ``sync_interval`` seconds, not only when it is scraped itself."""
    APIKeysMetrics(app, sync_interval=0.05)
    (key,), _ = keys_of(app, 1)
    client = app.test_client()
    for _ in range(3):
        assert client.get("/v1/whoami", headers={"X-API-Key": key}).status_code == 200
    registry = app.extensions["apikeys_metrics"].registry
    deadline = time.monotonic() + 5
    while registry.get_sample_value("apikeys_usage_queue_rows") != 3:
        assert time.monotonic() < deadline, "the sync thread never ran"
        time.sleep(0.02)
    hits = registry.get_sample_value("apikeys_key_cache_hits_total")
    misses = registry.get_sample_value("apikeys_key_cache_misses_total")
    assert hits + misses == 3


@pytest.mark.parametrize("interval", [0, -1, float("nan")])
def test_a_sync_interval_that_is_not_a_positive_number_is_refused(
    app: Flask, interval: float
) -> None:
    with pytest.raises(RuntimeError, match="sync_interval"):
        APIKeysMetrics(app, sync_interval=interval)


def test_a_month_that_ended_leaves_the_quota_series(app: Flask) -> None:
    """One series per organization and month would grow forever: the month just ended goes."""
    APIKeysMetrics(app)
    recorder = app.extensions["apikeys_metrics"]
    organization = "9c1f7a52-3a4c-4c55-9b8e-0e1f2a3b4c5d"
    recorder._quota_seen[(organization, "2026-11")] = (40, 100)
    recorder.sync()
    assert (
        recorder.registry.get_sample_value(
            "apikeys_quota_used_requests", {"organization": organization, "month": "2026-11"}
        )
        == 40
    )
    recorder._quota_seen[(organization, "2026-12")] = (2, 100)
    recorder.sync()
    months = {
        sample.labels["month"]: sample.value
        for family in recorder.registry.collect()
        for sample in family.samples
        if family.name == "apikeys_quota_used_requests"
    }
    assert months == {"2026-12": 2}
    recorder._quota_seen[(organization, "2026-11")] = (41, 100)  # a request that ended late
    recorder.sync()
    assert (
        recorder.registry.get_sample_value(
            "apikeys_quota_used_requests", {"organization": organization, "month": "2026-11"}
        )
        is None
    )


def test_metrics_are_not_served_when_the_extension_is_off(make_app: Any) -> None:
    """``APIKEYS_ENABLED = False`` lets every scoped view through: the metrics, which name
    every organization, must not be one of them."""
    app = make_app(APIKEYS_ENABLED=False)
    APIKeysMetrics(app)
    assert app.test_client().get("/apikeys/metrics").status_code == 404
