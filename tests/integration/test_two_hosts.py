"""Sharded CI (issue 15): two "hosts" — separate UTS namespaces with their own host names
(``unshare --uts``) and their own temp dirs (so no file lock is shared) — run ``pytest -n 2
--concurrent-db`` shards of one suite at the same time against one server: one template
build in total (the server lock alone coordinates them), no collision, nothing left, and a
host killed mid-way never has the other host's databases dropped."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from .conftest import Project

pytestmark = pytest.mark.skipif(shutil.which("unshare") is None, reason="needs unshare (util-linux)")

CONFTEST = """
    import os, time

    def pytest_concurrent_db_populate_template(config, connection, backend):
        with open(os.path.join(os.environ["RESULTS_DIR"], "builds"), "a") as out:
            out.write("built\\n")
        time.sleep(2)  # a slow build: the other host waits for it on the server lock
"""

SHARD = """
    import os, socket, time

    def _record(connection, name):
        cur = connection.cursor()
        cur.execute("INSERT INTO book (author_id, title) VALUES (1, 'x')")
        connection.commit()
        path = os.path.join(os.environ["RESULTS_DIR"], f"{socket.gethostname()}-{os.getpid()}-{name}")
        with open(path, "w") as out:
            out.write(os.environ.get("CONCURRENT_DB_SEEN", ""))

    def _wait_for(flag):
        deadline = time.monotonic() + 150
        while not os.path.exists(os.path.join(os.environ["RESULTS_DIR"], flag)):
            assert time.monotonic() < deadline, f"{flag} never came"
            time.sleep(0.2)

    @pytest_params
    def test_shard(concurrent_db, concurrent_db_connection, i):
        started = f"started-{socket.gethostname()}-{concurrent_db.name}"
        open(os.path.join(os.environ["RESULTS_DIR"], started), "w").close()
        if os.environ.get("SHARD_WAIT"):
            _wait_for(os.environ["SHARD_WAIT"])
        _record(concurrent_db_connection, f"{concurrent_db.name}-{i}")
        cur = concurrent_db_connection.cursor()
        cur.execute("SELECT count(*) FROM book")
        assert cur.fetchone()[0] >= 1
