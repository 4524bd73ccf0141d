"""The multi-row INSERT of usage rows binds parameters it named itself, on every dialect."""

from __future__ import annotations

import re

import pytest
from sqlalchemy.dialects import mssql, mysql, oracle, postgresql, sqlite
from sqlalchemy.engine import Dialect

from flask_apikeys.usage.insert import ALL_PRESENT, USAGE_FIELDS, InsertPlan


@pytest.mark.parametrize(
    "dialect",
    [
        sqlite.dialect(),  # qmark: positional
        postgresql.psycopg.dialect(),  # pyformat: named
        postgresql.psycopg2.dialect(),
        mysql.pymysql.dialect(),  # format: positional
        oracle.dialect(),  # named
        mssql.pyodbc.dialect(),  # qmark
    ],
    ids=lambda dialect: f"{dialect.name}+{dialect.driver}",
)
@pytest.mark.parametrize("rows", [1, 4])
def test_the_statement_binds_every_value_once_in_row_order(dialect: Dialect, rows: int) -> None:
    if rows > 1 and not dialect.supports_multivalues_insert:
        pytest.skip("this dialect's rows go one statement per row (executemany)")
    present = (False, *ALL_PRESENT[1:])  # a NULL column left out of the statement
    sql, names = InsertPlan(dialect).statement(rows, present)
    bound = len(USAGE_FIELDS) - 1
    if names is None:  # positional: one placeholder per value, row after row
        assert len(re.findall(r"\?|%s", sql)) == rows * bound
    else:
        assert len(names) == rows * bound
        for name in names:
            assert sql.count(name) == 1, name
        assert names[:bound] == tuple(f"{field}_0" for field in USAGE_FIELDS[1:])
    assert USAGE_FIELDS[0] not in sql.split("VALUES")[0]
