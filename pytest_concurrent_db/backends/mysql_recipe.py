"""The MySQL/MariaDB clone recipe: a template's DDL, captured once, replayed per clone.

MySQL has no ``CREATE DATABASE … TEMPLATE``.  When a template is marked ready we
read everything that makes it up (``SHOW CREATE TABLE``/``VIEW``/``TRIGGER``/
``PROCEDURE``/``FUNCTION``/``EVENT``/``SEQUENCE``) into a JSON *recipe*, stored in
the registry.  A clone replays it on one connection: tables (foreign keys
included, checks off), rows with ``INSERT … SELECT`` from the template, then
routines, views, triggers (after the rows, so they do not fire on the copy) and
events.

Object bodies may name the template's schema (``SHOW CREATE VIEW`` qualifies every
column with it).  At capture time each text is cut at those qualifiers into
*segments*; a clone joins them with its own quoted name, so no text is parsed per
clone.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from ..errors import ConcurrentDBError, PrivilegeError
from ..options import names

__all__ = [
    "RECIPE_FORMAT",
    "REPLAY_SQL_MODE",
    "capture_recipe",
    "charset_clause",
    "clone_statements",
    "quote_ident",
    "replay_recipe",
]

RECIPE_FORMAT = 1
#: The session sql_mode under which table and view DDL is captured and replayed: no
#: ANSI_QUOTES (backtick output), NO_AUTO_VALUE_ON_ZERO (id 0 rows copy as 0), not
#: strict (a template built in a lax mode still copies).
REPLAY_SQL_MODE = "NO_AUTO_VALUE_ON_ZERO,NO_ENGINE_SUBSTITUTION"

_BATCH_BYTES = 1 << 20  # stays well below max_allowed_packet (16 MiB by default)
ER_NO_SUCH_TABLE = 1146
_BASE_TABLE_TYPES = ("BASE TABLE", "SYSTEM VERSIONED")
# information_schema.COLUMNS.EXTRA of columns an INSERT may not name.
_NOT_INSERTABLE = re.compile(r"\b(VIRTUAL|STORED|PERSISTENT|ROW START|ROW END)\b", re.IGNORECASE)

_QUOTED = r"`(?:[^`]|``)*`|'(?:[^'\\]|\\.|'')*'|\"(?:[^\"\\]|\\.|\"\")*\""
_ACCOUNT_PART = rf"(?:{_QUOTED}|[^\s@(]+(?:\(\))?)"
_DEFINER = re.compile(
    rf"^(\s*CREATE\s+(?:OR\s+REPLACE\s+)?(?:ALGORITHM\s*=\s*\w+\s+)?)"
    rf"DEFINER\s*=\s*{_ACCOUNT_PART}(?:\s*@\s*{_ACCOUNT_PART})?\s+",
    re.IGNORECASE,
)
# Trigger order is reproduced by creating triggers in ACTION_ORDER; a PRECEDES clause
# could name a trigger not created yet.
_TRIGGER_ORDER = re.compile(rf"(FOR\s+EACH\s+ROW\s+)(?:FOLLOWS|PRECEDES)\s+(?:{_QUOTED}|[\w$]+)\s+", re.IGNORECASE)
_VERSION_COMMENT = re.compile(r"/\*M?!\d*")
_WORD = re.compile(r"[0-9A-Za-z_$\u0080-\U0010ffff]+")


def quote_ident(name: str) -> str:
    """``name`` as a MySQL identifier: in backticks, inner backticks doubled.

    The one place identifiers are quoted.  A statement that contains one is executed
    without driver parameters, so a ``%`` in a name is never taken for a placeholder.
    """
    return "`" + name.replace("`", "``") + "`"


def charset_clause(recipe: dict[str, Any]) -> str:
    """`` CHARACTER SET … COLLATE …`` of a recipe's database, for ``CREATE``/``ALTER DATABASE``."""
    return " CHARACTER SET " + quote_ident(recipe["charset"]) + " COLLATE " + quote_ident(recipe["collation"])


def strip_definer(text: str) -> str:
    """``text`` without its ``DEFINER=`` clause: the clone's objects belong to the current user."""
    return _DEFINER.sub(r"\1", text, count=1)


