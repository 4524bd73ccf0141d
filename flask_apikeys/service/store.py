"""What every part of the service layer shares: the session, reads and commits, pages, signals.

Reads turn a database that cannot be reached into a 503 and a value it refuses into a 422;
commits are all or nothing (a refused change rolls back as a whole). The settings, the hasher,
the verified-key cache and the role definitions live here too, so each part holds one object.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy.exc import DataError, IntegrityError, SQLAlchemyError
from sqlalchemy.orm import Session

from .. import signals
from ..cache import VerifiedKeyCache
from ..config import Settings
from ..database_errors import database_unavailable
from ..errors import InvalidInput
from ..hashing import KeyHasher
from ..storable import MAX_INTEGER

Result = TypeVar("Result")
#: Refusals of a *value* (by the database, or by the driver while binding it): the caller's
#: input is at fault, so a 422, not the 503 of a database that cannot be reached. Validation
#: refuses such values first; this is the net under it.
UNSTORABLE_ERRORS = (DataError, UnicodeError, OverflowError)


class Store:
    """The session and its safe use, shared by :class:`~.organizations.Organizations`,
    :class:`~.lifecycle.KeyLifecycle`, :class:`~.verification.Verification` and
    :class:`~.reports.UsageReports`."""

    def __init__(
        self,
        *,
        session: Callable[[], Session],
        settings: Settings,
        hasher: KeyHasher,
        cache: VerifiedKeyCache,
    ) -> None:
        self._session = session
        self.settings = settings
        self.hasher = hasher
        self.cache = cache
        #: Role name → scopes; starts from ``APIKEYS_ROLES``, changed by ``define_role``.
        self.role_definitions: dict[str, tuple[str, ...]] = dict(settings.roles)

    @property
    def session(self) -> Session:
        """The app's current session (Flask-SQLAlchemy's, scoped to the app context)."""
        return self._session()

    def read(self, operation: Callable[[], Result]) -> Result:
        """Run a query; a database that cannot be reached (or lacks the tables) becomes a 503,
        never a pass."""
        try:
            return operation()
        except UNSTORABLE_ERRORS as error:
            self.session.rollback()
            raise InvalidInput(
                "The database cannot take a value of this request; nothing was read."
            ) from error
        except SQLAlchemyError as error:
            self.session.rollback()
            raise database_unavailable(error) from error

    def commit(self, operation: Callable[[], None], *refresh: object) -> None:
        """Run ``operation`` and commit, or roll everything back and re-raise.

        The ``refresh`` objects are reloaded after the commit so that callers can read them
        after the app context (and its session) has ended.
        """
        try:
            operation()
            self.session.commit()
            for instance in refresh:
                self.session.refresh(instance)
        except IntegrityError as error:
            self.session.rollback()
            raise InvalidInput(
                "The change conflicts with existing data; nothing was saved."
            ) from error
        except UNSTORABLE_ERRORS as error:
            # A value the database refuses is the input's fault, never an outage (not a 503).
            self.session.rollback()
            raise InvalidInput(
                "The database cannot store a value of this change; nothing was saved."
            ) from error
        except SQLAlchemyError as error:
            self.session.rollback()
            raise database_unavailable(
                error, "The key database refused the change; nothing was saved."
            ) from error
        except BaseException:
            self.session.rollback()
            raise

    def page(self, query: sa.Select[Any], limit: int, offset: int) -> tuple[list[Any], int]:
        """A page of ``query``'s rows and how many rows there are in all."""
        errors = {
            **({} if 1 <= limit <= 500 else {"limit": ["1 to 500"]}),
            **({} if 0 <= offset <= MAX_INTEGER else {"offset": [f"0 to {MAX_INTEGER}"]}),
        }
        if errors:  # only the fields at fault: the caller fixes what it is told
            raise InvalidInput(errors=errors)
        total_query = sa.select(sa.func.count()).select_from(query.order_by(None).subquery())
        items = self.read(lambda: list(self.session.scalars(query.limit(limit).offset(offset))))
        total = self.read(lambda: self.session.scalar(total_query)) or 0
        return items, total

    def notify(self, event: str, **details: Any) -> None:
        """Send the event's signal (:mod:`flask_apikeys.signals`): the audit trail, an app's
        own receivers hear what just changed."""
        signals.send_service_event(event, **details)
