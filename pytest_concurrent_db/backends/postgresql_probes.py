"""Isolation probes on a user's PostgreSQL (or psycopg2) connection."""

from __future__ import annotations

from typing import Any

__all__ = ["current_database", "in_transaction", "row_counts"]

_IDLE, _INTRANS = 0, 2  # TransactionStatus in psycopg 3 and psycopg2 alike


def current_database(connection: Any) -> str:
    return str(connection.info.dbname)  # a PostgreSQL session never changes database


def in_transaction(connection: Any) -> bool:
    """True if aborted, or open with writes (a transaction id is assigned).  Any SELECT on
    a DB-API connection opens a transaction: one that only read is no leftover."""
    status = int(connection.info.transaction_status)
    if status != _INTRANS:
        return status != _IDLE  # aborted, a command still running, or a broken connection
    cur = connection.cursor()
    try:
        cur.execute("SELECT txid_current_if_assigned() IS NOT NULL")
        return bool(cur.fetchone()[0])
    finally:
        cur.close()


def row_counts(connection: Any) -> dict[str, int]:
    """One query on ``connection``; a transaction it had to open is rolled back."""
    idle = int(connection.info.transaction_status) == _IDLE
    cur = connection.cursor()
    try:
        cur.execute(
            "SELECT n.nspname, c.relname, substring(query_to_xml(format("
            "'SELECT count(*) AS n FROM %%I.%%I', n.nspname, c.relname), false, true, '')::text "
            "FROM '<n>(\\d+)</n>')::bigint FROM pg_class c "
            "JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE c.relkind IN ('r', 'p') AND c.relpersistence <> 't' "
            "AND n.nspname NOT IN ('pg_catalog', 'information_schema') "
            "AND n.nspname NOT LIKE 'pg\\_toast%%' AND has_table_privilege(c.oid, 'SELECT') "
            "ORDER BY 1, 2",
            (),
        )
        return {f"{schema}.{table}": int(count) for schema, table, count in cur.fetchall()}
    finally:
        cur.close()
        if idle and not connection.autocommit:
            connection.rollback()
