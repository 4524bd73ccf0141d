"""Sliding windows (the default strategy) against fixed ones: a burst at a window boundary,
the headers a sliding count gives, and exactness on every storage.

The clock of the limits (:data:`flask_apikeys.limiting.windows.now`) is replaced where a test
crosses a boundary, so nothing sleeps; on Redis the script reads Redis' own clock.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from flask import Flask

from flask_apikeys.limiting import windows
from flask_apikeys.limiting.counters import Counter, Counters

from .factory import create_app
from .test_limiting_redis import counters  # noqa: F401 - the fixture: every implementation

LIMIT = 10
#: A minute boundary (a multiple of 60) in the future of the test.
BOUNDARY = 1_900_000_020.0


class Clock:
    """The limits' clock, moved by hand."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    clock = Clock(BOUNDARY - 60)
    monkeypatch.setattr(windows, "now", clock)
    return clock


@pytest.fixture
def limited(database_url: str) -> Iterator[Callable[..., tuple[Flask, str]]]:
    """An app with the given strategy and one key limited to LIMIT a minute."""
    apps: list[Flask] = []

    def make(strategy: str, **config: Any) -> tuple[Flask, str]:
        app, _, apikeys = create_app(
            database_url,
            APIKEYS_RATELIMIT_STRATEGY=strategy,
            APIKEYS_RATELIMIT_HEADERS="all",
            **config,
        )
        with app.app_context():
            apikeys.create_all()
            org = apikeys.create_organization(name="A", email="a@a.io", plan="enterprise")
            key = apikeys.create_key(org, "k", scopes=["*"], rate_limit=f"{LIMIT}/minute").key
        apps.append(app)
        return app, key

    yield make
    for app in apps:
        app.extensions["apikeys"].extension.close(app)


def burst(app: Flask, key: str, count: int) -> list[int]:
    client = app.test_client()
    return [client.get("/v1/whoami", headers={"X-API-Key": key}).status_code for _ in range(count)]


@pytest.mark.parametrize("storage", ["memory://", "database"])
@pytest.mark.parametrize(
    ("strategy", "admitted"), [("fixed-window", 2 * LIMIT), ("sliding-window", LIMIT)]
)
def test_a_burst_at_a_window_boundary_gets_twice_the_limit_through_only_a_fixed_window(
    limited: Callable[..., tuple[Flask, str]],
    clock: Clock,
    strategy: str,
    admitted: int,
    storage: str,
) -> None:
    app, key = limited(strategy, APIKEYS_RATELIMIT_STORAGE_URI=storage)
    assert burst(app, key, 1) == [200]  # a fixed window starts here, a minute before BOUNDARY
    clock.now = BOUNDARY - 0.5
    before = burst(app, key, 2 * LIMIT)
    clock.now = BOUNDARY + 0.5
    after = burst(app, key, 2 * LIMIT)
    # One second around the boundary; plus the first request, one minute earlier.
    assert 1 + before.count(200) + after.count(200) == admitted
    # The documented bound of the sliding estimate, 0.5 s into the new window.
    if strategy == "sliding-window":
        assert after.count(200) <= math.floor(LIMIT * 0.5 / 60)


