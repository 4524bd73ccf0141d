"""Blinker signals for key and organization events, authenticated requests and refusals.

Subscribe as to Flask's own signals (``flask.signals``): ``key_revoked.connect(receiver, app)``.
Each signal is sent with the app as its sender, inside its app context (and, for the request
signals, inside the request), so a receiver connected for one app hears only that app.
The audit trail and the Prometheus metrics subscribe to them like any other receiver. No
signal ever carries a key or a token: a refusal names its reason code, the key's prefix and
its last characters (the hint) at most.

This module imports only leaves of the package (keys, network), so every module can send.
"""

from __future__ import annotations

from typing import Any, TypeVar

from blinker import Namespace
from flask import current_app

from .keys import HINT_LENGTH, parse_key
from .network import client_address

_signals = Namespace()
LimitError = TypeVar("LimitError", bound=Exception)

#: A key was created (``api_key``: the stored :class:`~flask_apikeys.models.APIKey`, ``actor``).
key_created = _signals.signal("key-created")
#: A key's name, scopes, limits or expiry changed (``api_key``, ``actor``, ``changes``).
key_updated = _signals.signal("key-updated")
#: A key was revoked (``api_key``, ``actor``, ``reason``).
key_revoked = _signals.signal("key-revoked")
#: A key was rotated (``api_key``: the new key, ``previous``: the old one, ``actor``, ...).
key_rotated = _signals.signal("key-rotated")
#: An expired or long-revoked key was purged: its row, and its raw usage rows, deleted
#: (``api_key``: the record as it was, ``actor``).
key_purged = _signals.signal("key-purged")
#: An organization was created (``organization``, ``actor``).
organization_created = _signals.signal("organization-created")
#: An organization changed (``organization``, ``actor``, ``changes``).
organization_updated = _signals.signal("organization-updated")
#: A request was authenticated (``key``: the :class:`~flask_apikeys.identity.VerifiedKey`,
#: ``seconds``: how long verifying it took).
request_authenticated = _signals.signal("request-authenticated")
#: A presented key or token was refused (``code``, ``key_prefix``, ``key_hint``, ``address``).
credential_refused = _signals.signal("credential-refused")
#: A rate limit answered 429 (``error``: the :class:`~flask_apikeys.errors.RateLimitExceeded`).
rate_limit_refused = _signals.signal("rate-limit-refused")
#: The organization's monthly quota answered 429 (``error``: the ``QuotaExceeded``).
quota_refused = _signals.signal("quota-refused")
#: A usage writer wrote rows (sender: the :class:`~flask_apikeys.usage.writer.UsageWriter`;
#: ``count`` written, ``dropped``: refused by the database, or past
#: ``APIKEYS_USAGE_MAX_QUEUE``).
usage_rows_written = _signals.signal("usage-rows-written")
#: A usage writer took rows from its queue for the first time, before writing them (sender:
#: the :class:`~flask_apikeys.usage.writer.UsageWriter`; ``rows``: a tuple of the rows, each
#: in :data:`~flask_apikeys.usage.rows.TAKEN_FIELDS` order; a row queued while the signal had
#: no receiver has the stored columns only). Sent once per row, from the
#: writer's thread (or a scrape's, or the request's in ``sync`` mode), also for rows the
#: database will refuse or that are dropped later: one per authenticated request. Sent with
#: no app context; keep receivers quick (the writer waits for them).
usage_rows_taken = _signals.signal("usage-rows-taken")

#: The service's event names (as the audit trail records them) and their signals.
SERVICE_EVENTS = {
    "key.created": key_created,
    "key.updated": key_updated,
    "key.revoked": key_revoked,
    "key.rotated": key_rotated,
    "key.purged": key_purged,
    "organization.created": organization_created,
    "organization.updated": organization_updated,
}


def send_service_event(event: str, **details: Any) -> None:
    """Send the signal of a service event (``"key.revoked"``) with the current app as sender."""
    signal = SERVICE_EVENTS[event]
    if signal.receivers:
        signal.send(current_app._get_current_object(), **details)  # type: ignore[attr-defined]


def send_authenticated(outcome: Any, seconds: float) -> None:
    """Send :data:`request_authenticated` for a verified key (nothing for a refusal), with the
    seconds its verification took (``seconds``)."""
    if not isinstance(outcome, Exception):
        request_authenticated.send(
            current_app._get_current_object(),  # type: ignore[attr-defined]
            key=outcome,
            seconds=seconds,
        )


def send_limit_refusal(error: LimitError) -> LimitError:
    """Send :data:`quota_refused` or :data:`rate_limit_refused` for a 429 about to be raised,
    and return the error (the limits call it where they build one)."""
    code = getattr(error, "error_code", None)
    signal = quota_refused if code == "quota_exceeded" else rate_limit_refused
    if signal.receivers:
        signal.send(current_app._get_current_object(), error=error)  # type: ignore[attr-defined]
    return error


def send_credential_refusal(
    error: Any, environ: dict[str, Any], presented: str, settings: Any
) -> None:
    """Send :data:`credential_refused`: the reason code, and the prefix and hint of what was
    presented when it is shaped like a key (never the rest of it)."""
    parsed = parse_key(presented)
    credential_refused.send(
        current_app._get_current_object(),  # type: ignore[attr-defined]
        code=error.error_code,
        key_prefix=None if parsed is None else parsed.display_prefix,
        key_hint=None if parsed is None else presented[-HINT_LENGTH:],
        address=client_address(environ, settings.trusted_proxies),
    )
