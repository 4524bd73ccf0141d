"""The service layer's one object per app: the parts it is made of, built around one store.

:class:`KeyService` builds the parts around one :class:`~.store.Store`; a caller asks the part
that owns an operation (``service.keys.create_key(...)``, ``service.organizations.plan_of(...)``,
``service.verification.verify_key(...)``): the admin API, the CLI, the dashboard and
:class:`~flask_apikeys.APIKeys` alike.
"""

from __future__ import annotations

from collections.abc import Callable

from sqlalchemy.orm import Session

from ..cache import VerifiedKeyCache
from ..config import Settings
from ..hashing import KeyHasher
from .grants import Grants
from .lifecycle import KeyLifecycle
from .organizations import Organizations
from .reports import UsageReports
from .retention import Retention
from .store import Store
from .verification import Verification


class KeyService:
    """Organizations and keys: create, read, update, revoke, rotate, verify and report usage.

    One per app (``app.extensions["apikeys"].service``), made of the parts below; call the part
    that owns an operation. Every operation validates all of its input before writing anything,
    commits on success and rolls back on failure, so a refused call leaves the database as it
    was; errors are the classes of :mod:`flask_apikeys.errors`.
    """

    def __init__(
        self,
        *,
        session: Callable[[], Session],
        settings: Settings,
        hasher: KeyHasher,
        cache: VerifiedKeyCache,
    ) -> None:
        #: :class:`~.store.Store`: session, reads, commits, pages and events, shared by every part.
        self.store = Store(session=session, settings=settings, hasher=hasher, cache=cache)
        #: :class:`~.organizations.Organizations`: create, read, update, plans and limits.
        self.organizations = Organizations(self.store)
        #: :class:`~.grants.Grants`: what a new or changed key may be given, and by whom.
        self.grants = Grants(self.store, self.organizations)
        #: :class:`~.lifecycle.KeyLifecycle`: create, list, read, update, revoke, rotate, seed,
        #: define a role.
        self.keys = KeyLifecycle(self.store, self.organizations, self.grants)
        #: :class:`~.verification.Verification`: a presented key checked, a key's snapshot.
        self.verification = Verification(self.store, self.organizations)
        #: :class:`~.reports.UsageReports`: usage of an organization or key, by range or month.
        self.reports = UsageReports(self.store, self.organizations, self.keys)
        #: :class:`~.retention.Retention`: usage pruning, rollup backfill, key purge.
        self.retention = Retention(self.store)