def cut_schema(text: str, schema: str, *, sql_mode: str = "") -> tuple[list[str], list[str]]:
    """Split ``text`` at every qualifier naming ``schema`` (``schema``.x, not x.``schema``).

    Returns the segments between those qualifiers and the names that follow them.
    Strings and comments are skipped; ``/*! … */`` version comments are code.
    """
    modes = {m.strip().upper() for m in sql_mode.split(",")}
    ansi_quotes = "ANSI_QUOTES" in modes or "ANSI" in modes
    backslash = "NO_BACKSLASH_ESCAPES" not in modes
    segments: list[str] = []
    targets: list[str] = []
    last = 0
    prev = ""  # last significant character before the current token
    i, n = 0, len(text)

    def ident_at(pos: int) -> tuple[str, int] | None:
        """The identifier starting at ``pos`` (value, end), if any."""
        if pos >= n:
            return None
        quote = text[pos]
        if quote == "`" or (quote == '"' and ansi_quotes):
            end = _quoted_end(text, pos, backslash=False)
            return text[pos + 1 : end - 1].replace(quote * 2, quote), end
        m = _WORD.match(text, pos)
        return (m.group(0), m.end()) if m else None

    while i < n:
        ch = text[i]
        if ch in "'\"" and not (ch == '"' and ansi_quotes):
            i = _quoted_end(text, i, backslash=backslash)
            prev = "'"
            continue
        if ch == "#" or (text.startswith("--", i) and (i + 2 == n or text[i + 2] in " \t\r\n")):
            j = text.find("\n", i)
            i = n if j < 0 else j
            continue
        if text.startswith("/*", i):
            if text.startswith("/*!", i) or text.startswith("/*M!", i):
                i += len(_VERSION_COMMENT.match(text, i).group(0))  # type: ignore[union-attr]
                continue
            j = text.find("*/", i + 2)
            i = n if j < 0 else j + 2
            continue
        found = ident_at(i)
        if found is None:
            if not ch.isspace():
                prev = ch
            i += 1
            continue
        value, end = found
        after = _skip_space(text, end)
        if value == schema and prev != "." and after < n and text[after] == ".":
            segments.append(text[last:i])
            last = end
            target = ident_at(_skip_space(text, after + 1))
            if target is not None:
                targets.append(target[0])
        prev = "w"
        i = end
    segments.append(text[last:])
    return segments, targets


def _quoted_end(text: str, start: int, *, backslash: bool) -> int:
    """The index just past the quoted token starting at ``start``."""
    quote, i, n = text[start], start + 1, len(text)
    while i < n:
        c = text[i]
        if backslash and c == "\\":
            i += 2
            continue
        if c == quote:
            if i + 1 < n and text[i + 1] == quote:
                i += 2
                continue
            return i + 1
        i += 1
    return n


def _skip_space(text: str, i: int) -> int:
    while i < len(text) and text[i].isspace():
        i += 1
    return i


# -- capture -----------------------------------------------------------------------


def _results(cursor: Any, statements: Sequence[str], args: Any = None) -> list[tuple[Any, ...]]:
    """Run ``statements`` as one multi-statement round trip; every statement's rows."""
    if not statements:
        return []
    cursor.execute(";\n".join(statements), args)
    out = [cursor.fetchall()]
    while cursor.nextset():
        out.append(cursor.fetchall())
    return out


