"""Fail if any database with our prefix is left on the CI servers after the suite."""

from __future__ import annotations

import sys

import psycopg
import pymysql

leftovers: list[str] = []
with psycopg.connect("host=127.0.0.1 port=5432 user=postgres dbname=postgres", autocommit=True) as conn:
    rows = conn.execute(
        r"SELECT datname, shobj_description(oid, 'pg_database') FROM pg_database WHERE datname LIKE 'cdb\_%'"
    ).fetchall()
    leftovers += [f"postgresql: {name}  marker: {str(marker)[:240]}" for (name, marker) in rows]
conn = pymysql.connect(host="127.0.0.1", port=3306, user="root", password="")
try:
    with conn.cursor() as cur:
        cur.execute(r"SHOW DATABASES LIKE 'cdb\_%'")
        names = [name for (name,) in cur.fetchall()]
        markers: dict[str, str] = {}
        if names:  # what the registry says of them (the marker explains who left them)
            cur.execute("SHOW DATABASES LIKE 'pytest\\_concurrent\\_db\\_registry'")
            if cur.fetchall():
                cur.execute("SELECT name, marker FROM pytest_concurrent_db_registry.databases")
                markers = {str(n): str(m) for n, m in cur.fetchall()}
        leftovers += [f"mysql: {name}  marker: {str(markers.get(name))[:240]}" for name in names]
finally:
    conn.close()
if leftovers:
    print("databases left behind:\n  " + "\n  ".join(leftovers))
    sys.exit(1)
print("no databases with prefix cdb_ left on either server")
