"""Rate limits on a real Redis: exact under concurrency, all-or-none, and Redis going away."""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter as Tally
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import pytest
import redis
from flask import Flask
from limits.storage import MemoryStorage, storage_from_string

from flask_apikeys import APIKeys
from flask_apikeys.limiting.counters import Counter, Counters, GiveBackCounters, counters_for
from flask_apikeys.limiting.policies import Month

from .factory import create_app
from .helpers import assert_problem
from .servers import RedisServer

LIMIT = 15
CLIENTS = 6


def hammer(app: Flask, keys: list[str], total: int, clients: int = CLIENTS) -> list[int]:
    """``total`` requests from ``clients`` concurrent test clients, started together."""
    barrier = threading.Barrier(clients)

    def run(worker: int) -> list[int]:
        client = app.test_client()
        barrier.wait()
        return [
            client.get("/v1/whoami", headers={"X-API-Key": keys[n % len(keys)]}).status_code
            for n in range(worker, total, clients)
        ]

    with ThreadPoolExecutor(clients) as pool:
        return [status for result in pool.map(run, range(clients)) for status in result]


@pytest.fixture
def build() -> Iterator[Callable[..., tuple[Flask, APIKeys]]]:
    """Build apps on a given storage; close their storage connections afterwards."""
    apps: list[Flask] = []

    def make(storage_uri: str, database_url: str, **config: Any) -> tuple[Flask, APIKeys]:
        app, _, apikeys = create_app(
            database_url, APIKEYS_RATELIMIT_STORAGE_URI=storage_uri, **config
        )
        with app.app_context():
            apikeys.create_all()
        apps.append(app)
        return app, apikeys

    yield make
    for app in apps:
        app.extensions["apikeys"].extension.close(app)  # the writer must not outlive the database
        with app.app_context():
            app.extensions["sqlalchemy"].engine.dispose()


#: The Redis deployments the docs allow, each a real server (or servers) from tests/servers.py.
REDIS_DEPLOYMENTS = [
    pytest.param("redis_url", marks=pytest.mark.redis, id="redis"),
    pytest.param(
        "redis_cluster_url", marks=[pytest.mark.redis_cluster, pytest.mark.slow], id="cluster"
    ),
    pytest.param(
        "redis_sentinel_url", marks=[pytest.mark.redis_sentinel, pytest.mark.slow], id="sentinel"
    ),
]


@pytest.fixture(params=[pytest.param("memory", id="memory"), *REDIS_DEPLOYMENTS])
def storage_uri(request: pytest.FixtureRequest) -> str:
    """Every storage the rate limits run on: memory, Redis, Redis Cluster, Redis Sentinel."""
    if request.param == "memory":
        return "memory://"
    return str(request.getfixturevalue(request.param))


@pytest.mark.parametrize("binding", ["key", "organization"])
def test_limit_is_exact_under_concurrency(
    build: Callable[..., Any], storage_uri: str, database_url: str, binding: str
) -> None:
    app, apikeys = build(storage_uri, database_url)
    with app.app_context():
        if binding == "key":  # one key whose own limit binds
            org = apikeys.create_organization(name="A", email="a@a.io", rate_limit_per_minute=1000)
            keys = [apikeys.create_key(org, "k", scopes=["*"], rate_limit=f"{LIMIT}/minute").key]
        else:  # five keys with room to spare, sharing the organization's limit
            org = apikeys.create_organization(
                name="A", email="a@a.io", plan="pro", rate_limit_per_minute=LIMIT
            ).id
            keys = [
                apikeys.create_key(org, f"k{n}", scopes=["*"], rate_limit="1000/minute").key
                for n in range(5)
            ]
    statuses = hammer(app, keys, 3 * LIMIT)
    assert statuses.count(200) == LIMIT
    assert statuses.count(429) == 2 * LIMIT


