"""The database failing over: a PostgreSQL primary with a synchronous standby, the primary
killed with kill -9 under load and the standby promoted; the master, on a multi-host
connection string (``target_session_attrs=read-write``), continues on the promoted standby
and no acknowledged task is lost.

Both servers are started by the test from the distribution's PostgreSQL binaries, in a
temporary directory owned by the ``postgres`` user (``initdb`` refuses to run as root), on
free ports, and stopped by PID at the end. Skipped with the reason when the binaries, root
or the ``postgres`` user are missing; failed instead in CI (see tests/pg.py).
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.pg import fresh_postgres_dsn, unavailable  # noqa: F401 (a fixture)

from ..waiting import wait_for, wait_until
from .conftest import ROOT, TASKS

STANDBY_NAME = "standby1"


def _pg_bin() -> Path:
    """The directory of the newest installed PostgreSQL's server binaries (or skip / fail)."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(p.split("/")[-2])
                   if p.split("/")[-2].isdigit() else 0)
    for path in reversed(found):
        if all(os.access(os.path.join(path, b), os.X_OK) for b in
               ("initdb", "pg_ctl", "pg_basebackup", "postgres")):
            return Path(path)
    unavailable("no PostgreSQL server binaries in /usr/lib/postgresql/*/bin")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PgServer:
    """One throwaway PostgreSQL server (a data directory and its postmaster)."""

    def __init__(self, bin_dir: Path, data: Path, port: int) -> None:
        self.bin = bin_dir
        self.data = data
        self.port = port
        self.pid: int | None = None
        self.children: set[int] = set()  # its backends and helpers, seen while it ran

    def run(self, *cmd: str, timeout: float = 120) -> str:
        """Run a PostgreSQL program as the postgres user (they refuse root)."""
        proc = subprocess.run(["runuser", "-u", "postgres", "--", str(self.bin / cmd[0]), *cmd[1:]],
                              capture_output=True, text=True, timeout=timeout)
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stderr}{proc.stdout}")
        return proc.stdout

    def configure(self, **settings: str | int) -> None:
        """Append settings to postgresql.auto.conf (the last setting of a name wins)."""
        with open(self.data / "postgresql.auto.conf", "a") as f:
            for key, value in settings.items():
                f.write(f"{key} = '{value}'\n")

    def start(self) -> None:
        self.run("pg_ctl", "-D", str(self.data), "-l", str(self.data.parent / f"{self.data.name}.log"),
                 "-w", "-t", "60", "start")
        self.pid = int((self.data / "postmaster.pid").read_text().split()[0])

    def note_children(self) -> None:
        """Remember the PIDs of the postmaster's children, to kill whatever outlives it."""
        if self.pid is None:
            return
        for stat in glob.glob("/proc/[0-9]*/stat"):
            with contextlib.suppress(OSError, ValueError, IndexError):
                fields = Path(stat).read_text().rsplit(")", 1)[1].split()
                if int(fields[1]) == self.pid:
                    self.children.add(int(stat.split("/")[2]))

    def kill(self) -> None:
        """kill -9 the postmaster (its backends end when they see it gone)."""
        assert self.pid is not None
        self.note_children()
        os.kill(self.pid, signal.SIGKILL)

    def stop(self) -> None:
        """Stop the server by PID: SIGQUIT (immediate shutdown), then SIGKILL; and any child left."""
        self.note_children()
        for pid, first in [(self.pid, signal.SIGQUIT)] + [(c, signal.SIGKILL) for c in self.children]:
            if pid is None:
                continue
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, first)
            if not wait_until(lambda p=pid: not _alive(p), timeout=15):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)

    def dsn(self, db: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{db}"


def _alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie, or a PID now used by something else, is not ours)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z" and "postgres" in stat.split(")", 1)[0]


