"""Private database servers for the fault tests: started from the machine's binaries in a
temporary directory, on a free port, and restarted, crashed, stopped and removed at will.

Never the shared servers: each :class:`PrivateServer` owns its data directory, port, socket
and pid file, and is killed and deleted when its fixture ends (also after a failed test).

* PostgreSQL: ``initdb`` (as the ``postgres`` OS user when we are root: the server refuses to
  run as root) and ``pg_ctl`` from ``/usr/lib/postgresql/<newest>/bin`` (or ``$PG_BINDIR``).
* MariaDB: ``mariadb-install-db`` and ``mariadbd`` (as the ``mysql`` OS user when we are
  root), with the normal grant tables (``--skip-grant-tables`` is not used: it is not needed,
  and the runs' ``GET_LOCK`` locks must behave as on a real server).

Both get a user ``cdb`` with the password ``s3cr3t`` and every privilege (PostgreSQL: a
superuser; its ``trust`` authentication accepts any password, so URLs still carry one, to
check that it is never shown).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from pytest_concurrent_db.backends import connect_url
from pytest_concurrent_db.url import DatabaseURL, parse_url

USER, PASSWORD = "cdb", "s3cr3t"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _run_as(user: str) -> dict[str, Any]:
    """Popen arguments that run a server binary as ``user`` when we are root."""
    return {"user": user, "group": user} if os.geteuid() == 0 else {}


def _run(argv: list[str], **kwargs: Any) -> None:
    """Run a server tool; if it fails, say what it printed."""
    done = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, check=False, **kwargs)
    if done.returncode:
        said = done.stdout.decode(errors="replace")[-3000:]
        raise AssertionError(f"{' '.join(argv)} failed ({done.returncode}): {said}")


def _children(pid: int) -> list[int]:
    """Every process whose parent is ``pid``."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        if int(stat.rpartition(")")[2].split()[1]) == pid:
            found.append(int(entry))
    return found


