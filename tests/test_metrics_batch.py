"""Requests are counted in batches (flask_apikeys.metrics_batch): none lost between threads, all
in the metrics after a sync, a sync interval or the process's exit, and the batched latency
histogram equal to observing each value."""

from __future__ import annotations

import collections
import os
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from hypothesis import example, given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.multiprocess import MultiProcessCollector

from flask_apikeys import metrics
from flask_apikeys.metrics import LATENCY_BUCKETS, APIKeysMetrics
from flask_apikeys.metrics_batch import (
    LatencyTally,
    RequestBatch,
    batched_observations_supported,
    status_class,
)

from .test_metrics_counts import keys_of, scrape

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def frequent_thread_switches() -> Iterator[None]:
    """Switch threads as often as the interpreter can: a count that is not safe under threads
    loses increments within a test's run."""
    before = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    yield
    sys.setswitchinterval(before)


def requests_counted(registry: CollectorRegistry) -> float:
    """``apikeys_requests_total`` over all its series, as prometheus_client holds it now."""
    return sum(
        sample.value
        for family in registry.collect()
        for sample in family.samples
        if sample.name == "apikeys_requests_total"
    )


def metrics_after_three_requests(app: Flask) -> tuple[Any, FlaskClient, str]:
    """The metrics' recorder of ``app`` (syncing only when asked), a client and a key, after
    three requests of that key."""
    APIKeysMetrics(app, sync_interval=3600)
    (key,), _ = keys_of(app, 1)
    client = app.test_client()
    for _ in range(3):
        assert client.get("/v1/whoami", headers={"X-API-Key": key}).status_code == 200
    return app.extensions["apikeys_metrics"], client, key


def verifications(registry: CollectorRegistry, outcome: str) -> float | None:
    return registry.get_sample_value("apikeys_verification_seconds_count", {"outcome": outcome})


