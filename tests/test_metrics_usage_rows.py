"""Requests counted from the usage rows: with usage tracking on (buffered), the metrics hear one
``usage_rows_taken`` signal per batch the writer takes instead of Flask's ``request_finished``
per request. Every request is counted once whichever path counts it, also when the database is
down and its rows are dropped; refusals are counted and timed; the signal is public, carries
no key, and is subscribed to like any other."""

from __future__ import annotations

import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask, request_finished
from sqlalchemy.exc import OperationalError

from flask_apikeys import APIKeys, signals
from flask_apikeys.metrics import APIKeysMetrics
from flask_apikeys.usage.insert import USAGE_FIELDS
from flask_apikeys.usage.rows import TAKEN_FIELDS
from flask_apikeys.usage.writer import UsageWriter

from .factory import tampered
from .test_metrics_counts import Samples, scrape

#: How the requests reach the metrics: the usage rows (the default), or request_finished.
MODES = {
    "usage rows": {},
    "usage tracking off": {"APIKEYS_USAGE_TRACKING": False},
    "usage written in the request": {"APIKEYS_USAGE_MODE": "sync"},
}


def keys_and_reader(app: Flask) -> tuple[str, str, str, str]:
    """A key with every scope, one that may only read presentations, a metrics reader, and
    their organization's id."""
    apikeys: APIKeys = app.extensions["apikeys"].extension
    with app.app_context():
        organization = apikeys.create_organization(
            name="Rows", email="r@rows.test", plan="enterprise"
        )
        every = apikeys.create_key(organization, "every", scopes=["*"]).key
        reader_only = apikeys.create_key(organization, "ro", scopes=["presentations:read"]).key
        metrics_reader = apikeys.create_key(organization, "prom", scopes=["apikeys:metrics"]).key
        organization_id = str(organization.id)
    return every, reader_only, metrics_reader, organization_id


def requests_by_series(samples: Samples) -> dict[tuple[str, str], float]:
    """``apikeys_requests_total`` as (endpoint, status class) → count."""
    found: dict[tuple[str, str], float] = {}
    for (name, labels), value in samples.items():
        if name == "apikeys_requests_total":
            label = dict(labels)
            found[label["endpoint"], label["status_class"]] = value
    return found


@pytest.mark.parametrize("mode", list(MODES))
def test_every_request_is_counted_once_by_status_class(make_app: Any, mode: str) -> None:
    app = make_app(APIKEYS_USAGE_FLUSH_INTERVAL=3600, **MODES[mode])

    @app.get("/v1/unavailable")
    def unavailable() -> tuple[str, int]:
        return "", 503

    APIKeysMetrics(app, sync_interval=3600)
    recorder = app.extensions["apikeys_metrics"]
    assert (recorder.usage_writer is not None) == (mode == "usage rows")
    every, reader_only, metrics_reader, organization = keys_and_reader(app)
    client = app.test_client()
    sent = [
        *[("GET", "/v1/whoami", every, 200)] * 3,
        *[("POST", "/v1/presentations", every, 201)] * 2,
        ("POST", "/v1/presentations", reader_only, 403),
        ("GET", "/v1/no-such-route", every, 404),
        *[("GET", "/v1/unavailable", every, 503)] * 2,
        *[("POST", "/v1/generate/slides", every, 200)] * 4,
    ]
    for method, path, key, status in sent:
        assert client.open(path, method=method, headers={"X-API-Key": key}).status_code == status
    samples = scrape(client, metrics_reader)
    assert requests_by_series(samples) == {
        ("/v1/whoami", "2xx"): 3,
        ("/v1/presentations", "2xx"): 2,
        ("/v1/presentations", "4xx"): 1,
        ("[unmatched]", "4xx"): 1,
        ("/v1/unavailable", "5xx"): 2,
        ("/v1/generate/slides", "2xx"): 4,
    }
    assert {
        dict(labels)["organization"]
        for (name, labels) in samples
        if name == "apikeys_requests_total"
    } == {organization}
    accepted = (("outcome", "accepted"),)
    assert samples[("apikeys_verification_seconds_count", accepted)] == len(sent)
    cost = samples[("apikeys_cost_usd_total", (("organization", organization),))]
    assert cost == pytest.approx(4 * 0.0125)
    # Scraped again (the scrape's own request now counted too): nothing counted twice.
    again = requests_by_series(scrape(client, metrics_reader))
    assert again.pop(("/apikeys/metrics", "2xx")) == 1
    assert again == requests_by_series(samples)
    with app.app_context():
        app.extensions["apikeys"].extension.flush_usage()
    assert requests_by_series(scrape(client, metrics_reader))[("/v1/whoami", "2xx")] == 3


