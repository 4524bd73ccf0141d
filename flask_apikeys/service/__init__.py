"""The service layer: every operation on organizations and keys, for the Python API, the admin
API and the CLI alike.

:class:`KeyService` (:mod:`~.key_service`) is made of parts, each in its own module, sharing one
:class:`~.store.Store` (session, reads, all-or-nothing commits, pages, events):
:class:`~.organizations.Organizations`, :class:`~.lifecycle.KeyLifecycle` (with the
no-escalation check of :class:`~.grants.Grants`), :class:`~.verification.Verification` and
:class:`~.reports.UsageReports`. :mod:`~.validation` checks the fields of every input.
"""

from __future__ import annotations

from .key_service import KeyService
from .lifecycle import DEFAULT_KEY_NAME, CreatedKey

__all__ = ["DEFAULT_KEY_NAME", "CreatedKey", "KeyService"]
