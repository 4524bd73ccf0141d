"""Scope grammar and matching (pure: the view decorators are in :mod:`flask_apikeys.decorators`).

A scope reads ``resource:action`` (``presentations:read``). ``*`` grants everything,
``resource:*`` grants every action on that resource (and on any deeper ``resource:x:y``), and
``*:action`` grants that action on every resource (``*:read``).
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterable

from .keys import looks_like_access_token, looks_like_key

SCOPE_PATTERN = re.compile(r"\*|(?:\*|[A-Za-z0-9_.\-]+)(?::(?:[A-Za-z0-9_.\-]+|\*))*")
MAX_SCOPE_LENGTH = 100


def validate_scope(scope: object) -> str:
    """Return ``scope`` if well formed, else raise ``ValueError`` saying why."""
    if not isinstance(scope, str) or len(scope) > MAX_SCOPE_LENGTH:
        raise ValueError(
            f"scope {scope!r} must be a string of at most {MAX_SCOPE_LENGTH} characters"
        )
    if looks_like_key(scope) or looks_like_access_token(scope):
        # A pasted key fits the grammar: it would be stored, listed and put in tokens.
        raise ValueError("a scope must not be an API key or access token (revoke it if it is real)")
    if not SCOPE_PATTERN.fullmatch(scope):
        raise ValueError(
            f"scope {scope!r} must look like 'resource:action', 'resource:*' or '*' "
            "(letters, digits, '_', '.', '-')"
        )
    return scope


def scope_grants(granted: Collection[str], needed: str) -> bool:
    """Whether the ``granted`` scopes cover the ``needed`` one, wildcards included."""
    if needed in granted or "*" in granted:
        return True
    action_start = needed.rfind(":")
    if action_start != -1 and "*" + needed[action_start:] in granted:
        return True
    position = needed.find(":")
    while position != -1:
        if needed[:position] + ":*" in granted:
            return True
        position = needed.find(":", position + 1)
    return False


def _covers_one(granted: str, scope: str) -> bool:
    """Whether everything ``scope`` grants, ``granted`` grants too (one pattern each)."""
    if granted == "*":
        return True
    if not scope_grants((granted,), scope):
        return False
    if scope == "*":
        return False
    # ``*:action`` also grants that action on every resource: only ``*`` or itself covers that.
    if scope.startswith("*:") and scope.count(":") == 1 and granted != scope:
        return False
    # ``resource:*`` also grants everything under ``resource:``: a prefix family must hold it.
    if scope.endswith(":*"):
        return granted.endswith(":*") and scope[:-1].startswith(granted[:-1])
    return True


def scope_covers(granted: Collection[str], scope: str) -> bool:
    """Whether the ``granted`` scopes grant everything that ``scope``, itself granted, would.

    :func:`scope_grants` answers for a scope a view *needs*; this answers for a scope being
    *handed out*, wildcards and all: ``*:*`` grants ``x:*`` when needed, but handing out
    ``x:*`` would grant ``x:anything``, which ``*:*`` never does. Errs toward refusing.
    """
    return any(_covers_one(held, scope) for held in granted)


def normalize_scopes(scopes: Iterable[str] | str | None) -> list[str]:
    """Validate, de-duplicate and sort scopes given as a list or a comma-separated string."""
    if scopes is None:
        return []
    if isinstance(scopes, str):
        scopes = [part.strip() for part in scopes.split(",") if part.strip()]
    return sorted({validate_scope(scope) for scope in scopes})