def test_the_metrics_listen_to_the_writer_not_to_every_request(make_app: Any) -> None:
    """With usage tracking on, Flask's request_finished has no receiver of ours: its dispatch
    alone cost ~13k instructions per request."""
    app = make_app()
    APIKeysMetrics(app)
    recorder = app.extensions["apikeys_metrics"]
    writer = app.extensions["apikeys"].writer
    assert recorder.on_request_finished not in list(request_finished.receivers_for(app))
    assert recorder.on_usage_rows_taken in list(signals.usage_rows_taken.receivers_for(writer))
    assert recorder.on_usage_rows_taken not in list(
        signals.usage_rows_taken.receivers_for(object())
    )


@pytest.mark.parametrize("mode", list(MODES))
def test_refused_credentials_are_counted_and_timed(make_app: Any, mode: str) -> None:
    app = make_app(APIKEYS_USAGE_FLUSH_INTERVAL=3600, **MODES[mode])
    APIKeysMetrics(app, sync_interval=3600)
    every, _, metrics_reader, _ = keys_and_reader(app)
    client = app.test_client()
    assert client.get("/v1/whoami", headers={"X-API-Key": every}).status_code == 200
    for presented in (tampered(every), every + "x", "not-a-key"):
        assert client.get("/v1/whoami", headers={"X-API-Key": presented}).status_code == 401
    samples = scrape(client, metrics_reader)
    refusals = {
        dict(labels)["code"]: value
        for (name, labels), value in samples.items()
        if name == "apikeys_credential_refusals_total"
    }
    assert sum(refusals.values()) == 3
    refused, accepted = (("outcome", "refused"),), (("outcome", "accepted"),)
    assert samples[("apikeys_verification_seconds_count", refused)] == 3
    assert samples[("apikeys_verification_seconds_sum", refused)] > 0
    assert samples[("apikeys_verification_seconds_count", accepted)] == 1
    assert sum(requests_by_series(samples).values()) == 1  # a refusal is not a served request


