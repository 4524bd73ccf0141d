"""The Redis rate-limit script and its caller: what goes on the wire, and what comes back."""

from __future__ import annotations

import uuid

import pytest
import redis
from limits.storage import RedisStorage, storage_from_string

from flask_apikeys.limiting.counters import Counter, RedisCounters
from flask_apikeys.limiting.redis_script import (
    TAKE_ALL_SCRIPT,
    ScriptCaller,
    _bulk,
    caller_for,
    parse_take_reply,
)


@pytest.mark.parametrize(
    ("keys", "args"),
    [
        (["apikeys:{org}:key:1:60"], [1, 1000, 60, 1]),
        (["clé-é", "鍵"], [3, "x", 10**15, -1]),
        ([], []),
    ],
)
def test_script_caller_frames_a_command_as_redis_py_packs_it(
    keys: list[str], args: list[int | str]
) -> None:
    caller = ScriptCaller(redis.Redis().connection_pool, "return 1")  # no I/O until called
    head, tail = caller._framing(len(keys), args)
    framed = head + b"".join(_bulk(key.encode()) for key in keys) + tail
    packed = caller._packer.pack_command("EVALSHA", caller._sha, len(keys), *keys, *args)
    assert framed == b"".join(packed)


@pytest.mark.redis
def test_script_caller_runs_the_script_on_keys_of_any_text(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    caller = caller_for(client, "return redis.call('INCRBY', KEYS[1], ARGV[1])")
    assert caller is not None
    key = f"clé-{uuid.uuid4()}"
    try:
        assert caller([key], [5]) == 5
        assert caller([key], [7]) == 12  # the second call reuses the packed arguments' slot
        assert int(client.get(key.encode())) == 12
    finally:
        caller.close()
        client.close()


@pytest.mark.redis
@pytest.mark.parametrize("sliding", [False, True], ids=["fixed", "sliding"])
def test_take_all_reply_holds_large_counts_exactly(redis_url: str, sliding: bool) -> None:
    """The reply is text the script formats: values past 2**32 and 10**14 stay integers."""
    storage = storage_from_string(redis_url)
    assert isinstance(storage, RedisStorage)
    counters = RedisCounters(storage)
    tag = uuid.uuid4()
    taken = (
        Counter(f"{{{tag}}}:big", 10**15, 86400, sliding),
        Counter(f"{{{tag}}}:small", 4 * 10**9, 86400, sliding),
    )
    try:
        first = counters.take(taken, 3 * 10**9)
        assert first.refused is None
        assert first.values == (3 * 10**9, 3 * 10**9)
        refused = counters.take(taken, 2 * 10**9)  # the second counter has 1e9 left
        assert refused.refused == 1
        assert refused.values[0] == 3 * 10**9  # nothing taken from the first
    finally:
        counters.close()
        storage.storage.close()


@pytest.mark.redis
def test_take_all_reply_is_the_same_through_redis_pys_script_object(redis_url: str) -> None:
    """Sentinel and Cluster clients call the script through redis-py's ``Script``."""
    client = redis.Redis.from_url(redis_url)
    script = client.register_script(TAKE_ALL_SCRIPT)
    tag = uuid.uuid4()
    keys = [f"{{{tag}}}:minute", f"{{{tag}}}:hour"]
    try:
        refused, values, resets = parse_take_reply(
            script(keys=keys, args=[2, 5, 60, 1, 3, 3600, 0])
        )
        assert (refused, values) == (0, [2, 2])
        assert 0 < resets[0] <= 60_000 and 0 < resets[1] <= 3_600_000
        refused, values, _ = parse_take_reply(script(keys=keys, args=[2, 5, 60, 1, 3, 3600, 0]))
        assert (refused, values) == (2, [2, 2])  # the hour would pass 3: neither is taken
    finally:
        client.close()
