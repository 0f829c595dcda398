"""A process killed while it copies a spare leaves nothing that the next run does not remove,
and never a database without our marker (which no run would ever drop)."""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psycopg
import psycopg.sql

from pytest_concurrent_db.backends import Marker, load_backend
from pytest_concurrent_db.template import schema_populator
from pytest_concurrent_db.url import DatabaseURL
from tests.conftest import drop_ours, worker_databases

#: A template whose copy takes long enough (hundreds of ms) to be killed in the middle.
BIG_SCHEMA = """
    CREATE TABLE big (id SERIAL PRIMARY KEY, payload TEXT NOT NULL);
    INSERT INTO big (payload) SELECT repeat(md5(g::text), 30) FROM generate_series(1, 150000) g;
"""

MAKER = """
    import sys
    from pathlib import Path
    from pytest_concurrent_db.paths import Directories
    from pytest_concurrent_db.site import Site
    from pytest_concurrent_db.template import schema_populator
    from pytest_concurrent_db.url import parse_url
    from pytest_concurrent_db.worker import WorkerDatabases

    url, base, schema, locks = sys.argv[1:5]
    site = Site(parse_url(url), Directories(Path(locks), Path(locks), Path(locks)), base=base)
    engine = WorkerDatabases(site, run_id="deadbeef", worker_id="gw0", spares=1)
    engine.ensure_template([schema_populator(Path(schema))])
    print("making", flush=True)
    engine.make_spares()
    print("made", flush=True)
"""


def _copying(url: DatabaseURL, base: str) -> bool:
    with psycopg.connect(
        host=url.host, port=url.port, user=url.username, password=url.password, dbname="postgres", autocommit=True
    ) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE query LIKE %s AND state = 'active'",
            (f"CREATE DATABASE %cdb_{base}_sp%",),
        ).fetchone()
        return bool(row and row[0])


def test_killed_while_copying_a_spare_leaves_nothing_unmarked(postgresql_url: DatabaseURL, tmp_path: Path) -> None:
    base = "kx" + secrets.token_hex(3)
    url = postgresql_url.with_database(base)
    schema = tmp_path / "schema.sql"
    schema.write_text(textwrap.dedent(BIG_SCHEMA))
    engine = worker_databases(url, run_id="builder0", worker_id="main", lock_dir=tmp_path / "locks", base=base)
    try:
        engine.ensure_template([schema_populator(schema)])  # built here, not in the killed process
        script = tmp_path / "maker.py"
        script.write_text(textwrap.dedent(MAKER))
        proc = subprocess.Popen(
            [sys.executable, str(script), url.render(hide_password=False), base, str(schema), str(tmp_path / "locks")],
            stdout=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "making"
        deadline = time.monotonic() + 30
        while not _copying(url, base):
            assert time.monotonic() < deadline, "the spare's CREATE DATABASE was never seen running"
            assert proc.poll() is None, "the spare was made before it could be interrupted: make BIG_SCHEMA bigger"
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        proc.stdout.close()
        # The server notices the vanished client and aborts the copy (client_connection_check_interval).
        deadline = time.monotonic() + 20
        while _copying(url, base):
            assert time.monotonic() < deadline
            time.sleep(0.1)
        backend = load_backend(url)
        try:
            left = backend.list_databases(f"cdb_{base}_sp")
            assert [i.name for i in left if i.marker is None] == []  # never an unmarked copy
            engine.janitor.reap_dead()  # what the next run's start does
            assert backend.list_databases(f"cdb_{base}_sp") == []
        finally:
            backend.close()
    finally:
        engine.close()
        drop_ours(load_backend(url), f"cdb_{base}_")


def test_a_copy_made_for_a_process_that_died_before_marking_it_is_adopted_and_reaped(
    postgresql_url: DatabaseURL, tmp_path: Path
) -> None:
    """The window between the server finishing ``CREATE DATABASE`` and the ``COMMENT`` that marks
    it: the intent recorded before the copy lets a later run mark it and drop it; an unmarked
    database without an intent, or one whose creator is alive, is never touched."""
    base = "ko" + secrets.token_hex(3)
    url = postgresql_url.with_database(base)
    schema = tmp_path / "schema.sql"
    schema.write_text("CREATE TABLE t (id INTEGER PRIMARY KEY);\n")
    locks = tmp_path / "locks"
    engine = worker_databases(url, run_id="reaper01", worker_id="main", lock_dir=locks, base=base)
    holder = load_backend(url)
    orphan, alive, stranger = (f"cdb_{base}_sp{tag}_gw0" for tag in ("0a0a0a", "0b0b0b", "0c0c0c"))
    orphan_template = f"cdb_{base}_tpl_0d0d0d0d0d0d"  # a template build killed the same way
    try:
        template = engine.ensure_template([schema_populator(schema)]).name
        with psycopg.connect(
            host=url.host, port=url.port, user=url.username, password=url.password, dbname="postgres", autocommit=True
        ) as raw:
            for name in (orphan, alive, stranger, orphan_template):  # what the server leaves: no marker
                raw.execute(
                    psycopg.sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
                        psycopg.sql.Identifier(name), psycopg.sql.Identifier(template)
                    )
                )
        intents, server = engine.site.directories.intents, engine.site.intent_prefix  # where they are recorded
        intents.mkdir(parents=True, exist_ok=True)
        for name in (orphan, alive):
            marker = Marker(kind="spare", run_id="deadbeef", worker_id="gw0", template=template, state="building")
            (intents / f"{server}{name}.json").write_text(marker.encode())
        marker = Marker(kind="template", run_id="deadbeef", template=orphan_template, state="building")
        (intents / f"{server}{orphan_template}.json").write_text(marker.encode())
        assert holder.try_lock(f"clone:{alive}")  # its creator is still copying

        engine.janitor.reap_dead()

        # adopted, then reaped as an unfinished spare and build: by this reap, or by a concurrent
        # run on the shared server that saw them adopted and was dropping them when this reap
        # tried their locks (DROP DATABASE waits for a checkpoint)
        deadline = time.monotonic() + 30
        while {orphan, orphan_template} & {i.name for i in holder.list_databases(f"cdb_{base}_")}:
            assert time.monotonic() < deadline, "the adopted copies were not reaped"
            time.sleep(0.2)
        left = {i.name: i.marker for i in holder.list_databases(f"cdb_{base}_")}
        assert left[alive] is None  # a live creator's copy is not touched
        assert left[stranger] is None  # no intent: not ours, never touched
        assert (intents / f"{server}{alive}.json").exists()
        assert not (intents / f"{server}{orphan}.json").exists()
    finally:
        engine.close()
        drop_ours(holder, f"cdb_{base}_")
        with psycopg.connect(
            host=url.host, port=url.port, user=url.username, password=url.password, dbname="postgres", autocommit=True
        ) as raw:
            for name in (orphan, alive, stranger, orphan_template):  # unmarked: by hand
                raw.execute(
                    psycopg.sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(psycopg.sql.Identifier(name))
                )