@pytest.fixture
def movable_database(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A SQLite file in a folder of its own, which a test may move away and back."""
    folder = tmp_path / "database"
    folder.mkdir()
    yield f"sqlite:///{folder / 'apikeys.sqlite'}", folder
    if not folder.exists():
        (tmp_path / "away").rename(folder)


def test_requests_are_counted_while_the_database_is_away_and_their_rows_dropped(
    make_app: Any, movable_database: tuple[str, Path]
) -> None:
    """The database cannot be reached and 8 rows wait with room for 5: every request is
    counted all the same (handed over before the write), and the 3 rows dropped are too."""
    url, folder = movable_database
    app = make_app(
        url,
        APIKEYS_USAGE_MAX_QUEUE=5,
        APIKEYS_USAGE_FLUSH_INTERVAL=3600,
        APIKEYS_CACHE_TTL=3600,  # the keys are verified without the database meanwhile
    )
    APIKeysMetrics(app, sync_interval=3600)
    every, _, metrics_reader, _ = keys_and_reader(app)
    client = app.test_client()
    assert client.get("/v1/whoami", headers={"X-API-Key": metrics_reader}).status_code == 200
    assert client.get("/v1/whoami", headers={"X-API-Key": every}).status_code == 200
    writer = app.extensions["apikeys"].writer
    folder.rename(folder.parent / "away")
    with app.app_context():
        app.extensions["sqlalchemy"].engine.dispose()  # no pooled connection to the old file
    for _ in range(6):
        assert client.get("/v1/whoami", headers={"X-API-Key": every}).status_code == 200
    with pytest.raises(OperationalError):
        writer.flush()
    assert writer.queued == 5
    with pytest.raises(OperationalError):
        writer.flush()  # taken again: handed over before, so not counted again
    samples = scrape(client, metrics_reader)
    assert requests_by_series(samples) == {("/v1/whoami", "2xx"): 8}
    assert samples[("apikeys_usage_rows_dropped_total", ())] == 3
    assert samples[("apikeys_usage_rows_written_total", ())] == 0
    (folder.parent / "away").rename(folder)
    assert writer.flush() == 6  # the 5 kept, and the scrape's own
    samples = scrape(client, metrics_reader)
    assert requests_by_series(samples) == {("/v1/whoami", "2xx"): 8, ("/apikeys/metrics", "2xx"): 1}
    assert samples[("apikeys_usage_rows_written_total", ())] == 6


# -- the writer's signal ------------------------------------------------------------------------


def row(number: int) -> tuple[Any, ...]:
    """A queued usage row of request ``number`` (its timestamp), as the hook builds them."""
    key_id, organization_id = uuid.UUID(int=1), uuid.UUID(int=2)
    stored = (key_id, organization_id, float(number), "/r", "GET", 200, 1.0)
    return (*stored, None, None, None, None, None, None, 0.0001, None)


@pytest.fixture
def unreachable_writer() -> Iterator[UsageWriter]:
    """A writer whose database is never there."""

    def connect() -> Any:
        raise OperationalError("connect", {}, Exception("no database"))

    writer = UsageWriter(
        connect, synchronous=False, flush_interval=3600, batch_size=10**6, max_queue=5
    )
    writer._thread = threading.current_thread()  # as if it ran: add_usage only queues
    yield writer
    writer._thread = None
    writer._usage.clear()


def taken_by(writer: UsageWriter) -> list[tuple[Any, ...]]:
    """A list that receives every row ``writer`` hands to usage_rows_taken (while referenced)."""
    received: list[tuple[Any, ...]] = []

    def receive(sender: Any, *, rows: tuple[tuple[Any, ...], ...]) -> None:
        assert sender is writer
        received.extend(rows)

    signals.usage_rows_taken.connect(receive, writer, weak=False)
    return received


def test_a_full_queue_drops_its_oldest_rows_and_every_row_is_handed_over_once(
    unreachable_writer: UsageWriter,
) -> None:
    writer = unreachable_writer
    received = taken_by(writer)
    for number in range(4):
        writer.add_usage(row(number))
    with pytest.raises(OperationalError):
        writer.flush()
    for number in range(4, 8):
        writer.add_usage(row(number))
    assert writer.hand_over() == 4  # the rows no flush took yet
    assert writer.hand_over() == 0
    with pytest.raises(OperationalError):
        writer.flush()
    # 8 rows, room for 5: the 3 oldest went, as the documentation says.
    assert [queued[2] for queued in writer._usage] == [3.0, 4.0, 5.0, 6.0, 7.0]
    for number in range(8, 10):
        writer.add_usage(row(number))
    with pytest.raises(OperationalError):
        writer.flush()
    assert [queued[2] for queued in writer._usage] == [5.0, 6.0, 7.0, 8.0, 9.0]
    assert sorted(taken[2] for taken in received) == [float(number) for number in range(10)]


def test_rows_dropped_before_any_flush_took_them_are_handed_over_as_they_go(
    unreachable_writer: UsageWriter,
) -> None:
    """A batch bigger than the queue's bound: the rows past it were never sent; they are as
    they are dropped, so that their requests are still counted."""
    writer = unreachable_writer
    received = taken_by(writer)
    for number in range(3):
        writer.add_usage(row(number))
    writer._requeue_usage([row(number) for number in range(100, 104)])  # as if taken before
    assert [queued[2] for queued in writer._usage] == [102.0, 103.0, 0.0, 1.0, 2.0]
    assert received == []  # those dropped (100, 101) had been sent by their flush
    for number in range(3, 7):
        writer.add_usage(row(number))
    writer._requeue_usage([row(200)])
    # 10 rows, room for 5: 200, 102 and 103 had been sent; 0 and 1 had not: they are now.
    assert [queued[2] for queued in writer._usage] == [2.0, 3.0, 4.0, 5.0, 6.0]
    assert [taken[2] for taken in received] == [0.0, 1.0]
    writer.hand_over()
    assert [taken[2] for taken in received] == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0]


def test_a_receiver_that_fails_costs_no_row(make_app: Any) -> None:
    app = make_app(APIKEYS_USAGE_FLUSH_INTERVAL=3600)
    every, _, _, _ = keys_and_reader(app)
    writer = app.extensions["apikeys"].writer

    def failing(sender: Any, **_: Any) -> None:
        raise RuntimeError("a receiver's bug")

    signals.usage_rows_taken.connect(failing, writer)
    try:
        client = app.test_client()
        for _ in range(3):
            assert client.get("/v1/whoami", headers={"X-API-Key": every}).status_code == 200
        assert writer.flush() == 3
    finally:
        signals.usage_rows_taken.disconnect(failing, writer)


def test_the_signal_carries_rows_without_any_key_and_is_subscribed_like_any_other(
    make_app: Any,
) -> None:
    app = make_app(APIKEYS_USAGE_FLUSH_INTERVAL=3600)
    other = make_app(APIKEYS_USAGE_FLUSH_INTERVAL=3600)
    every, _, _, _ = keys_and_reader(app)
    writer = app.extensions["apikeys"].writer
    heard: list[dict[str, Any]] = []
    heard_by_other: list[dict[str, Any]] = []

    def receiver(sender: Any, **arguments: Any) -> None:
        heard.append(arguments)

    def other_receiver(sender: Any, **arguments: Any) -> None:
        heard_by_other.append(arguments)

    signals.usage_rows_taken.connect(receiver, writer)
    signals.usage_rows_taken.connect(other_receiver, other.extensions["apikeys"].writer)
    client = app.test_client()
    for _ in range(2):
        assert client.get("/v1/whoami", headers={"X-API-Key": every}).status_code == 200
    assert writer.flush() == 2
    assert [list(arguments) for arguments in heard] == [["rows"]]
    rows = heard[0]["rows"]
    assert isinstance(rows, tuple) and all(isinstance(taken, tuple) for taken in rows)
    assert [len(taken) for taken in rows] == [len(TAKEN_FIELDS)] * 2
    assert TAKEN_FIELDS[: len(USAGE_FIELDS)] == USAGE_FIELDS
    assert every not in repr(heard) and every[-20:] not in repr(heard)
    assert heard_by_other == []
    signals.usage_rows_taken.disconnect(receiver, writer)
    assert client.get("/v1/whoami", headers={"X-API-Key": every}).status_code == 200
    assert writer.flush() == 1
    assert len(heard) == 1  # disconnected: heard nothing more
    signals.usage_rows_taken.disconnect(other_receiver)


@pytest.fixture
def frequent_thread_switches() -> Iterator[None]:
    before = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    yield
    sys.setswitchinterval(before)


@pytest.mark.slow  # 3 s: 18,000 rows through threads (the full suite runs it)
def test_rows_added_from_threads_while_scrapes_and_flushes_take_them_are_each_handed_over_once(
    make_app: Any, frequent_thread_switches: None
) -> None:
    app = make_app(APIKEYS_USAGE_FLUSH_INTERVAL=3600)
    writer = app.extensions["apikeys"].writer
    writer._write_usage = lambda rows: None  # type: ignore[method-assign]  # not tested here
    received = taken_by(writer)
    threads, per_thread = 6, 3_000
    start = threading.Barrier(threads + 1)
    done = threading.Event()

    def add_rows(thread: int) -> None:
        start.wait()
        for number in range(per_thread):
            writer.add_usage(row(thread * per_thread + number))

    def take_all_the_time() -> None:
        start.wait()
        while not done.is_set():
            writer.hand_over()
            writer.flush()

    adders = [threading.Thread(target=add_rows, args=(thread,)) for thread in range(threads)]
    taker = threading.Thread(target=take_all_the_time)
    for thread in [*adders, taker]:
        thread.start()
    for adder in adders:
        adder.join()
    done.set()
    taker.join()
    writer.hand_over()
    numbers = sorted(int(taken[2]) for taken in received)
    assert numbers == list(range(threads * per_thread))
    writer.flush()
    assert len(received) == threads * per_thread


def test_a_request_is_counted_within_a_flush_and_a_sync_without_a_scrape(make_app: Any) -> None:
    """What another worker's scrape reads under gunicorn: the rows the writer took at its
    flush, folded in by the metrics' next sync."""
    app = make_app(APIKEYS_USAGE_FLUSH_INTERVAL=0.05)
    APIKeysMetrics(app, sync_interval=0.05)
    every, _, _, _ = keys_and_reader(app)
    registry = app.extensions["apikeys_metrics"].registry
    client = app.test_client()
    for _ in range(5):
        assert client.get("/v1/whoami", headers={"X-API-Key": every}).status_code == 200
    deadline = time.monotonic() + 10

    def counted() -> float:
        return sum(
            sample.value
            for family in registry.collect()
            for sample in family.samples
            if sample.name == "apikeys_requests_total"
        )

    while counted() < 5:
        assert time.monotonic() < deadline, "the requests never reached the metrics"
        time.sleep(0.02)
    time.sleep(0.2)  # more flushes and syncs: nothing counted twice
    assert counted() == 5
