"""What a database error means for the person who sees it: an outage, or tables not set up.

A database that answers "no such table" or "no such column" is not down: the extension's
tables were never created, or its migrations not run since an upgrade. Retrying will not
help, so the message says what to run instead of "try again".
"""

from __future__ import annotations

from sqlalchemy.exc import DBAPIError

from .errors import BackendUnavailable

#: What to run when the tables are missing or behind (docs/migrations.rst).
SET_UP_TABLES = (
    "The key database lacks flask-apikeys' tables or columns: run the migrations "
    "('flask db upgrade', after 'flask apikeys install-migrations' or 'flask db migrate') "
    "or db.create_all()."
)
#: SQLSTATE of an undefined table or column (PostgreSQL; MySQL and MariaDB report it too).
_UNDEFINED_SQLSTATES = frozenset({"42P01", "42703", "42S02", "42S22"})
#: MySQL / MariaDB error numbers: unknown table, unknown column.
_UNDEFINED_MYSQL_ERRORS = frozenset({1146, 1054})
#: SQLite has no codes for them, only these messages.
_UNDEFINED_SQLITE_MESSAGES = ("no such table", "no such column", "has no column named")


def lacks_tables(error: BaseException) -> bool:
    """Whether ``error`` says a table or column the extension uses does not exist."""
    driver_error = error.orig if isinstance(error, DBAPIError) else error
    if getattr(driver_error, "sqlstate", None) in _UNDEFINED_SQLSTATES:
        return True
    arguments = getattr(driver_error, "args", ())
    if arguments and arguments[0] in _UNDEFINED_MYSQL_ERRORS:
        return True
    message = str(arguments[0]) if arguments else ""
    return type(driver_error).__module__.startswith("sqlite3") and message.startswith(
        _UNDEFINED_SQLITE_MESSAGES
    )


#: What an outage says: the database may answer again.
UNREACHABLE = "The key database could not be reached; try again."


def database_unavailable(error: Exception, detail: str = UNREACHABLE) -> BackendUnavailable:
    """The 503 for ``error``: ``detail`` for an outage, what to run when tables are missing."""
    return BackendUnavailable(SET_UP_TABLES if lacks_tables(error) else detail)
