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
        its own counters named."""
        limits = self.limits
        counters = self.shared + tuple(
            [
                Counter(
                    f"{own.prefix}{key_id}{own.suffix}", own.limit, own.window_seconds, own.sliding
                )
                for own in self.own
            ]
        )
        return KeyLimits(
            limits.names,
            counters,
            limits.policy_header,
            limits.quota_index,
            limits.field_prefixes,
            limits.amounts,
            limits.amount_texts,
        )
