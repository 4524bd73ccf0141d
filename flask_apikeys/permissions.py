"""Permission levels and named roles, and how they become a key's effective scopes.

A key's effective scopes are the union of its own scopes, its roles' scopes and its level's:

``read-only``
    Safe methods only (GET, HEAD, OPTIONS), whatever a view's decorators say, and only
    ``…:read`` scopes: every granted scope is narrowed to its read form (``*`` → ``*:read``,
    ``presentations:*`` → ``presentations:read``) and anything else is dropped.
``read-write``
    ``*:read`` and ``*:write``, every method.
``admin``
    ``*``: everything, including the admin API for the key's own organization.

Roles are named scope lists from ``APIKEYS_ROLES``; they are expanded when a key is verified, so a
role's new definition reaches every key that has it as soon as its cached snapshot is refreshed.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from .scopes import scope_covers

READ_ONLY = "read-only"
READ_WRITE = "read-write"
ADMIN = "admin"
LEVELS = (READ_ONLY, READ_WRITE, ADMIN)
LEVEL_SCOPES: Mapping[str, frozenset[str]] = {
    READ_ONLY: frozenset({"*:read"}),
    READ_WRITE: frozenset({"*:read", "*:write"}),
    ADMIN: frozenset({"*"}),
}
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def narrow_to_read(scope: str) -> str | None:
    """The read form of a scope, or ``None`` when it grants no reading."""
    if scope == "*":
        return "*:read"
    resource, _, action = scope.rpartition(":")
    if not resource:
        return None
    if action == "*":
        return f"{resource}:read"
    return scope if action == "read" else None


def effective_scopes(
    own_scopes: Iterable[str],
    roles: Iterable[str],
    level: str | None,
    role_definitions: Mapping[str, Iterable[str]],
) -> frozenset[str]:
    """Everything a key may do: its scopes, its roles' and its level's, narrowed if read-only."""
    granted = set(own_scopes)
    for role in roles:
        granted.update(role_definitions.get(role, ()))
    if level is not None:
        granted |= LEVEL_SCOPES[level]
    if level == READ_ONLY:
        granted = {narrowed for scope in granted if (narrowed := narrow_to_read(scope))}
    return frozenset(granted)


def names_scope(
    scope: str,
    own_scopes: Iterable[str],
    roles: Iterable[str],
    role_definitions: Mapping[str, Iterable[str]],
) -> bool:
    """Whether a key holds ``scope`` by name, in its own scopes or its roles', not through a
    wildcard or a level.

    For a scope that reaches beyond the key's organization (the metrics name every
    organization): a tenant's ``*`` or admin key is the tenant's, never the operator's.
    """
    return scope in own_scopes or any(scope in role_definitions.get(role, ()) for role in roles)


def scopes_beyond(granter_scopes: Iterable[str], requested: Iterable[str]) -> list[str]:
    """The requested scopes that the granter's own scopes do not cover (no escalation)."""
    granted = frozenset(granter_scopes)
    return sorted(scope for scope in requested if not scope_covers(granted, scope))


def within_plan(scopes: frozenset[str], plan_scopes: Iterable[str] | None) -> frozenset[str]:
    """The part of a key's effective scopes that its organization's plan allows.

    Keys are checked against the plan when they are made; this keeps a key that a later plan
    change left with more (``*`` on a plan that now allows ``reports:read``) from using it.
    Where two wildcards overlap only partly (``*:read`` against ``reports:*``) the narrower
    meeting scope is kept (``reports:read``): the answer errs toward less, never more.
    """
    if plan_scopes is None:
        return scopes
    plan = frozenset(plan_scopes)
    candidates = set(scopes) | plan
    for every_resource in (scope for scope in scopes | plan if scope.startswith("*:")):
        action = every_resource[1:]  # ":read"
        candidates |= {
            resource[:-2] + action
            for resource in scopes | plan
            if resource.endswith(":*") and not resource.startswith("*")
        }
    return frozenset(
        scope for scope in candidates if scope_covers(scopes, scope) and scope_covers(plan, scope)
    )