@pytest.fixture
def pg_pair() -> Iterator[tuple[PgServer, PgServer]]:
    """A primary and its synchronous standby (streaming replication), both running."""
    try:
        import psycopg  # noqa: F401
    except ImportError:
        unavailable("psycopg is not installed (pip install 'conveyor[postgres]')")
    bin_dir = _pg_bin()
    if os.geteuid() != 0:
        unavailable("starting throwaway PostgreSQL servers needs root (to run them as postgres)")
    try:
        pg_user = pwd.getpwnam("postgres")
    except KeyError:
        unavailable("no 'postgres' user to run the PostgreSQL servers as")
    if shutil.which("runuser") is None:
        unavailable("no runuser to run the PostgreSQL servers as the postgres user")
    # Not under pytest's tmp_path (or the suite's TMPDIR): their root-only parents would
    # keep the postgres user out.
    base = Path(tempfile.mkdtemp(prefix="conveyor-pg-standby-",
                                 dir="/tmp" if os.path.isdir("/tmp") else None))
    os.chown(base, pg_user.pw_uid, pg_user.pw_gid)
    primary = PgServer(bin_dir, base / "primary", _free_port())
    standby = PgServer(bin_dir, base / "standby", _free_port())
    try:
        primary.run("initdb", "-D", str(primary.data), "-U", "postgres", "--auth=trust",
                    "-E", "UTF8", "--no-instructions")
        primary.configure(
            port=primary.port, listen_addresses="127.0.0.1", unix_socket_directories=str(base),
            wal_level="replica", max_wal_senders=5, synchronous_commit="on",
            synchronous_standby_names=STANDBY_NAME, shared_buffers="32MB", max_connections=50)
        primary.start()
        primary.run("pg_basebackup", "-h", "127.0.0.1", "-p", str(primary.port), "-U", "postgres",
                    "-D", str(standby.data), "-R", "-X", "stream", "-c", "fast")
        standby.configure(
            port=standby.port,
            primary_conninfo=f"host=127.0.0.1 port={primary.port} user=postgres "
                             f"application_name={STANDBY_NAME}",
            # Once promoted it has no standby of its own: commits must not wait for one.
            synchronous_standby_names="")
        standby.start()
        import psycopg

        with psycopg.connect(primary.dsn(), autocommit=True) as conn:
            wait_for(lambda: conn.execute(
                "SELECT 1 FROM pg_stat_replication WHERE application_name = %s "
                "AND sync_state = 'sync'", (STANDBY_NAME,)).fetchone(), 60,
                "the standby to stream synchronously")
            conn.execute("CREATE DATABASE conveyor")
        yield primary, standby
    finally:
        standby.stop()
        primary.stop()
        shutil.rmtree(base, ignore_errors=True)


def _pg(dsn: str, sql: str) -> list[tuple[object, ...]]:
    import psycopg

    with psycopg.connect(dsn, autocommit=True, connect_timeout=5) as conn:
        return list(conn.execute(sql.encode()).fetchall())