def _wait_gone(pid: int, timeout: float = 30.0) -> bool:
    """Wait until process ``pid`` has ended: True once it is gone, False if it is still a
    zombie after ``timeout`` (dead, but its new parent has not reaped it yet)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.02)
    with contextlib.suppress(OSError):
        if Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] == "Z":
            return False
    raise AssertionError(f"process {pid} did not end")


class PrivateServer:
    """One private server: ``start``, ``stop``, ``restart``, ``crash`` (SIGKILL of the server
    and of all its processes, as a killed container), ``remove``."""

    backend: str = ""

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix=f"cdb-faults-{self.backend}-"))
        self.port = free_port()
        self.running = False
        try:
            self._create()
        except BaseException:
            self.remove()
            raise

    def _create(self) -> None:
        """Make the data directory and start the server."""
        raise NotImplementedError

    # -- to implement ------------------------------------------------------------------
    def _start(self) -> None:
        raise NotImplementedError

    def _stop(self) -> None:
        raise NotImplementedError

    def server_pid(self) -> int:
        raise NotImplementedError

    def admin(self) -> Any:
        """An autocommit connection as the all-powerful ``cdb`` user, to no database."""
        raise NotImplementedError

    # -- shared ------------------------------------------------------------------------
    def url(self, database: str) -> DatabaseURL:
        return parse_url(f"{self.backend}://{USER}:{PASSWORD}@127.0.0.1:{self.port}/{database}")

    def start(self) -> None:
        self._start()
        self.wait_up()
        self.running = True

    def stop(self) -> None:
        if self.running:
            self._stop()
        self.running = False

    def restart(self) -> None:
        """A clean restart (PostgreSQL ``pg_ctl restart -m fast``; MariaDB a shutdown, then a start)."""
        self.stop()
        self.start()

    def crash(self) -> None:
        """SIGKILL the server and every process it started (PostgreSQL: the postmaster and its
        backends; MariaDB: mariadbd), as the kernel's OOM killer or a killed container would."""
        pid = self.server_pid()
        victims = [pid, *_children(pid)]
        for victim in victims:
            with contextlib.suppress(ProcessLookupError):
                os.kill(victim, signal.SIGKILL)
        gone = [_wait_gone(victim, timeout=5.0) for victim in victims]  # every one, not up to the first zombie
        self.running = False
        if not all(gone):
            self._after_zombie()

    def _after_zombie(self) -> None:
        """The killed server is a zombie nobody reaps yet: let a new one start all the same."""

    def wait_up(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                self._probe().close()
            except Exception:
                self._check_alive()
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
            else:
                return

    def _probe(self) -> Any:
        """A connection that works once the server is up."""
        return self.admin()

    def _check_alive(self) -> None:
        """Raise if the server process has exited (it will not come up)."""

    def started_at(self) -> float:
        """The server's own start time (seconds since the epoch)."""
        conn = self.admin()
        try:
            cur = conn.cursor()
            if self.backend == "postgresql":
                cur.execute("SELECT extract(epoch FROM pg_postmaster_start_time())::float8")
            else:
                cur.execute(
                    "SELECT UNIX_TIMESTAMP() - VARIABLE_VALUE FROM information_schema.GLOBAL_STATUS"
                    " WHERE VARIABLE_NAME = 'UPTIME'"
                )
            return float(cur.fetchone()[0])
        finally:
            conn.close()

    def remove(self) -> None:
        """Kill the server (whatever its state) and delete everything it had."""
        with contextlib.suppress(Exception):
            if self.running or self._pid_file_pid():
                self.crash()
        self.running = False
        shutil.rmtree(self.root, ignore_errors=True)

    def _pid_file_pid(self) -> int:
        try:
            return self.server_pid()
        except (OSError, ValueError):
            return 0


class PostgreSQLServer(PrivateServer):
    backend = "postgresql"

    def __init__(self, max_connections: int = 40) -> None:
        bindir = os.environ.get("PG_BINDIR") or str(
            max(Path("/usr/lib/postgresql").glob("*/bin"), key=lambda p: int(p.parent.name))
        )
        self.bin = Path(bindir)
        self.max_connections = max_connections
        super().__init__()

    def _create(self) -> None:
        self.data = self.root / "data"
        if os.geteuid() == 0:
            shutil.chown(self.root, "postgres", "postgres")
        self._call("initdb", "-D", str(self.data), "-U", USER, "-A", "trust", "--no-sync", "-E", "UTF8")
        self.start()

    def _call(self, program: str, *args: str) -> None:
        _run([str(self.bin / program), *args], cwd=self.root, **_run_as("postgres"))

    def _options(self) -> str:
        return (
            f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off "
            f"-c max_connections={self.max_connections} -c superuser_reserved_connections=0"
        )

    def _start(self) -> None:
        self._call("pg_ctl", "-D", str(self.data), "-l", str(self.root / "log"), "-w", "-o", self._options(), "start")

    def _stop(self) -> None:
        self._call("pg_ctl", "-D", str(self.data), "-w", "-m", "fast", "stop")

    def restart(self) -> None:
        """``pg_ctl restart -m fast``."""
        self._call(
            "pg_ctl", "-D", str(self.data), "-l", str(self.root / "log"), "-w", "-m", "fast", "-o", self._options(),
            "restart",
        )  # fmt: skip
        self.wait_up()
        self.running = True

    def server_pid(self) -> int:
        return int((self.data / "postmaster.pid").read_text().split("\n", 1)[0])

    def _after_zombie(self) -> None:
        (self.data / "postmaster.pid").unlink(missing_ok=True)  # its processes are all dead

    def admin(self) -> Any:
        return connect_url(self.url("postgres"), autocommit=True, connect_timeout=3)

    def set_max_connections(self, count: int) -> None:
        self.max_connections = count
        self.restart()


class MariaDBServer(PrivateServer):
    backend = "mysql"

    def __init__(self, max_connections: int = 40) -> None:
        self.max_connections = max_connections
        self.process: subprocess.Popen[bytes] | None = None
        super().__init__()

    def _create(self) -> None:
        self.data = self.root / "data"
        as_root = os.geteuid() == 0
        if as_root:
            shutil.chown(self.root, "mysql", "mysql")
        _run(
            [
                "mariadb-install-db",
                "--no-defaults",
                *(["--user=mysql"] if as_root else []),
                f"--datadir={self.data}",
                "--auth-root-authentication-method=normal",
                "--skip-test-db",
            ],
            cwd=self.root,
        )
        self.start()
        conn = self._root()
        try:
            cur = conn.cursor()
            cur.execute(f"CREATE USER '{USER}'@'127.0.0.1' IDENTIFIED BY '{PASSWORD}'")
            cur.execute(f"GRANT ALL PRIVILEGES ON *.* TO '{USER}'@'127.0.0.1' WITH GRANT OPTION")
        finally:
            conn.close()

    def _root(self) -> Any:
        import pymysql

        return pymysql.connect(host="127.0.0.1", port=self.port, user="root", autocommit=True, connect_timeout=3)

    def _start(self) -> None:
        as_root = os.geteuid() == 0
        self.process = subprocess.Popen(
            [
                shutil.which("mariadbd") or "/usr/sbin/mariadbd",
                "--no-defaults",
                *(["--user=mysql"] if as_root else []),
                f"--datadir={self.data}",
                f"--port={self.port}",
                "--bind-address=127.0.0.1",
                f"--socket={self.root / 'mysqld.sock'}",
                f"--pid-file={self.root / 'mysqld.pid'}",
                f"--log-error={self.root / 'error.log'}",
                "--skip-log-bin",
                # 2: a commit is in the OS's cache, not fsynced: as fast as 0, but a crash of the server
                # (SIGKILL; the OS lives on) loses no commit, as with the default 1. With 0 the commits of
                # the last second are lost, a registry row with them (see MySQLBackend.clone)
                "--innodb-flush-log-at-trx-commit=2",
                "--innodb-buffer-pool-size=32M",
                f"--max-connections={self.max_connections}",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )

    def _probe(self) -> Any:
        return self._root()  # the user cdb does not exist yet right after the install

    def _check_alive(self) -> None:
        if self.process is not None and self.process.poll() is not None:
            raise AssertionError(f"mariadbd exited: {(self.root / 'error.log').read_text()[-2000:]}")

    def _stop(self) -> None:
        """A clean shutdown (SIGTERM, as ``mariadb-admin shutdown``), waited for."""
        assert self.process is not None
        self.process.terminate()
        self.process.wait(timeout=60)

    def crash(self) -> None:
        """SIGKILL of mariadbd (one process: its connections are threads)."""
        assert self.process is not None
        self.process.kill()
        self.process.wait(timeout=30)
        self.running = False

    def server_pid(self) -> int:
        if self.process is None or self.process.poll() is not None:
            raise ValueError("not running")
        return self.process.pid

    def admin(self) -> Any:
        return connect_url(self.url(""), autocommit=True, connect_timeout=3)

    def set_max_connections(self, count: int) -> None:
        self.max_connections = count
        conn = self._root()
        try:
            conn.cursor().execute(f"SET GLOBAL max_connections = {int(count)}")
        finally:
            conn.close()


SERVERS: dict[str, type[PrivateServer]] = {"postgresql": PostgreSQLServer, "mysql": MariaDBServer}