def capture_recipe(cursor: Any, template: str, *, portable: bool = True) -> dict[str, Any]:
    """Read the clone recipe of database ``template``.

    ``cursor`` belongs to a connection opened with ``CLIENT.MULTI_STATEMENTS`` and no
    default database.  Three round trips whatever the size of the schema.  ``portable=False``:
    the statements as the server shows them (qualifiers and ``DEFINER`` kept, no ``has_rows``),
    to compare the database with itself (:mod:`.mysql_state`) at a fraction of the cost.
    """
    cursor.execute("SET SESSION sql_mode = %s, sql_quote_show_create = 1", (REPLAY_SQL_MODE,))
    meta = _results(
        cursor,
        [
            "SELECT SCHEMA_NAME, DEFAULT_CHARACTER_SET_NAME, DEFAULT_COLLATION_NAME"
            " FROM information_schema.SCHEMATA WHERE SCHEMA_NAME = %s",
            "SELECT TABLE_NAME, TABLE_TYPE FROM information_schema.TABLES WHERE TABLE_SCHEMA = %s ORDER BY TABLE_NAME",
            "SELECT TABLE_NAME, COLUMN_NAME, EXTRA FROM information_schema.COLUMNS"
            " WHERE TABLE_SCHEMA = %s ORDER BY TABLE_NAME, ORDINAL_POSITION",
            "SELECT TRIGGER_NAME FROM information_schema.TRIGGERS WHERE TRIGGER_SCHEMA = %s"
            " ORDER BY EVENT_OBJECT_TABLE, ACTION_TIMING, EVENT_MANIPULATION, ACTION_ORDER",
            "SELECT ROUTINE_NAME, ROUTINE_TYPE FROM information_schema.ROUTINES WHERE ROUTINE_SCHEMA = %s"
            " AND ROUTINE_TYPE IN ('PROCEDURE', 'FUNCTION') ORDER BY ROUTINE_TYPE, ROUTINE_NAME",
            "SELECT EVENT_NAME FROM information_schema.EVENTS WHERE EVENT_SCHEMA = %s ORDER BY EVENT_NAME",
        ],
        (template,) * 6,
    )
    schemata, tables_rows, column_rows, trigger_rows, routine_rows, event_rows = meta
    schema_row = next((row for row in schemata if row[0] == template), None)
    if schema_row is None:
        raise ConcurrentDBError(
            f"cannot capture the clone recipe of MySQL database {template!r}: it does not exist"
        )
    tables = [str(r[0]) for r in tables_rows if r[1] in _BASE_TABLE_TYPES]
    views = [str(r[0]) for r in tables_rows if r[1] == "VIEW"]
    sequences = [str(r[0]) for r in tables_rows if r[1] == "SEQUENCE"]
    columns: dict[str, list[str]] = {}
    for table, column, extra in column_rows:
        if not _NOT_INSERTABLE.search(extra or ""):
            columns.setdefault(table, []).append(column)
    triggers = [str(r[0]) for r in trigger_rows]
    routines = [(str(r[0]), str(r[1])) for r in routine_rows]
    events = [str(r[0]) for r in event_rows]

    tpl = quote_ident(template) + "."
    shows: list[str] = []
    shows += ["SHOW CREATE TABLE " + tpl + quote_ident(t) for t in tables]
    shows += ["SHOW CREATE SEQUENCE " + tpl + quote_ident(s) for s in sequences]
    shows += ["SHOW CREATE VIEW " + tpl + quote_ident(v) for v in views]
    shows += ["SHOW CREATE TRIGGER " + tpl + quote_ident(t) for t in triggers]
    shows += ["SHOW CREATE " + kind + " " + tpl + quote_ident(r) for r, kind in routines]
    shows += ["SHOW CREATE EVENT " + tpl + quote_ident(e) for e in events]
    if tables and portable:
        shows.append(
            " UNION ALL ".join(
                "SELECT " + str(i) + ", EXISTS(SELECT 1 FROM " + tpl + quote_ident(t) + ")"
                for i, t in enumerate(tables)
            )
        )
    shows += ["SELECT next_not_cached_value FROM " + tpl + quote_ident(s) for s in sequences]
    results = iter(_results(cursor, shows))

    def one(what: str) -> tuple[Any, ...]:
        rows = next(results)
        if not rows:
            raise ConcurrentDBError(
                f"cannot capture the clone recipe of MySQL database {template!r}: "
                f"{what!r} vanished while it was read; the template must not change once ready"
            )
        return tuple(rows[0])

    def split(text: str, sql_mode: str = "") -> tuple[list[str], list[str]]:
        return cut_schema(strip_definer(text), template, sql_mode=sql_mode) if portable else ([text], [])

    def cut(text: str, sql_mode: str = "") -> list[str]:
        return split(text, sql_mode)[0]

    table_ddl = [cut(one(t)[1]) for t in tables]
    sequence_ddl = [cut(one(s)[1]) for s in sequences]
    view_ddl: dict[str, tuple[list[str], list[str]]] = {}
    for view in views:
        view_ddl[view] = split(one(view)[1])
    trigger_recipes = []
    for trigger in triggers:
        row = one(trigger)
        segments = cut(_TRIGGER_ORDER.sub(r"\1", row[2], count=1), row[1])
        trigger_recipes.append({"name": trigger, "sql_mode": row[1], "create": segments})
    routine_recipes = []
    for routine, kind in routines:
        row = one(routine)
        if row[2] is None:
            raise PrivilegeError(
                f"cannot read the definition of {kind.lower()} {routine!r} in MySQL database "
                f"{template!r} (SHOW CREATE {kind} returned NULL): connect as its definer or grant "
                f"SELECT on mysql.proc (MariaDB) / SHOW_ROUTINE (MySQL) to the user of {names('url')}"
            )
        routine_recipes.append({"name": routine, "type": kind, "sql_mode": row[1], "create": cut(row[2], row[1])})
    event_recipes = []
    for event in events:
        row = one(event)
        event_recipes.append({"name": event, "sql_mode": row[1], "time_zone": row[2], "create": cut(row[3], row[1])})
    has_rows = {int(i): bool(flag) for i, flag in next(results)} if tables and portable else {}
    sequence_next = [int(one(s)[0]) for s in sequences]

    return {
        "format": RECIPE_FORMAT,
        "template": template,
        "charset": schema_row[1],
        "collation": schema_row[2],
        "sql_mode": REPLAY_SQL_MODE,
        "sequences": [
            {"name": s, "create": ddl, "next": nxt} for s, ddl, nxt in zip(sequences, sequence_ddl, sequence_next)
        ],
        "tables": [
            {"name": t, "create": ddl, "columns": columns.get(t, []), "has_rows": has_rows.get(i, False)}
            for i, (t, ddl) in enumerate(zip(tables, table_ddl))
        ],
        "routines": routine_recipes,
        "views": [{"name": v, "create": view_ddl[v][0]} for v in _dependency_order(view_ddl)],
        "triggers": trigger_recipes,
        "events": event_recipes,
    }


