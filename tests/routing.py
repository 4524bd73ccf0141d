"""URL rules whose builder functions are compiled once per process, not once per app.

Every test builds a fresh app (``tests/factory.py``), and werkzeug compiles two Python
functions (``Rule._compile_builder``: an AST, then ``compile()``) for every rule it adds to an
app's URL map: about half of the CPU an app costs to build, the same functions each time.
The function is made from the rule's parts only and reaches its rule through its first
argument, so one compiled for ``/v1/items`` on one app builds the same URLs for the same rule
on any other map; we keep it and bind it to each new rule, as werkzeug binds its own.

``Rule._compile_builder`` is werkzeug's private method: if a release renames it, this class
simply compiles as usual, and ``tests/test_routing.py`` (which checks the cache is used, and
that every URL comes out the same as with werkzeug's own rules) says so.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import Any

from flask import Flask
from werkzeug.routing import Rule

BuilderKey = tuple[str, tuple[tuple[bool, str], ...], bool]
_builders: dict[BuilderKey, Callable[..., tuple[str, str]]] = {}


class SharedBuilderRule(Rule):
    """A werkzeug ``Rule`` that reuses the builder compiled for an identical rule."""

    def _compile_builder(self, append_unknown: bool = True) -> Callable[..., tuple[str, str]]:
        key = self._builder_key(append_unknown)
        if key is None:
            return super()._compile_builder(append_unknown)
        builder = _builders.get(key)
        if builder is None:
            builder = _builders[key] = super()._compile_builder(append_unknown)
        return builder

    def _builder_key(self, append_unknown: bool) -> BuilderKey | None:
        """What the builder is made of: the rule's static and variable parts, host or
        subdomain included. A rule with defaults folds them in through its converters: those
        are compiled as usual."""
        trace: Any = getattr(self, "_trace", None)
        if self.defaults or not isinstance(trace, list):
            return None
        parts = tuple(trace)
        if not all(isinstance(part, Hashable) for part in parts):
            return None
        return (self.rule, parts, append_unknown)


def shared_builders_compiled() -> int:
    """How many distinct builders this process compiled through :class:`SharedBuilderRule`."""
    return len(_builders)


class SharedRoutingFlask(Flask):
    """A plain Flask app whose URL rules share their compiled builders (see above)."""

    url_rule_class: type[Rule] = SharedBuilderRule