"""


def _shard_file(project: Project, name: str, count: int) -> None:
    body = textwrap.dedent(SHARD).replace(
        "@pytest_params", f"@pytest.mark.parametrize('i', range({count}))"
    )  # fmt: skip
    project.pytester.makepyfile(**{name: "import pytest\n" + body})


def _host(project: Project, host: str, shard: str, env: dict[str, str]) -> subprocess.Popen[bytes]:
    """``pytest -n 2 --concurrent-db <shard>`` as host ``host``: its own UTS namespace and temp dir."""
    tmp = project.pytester.path / f"tmp-{host}"
    tmp.mkdir(exist_ok=True)
    argv = [
        sys.executable, "-m", "pytest", "-n", "2", "--concurrent-db", "-p", "no:randomly", "-p", "no:cacheprovider",
        "--concurrent-db-url", project.url.render(hide_password=False), shard,
    ]  # fmt: skip
    script = 'hostname "$1" && shift && exec "$@"'
    with (project.pytester.path / f"{host}.log").open("wb") as log:  # the child keeps its own copy
        return subprocess.Popen(
            ["unshare", "--uts", "sh", "-c", script, "sh", host, *argv],
            cwd=project.pytester.path,
            env={**os.environ, **env, "TMPDIR": str(tmp)},
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def _log(project: Project, host: str) -> str:
    return (project.pytester.path / f"{host}.log").read_text(errors="replace")


def _prepare(project: Project) -> None:
    if subprocess.run(["unshare", "--uts", "true"], check=False, capture_output=True).returncode != 0:
        why = "unshare --uts is not permitted here (needs root or user namespaces)"
        if os.environ.get("CONCURRENT_DB_REQUIRE_BACKENDS"):
            pytest.fail(why)  # CI: a test that cannot run fails
        pytest.skip(why)
    project.write(conftest=CONFTEST)


@pytest.mark.parametrize("backend_url", ["postgresql", "mysql"], indirect=True)  # servers: hosts share one
def test_two_hosts_share_one_server(project: Project, results_dir: Path) -> None:
    _prepare(project)
    _shard_file(project, "test_shard_a", 4)
    _shard_file(project, "test_shard_b", 4)
    hosts = {"hosta": "test_shard_a.py", "hostb": "test_shard_b.py"}
    runs = {host: _host(project, host, shard, {}) for host, shard in hosts.items()}
    for host, run in runs.items():
        assert run.wait(timeout=300) == 0, _log(project, host)
    assert (results_dir / "builds").read_text().count("built") == 1  # one build between the hosts
    records = [p.name for p in results_dir.iterdir() if p.name.startswith("host")]
    assert len(records) == 8
    by_host: dict[str, set[str]] = {}
    for name in records:
        host, _, rest = name.partition("-")
        by_host.setdefault(host, set()).add(rest.split("-", 1)[1].rsplit("-", 1)[0])
    assert set(by_host) == {"hosta", "hostb"}
    assert not by_host["hosta"] & by_host["hostb"]  # no database shared between the hosts
    assert all(len(names) <= 2 for names in by_host.values())
    assert project.clones() == []


@pytest.mark.parametrize("backend_url", ["postgresql", "mysql"], indirect=True)  # servers: hosts share one
def test_killed_host_never_drops_the_other_hosts_databases(project: Project, results_dir: Path) -> None:
    _prepare(project)
    _shard_file(project, "test_shard_a", 2)
    _shard_file(project, "test_shard_b", 2)
    _shard_file(project, "test_shard_c", 2)
    # host B's tests wait (clones live) until "go"; host A's wait for ever and are killed
    b = _host(project, "hostb", "test_shard_b.py", {"SHARD_WAIT": "go"})
    a = _host(project, "hosta", "test_shard_a.py", {"SHARD_WAIT": "never"})
    deadline = time.monotonic() + 240
    while True:
        started = [p.name for p in results_dir.iterdir() if p.name.startswith("started-")]
        if {n.split("-")[1] for n in started} == {"hosta", "hostb"} and len(started) >= 4:
            break
        assert time.monotonic() < deadline, _log(project, "hosta") + _log(project, "hostb")
        assert a.poll() is None, _log(project, "hosta")
        assert b.poll() is None, _log(project, "hostb")
        time.sleep(0.3)
    b_clones = {n.split("-", 2)[2] for n in started if n.split("-")[1] == "hostb"}
    a_clones = {n.split("-", 2)[2] for n in started if n.split("-")[1] == "hosta"}
    os.killpg(a.pid, signal.SIGKILL)  # host A dies mid-way: its clones stay on the server
    a.wait(timeout=30)
    assert a_clones <= set(project.server_names())
    # host C runs in between: it reaps what dead runs left, never host B's live clones
    c = _host(project, "hostc", "test_shard_c.py", {})
    assert c.wait(timeout=300) == 0, _log(project, "hostc")
    left = set(project.server_names())
    assert b_clones <= left, _log(project, "hostc")
    assert not a_clones & left, _log(project, "hostc")  # the dead host's clones were reaped
    (results_dir / "go").touch()
    assert b.wait(timeout=300) == 0, _log(project, "hostb")  # host B's databases were there all along
    # Host A's next run: it adopts and drops what its killed run was still copying (a spare the
    # server finished after the kill has no marker; no other host may take it, host C did not).
    again = _host(project, "hosta", "test_shard_a.py", {})
    assert again.wait(timeout=300) == 0, _log(project, "hosta")
    assert project.clones() == []


DYING_BUILD = """
    import os, socket, time

    def pytest_concurrent_db_populate_template(config, connection, backend):
        results = os.environ["RESULTS_DIR"]
        with open(os.path.join(results, "builds"), "a") as out:
            out.write(socket.gethostname() + "\\n")
        if socket.gethostname() == "hosta":
            open(os.path.join(results, "building"), "w").close()
            time.sleep(600)  # killed mid-build
"""


@pytest.mark.parametrize("backend_url", ["postgresql", "mysql"], indirect=True)  # servers: hosts share one
def test_host_killed_mid_build_leaves_a_template_the_next_host_rebuilds(project: Project, results_dir: Path) -> None:
    _prepare(project)
    project.pytester.makeconftest(textwrap.dedent(DYING_BUILD))
    _shard_file(project, "test_shard_a", 2)
    _shard_file(project, "test_shard_b", 2)
    a = _host(project, "hosta", "test_shard_a.py", {})
    deadline = time.monotonic() + 240
    while not (results_dir / "building").exists():
        assert time.monotonic() < deadline, _log(project, "hosta")
        assert a.poll() is None, _log(project, "hosta")
        time.sleep(0.3)
    os.killpg(a.pid, signal.SIGKILL)
    a.wait(timeout=30)
    unfinished = [n for n in project.server_names() if "_tpl_" in n]
    assert len(unfinished) == 1  # left unmarked (building), never ready
    b = _host(project, "hostb", "test_shard_b.py", {})
    assert b.wait(timeout=300) == 0, _log(project, "hostb")
    assert (results_dir / "builds").read_text().split() == ["hosta", "hostb"]  # dropped and rebuilt
    assert [n for n in project.server_names() if "_tpl_" in n] == unfinished
    assert project.clones() == []
