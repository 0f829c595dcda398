"""The state of a MySQL/MariaDB database, to tell whether a worker's database is still equal
to its template after the tests (see :mod:`pytest_concurrent_db.recycle`).

The digest covers what a clone copies: the clone recipe (:func:`.mysql_recipe.capture_recipe`:
the database's charset, every table, sequence, view, trigger, routine and event as the server
shows it) and ``CHECKSUM TABLE`` of every table.  ``AUTO_INCREMENT`` counters are kept apart:
a rolled-back insert moves them and nothing else, and :func:`reset_counters` sets them back.
A sequence that was used changes the digest (its next value is part of the recipe).
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any

from .mysql_recipe import capture_recipe, quote_ident

__all__ = ["mysql_state", "reset_counters"]

#: what the digest starts with: a digest read another way (another version) is not compared
DIGEST_SCHEME = "my2:"
#: the table option ``AUTO_INCREMENT=<n>`` of ``SHOW CREATE TABLE`` (the counter, not the column attribute)
_COUNTER = re.compile(r"\s+AUTO_INCREMENT=\d+(?=[^)]*$)")


def mysql_state(cursor: Any, name: str) -> tuple[str, dict[str, int]]:
    """(digest, ``AUTO_INCREMENT`` counters other than 1) of database ``name``; ``cursor``
    belongs to a connection with ``CLIENT.MULTI_STATEMENTS`` and no default database."""
    recipe = capture_recipe(cursor, name, portable=False)  # compared with itself: no need to cut the name out
    recipe.pop("template", None)
    for table in recipe["tables"]:
        table["create"] = [_COUNTER.sub("", segment) for segment in table["create"]]
    tables = [t["name"] for t in recipe["tables"]]
    checksums: list[Any] = []
    if tables:
        cursor.execute("CHECKSUM TABLE " + ", ".join(quote_ident(name) + "." + quote_ident(t) for t in tables))
        checksums = sorted([str(row[0]).split(".", 1)[-1], row[1]] for row in cursor.fetchall())
    cursor.execute(
        "SELECT TABLE_NAME, AUTO_INCREMENT FROM information_schema.TABLES"
        " WHERE TABLE_SCHEMA = %s AND AUTO_INCREMENT IS NOT NULL AND AUTO_INCREMENT <> 1",
        (name,),
    )
    counters = {str(table): int(value) for table, value in cursor.fetchall()}
    text = json.dumps([recipe, checksums], sort_keys=True, default=str)
    return DIGEST_SCHEME + hashlib.sha256(text.encode()).hexdigest()[:32], counters


def reset_counters(cursor: Any, name: str, now: dict[str, int], wanted: dict[str, int]) -> int:
    """Set every table's ``AUTO_INCREMENT`` counter that ``now`` differs from ``wanted`` back
    (1 where ``wanted`` has none); returns how many were set."""
    changed = sorted(t for t in set(now) | set(wanted) if now.get(t, 1) != wanted.get(t, 1))
    statements = [
        f"ALTER TABLE {quote_ident(name)}.{quote_ident(table)} AUTO_INCREMENT = {int(wanted.get(table, 1))}"
        for table in changed
    ]
    if statements:  # one round trip (the connection has CLIENT.MULTI_STATEMENTS)
        cursor.execute(";".join(statements))
        while cursor.nextset():
            pass
    return len(changed)
