"""Leases (busy keys take units a few at a time) and the Redis script caller under them."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import redis
import redis.sentinel
from limits.storage import MemoryStorage, storage_from_string

from flask_apikeys.limiting.counters import Counter, GiveBackCounters, Outcome
from flask_apikeys.limiting.leases import ALLOWANCE_SHARE, MAX_LEASE, MAX_LEASES, LeasedCounters
from flask_apikeys.limiting.redis_script import caller_for

from .factory import create_app
from .servers import script_calls


class CallCountingCounters(GiveBackCounters):
    """Real counters in a real ``MemoryStorage`` that also count how often they are asked."""

    def __init__(self, storage: MemoryStorage) -> None:
        super().__init__(storage)
        self.calls = 0
        self.units = 0

    def take(self, counters: Sequence[Counter], amount: int = 1) -> Outcome:
        self.calls += 1
        outcome = super().take(counters, amount)
        if outcome.refused is None:
            self.units += amount
        return outcome


@pytest.fixture
def shared() -> MemoryStorage:
    """One storage that several "workers" (LeasedCounters) share, like Redis."""
    return MemoryStorage()


def worker(storage: MemoryStorage, lease_seconds: float = 0.1) -> LeasedCounters:
    return LeasedCounters(CallCountingCounters(storage), lease_seconds)


def test_a_quiet_key_asks_the_storage_every_time(shared: MemoryStorage) -> None:
    leased = worker(shared)
    counter = Counter("quiet", 1_000_000, 60)
    for _ in range(5):
        leased.take((counter,))
        time.sleep(0.05)  # 20 requests/s: less than 2 per 0.1 s lease
    assert leased.exact.calls == 5  # type: ignore[attr-defined]
    assert shared.get("quiet") == 5


def test_a_busy_key_takes_its_units_a_few_at_a_time(shared: MemoryStorage) -> None:
    # Leases of 5 s: none can end unused during the loop, even on a machine that stalls for a
    # moment (a lease ended early abandons its units, which a 0.1 s lease did under CI load).
    leased = worker(shared, lease_seconds=5.0)
    counter = Counter("busy", 1_000_000, 60)
    outcomes = [leased.take((counter,)) for _ in range(2000)]
    exact: Any = leased.exact
    assert all(outcome.refused is None for outcome in outcomes)
    assert exact.calls < 2000 / 10, exact.calls  # a round trip for many requests
    taken = shared.get("busy")
    assert 2000 <= taken == exact.units  # every request spent a unit the storage counted
    leftover = leased._leases[(counter,)].units
    assert taken - 2000 == leftover < MAX_LEASE  # leased beyond use: only the current lease
    values = [outcome.values[0] for outcome in outcomes]
    assert values == sorted(values)  # one worker sees its own use count up, one by one
    # What the storage counted, less what the current lease has not handed out yet.
    assert values[-1] == taken - leftover == 2000


def test_a_busy_key_keeps_its_lease_while_thousands_of_quiet_keys_pass(
    shared: MemoryStorage,
) -> None:
    """Each quiet key leaves a record (its pace); a full table must not cost the busy key its
    running lease (and a round trip, and the units it held)."""
    leased = worker(shared, lease_seconds=30.0)
    busy = Counter("busy", 1_000_000, 3600)
    for _ in range(200):
        leased.take((busy,))
    exact: Any = leased.exact
    held = leased._leases[(busy,)].units
    assert held > 0
    for index in range(MAX_LEASES + 100):  # the table fills up once on the way
        assert leased.take((Counter(f"quiet-{index}", 100, 3600),)).refused is None
    calls = exact.calls
    assert leased.take((busy,)).refused is None
    assert exact.calls == calls  # served from the lease it held
    assert leased._leases[(busy,)].units == held - 1
    assert len(leased._leases) < MAX_LEASES


def test_near_a_limit_every_request_is_exact(shared: MemoryStorage) -> None:
    limit = 2 * ALLOWANCE_SHARE - 1  # less than two units for a lease from the start
    leased = worker(shared)
    counter = Counter("tight", limit, 60)
    outcomes = [leased.take((counter,)) for _ in range(limit + 10)]
    assert [outcome.refused for outcome in outcomes].count(None) == limit
    assert leased.exact.calls == limit + 10  # type: ignore[attr-defined]


def test_workers_sharing_a_limit_never_exceed_it(shared: MemoryStorage) -> None:
    """Four workers of four threads each race for one limit until all of them are refused."""
    limit = 20_000
    workers = [worker(shared) for _ in range(4)]
    counter = Counter("shared", limit, 60)
    lock = threading.Lock()
    admitted = 0

    def run(index: int) -> None:
        nonlocal admitted
        leased = workers[index % 4]
        mine = refused = 0
        while refused < 20:
            outcome = leased.take((counter,))
            if outcome.refused is None:
                mine += 1
                assert outcome.values[0] <= limit
            else:
                refused += 1
        with lock:
            admitted += mine

    with ThreadPoolExecutor(16) as pool:
        list(pool.map(run, range(16)))
    assert admitted <= limit
    assert shared.get("shared") <= limit
    # What leases strand near the end is a small share of what was left at each lease.
    assert admitted >= limit * 0.95, admitted


@pytest.mark.slow  # waits for the window to end: up to a second
def test_a_lease_ends_with_its_window(shared: MemoryStorage) -> None:
    """Units leased in one window are never spent in the next one."""
    leased = worker(shared, lease_seconds=10)  # long leases: only the window can end them
    counter = Counter("windowed", 1_000_000, 1)
    for _ in range(500):
        leased.take((counter,))
    exact: Any = leased.exact
    calls = exact.calls
    first_window_end = leased.take((counter,)).resets[0]
    time.sleep(max(0.0, first_window_end - time.time()) + 0.05)
    outcome = leased.take((counter,))
    assert exact.calls == calls + 1  # the lease had ended: asked the storage again
    assert outcome.resets[0] > first_window_end
    assert shared.get("windowed") <= exact.units


def test_lease_seconds_zero_asks_every_time(shared: MemoryStorage) -> None:
    leased = worker(shared, lease_seconds=0)
    counter = Counter("off", 1_000_000, 60)
    for _ in range(300):
        leased.take((counter,))
    assert leased.exact.calls == 300  # type: ignore[attr-defined]


# -- on a real Redis ---------------------------------------------------------------------------


@pytest.fixture
def redis_app(redis_url: str, database_url: str) -> Iterator[Callable[..., tuple[Any, str]]]:
    apps: list[Any] = []

    def make(**config: Any) -> tuple[Any, str]:
        app, _, apikeys = create_app(
            database_url, APIKEYS_RATELIMIT_STORAGE_URI=redis_url, **config
        )
        with app.app_context():
            apikeys.create_all()
            org = apikeys.create_organization(
                name="Busy", email="b@b.io", plan="enterprise", rate_limit_per_minute=100_000
            )
            key = apikeys.create_key(org, "k", scopes=["*"], rate_limit="100000/minute").key
        apps.append(app)
        return app, key

    yield make
    for app in apps:
        app.extensions["apikeys"].extension.close(app)
        with app.app_context():
            app.extensions["sqlalchemy"].engine.dispose()


@pytest.mark.redis
@pytest.mark.parametrize(("lease_seconds", "most_calls"), [(0.1, 100), (0, 400)])
def test_a_busy_key_on_redis_costs_a_round_trip_per_lease(
    redis_app: Callable[..., tuple[Any, str]], redis_url: str, lease_seconds: float, most_calls: int
) -> None:
    app, key = redis_app(APIKEYS_RATELIMIT_LEASE_SECONDS=lease_seconds)
    client = app.test_client()
    before = script_calls(redis_url)
    responses = [client.get("/v1/whoami", headers={"X-API-Key": key}) for _ in range(400)]
    calls = script_calls(redis_url) - before
    assert [response.status_code for response in responses] == [200] * 400
    assert calls <= most_calls if lease_seconds else calls == 400
    remaining = [int(response.headers["X-RateLimit-Remaining"]) for response in responses]
    assert remaining == sorted(remaining, reverse=True)
    # This worker's own use, counted one by one, plus units of leases that ended unused.
    assert 100_000 - 400 - 100_000 // ALLOWANCE_SHARE <= remaining[-1] <= 100_000 - 400
    counted = redis.Redis.from_url(redis_url)
    try:
        # A sliding window's hash: this window's count and the previous one's (a fresh key's
        # requests are in one of the two, or both if they crossed a minute boundary).
        stored = [
            sum(int(value) for value in counted.hmget(name, "c", "p") if value is not None)
            for name in counted.keys("*:key:*")
        ]
    finally:
        counted.close()
    assert stored and all(400 <= value < 400 + 100_000 // ALLOWANCE_SHARE for value in stored)


@pytest.mark.redis
def test_script_caller_survives_a_script_flush_and_a_killed_connection(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    script = "return redis.call('INCRBY', KEYS[1], ARGV[1])"
    caller = caller_for(client, script)
    assert caller is not None
    try:
        assert caller(["n"], [1]) == 1
        client.script_flush()  # as after a restart: EVALSHA answers NOSCRIPT
        assert caller(["n"], [1]) == 2
        client.client_kill_filter(_type="normal", skipme=True)  # Redis closes our connection
        assert caller(["n"], [1]) == 3  # not counted twice: the closed connection ran nothing
        assert int(client.get("n")) == 3
    finally:
        caller.close()
        client.close()


@pytest.mark.redis
def test_script_caller_in_a_forked_child_uses_its_own_connection(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    caller = caller_for(client, "return redis.call('INCR', KEYS[1])")
    assert caller is not None
    try:
        assert caller(["f"], []) == 1  # the parent now holds an idle connection
        child = os.fork()
        if child == 0:  # pragma: no cover - runs in the child process
            status = 0 if caller(["f"], []) == 2 else 1
            os._exit(status)
        _, status = os.waitpid(child, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert caller(["f"], []) == 3  # the parent's connection was not disturbed
    finally:
        caller.close()
        client.close()


def test_only_plain_redis_clients_get_the_fast_caller() -> None:
    storage = storage_from_string("memory://")
    assert caller_for(storage, "return 1") is None
    assert caller_for(redis.Redis(), "return 1") is not None  # no I/O until called
    sentinel_pool = redis.sentinel.SentinelConnectionPool("main", redis.sentinel.Sentinel([]))
    assert caller_for(redis.Redis(connection_pool=sentinel_pool), "return 1") is None


def test_a_forked_child_does_not_spend_its_parents_lease(shared: MemoryStorage) -> None:
    """gunicorn --preload forks after the app loaded: a lease must not be spent twice."""
    leased = worker(shared)
    counter = Counter("forked", 1_000_000, 60)
    for _ in range(500):
        leased.take((counter,))
    exact: Any = leased.exact
    assert leased._leases[(counter,)].units > 0  # the parent holds leased units
    child = os.fork()
    if child == 0:  # pragma: no cover - runs in the child process
        calls = exact.calls
        leased.take((counter,))
        os._exit(0 if exact.calls == calls + 1 else 1)
    _, status = os.waitpid(child, 0)
    assert os.waitstatus_to_exitcode(status) == 0  # the child asked the storage itself
    assert leased._leases[(counter,)].units > 0  # the parent's lease is untouched
