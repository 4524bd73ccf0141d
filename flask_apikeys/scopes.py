"""Scope matching and the view decorators that demand scopes.

A scope reads ``resource:action`` (``presentations:read``). ``*`` grants everything,
``resource:*`` grants every action on that resource (and on any deeper ``resource:x:y``), and
``*:action`` grants that action on every resource (``*:read``).
"""

from __future__ import annotations

import functools
import inspect
import re
from collections.abc import Callable, Collection, Iterable
from typing import Any, TypeVar

from flask import current_app, request

from .errors import APIKeyError, InsufficientScope, MissingAPIKey

ViewFunction = TypeVar("ViewFunction", bound=Callable[..., Any])
SCOPE_PATTERN = re.compile(r"\*|(?:\*|[A-Za-z0-9_.\-]+)(?::(?:[A-Za-z0-9_.\-]+|\*))*")
MAX_SCOPE_LENGTH = 100
#: How many distinct scope sets each decorated view remembers its answer for.
MAX_REMEMBERED_SCOPE_SETS = 1024


def validate_scope(scope: object) -> str:
    """Return ``scope`` if well formed, else raise ``ValueError`` saying why."""
    if not isinstance(scope, str) or len(scope) > MAX_SCOPE_LENGTH:
        raise ValueError(
            f"scope {scope!r} must be a string of at most {MAX_SCOPE_LENGTH} characters"
        )
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


def _scope_decorator(
    required: tuple[str, ...], *, require_all: bool
) -> Callable[[ViewFunction], ViewFunction]:
    for scope in required:
        validate_scope(scope)
    if not required:
        raise ValueError("name at least one scope")
    wording = "all of" if require_all else "one of"

    required_set = frozenset(required)
    check = all if require_all else any
    #: granted scopes → whether they cover ``required``: keys share a few scope sets, and a
    #: snapshot's set is the same object on every request, so the answer is one lookup.
    answers: dict[frozenset[str], bool] = {}

    def granted(scopes: frozenset[str]) -> bool:
        answer = answers.get(scopes)
        if answer is None:
            answer = (require_all and required_set <= scopes) or check(
                scope_grants(scopes, scope) for scope in required
            )
            if len(answers) >= MAX_REMEMBERED_SCOPE_SETS:
                answers.clear()
            answers[scopes] = answer
        return answer

    def decorator(view: ViewFunction) -> ViewFunction:
        # Imported here: auth.py depends on this module's matching functions.
        from .auth import OUTCOME_ENVIRON_KEY, authenticate

        is_async = inspect.iscoroutinefunction(view)

        @functools.wraps(view)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            current_request = request._get_current_object()  # type: ignore[attr-defined]
            if current_request.method != "OPTIONS":
                outcome = current_request.environ.get(OUTCOME_ENVIRON_KEY)
                if outcome is None or isinstance(outcome, APIKeyError):
                    # The hook did not authenticate (public path, disabled) or refused: decide.
                    state = current_app.extensions["apikeys"]
                    enabled = state.settings.enabled
                    outcome = authenticate(current_request, state) if enabled else True
                if outcome is None:
                    raise MissingAPIKey("This endpoint needs an API key.")
                if outcome is not True and not granted(outcome.scopes):
                    raise InsufficientScope(
                        f"This endpoint needs {wording}: {', '.join(required)}.",
                        required_scopes=list(required),
                    )
            if is_async:
                return current_app.ensure_sync(view)(*args, **kwargs)
            return view(*args, **kwargs)

        wrapper._apikeys_scopes = (wording, required)  # type: ignore[attr-defined]
        return wrapper  # type: ignore[return-value]

    return decorator


def require_scopes(*scopes: str) -> Callable[[ViewFunction], ViewFunction]:
    """Let the view run only for a key holding every one of ``scopes`` (401, else 403)."""
    return _scope_decorator(scopes, require_all=True)


def require_any_scope(*scopes: str) -> Callable[[ViewFunction], ViewFunction]:
    """Let the view run for a key holding at least one of ``scopes`` (401, else 403)."""
    return _scope_decorator(scopes, require_all=False)


def public(view: ViewFunction) -> ViewFunction:
    """Mark a view as needing no key: the hook skips it entirely."""
    view._apikeys_public = True  # type: ignore[attr-defined]
    return view


def normalize_scopes(scopes: Iterable[str] | str | None) -> list[str]:
    """Validate, de-duplicate and sort scopes given as a list or a comma-separated string."""
    if scopes is None:
        return []
    if isinstance(scopes, str):
        scopes = [part.strip() for part in scopes.split(",") if part.strip()]
    return sorted({validate_scope(scope) for scope in scopes})
