"""The view decorators: ``@require_scopes``, ``@require_any_scope`` and ``@public``.

A scoped view is authenticated and limited even where the hook let the request through (a
public path, a wrapper that hid the scopes from it): it runs the hook's
:func:`~flask_apikeys.hooks.admit` itself.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any, TypeVar

from flask import current_app, request

from .boundedcache import BoundedCache
from .environ import LIMITED_ENVIRON_KEY, OUTCOME_ENVIRON_KEY
from .errors import APIKeyError, InsufficientScope, MissingAPIKey
from .hooks import admit
from .scopes import scope_grants, validate_scope
from .state import get_state

ViewFunction = TypeVar("ViewFunction", bound=Callable[..., Any])
#: How many distinct scope sets each decorated view remembers its answer for.
MAX_REMEMBERED_SCOPE_SETS = 1024


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
    answers: BoundedCache[frozenset[str], bool] = BoundedCache(MAX_REMEMBERED_SCOPE_SETS)

    def granted(scopes: frozenset[str]) -> bool:
        answer = answers.get(scopes)
        if answer is None:
            answer = (require_all and required_set <= scopes) or check(
                scope_grants(scopes, scope) for scope in required
            )
            answers.put(scopes, answer)
        return answer

    def decorator(view: ViewFunction) -> ViewFunction:
        is_async = inspect.iscoroutinefunction(view)

        @functools.wraps(view)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            current_request = request._get_current_object()  # type: ignore[attr-defined]
            # No exception for OPTIONS: the view runs only when it handles OPTIONS itself
            # (Flask answers the others without it), and may then answer what GET does.
            environ = current_request.environ
            outcome = environ.get(OUTCOME_ENVIRON_KEY)
            if (
                outcome is None
                or isinstance(outcome, APIKeyError)
                or LIMITED_ENVIRON_KEY not in environ
            ):
                # The hook did not run for this view (a public path or view, a wrapper that
                # hid the scopes from it), or refused: do all it does, limits included.
                state = get_state()
                outcome = admit(current_request, state) if state.settings.enabled else True
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
