"""The one bounded cache behind the small in-process caches."""

from __future__ import annotations

from flask_apikeys.boundedcache import BoundedCache


def test_a_full_cache_is_emptied_before_the_next_entry() -> None:
    cache: BoundedCache[int, str] = BoundedCache(max_entries=3)
    for number in range(3):
        cache.put(number, str(number))
    assert [cache.get(number) for number in range(3)] == ["0", "1", "2"]
    assert cache.put(3, "3") == "3"
    assert len(cache) == 1
    assert cache.get(0) is None
    assert cache.get(3) == "3"


def test_a_cache_past_its_byte_budget_is_emptied() -> None:
    cache: BoundedCache[str, bytes] = BoundedCache(max_entries=100, max_bytes=1000)
    cache.put("a", b"a", size=600)
    cache.put("b", b"b", size=300)
    assert cache.size == 900
    cache.put("c", b"c", size=200)  # 1100 > 1000: emptied first
    assert "a" not in cache
    assert "b" not in cache
    assert cache.get("c") == b"c"
    assert cache.size == 200


def test_pop_and_clear_forget_entries() -> None:
    cache: BoundedCache[str, int] = BoundedCache(max_entries=10, max_bytes=100)
    cache.put("x", 1, size=10)
    assert cache.pop("x") == 1
    assert cache.pop("x", None) is None
    cache.put("y", 2, size=10)
    cache.clear()
    assert len(cache) == 0
    assert cache.size == 0