@pytest.fixture(
    params=[
        "memory",
        "local",
        "fallback",
        *REDIS_DEPLOYMENTS,
    ]
)
def counters(request: pytest.FixtureRequest) -> Iterator[Counters]:
    """Each implementation: a shared MemoryStorage, our own dicts, give-back, the Lua script
    (on Redis, Redis Cluster and Redis Sentinel)."""
    if request.param == "memory":
        yield counters_for(MemoryStorage())
    elif request.param == "local":
        yield counters_for(None)
    elif request.param == "fallback":
        yield GiveBackCounters(MemoryStorage())
    else:
        storage = storage_from_string(request.getfixturevalue(request.param))
        redis_counters = counters_for(storage)
        yield redis_counters
        redis_counters.close()
        storage.storage.close()


def test_counters_are_taken_all_or_none(counters: Counters) -> None:
    first, tight, last = Counter("a", 10, 60), Counter("b", 2, 60), Counter("c", 10, 60)
    outcomes = [counters.take((first, tight, last)) for _ in range(4)]
    assert [outcome.refused for outcome in outcomes] == [None, None, 1, 1]
    assert outcomes[1].values == (2, 2, 2)
    assert outcomes[3].values == (2, 2, 2)  # the refusals consumed nothing
    assert [counters.peek(counter)[0] for counter in (first, tight, last)] == [2, 2, 2]
    now = time.time()
    assert all(now + 55 < reset <= now + 61 for reset in outcomes[3].resets)
    assert counters.take((first, last)).values == (3, 3)


def test_each_counter_is_exact_when_threads_race(counters: Counters) -> None:
    counter = Counter("race", LIMIT, 60)
    barrier = threading.Barrier(CLIENTS)

    def run(_: int) -> int:
        barrier.wait()
        return sum(counters.take((counter,)).refused is None for _ in range(LIMIT))

    with ThreadPoolExecutor(CLIENTS) as pool:
        assert sum(pool.map(run, range(CLIENTS))) == LIMIT


@pytest.mark.redis
def test_quota_counter_in_redis_lives_until_just_after_the_month(
    build: Callable[..., Any], redis_url: str, database_url: str
) -> None:
    app, apikeys = build(redis_url, database_url)
    with app.app_context():
        org = apikeys.create_organization(name="A", email="a@a.io", monthly_request_limit=50).id
        key = apikeys.create_key(org, "k", scopes=["*"]).key
    app.test_client().get("/v1/whoami", headers={"X-API-Key": key})
    month = Month.containing(time.time())
    client = redis.Redis.from_url(redis_url)
    try:
        name = f"LIMITS:quota:{{{org}}}:{month.label}"
        assert client.get(name) == b"1"
        ttl = client.ttl(name)
        assert month.end - time.time() < ttl <= month.end - month.start + 86_400
    finally:
        client.close()


def make_limited_key(app: Flask, apikeys: APIKeys) -> str:
    with app.app_context():
        org = apikeys.create_organization(name="A", email="a@a.io").id
        return apikeys.create_key(org, "k", scopes=["*"], rate_limit="3/minute").key


