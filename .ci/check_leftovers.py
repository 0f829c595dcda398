"""Fail if any database with our prefix is left on the CI servers after the suite."""

from __future__ import annotations

import sys

import psycopg
import pymysql

leftovers: list[str] = []
with psycopg.connect("host=127.0.0.1 port=5432 user=postgres dbname=postgres", autocommit=True) as conn:
    rows = conn.execute(r"SELECT datname FROM pg_database WHERE datname LIKE 'cdb\_%'").fetchall()
    leftovers += [f"postgresql: {name}" for (name,) in rows]
conn = pymysql.connect(host="127.0.0.1", port=3306, user="root", password="")
try:
    with conn.cursor() as cur:
        cur.execute(r"SHOW DATABASES LIKE 'cdb\_%'")
        leftovers += [f"mysql: {name}" for (name,) in cur.fetchall()]
finally:
    conn.close()
if leftovers:
    print("databases left behind:\n  " + "\n  ".join(leftovers))
    sys.exit(1)
print("no databases with prefix cdb_ left on either server")