def _dependency_order(views: dict[str, tuple[list[str], list[str]]]) -> list[str]:
    """View names, each after the views it reads (by name; cycles keep name order)."""
    done: list[str] = []
    seen: set[str] = set()

    def visit(name: str, path: frozenset[str]) -> None:
        if name in seen or name in path:
            return
        for target in views[name][1]:
            if target in views and target != name:
                visit(target, path | {name})
        seen.add(name)
        done.append(name)

    for name in sorted(views):
        visit(name, frozenset())
    return done


# -- replay ------------------------------------------------------------------------


def clone_statements(recipe: dict[str, Any], clone: str, literal: Callable[[Any], str]) -> Iterator[tuple[str, str]]:
    """The statements that build ``clone`` from ``recipe``, as ``(kind, sql)``.

    ``literal`` renders a value as an SQL literal (the driver's escaping, as for
    parameters).  They run on one connection, in order; the first one selects the
    clone as default database.
    """
    template = quote_ident(recipe["template"])
    target = quote_ident(clone)

    def join(segments: list[str]) -> str:
        return target.join(segments)

    replay_mode = "SET SESSION sql_mode = " + literal(recipe["sql_mode"])
    yield "setup", "USE " + target
    yield "setup", "SET SESSION FOREIGN_KEY_CHECKS = 0, UNIQUE_CHECKS = 0"
    yield "setup", replay_mode
    for seq in recipe["sequences"]:
        yield "sequence", join(seq["create"])
    for table in recipe["tables"]:
        yield "table", join(table["create"])
    filled = [t for t in recipe["tables"] if t["has_rows"] and t["columns"]]
    if filled:
        yield "setup", "START TRANSACTION"
        for table in filled:
            cols = ", ".join(quote_ident(c) for c in table["columns"])
            yield (
                "rows",
                (
                    "INSERT INTO "
                    + quote_ident(table["name"])
                    + " ("
                    + cols
                    + ") SELECT "
                    + cols
                    + " FROM "
                    + template
                    + "."
                    + quote_ident(table["name"])
                ),
            )
        yield "setup", "COMMIT"
    for seq in recipe["sequences"]:
        yield "sequence", "DO SETVAL(" + quote_ident(seq["name"]) + ", " + literal(int(seq["next"])) + ", 0)"
    # Routines before views: a view may call a function; routine bodies are not resolved
    # at creation.
    for routine in recipe["routines"]:
        yield "setup", "SET SESSION sql_mode = " + literal(routine["sql_mode"])
        yield "routine", join(routine["create"])
    if recipe["views"]:
        yield "setup", replay_mode
        for view in recipe["views"]:
            yield "view", join(view["create"])
    for trigger in recipe["triggers"]:
        yield "setup", "SET SESSION sql_mode = " + literal(trigger["sql_mode"])
        yield "trigger", join(trigger["create"])
    for event in recipe["events"]:
        yield (
            "setup",
            ("SET SESSION sql_mode = " + literal(event["sql_mode"]) + ", time_zone = " + literal(event["time_zone"])),
        )
        yield "event", join(event["create"])


