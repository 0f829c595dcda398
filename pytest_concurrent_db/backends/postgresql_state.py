"""The state of a PostgreSQL database, to tell whether a worker's database is still equal to
its template after the tests (see :mod:`pytest_concurrent_db.recycle`).

:func:`postgresql_state` reads, in one query, a digest of the user schemas' catalog (relations,
columns, defaults, constraints, indexes, triggers, views, functions, types, policies, rules,
sequence definitions, extensions, privileges, the database's settings) and of every table's
rows, and, apart from the digest, where each sequence stands.  Sequence positions are the one
thing a test changes that a rolled-back transaction does not undo: :func:`reset_sequences`
sets them back.
"""

from __future__ import annotations

from typing import Any

__all__ = ["postgresql_state", "reset_sequences"]

_USER = (
    "{n}.nspname NOT IN ('pg_catalog', 'information_schema') AND {n}.nspname NOT LIKE 'pg\\_toast%%'"
    " AND {n}.nspname NOT LIKE 'pg\\_temp\\_%%'"
)
_USER_NS = "(SELECT oid FROM pg_namespace n WHERE " + _USER.format(n="n") + ")"

#: what the digest starts with: a digest read another way (another version) is not compared
DIGEST_SCHEME = "pg1:"
#: Every line is "<what>:<its definition>"; the digest is the md5 of the sorted lines.
_STATE = f"""
WITH rels AS (
  SELECT c.oid, c.relkind, c.relacl, format('%%I.%%I', n.nspname, c.relname) AS name
  FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
  WHERE {_USER.format(n="n")} AND c.relpersistence <> 't'
), lines AS (
  SELECT 'n:' || nspname || ':' || coalesce(nspacl::text, '') AS line FROM pg_namespace n WHERE {_USER.format(n="n")}
  UNION ALL SELECT 'x:' || extname || ':' || extversion || ':' || extnamespace::regnamespace::text FROM pg_extension
  UNION ALL SELECT 'r:' || name || ':' || relkind::text || ':' || coalesce(relacl::text, '') FROM rels
  UNION ALL SELECT 'a:' || r.name || ':' || a.attnum || ':' || a.attname || ':' || format_type(a.atttypid, a.atttypmod)
    || ':' || a.attnotnull || ':' || a.attidentity::text || ':' || a.attgenerated::text || ':' || a.attisdropped || ':'
    || coalesce(pg_get_expr(d.adbin, d.adrelid), '') || ':' || coalesce(a.attacl::text, '')
    FROM rels r JOIN pg_attribute a ON a.attrelid = r.oid AND a.attnum > 0
    LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
  UNION ALL SELECT 'c:' || conrelid::regclass::text || ':' || contypid::regtype::text || ':' || conname || ':'
    || pg_get_constraintdef(oid) FROM pg_constraint WHERE connamespace IN {_USER_NS}
  UNION ALL SELECT 'i:' || pg_get_indexdef(i.indexrelid) FROM pg_index i JOIN rels r ON r.oid = i.indrelid
  UNION ALL SELECT 't:' || pg_get_triggerdef(t.oid) || ':' || t.tgenabled::text FROM pg_trigger t
    JOIN rels r ON r.oid = t.tgrelid WHERE NOT t.tgisinternal
  UNION ALL SELECT 'v:' || name || ':' || pg_get_viewdef(oid) FROM rels WHERE relkind IN ('v', 'm')
  UNION ALL SELECT 'f:' || p.oid::regprocedure::text || ':' || md5(pg_get_functiondef(p.oid))
    FROM pg_proc p WHERE p.pronamespace IN {_USER_NS} AND p.prokind <> 'a'
  UNION ALL SELECT 'y:' || t.oid::regtype::text || ':' || t.typtype::text || ':'
    || coalesce((SELECT string_agg(e.enumlabel, ',' ORDER BY e.enumsortorder) FROM pg_enum e
      WHERE e.enumtypid = t.oid), '')
    FROM pg_type t WHERE t.typnamespace IN {_USER_NS} AND t.typtype IN ('e', 'd', 'c', 'r', 'm')
  UNION ALL SELECT 'p:' || polrelid::regclass::text || ':' || polname || ':' || polcmd::text || ':'
    || coalesce(pg_get_expr(polqual, polrelid), '') || ':' || coalesce(pg_get_expr(polwithcheck, polrelid), '')
    FROM pg_policy
  UNION ALL SELECT 'w:' || schemaname || '.' || tablename || ':' || rulename || ':' || definition FROM pg_rules
    WHERE schemaname NOT IN ('pg_catalog', 'information_schema')
  UNION ALL SELECT 's:' || seqrelid::regclass::text || ':' || seqtypid::regtype::text || ':' || seqstart || ':'
    || seqincrement || ':' || seqmax || ':' || seqmin || ':' || seqcache || ':' || seqcycle FROM pg_sequence
  UNION ALL SELECT 'l:' || count(*) FROM pg_largeobject_metadata
  UNION ALL SELECT 'g:' || coalesce(setconfig::text, '') FROM pg_db_role_setting
    WHERE setdatabase = (SELECT oid FROM pg_database WHERE datname = current_database())
  UNION ALL SELECT 'd:' || name || ':' || query_to_xml(format(
    'SELECT md5(coalesce(string_agg(t::text, E''\\n'' ORDER BY t::text), '''')) AS h FROM %%s t', name),
    false, true, '')::text FROM rels WHERE relkind IN ('r', 'm')
)
SELECT md5(string_agg(line, E'\\n' ORDER BY line)),
  (SELECT json_object_agg(format('%%I.%%I', schemaname, sequencename), last_value) FROM pg_sequences
    WHERE schemaname NOT IN ('pg_catalog', 'information_schema'))::text
FROM lines
"""


def postgresql_state(connection: Any) -> tuple[str, dict[str, int]]:
    """(digest, positions of the sequences that were used) of the database of ``connection``
    (psycopg 3).  The transaction it opens is rolled back."""
    import json

    try:
        with connection.cursor() as cursor:
            cursor.execute(_STATE, ())
            digest, positions = cursor.fetchone()
    finally:
        connection.rollback()
    raw = json.loads(positions) if positions else {}
    return DIGEST_SCHEME + str(digest), {str(k): int(v) for k, v in raw.items() if v is not None}


def reset_sequences(connection: Any, now: dict[str, int], wanted: dict[str, int]) -> int:
    """Set every sequence whose position ``now`` differs from ``wanted`` back to it (one
    missing from ``wanted`` is restarted at its start, as if never used); returns how many."""
    changed = sorted(name for name in set(now) | set(wanted) if now.get(name) != wanted.get(name))
    with connection.cursor() as cursor:
        for name in changed:
            position = wanted.get(name)
            if position is None:
                cursor.execute(
                    "SELECT setval(%s::regclass, seqstart, false) FROM pg_sequence WHERE seqrelid = %s::regclass",
                    (name, name),
                )
            else:
                cursor.execute("SELECT setval(%s::regclass, %s, true)", (name, position))
    connection.commit()
    return len(changed)
