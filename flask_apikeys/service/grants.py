"""Nobody gets more than they hold: what a new or changed key may be given, and by whom.

A key made through the admin API is granted by the key that asked for it; it may hold no
scope, later expiry, higher rate limit or network beyond that key's, and nothing beyond its
organization's plan. The CLI, the bootstrap key and Python code are trusted (``granted_by``
is ``None``) but still bounded by the plan.
"""

from __future__ import annotations

from typing import Any

from ..errors import InsufficientScope
from ..identity import VerifiedKey
from ..limiting.policies import allows_more, per_minute
from ..models import APIKey, Organization
from ..network import networks_beyond
from ..permissions import effective_scopes, names_scope, scopes_beyond, within_plan
from .organizations import Organizations
from .store import Store


class Grants:
    """The no-escalation check of key creation, update and rotation."""

    def __init__(self, store: Store, organizations: Organizations) -> None:
        self.store = store
        self.organizations = organizations

    def refuse_escalation(
        self, organization: Organization, values: dict[str, Any], granted_by: VerifiedKey | None
    ) -> None:
        """Nobody gets more than they hold: refuse (403) a resulting key beyond its plan's
        scopes, or beyond anything its granter holds (see
        :meth:`~.lifecycle.KeyLifecycle.create_key`)."""
        requested = effective_scopes(
            values.get("scopes") or (),
            values.get("roles") or (),
            values.get("level"),
            self.store.role_definitions,
        )
        plan_scopes = self.organizations.plan_of(organization).scopes
        beyond_plan = [] if plan_scopes is None else scopes_beyond(plan_scopes, requested)
        if beyond_plan:
            raise InsufficientScope(
                f"Plan {organization.plan!r} does not allow: {', '.join(beyond_plan)}.",
                beyond=beyond_plan,
            )
        if granted_by is None:
            return
        # The granter's row as it is now, not its cached snapshot: a key revoked, narrowed or
        # rotated a moment ago (in another process too) grants no more than it has left.
        granter = self.store.read(
            lambda: self.store.session.get(APIKey, granted_by.id, populate_existing=True)
        )
        if granter is None or granter.revoked_at is not None or not granter.is_active:
            raise InsufficientScope("A revoked key cannot grant anything.")
        if granter.replaced_by_id is not None:
            raise InsufficientScope(
                "A key replaced in a rotation works only until its overlap ends: it may not "
                "create, rotate or change keys. Use the key that replaced it."
            )
        held_now = effective_scopes(
            granter.scopes or (), granter.roles or (), granter.level, self.store.role_definitions
        )
        beyond = sorted(
            set(scopes_beyond(granted_by.scopes, requested))
            | set(scopes_beyond(within_plan(held_now, plan_scopes), requested))
        )
        if beyond:
            raise InsufficientScope(
                f"A key cannot grant what it does not have: {', '.join(beyond)}.", beyond=beyond
            )
        # Nor a scope that reaches beyond the organization, unless it holds it by name.
        operator_scope = self.store.settings.metrics_scope
        definitions = self.store.role_definitions
        if names_scope(
            operator_scope, values.get("scopes") or (), values.get("roles") or (), definitions
        ) and not names_scope(
            operator_scope, granter.scopes or (), granter.roles or (), definitions
        ):
            raise InsufficientScope(
                f"Only a key given {operator_scope} by name may hand it out: it reads every "
                "organization's metrics. An operator grants it with the CLI or the bootstrap key.",
                beyond=[operator_scope],
            )
        expires_at = values.get("expires_at")
        if granter.expires_at is not None and (
            expires_at is None or expires_at > granter.expires_at
        ):
            raise InsufficientScope(
                "A key that expires cannot make or keep a key that outlives it "
                f"(it expires at {granter.expires_at.isoformat()}); "
                "an operator renews such keys with the CLI or the bootstrap key."
            )
        organization_limit = per_minute(
            self.organizations.plan_of(organization).requests_per_minute,
            self.store.settings.default_rate_limit,
        )
        granted_limit = values.get("custom_rate_limit") or organization_limit
        held_limit = granter.custom_rate_limit or organization_limit
        if allows_more(granted_limit, held_limit):
            raise InsufficientScope(
                f"A key cannot grant a rate limit above its own ({held_limit}): "
                f"{granted_limit} allows more requests in a minute or in one of its windows."
            )
        networks = networks_beyond(
            granter.allowed_networks or (), values.get("allowed_networks") or ()
        )
        if networks:
            raise InsufficientScope(
                "A key cannot grant networks outside its own allowed_networks: "
                f"{', '.join(networks)}.",
                beyond_networks=networks,
            )