@pytest.mark.parametrize("storage", ["memory://", "database"])
def test_retry_after_and_remaining_follow_the_sliding_estimate(
    limited: Callable[..., tuple[Flask, str]], clock: Clock, storage: str
) -> None:
    app, key = limited("sliding-window", APIKEYS_RATELIMIT_STORAGE_URI=storage)
    client = app.test_client()

    def get() -> Any:
        return client.get("/v1/whoami", headers={"X-API-Key": key})

    clock.now = BOUNDARY - 30  # the middle of a window
    responses = [get() for _ in range(LIMIT)]
    assert [int(r.headers["X-RateLimit-Remaining"]) for r in responses] == list(
        range(LIMIT - 1, -1, -1)
    )
    assert responses[0].headers["X-RateLimit-Reset"] == str(int(BOUNDARY + 1))  # the window end
    refused = get()
    assert refused.status_code == 429
    # 10 in this window weigh 10 × (1 − x/60) in the next: 9 (room for one) at x = 6 s.
    assert refused.headers["Retry-After"] == str(math.ceil(BOUNDARY + 6 - clock.now))  # 36
    assert refused.headers["X-RateLimit-Reset"] == str(int(BOUNDARY + 6 + 1))
    clock.now = BOUNDARY + 5.9
    assert get().status_code == 429
    clock.now = BOUNDARY + 6
    admitted = get()
    assert admitted.status_code == 200
    assert admitted.headers["X-RateLimit-Remaining"] == "0"
    # 10 × (1 − 6/60) + 1 = 10; the next unit frees when 10 × (1 − x/60) + 1 ≤ 9: x = 12 s.
    assert admitted.headers["X-RateLimit-Reset"] == str(int(BOUNDARY + 12 + 1))
    clock.now = BOUNDARY + 30  # half of the last window's 10 counts: 5 + 1 + this one used
    fields = dict(member.strip().split(";", 1) for member in get().headers["RateLimit"].split(","))
    assert fields['"apikey"'] == "r=3;t=30"


def test_the_monthly_quota_stays_a_calendar_month_under_sliding_windows(
    app: Flask, clock: Clock
) -> None:
    apikeys = app.extensions["apikeys"].extension
    with app.app_context():
        org = apikeys.create_organization(
            name="Q", email="q@q.io", plan="enterprise", monthly_request_limit=3
        )
        key = apikeys.create_key(org, "k", scopes=["*"]).key
    assert burst(app, key, 4) == [200, 200, 200, 429]
    clock.now = BOUNDARY + 3600  # an hour later: a sliding window would have forgotten
    assert burst(app, key, 1) == [429]
    counters_of = app.extensions["apikeys"].limits.counters_of
    with app.app_context():
        taken = counters_of(apikeys.verify_key(key))
    assert not taken["quota"].sliding and taken["apikey"].sliding


def test_each_sliding_counter_is_exact_when_eight_threads_race(counters: Counters) -> None:  # noqa: F811
    # An hour's window: the race cannot straddle a boundary that would let a share through.
    counter = Counter("race" + windows.SLIDING_KEY_SUFFIX, LIMIT, 3600, sliding=True)
    barrier = threading.Barrier(8)

    def run(_: int) -> int:
        barrier.wait()
        return sum(counters.take((counter,)).refused is None for _ in range(LIMIT))

    with ThreadPoolExecutor(8) as pool:
        assert sum(pool.map(run, range(8))) == LIMIT
    assert counters.peek(counter)[0] == LIMIT


def test_sliding_counters_are_taken_all_or_none_with_the_same_resets_everywhere(
    counters: Counters,  # noqa: F811
) -> None:
    if time.time() % 60 > 55:  # the script reads Redis' clock: stay inside one minute
        time.sleep(60 - time.time() % 60 + 0.1)
    first, tight = (
        Counter("a" + windows.SLIDING_KEY_SUFFIX, 10, 60, sliding=True),
        Counter("b" + windows.SLIDING_KEY_SUFFIX, 2, 60, sliding=True),
    )
    quota = Counter("q", 100, 3600)
    outcomes = [counters.take((quota, first, tight)) for _ in range(4)]
    assert [outcome.refused for outcome in outcomes] == [None, None, 2, 2]
    assert outcomes[3].values == (2, 2, 2)  # the refusals consumed nothing
    now = time.time()
    window_end = 60 * (now // 60) + 60
    refused_reset = outcomes[3].resets[2]
    # b holds 2 of 2: one unit frees when 2 × (1 − x/60) ≤ 1 in the next window, x = 30 s.
    assert abs(refused_reset - (window_end + 30)) < 1.5, (refused_reset, window_end)
    assert abs(outcomes[3].resets[1] - window_end) < 1.5  # a has room: its window's end
