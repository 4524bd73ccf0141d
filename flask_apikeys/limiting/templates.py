"""The limits of a key configuration, built once and shared by every key that has it.

Most keys of an organization have the same limits (its plan's defaults, or no custom limit at
all): the same quota and organization counters, the same policies, the same header texts. Only
the storage keys of a key's own counters name the key. A :class:`LimitsTemplate` holds all of
it with the key left out, so the first request of a key not seen yet (a cold key: most keys of
a multi-tenant API) parses nothing and formats no header text: it names its own counters and
takes the rest as they are.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .counters import Counter
from .policies import KeyLimits

#: Stands for the key's id in a template's counter keys (a key id never contains it).
KEY_PLACEHOLDER = "\x00"


@dataclass(frozen=True, slots=True)
class OwnCounter:
    """A key's own counter with the key's id left out: its storage key is ``prefix`` + the
    key's id + ``suffix``."""

    prefix: str
    suffix: str
    limit: int
    window_seconds: int
    sliding: bool


@dataclass(frozen=True, slots=True)
class LimitsTemplate:
    """A key configuration's :class:`~.policies.KeyLimits` with :data:`KEY_PLACEHOLDER` for
    the key's id: :meth:`for_key` fills it in."""

    limits: KeyLimits
    #: The counters every key of the configuration shares (quota, organization): the first
    #: ones, in the order of ``limits.counters``.
    shared: tuple[Counter, ...]
    #: The key's own counters, after the shared ones.
    own: tuple[OwnCounter, ...]

    @classmethod
    def of(cls, limits: KeyLimits) -> LimitsTemplate:
        """The template of ``limits`` built with :data:`KEY_PLACEHOLDER` as the key's id."""
        shared: list[Counter] = []
        own: list[OwnCounter] = []
        for counter in limits.counters:
            prefix, placeholder, suffix = counter.key.partition(KEY_PLACEHOLDER)
            if not placeholder:
                if own:
                    raise ValueError("a key's own counters must come after the shared ones")
                shared.append(counter)
                continue
            own.append(
                OwnCounter(prefix, suffix, counter.limit, counter.window_seconds, counter.sliding)
            )
        return cls(limits, tuple(shared), tuple(own))

    def for_key(self, key_id: str) -> KeyLimits:
        """The limits of the key whose id is ``key_id``: shared counters and texts as they are,
        its own counters named.

        A cold key's first request builds them, so the frozen dataclasses are filled by plain
        slot stores (:class:`_KeyLimitsFields`): their constructors set each field through
        ``object.__setattr__``, which cost three times as much (``bench/README.md``).
        """
        limits = self.limits
        counters = self.shared + tuple(
            [
                _counter(
                    f"{own.prefix}{key_id}{own.suffix}", own.limit, own.window_seconds, own.sliding
                )
                for own in self.own
            ]
        )
        named: Any = object.__new__(_KeyLimitsFields)  # typed by what it becomes
        named.names = limits.names
        named.counters = counters
        named.policy_header = limits.policy_header
        named.quota_index = limits.quota_index
        named.field_prefixes = limits.field_prefixes
        named.amounts = limits.amounts
        named.amount_texts = limits.amount_texts
        named.__class__ = KeyLimits
        return named  # type: ignore[no-any-return]


class _KeyLimitsFields:
    """The memory layout of :class:`~.policies.KeyLimits` without its frozen ``__setattr__``:
    filled by plain attribute stores, then made a ``KeyLimits`` (``__class__`` assignment,
    allowed between classes of the same slots), as
    :func:`~flask_apikeys.identity.build_verified_key` does for snapshots."""

    __slots__ = KeyLimits.__slots__


class _CounterFields:
    """The same for :class:`~.counters.Counter`."""

    __slots__ = Counter.__slots__


def _counter(key: str, limit: int, window_seconds: int, sliding: bool) -> Counter:
    """``Counter(key, limit, window_seconds, sliding)``, by plain slot stores."""
    counter: Any = object.__new__(_CounterFields)
    counter.key = key
    counter.limit = limit
    counter.window_seconds = window_seconds
    counter.sliding = sliding
    counter.__class__ = Counter
    return counter  # type: ignore[no-any-return]