def test_primary_killed_under_load_standby_promoted_no_acknowledged_task_lost(
        pg_pair, make_cluster):
    primary, standby = pg_pair
    # The URI form with both hosts; libpq picks the one that accepts writes.
    dsn = (f"postgresql://postgres@127.0.0.1:{primary.port},127.0.0.1:{standby.port}/conveyor"
           "?target_session_attrs=read-write")
    cluster = make_cluster(workers=2, master_args=["--store", dsn]).start()
    cluster.wait_for_workers(2)

    acked: dict[str, int] = {}  # task id -> n, for every submit that returned an id
    futures = []
    refused: list[str] = []
    stop = threading.Event()

    def submit_forever() -> None:
        n = 0
        while not stop.is_set():
            n += 1
            try:
                fut = loader_client.submit(f"{TASKS}:slow_square", n, 0.002)
            except Exception as exc:  # not acknowledged: allowed, and counted
                refused.append(type(exc).__name__)
                stop.wait(0.05)
                continue
            acked[fut.task_id] = n
            futures.append(fut)

    with cluster.client() as loader_client:
        loader = threading.Thread(target=submit_forever, daemon=True)
        loader.start()
        try:
            wait_for(lambda: len(acked) >= 200, 120, "200 acknowledged submits before the kill")
            primary.kill()
            before_promote = len(acked)
            standby.run("pg_ctl", "-D", str(standby.data), "-w", "-t", "60", "promote")
            # The master continues on the promoted standby: submits are acknowledged again.
            wait_for(lambda: len(acked) >= before_promote + 200, 120,
                     "200 acknowledged submits after the promotion")
        finally:
            stop.set()
            loader.join(60)
        assert not loader.is_alive()
        assert not _alive(primary.pid or 0)  # the old primary is really gone
        results = {f.task_id: f.result(180) for f in futures}
    with cluster.client() as client:
        later = client.submit(f"{TASKS}:add", 2, 3, countdown=0.3)  # the leader promotes it
        assert later.result(120) == 5
    # Every acknowledged submit ended with exactly its one result.
    assert results == {tid: n * n for tid, n in acked.items()}
    new = standby.dsn("conveyor")
    rows = _pg(new, "SELECT id, state, result_ok FROM tasks")
    by_id = {r[0]: (r[1], r[2]) for r in rows}
    assert len(by_id) == len(rows)
    missing = [tid for tid in acked if tid not in by_id]
    assert not missing, f"{len(missing)} acknowledged task(s) lost in the failover"
    assert all(by_id[tid] == ("succeeded", True) for tid in acked)
    # The master's connections came back on the promoted standby: the store's, the
    # LISTEN connection's and the leader lock's (held).
    assert _pg(new, "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'conveyor' "
                    "AND datname = 'conveyor' AND query LIKE 'LISTEN %'")[0][0] >= 1
    assert _pg(new, "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted")[0][0] >= 1
    assert cluster.master is not None and cluster.master.poll() is None
    # A worker's results that met the lost connection were stored when tried again, not
    # refused as foreign (and left to expire and run again).
    assert "leases the session does not hold" not in \
        cluster.log_path(cluster.master).read_text(errors="replace")
    print(f"acknowledged {len(acked)} submits ({before_promote} before the promotion), "
          f"{len(refused)} refused during the failover")


def test_key_value_multi_host_string_skips_a_dead_host_and_never_shows_its_password(
        fresh_postgres_dsn, tmp_path):  # noqa: F811
    """libpq's key=value form with two hosts, the first one down: the master starts on the
    second; the banner, its log and ``conveyor status`` show the hosts but no password."""
    secret = "kv-multi-host-pw"
    server, db = fresh_postgres_dsn.rsplit("/", 1)
    port = server.rsplit(":", 1)[1]
    dsn = (f"host=127.0.0.1,127.0.0.1 port={_free_port()},{port} user=postgres "
           f"password={secret} dbname={db} target_session_attrs=read-write")
    env = {**os.environ, "CONVEYOR_AUTHKEY": "standby-test-key"}
    proc = subprocess.Popen([sys.executable, "-m", "conveyor", "master", "--bind", "127.0.0.1:0",
                             "--data", str(tmp_path / "unused"), "--store", dsn],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT, env=env)
    try:
        assert proc.stdout is not None
        banner = proc.stdout.readline()
        assert "listening on" in banner, banner
        address = banner.split("listening on", 1)[1].split()[0]
        status = subprocess.run([sys.executable, "-m", "conveyor", "status", "--json",
                                 "--connect", address], capture_output=True, text=True,
                                timeout=60, cwd=ROOT, env=env)
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    assert "(store: host=127.0.0.1,127.0.0.1 " in banner and "password=***" in banner
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)["store"] == "PostgresStore"
    assert secret not in banner + err + status.stdout + status.stderr
    assert not (tmp_path / "unused").exists()  # the store is the database, not --data
    assert _pg(fresh_postgres_dsn, "SELECT count(*) FROM masters")[0][0] == 1