@pytest.mark.redis
def test_redis_down_fails_open_by_default_and_limits_resume_when_it_returns(
    build: Callable[..., Any],
    redis_server: RedisServer,
    redis_url: str,
    database_url: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    app, apikeys = build(redis_url, database_url)
    key = make_limited_key(app, apikeys)
    client = app.test_client()

    def get() -> Any:
        return client.get("/v1/whoami", headers={"X-API-Key": key})

    assert get().headers["X-RateLimit-Remaining"] == "2"
    redis_server.stop()
    with caplog.at_level(logging.WARNING, logger="flask_apikeys"):
        during = [get() for _ in range(5)]
    assert [response.status_code for response in during] == [200] * 5
    assert all("X-RateLimit-Limit" not in response.headers for response in during)
    assert "Rate-limit storage unreachable" in caplog.text
    redis_server.start()  # an empty Redis: counting starts again, no restart of the app
    assert [get().status_code for _ in range(4)] == [200, 200, 200, 429]


@pytest.mark.redis
def test_redis_down_answers_503_when_failing_closed(
    build: Callable[..., Any], redis_server: RedisServer, redis_url: str, database_url: str
) -> None:
    app, apikeys = build(redis_url, database_url, APIKEYS_RATELIMIT_FAIL_OPEN=False)
    key = make_limited_key(app, apikeys)
    client = app.test_client()

    def get() -> Any:
        return client.get("/v1/whoami", headers={"X-API-Key": key})

    assert get().status_code == 200
    redis_server.stop()
    body = assert_problem(get(), 503, "backend_unavailable")
    assert key not in body["detail"]
    redis_server.start()
    assert [get().status_code for _ in range(4)] == [200, 200, 200, 429]


@pytest.mark.redis
def test_failed_attempts_are_counted_across_apps_sharing_redis(
    build: Callable[..., Any], redis_url: str, tmp_path: Any
) -> None:
    """Two apps (as two workers would be) share the failed-attempt count of an address."""
    apps = [
        build(
            redis_url, f"sqlite:///{tmp_path / f'{n}.sqlite'}", APIKEYS_FAILED_AUTH_LIMIT="4/minute"
        )
        for n in range(2)
    ]
    bad = {"X-API-Key": "pk_live_" + "q" * 46}
    statuses = [
        apps[n % 2][0].test_client().get("/v1/whoami", headers=bad).status_code for n in range(6)
    ]
    assert statuses == [401, 401, 401, 401, 429, 429]


BEFORE, STOPPING, DOWN, STARTING, RESTARTED = range(5)
STREAM_LIMIT = 40


@dataclass(frozen=True)
class Answer:
    """One request of the stream: the phase when it was sent and when it was answered."""

    sent: int
    answered: int
    status: int
    counted: bool  # it carries rate-limit headers
    code: str | None  # the problem document's code, if any

    def within(self, phase: int) -> bool:
        return self.sent == self.answered == phase


@pytest.mark.slow
@pytest.mark.redis
@pytest.mark.parametrize("fail_open", [True, False], ids=["fail-open", "fail-closed"])
def test_redis_stopped_and_restarted_under_load_fails_as_documented_and_recovers(
    build: Callable[..., Any],
    redis_server: RedisServer,
    redis_url: str,
    database_url: str,
    caplog: pytest.LogCaptureFixture,
    fail_open: bool,
) -> None:
    """Concurrent clients keep sending while Redis dies and comes back, on one app throughout.

    Every answer is judged by the phase it was both sent and answered in (requests that
    straddle a stop or a start may go either way, but must still be one of the documented
    outcomes): before the stop, counted; while Redis is down, passed uncounted (fail open) or
    503 ``backend_unavailable`` (fail closed), never a 500; after the restart, counted again
    from empty counters until the limit answers 429.
    """
    app, apikeys = build(redis_url, database_url, APIKEYS_RATELIMIT_FAIL_OPEN=fail_open)
    with app.app_context():
        # The key's own limit binds: the organization's plan allows far more.
        org = apikeys.create_organization(name="A", email="a@a.io", plan="enterprise").id
        key = apikeys.create_key(org, "k", scopes=["*"], rate_limit=f"{STREAM_LIMIT}/minute").key
    phase = BEFORE
    answers: list[Answer] = []
    done = threading.Event()

    def stream(_: int) -> None:
        client = app.test_client()
        for _ in range(2000):  # a bound; the main thread ends the stream much sooner
            if done.is_set():
                return
            sent = phase
            response = client.get("/v1/whoami", headers={"X-API-Key": key})
            body = response.get_json(silent=True) or {}
            answers.append(
                Answer(
                    sent,
                    phase,
                    response.status_code,
                    "X-RateLimit-Limit" in response.headers,
                    body.get("code"),
                )
            )

    def wait_for(enough: Callable[[], bool], what: str) -> None:
        deadline = time.monotonic() + 10
        while not enough():
            assert time.monotonic() < deadline, (
                f"no {what} within 10 s: {Tally((a.sent, a.answered, a.status) for a in answers)}"
            )
            time.sleep(0.005)

    with caplog.at_level(logging.WARNING, logger="flask_apikeys"):
        with ThreadPoolExecutor(CLIENTS) as pool:
            streams = [pool.submit(stream, n) for n in range(CLIENTS)]
            try:
                wait_for(lambda: sum(a.within(BEFORE) for a in answers) >= 10, "answers")
                phase = STOPPING
                redis_server.stop()
                phase = DOWN
                wait_for(lambda: sum(a.within(DOWN) for a in answers) >= 50, "outage answers")
                phase = STARTING
                redis_server.start()  # empty: counting starts again
                phase = RESTARTED
                wait_for(
                    lambda: any(a.within(RESTARTED) and a.status == 429 for a in answers),
                    "429 after the restart",
                )
            finally:
                done.set()
                redis_server.start()
            for future in streams:
                future.result()

    during = [a for a in answers if a.within(DOWN)]
    # Answered once the new (empty) Redis was starting: a request sent just as Redis stopped
    # may wait out the outage in its connection retries and be counted by the new one.
    recounted = sum(a.status == 200 and a.counted for a in answers if a.answered >= STARTING)
    print(
        f"\n{len(answers)} requests, {len(during)} of them during the outage "
        f"({Tally(a.status for a in during)}); after the restart {recounted} counted 200s, "
        f"then {Tally(a.status for a in answers if a.within(RESTARTED))}"
    )
    documented = {200, 429} | ({503} if not fail_open else set())
    assert {a.status for a in answers} <= documented  # never a 500, whatever the timing
    assert all(a.code == "backend_unavailable" for a in answers if a.status == 503)
    before = [a for a in answers if a.within(BEFORE)]
    assert any(a.status == 200 for a in before)
    assert all(a.counted for a in before if a.status == 200)
    assert sum(a.status == 200 for a in before) <= STREAM_LIMIT
    if fail_open:
        assert all(a.status == 200 and not a.counted for a in during)
        assert "Rate-limit storage unreachable" in caplog.text
    else:
        assert all(a.status == 503 and a.code == "backend_unavailable" for a in during)
    # Recovery with no restart of the app: counted again from zero, and the limit holds.
    assert recounted == STREAM_LIMIT
    assert all(a.counted for a in answers if a.within(RESTARTED) and a.status == 200)
    response = app.test_client().get("/v1/whoami", headers={"X-API-Key": key})
    assert_problem(response, 429, "rate_limit_exceeded")
    assert response.headers["X-RateLimit-Remaining"] == "0"


def test_two_window_failed_attempt_limit_refuses_with_429_on_every_storage(
    build: Callable[..., Any], storage_uri: str, database_url: str
) -> None:
    """Both windows of one address are counted together (one Cluster slot): 401s, then 429."""
    app, _ = build(storage_uri, database_url, APIKEYS_FAILED_AUTH_LIMIT="3/minute;50/hour")
    bad = {"X-API-Key": "pk_live_" + "q" * 46}
    client = app.test_client()
    statuses = [client.get("/v1/whoami", headers=bad).status_code for _ in range(5)]
    assert statuses == [401, 401, 401, 429, 429]


@pytest.mark.parametrize("who", ["key", "anonymous"])
def test_two_window_default_limit_is_enforced_on_every_storage(
    build: Callable[..., Any], storage_uri: str, database_url: str, who: str
) -> None:
    """``APIKEYS_DEFAULT_RATE_LIMIT`` with two windows, for a key and for anonymous callers."""
    app, apikeys = build(
        storage_uri,
        database_url,
        APIKEYS_DEFAULT_RATE_LIMIT="3/minute;50/hour",
        APIKEYS_ALLOW_UNAUTHENTICATED=True,
        APIKEYS_PLANS={
            "open": {"requests_per_minute": None, "monthly_requests": None, "max_keys": None}
        },
    )
    headers = {}
    if who == "key":  # neither the key nor its plan sets a limit: the default applies
        with app.app_context():
            org = apikeys.create_organization(name="A", email="a@a.io", plan="open").id
            headers["X-API-Key"] = apikeys.create_key(org, "k", scopes=["*"]).key
    client = app.test_client()
    responses = [client.get("/v1/whoami", headers=headers) for _ in range(4)]
    assert [response.status_code for response in responses] == [200, 200, 200, 429]
    assert [response.headers["X-RateLimit-Remaining"] for response in responses] == [
        "2",
        "1",
        "0",
        "0",
    ]


def redis_client(storage_uri: str) -> Any:
    """A redis-py client for a plain or cluster storage URI of the fixtures."""
    if storage_uri.startswith("redis+cluster://"):
        host, port = storage_uri.removeprefix("redis+cluster://").split(",")[0].split(":")
        return redis.cluster.RedisCluster(host=host, port=int(port))
    return redis.Redis.from_url(storage_uri)


@pytest.mark.parametrize("fail_open", [True, False])
@pytest.mark.parametrize(
    "deployment",
    [
        pytest.param("redis_url", marks=pytest.mark.redis, id="redis"),
        pytest.param(
            "redis_cluster_url", marks=[pytest.mark.redis_cluster, pytest.mark.slow], id="cluster"
        ),
    ],
)
def test_any_storage_error_fails_open_or_closed_as_documented(
    build: Callable[..., Any],
    database_url: str,
    request: pytest.FixtureRequest,
    deployment: str,
    fail_open: bool,
) -> None:
    """An error Redis answers (not only an unreachable server) is a storage error: the request
    passes or gets a 503 as ``APIKEYS_RATELIMIT_FAIL_OPEN`` says, never a 500."""
    storage_uri = request.getfixturevalue(deployment)
    app, apikeys = build(storage_uri, database_url, APIKEYS_RATELIMIT_FAIL_OPEN=fail_open)
    with app.app_context():
        org = apikeys.create_organization(name="A", email="a@a.io").id
        created = apikeys.create_key(org, "k", scopes=["*"], rate_limit="3/minute")
    limits = app.extensions["apikeys"].limits
    with app.app_context():
        counter = limits.counters_of(apikeys.verify_key(created.key))["apikey"]
        stored_as = limits.counters.storage.prefixed_key(counter.key)
    client = redis_client(storage_uri)
    try:  # the key's counter holds a list: INCRBY inside the script fails (WRONGTYPE)
        client.rpush(stored_as, "x")
        response = app.test_client().get("/v1/whoami", headers={"X-API-Key": created.key})
    finally:
        client.close()
    if fail_open:
        assert response.status_code == 200
        assert "X-RateLimit-Limit" not in response.headers
    else:
        assert_problem(response, 503, "backend_unavailable")


@pytest.mark.redis_cluster
@pytest.mark.slow
def test_counters_in_different_cluster_slots_are_still_taken_all_or_none(
    redis_cluster_url: str,
) -> None:
    """Counters a caller did not tag into one slot cannot go in one script call: they are
    taken one by one, and given back when one refuses, instead of failing the request."""
    storage = storage_from_string(redis_cluster_url)
    counters = counters_for(storage)
    try:
        loose = (Counter("{one}", 5, 60), Counter("{two}", 1, 60))
        assert [counters.take(loose).refused for _ in range(3)] == [None, 1, 1]
        assert [counters.peek(counter)[0] for counter in loose] == [1, 1]
        # What the cluster client raises for one call across slots counts as a storage error.
        with pytest.raises(counters.errors):
            storage.get_connection().eval("return 1", 2, "{one}", "{two}")
    finally:
        counters.close()
        storage.storage.close()