def test_requests_of_many_threads_are_all_counted_while_syncs_run_between_them(
    make_app: Any, frequent_thread_switches: None
) -> None:
    """Eight threads finish requests while the sync thread folds the batch every millisecond:
    every request is counted once."""
    app = make_app(APIKEYS_FAILED_AUTH_LIMIT="1000000/minute")  # refusals of one address
    APIKeysMetrics(app, sync_interval=0.001)
    keys, reader = keys_of(app, 4)
    per_thread, threads = 30, 8
    start = threading.Barrier(threads)
    statuses: list[int] = []

    def call(key: str, refused: bool) -> None:
        client = app.test_client()
        presented = key + "x" if refused else key
        start.wait()
        for _ in range(per_thread):
            response = client.get("/v1/whoami", headers={"X-API-Key": presented})
            statuses.append(response.status_code)

    workers = [
        threading.Thread(target=call, args=(keys[number % len(keys)], number % 4 == 3))
        for number in range(threads)
    ]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    refused = per_thread * (threads // 4)
    assert sorted(statuses) == [200] * (per_thread * threads - refused) + [401] * refused
    samples = scrape(app.test_client(), reader)
    served = sum(value for (name, _), value in samples.items() if name == "apikeys_requests_total")
    assert served == per_thread * threads - refused
    count = "apikeys_verification_seconds_count"
    assert samples[(count, (("outcome", "accepted"),))] == served
    assert samples[(count, (("outcome", "refused"),))] == refused


def test_receivers_hammered_from_threads_lose_nothing_to_a_concurrent_fold(
    make_app: Any, frequent_thread_switches: None
) -> None:
    """Many more finished requests than real ones can give, appended by eight threads while a
    ninth folds them as fast as it can: the totals are exact (Flask's ``request_finished``
    counts them when usage tracking is off)."""
    app = make_app(APIKEYS_USAGE_TRACKING=False)
    APIKeysMetrics(app, sync_interval=3600)
    (key,), _ = keys_of(app, 1)
    recorder = app.extensions["apikeys_metrics"]
    client = app.test_client()
    with client:  # keep the request context: a real request's environ and rule
        assert client.get("/v1/whoami", headers={"X-API-Key": key}).status_code == 200
        recorder.sync()
        assert requests_counted(recorder.registry) == 1
        from flask import request

        environ, rule = request.environ, request.url_rule
    response = app.response_class("{}")
    threads, per_thread = 8, 5_000
    start = threading.Barrier(threads + 1)
    done = threading.Event()

    def finish_requests() -> None:
        with app.request_context(dict(environ)) as context:
            context.request.url_rule = rule
            start.wait()
            for _ in range(per_thread):
                recorder.on_request_finished(app, response=response)

    def fold_all_the_time() -> None:
        start.wait()
        while not done.is_set():
            recorder.sync()

    workers = [threading.Thread(target=finish_requests) for _ in range(threads)]
    folder = threading.Thread(target=fold_all_the_time)
    for thread in [*workers, folder]:
        thread.start()
    for worker in workers:
        worker.join()
    done.set()
    folder.join()
    recorder.sync()
    assert requests_counted(recorder.registry) == 1 + threads * per_thread
    assert verifications(recorder.registry, "accepted") == 1 + threads * per_thread


def test_a_request_reaches_the_registry_at_the_next_sync_and_a_scrape_syncs_first(
    app: Flask,
) -> None:
    APIKeysMetrics(app, sync_interval=3600)
    (key,), reader = keys_of(app, 1)
    registry = app.extensions["apikeys_metrics"].registry
    client = app.test_client()
    for _ in range(3):
        assert client.get("/v1/whoami", headers={"X-API-Key": key}).status_code == 200
    assert client.get("/v1/whoami", headers={"X-API-Key": key + "x"}).status_code == 401
    # batched: the request path takes no prometheus_client lock
    assert requests_counted(registry) == 0
    assert verifications(registry, "accepted") == 0
    samples = scrape(client, reader)
    assert sum(v for (name, _), v in samples.items() if name == "apikeys_requests_total") == 3
    assert samples[("apikeys_verification_seconds_count", (("outcome", "refused"),))] == 1


def test_requests_reach_the_registry_within_a_sync_interval_without_a_scrape(app: Flask) -> None:
    """What another worker's scrape reads under gunicorn: the figures the thread moved in."""
    APIKeysMetrics(app, sync_interval=0.05)
    (key,), _ = keys_of(app, 1)
    registry = app.extensions["apikeys_metrics"].registry
    client = app.test_client()
    for _ in range(5):
        assert client.get("/v1/whoami", headers={"X-API-Key": key}).status_code == 200
    deadline = time.monotonic() + 5
    while requests_counted(registry) < 5:
        assert time.monotonic() < deadline, "the sync thread never folded the requests"
        time.sleep(0.01)
    time.sleep(0.1)  # two more intervals: nothing is counted twice
    assert requests_counted(registry) == 5
    assert verifications(registry, "accepted") == 5


def test_a_request_that_finds_the_batch_full_folds_it_itself(
    make_app: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The sync thread is late: the batch stays bounded (usage tracking off)."""
    monkeypatch.setattr(metrics, "MAX_PENDING", 4)
    app = make_app(APIKEYS_USAGE_TRACKING=False)
    recorder, client, key = metrics_after_three_requests(app)
    assert (requests_counted(recorder.registry), len(recorder.batch.finished)) == (0, 3)
    assert client.get("/v1/whoami", headers={"X-API-Key": key}).status_code == 200
    assert (requests_counted(recorder.registry), len(recorder.batch.finished)) == (4, 0)


EXITING_WORKER = """
import sys
sys.path.insert(0, {root!r})
from prometheus_client import CollectorRegistry
from prometheus_client.multiprocess import MultiProcessCollector
from flask_apikeys.metrics import APIKeysMetrics
from tests.factory import create_app

app, db, apikeys = create_app({database_url!r})
APIKeysMetrics(app, sync_interval=3600)
with app.app_context():
    apikeys.create_all()
    organization = apikeys.create_organization(name="Exit", email="e@exit.test", plan="pro")
    key = apikeys.create_key(organization, "k").key
client = app.test_client()
for _ in range({requests}):
    assert client.get("/v1/whoami", headers={{"X-API-Key": key}}).status_code == 200
assert client.get("/v1/whoami", headers={{"X-API-Key": key + "x"}}).status_code == 401
registry = CollectorRegistry()
MultiProcessCollector(registry)
print(registry.get_sample_value(
    "apikeys_verification_seconds_count", {{"outcome": "accepted"}}
))
"""


@pytest.mark.slow  # a child interpreter that imports Flask and the metrics: seconds
def test_requests_not_yet_synced_are_written_at_exit(tmp_path: Path) -> None:
    """A gunicorn worker that exits between two syncs: its last requests reach the shared
    files all the same (multiprocess mode, the exit hook)."""
    shared = tmp_path / "prometheus"
    shared.mkdir()
    requests = 6
    script = EXITING_WORKER.format(
        root=str(ROOT),
        database_url=f"sqlite:///{tmp_path / 'keys.sqlite'}",
        requests=requests,
    )
    environment = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(shared)}
    completed = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script)],
        env=environment,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.strip() in ("None", "0.0")  # before its exit: not synced yet
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(shared))  # type: ignore[no-untyped-call]
    assert requests_counted(registry) == requests
    assert verifications(registry, "accepted") == requests
    assert verifications(registry, "refused") == 1


def test_a_batch_of_rows_that_finds_the_batch_full_folds_it_itself(
    app: Flask, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same with usage tracking on: the batches the writer hands over stay bounded."""
    monkeypatch.setattr(metrics, "MAX_PENDING", 4)
    APIKeysMetrics(app, sync_interval=3600)
    (key,), _ = keys_of(app, 1)
    recorder = app.extensions["apikeys_metrics"]
    writer = app.extensions["apikeys"].writer
    client = app.test_client()
    for _ in range(3):
        assert client.get("/v1/whoami", headers={"X-API-Key": key}).status_code == 200
        writer.hand_over()
    assert (requests_counted(recorder.registry), len(recorder.batch.taken)) == (0, 3)
    assert client.get("/v1/whoami", headers={"X-API-Key": key}).status_code == 200
    writer.hand_over()
    assert (requests_counted(recorder.registry), len(recorder.batch.taken)) == (4, 0)


@pytest.mark.parametrize("usage_tracking", [True, False])
def test_a_forked_worker_does_not_count_its_parents_requests(
    make_app: Any, usage_tracking: bool
) -> None:
    """gunicorn --preload forks after the app loaded: a finished request is counted once."""
    app = make_app(APIKEYS_USAGE_TRACKING=usage_tracking)
    recorder, client, key = metrics_after_three_requests(app)
    writer = app.extensions["apikeys"].writer
    if usage_tracking:
        assert writer.hand_over() == 3
    assert len(recorder.batch.finished) + sum(map(len, recorder.batch.taken)) == 3
    child = os.fork()
    if child == 0:  # pragma: no cover - runs in the child process
        pending = len(recorder.batch.finished) + len(recorder.batch.taken) + writer.queued
        os._exit(0 if pending == 0 else 1)
    _, status = os.waitpid(child, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    recorder.sync()
    assert requests_counted(recorder.registry) == 3


# -- the batched histogram ----------------------------------------------------------------------

latencies = st.lists(
    st.one_of(
        st.sampled_from(LATENCY_BUCKETS),  # on a bound: observe counts it in that bucket
        st.floats(min_value=0, max_value=2, allow_nan=False),
    ),
    max_size=60,
)


def histogram_samples(histogram: Histogram) -> dict[tuple[str, str], float]:
    return {
        (sample.name, sample.labels.get("le", "")): sample.value
        for family in histogram.collect()
        for sample in family.samples
        if not sample.name.endswith("_created")
    }


@settings(max_examples=60, deadline=None)
@given(values=latencies)
def test_batched_observations_equal_observing_each_value(values: list[float]) -> None:
    """Pins the prometheus_client internals the batch uses (a histogram child's ``_sum`` and
    ``_buckets``): the installed version must count a batch as it counts each value."""
    observed = Histogram("observed", "one by one", ["outcome"], buckets=LATENCY_BUCKETS,
                         registry=CollectorRegistry())  # fmt: skip
    batched = Histogram("observed", "in a batch", ["outcome"], buckets=LATENCY_BUCKETS,
                        registry=CollectorRegistry())  # fmt: skip
    tally = LatencyTally(batched.labels("accepted"), list(LATENCY_BUCKETS))
    assert tally.batched
    one_by_one = observed.labels("accepted")
    for value in values:
        one_by_one.observe(value)
    half = len(values) // 2
    tally.add(values[:half])
    tally.add(values[half:])
    tally.move_into_child()
    expected, got = histogram_samples(observed), histogram_samples(batched)
    assert got.keys() == expected.keys()
    for name, value in expected.items():
        assert got[name] == pytest.approx(value), name
    tally.move_into_child()  # a second fold adds nothing
    assert histogram_samples(batched) == got


def test_a_histogram_with_other_buckets_is_observed_value_by_value() -> None:
    """Buckets the batch does not expect (or a prometheus_client without the internals it
    uses): each value goes through ``observe``, counted the same."""
    other = Histogram("other", "other buckets", buckets=(0.5, 1.0), registry=CollectorRegistry())
    assert not batched_observations_supported(other, list(LATENCY_BUCKETS))
    tally = LatencyTally(other, list(LATENCY_BUCKETS))
    tally.add([0.1, 0.7, 3.0])
    samples = histogram_samples(other)
    assert samples[("other_count", "")] == 3
    assert samples[("other_bucket", "0.5")] == 1
    assert samples[("other_bucket", "1.0")] == 2
    assert samples[("other_sum", "")] == pytest.approx(3.8)


def test_receivers_are_plain_functions_connected_to_flask_like_any_user(make_app: Any) -> None:
    """With usage tracking off, the metrics subscribe to Flask's ``request_finished`` for this
    app, like any receiver (and no private list of listeners)."""
    from flask import request_finished

    app = make_app(APIKEYS_USAGE_TRACKING=False)
    APIKeysMetrics(app)
    recorder = app.extensions["apikeys_metrics"]
    assert recorder.on_request_finished in list(request_finished.receivers_for(app))
    assert recorder.on_request_finished not in list(request_finished.receivers_for(object()))


ORGANIZATIONS = [uuid.UUID(int=number) for number in (1, 2)]
KEYS = [uuid.UUID(int=number) for number in (11, 12, 13)]


@st.composite
def usage_row_batches(draw: st.DrawFn) -> list[list[tuple[Any, ...]]]:
    """Batches of usage rows as the writer hands them over: runs of a few series, interleaved,
    some rows with their stored columns only (queued by other code), quota figures that grow
    in row order within an organization's month, as the shared counter does, and a month that
    may end in the middle of a run."""
    used: dict[tuple[Any, str], int] = {}
    months: set[str] = set()  # the months rows were taken in so far: the clock runs forward
    batches = []
    for _ in range(draw(st.integers(1, 4))):
        batch = []
        for _ in range(draw(st.integers(1, 25))):
            key = draw(st.sampled_from(KEYS))
            organization = ORGANIZATIONS[KEYS.index(key) % 2]
            stored = (
                key, organization, 0.0, draw(st.sampled_from(["/a", "/b/<id>"])), "GET",
                draw(st.sampled_from([200, 204, 404, 429, 500])), 1.0, None,
                draw(st.one_of(st.none(), st.sampled_from([0.0, 0.25, -1.0, 3.5]))),
                None, None, None, None,
            )  # fmt: skip
            if draw(st.booleans()) and draw(st.booleans()):
                batch.append(stored)  # a row without what only the metrics read
                continue
            quota = None
            if draw(st.booleans()):
                month = "2026-12" if draw(st.booleans()) or "2026-12" in months else "2026-11"
                months.add(month)
                taken = used[organization, month] = used.get((organization, month), 0) + 1
                quota = (taken, 1000, month)
            seconds = draw(st.one_of(st.none(), st.floats(0, 2, allow_nan=False)))
            batch.append((*stored, seconds, quota))
        batches.append(batch)
    return batches


def month_crossing_run() -> list[list[tuple[Any, ...]]]:
    """One key's run of rows whose quota figures cross from one month into the next."""
    stored = (KEYS[0], ORGANIZATIONS[0], 0.0, "/a", "GET", 200, 1.0, None, None, None, None,
              None, None)  # fmt: skip
    return [[(*stored, 0.1, (7, 1000, "2026-11")), (*stored, 0.1, (1, 1000, "2026-12"))]]


@settings(max_examples=25, deadline=None)
@example(batches=month_crossing_run(), key_id_label=False)
@given(batches=usage_row_batches(), key_id_label=st.booleans())
def test_folding_usage_rows_counts_what_each_row_says(
    batches: list[list[tuple[Any, ...]]], key_id_label: bool
) -> None:
    """The fold of handed-over rows (walked in runs of one series, in C) gives each series the
    requests and cost of its rows, the histogram every timed row, each organization's month
    its latest quota figure."""
    registry = CollectorRegistry()
    labels = ["organization", "endpoint", "status_class"] + (["key_id"] if key_id_label else [])
    requests = Counter("requests", "requests", labels, registry=registry)
    cost = Counter("cost", "cost", ["organization"], registry=registry)
    histogram = Histogram("seconds", "seconds", ["outcome"], buckets=LATENCY_BUCKETS,
                          registry=registry)  # fmt: skip
    batch = RequestBatch(requests, histogram, cost, LATENCY_BUCKETS, key_id_label=key_id_label)
    for rows in batches:
        batch.taken.append(tuple(rows))
    seen: dict[tuple[str, str], tuple[int, int]] = {}
    batch.fold(
        lambda organization, month, figure: seen.__setitem__((str(organization), month), figure)
    )

    rows = [row for rows in batches for row in rows]
    expected_requests: collections.Counter[tuple[str, ...]] = collections.Counter()
    expected_cost: dict[str, float] = {}
    expected_quota: dict[tuple[str, str], tuple[int, int]] = {}
    timed = []
    for row in rows:
        series = (str(row[1]), row[3], status_class(row[5]))
        expected_requests[series + ((str(row[0]),) if key_id_label else ())] += 1
        if row[8] is not None and row[8] > 0:
            expected_cost[str(row[1])] = expected_cost.get(str(row[1]), 0.0) + row[8]
        if len(row) > 13 and row[13] is not None:
            timed.append(row[13])
        if len(row) > 13 and row[14] is not None:
            used, limit, month = row[14]
            expected_quota[str(row[1]), month] = (used, limit)
    got_requests = {
        tuple(sample.labels[name] for name in labels): sample.value
        for family in registry.collect()
        for sample in family.samples
        if sample.name == "requests_total"
    }
    assert got_requests == expected_requests
    for organization, total in expected_cost.items():
        assert registry.get_sample_value("cost_total", {"organization": organization}) == (
            pytest.approx(total)
        )
    assert registry.get_sample_value("seconds_count", {"outcome": "accepted"}) == len(timed)
    assert registry.get_sample_value("seconds_sum", {"outcome": "accepted"}) == (
        pytest.approx(sum(timed))
    )
    assert seen == expected_quota