def replay_recipe(
    cursor: Any, recipe: dict[str, Any], clone: str, literal: Callable[[Any], str], helpers: Sequence[Any] = ()
) -> None:
    """Build the (empty, existing) database ``clone`` from ``recipe``.

    ``cursor`` belongs to a connection opened with ``CLIENT.MULTI_STATEMENTS``; the
    statements go in as few round trips as fit in ``_BATCH_BYTES``, every result read.
    ``helpers``: cursors of further such connections, which create a share of the tables
    at the same time (each ``CREATE TABLE`` waits on its own file and log writes, so they
    overlap) once the sequences exist (a column default may call one); the rows, routines,
    views, triggers and events follow once all tables exist.
    """
    steps = list(clone_statements(recipe, clone, literal))
    tables = [i for i, (kind, _) in enumerate(steps) if kind == "table"]
    if not helpers or len(tables) < 2:
        _run_steps(cursor, steps, recipe, clone)
        return
    _run_steps(cursor, steps[: tables[0]], recipe, clone)  # the session's settings, then sequences
    setup = [step for step in steps[: tables[0]] if step[0] == "setup"]
    ways = len(helpers) + 1
    shares = [[steps[i] for i in tables[k::ways]] for k in range(ways)]
    errors: list[BaseException] = []

    def create(helper: Any, share: list[tuple[str, str]]) -> None:
        try:
            _run_steps(helper, setup + share, recipe, clone)
        except BaseException as exc:  # re-raised in the caller's thread
            errors.append(exc)

    threads = [
        threading.Thread(target=create, args=(helper, share), name=f"concurrent-db clone {clone} tables {k}")
        for k, (helper, share) in enumerate(zip(helpers, shares[1:]), start=1)
    ]
    for thread in threads:
        thread.start()
    try:
        _run_steps(cursor, shares[0], recipe, clone)
    finally:
        for thread in threads:
            thread.join()
    if errors:
        raise errors[0]
    _run_steps(cursor, steps[tables[-1] + 1 :], recipe, clone)  # same session: its settings hold


def _run_steps(cursor: Any, steps: list[tuple[str, str]], recipe: dict[str, Any], clone: str) -> None:
    """Run ``steps`` on ``cursor`` in batches; a view that names a view not made yet moves last."""
    steps = list(steps)
    moves = {sql: len(recipe["views"]) for kind, sql in steps if kind == "view"}
    position = 0
    while position < len(steps):
        try:
            position = _run_batch(cursor, steps, position)
        except _BatchError as failed:
            index, exc = failed.index, failed.error
            kind, sql = steps[index]
            # MariaDB cannot tell which views a view reads: if one failed on a view not
            # made yet, move it after the other views and go on from there.
            if kind == "view" and _errno(exc) == ER_NO_SUCH_TABLE and moves[sql] > 0:
                moves[sql] -= 1
                last = max(i for i, (k, _) in enumerate(steps) if k == "view")
                steps.insert(last, steps.pop(index))
                position = index
                continue
            add_note = getattr(exc, "add_note", None)
            if add_note is not None:
                add_note(f"while cloning {recipe['template']!r} into {clone!r}: {sql[:200]}")
            raise exc from None


def _errno(exc: BaseException) -> int | None:
    args: tuple[Any, ...] = getattr(exc, "args", ())
    return args[0] if args and isinstance(args[0], int) else None


class _BatchError(Exception):
    def __init__(self, index: int, error: BaseException) -> None:
        super().__init__(index, error)
        self.index = index
        self.error = error


def _run_batch(cursor: Any, steps: list[tuple[str, str]], start: int) -> int:
    """Send steps from ``start`` as one multi-statement batch (up to ``_BATCH_BYTES``).

    Returns the index after the last step sent; raises _BatchError naming the failed step.
    """
    end, size = start, 0
    while end < len(steps) and (end == start or size + len(steps[end][1]) < _BATCH_BYTES):
        size += len(steps[end][1]) + 3
        end += 1
    # Each statement on its own line: one ending in a -- comment must not swallow the ";".
    text = "\n;\n".join(sql for _, sql in steps[start:end])
    index = start
    try:
        cursor.execute(text)
        while True:
            index += 1
            if not cursor.nextset():
                break
    except Exception as exc:
        if _errno(exc) is None:
            raise
        raise _BatchError(index, exc) from None
    if index != end:
        raise ConcurrentDBError(f"expected {end - start} results from MySQL, got {index - start}")
    return end
