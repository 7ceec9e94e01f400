"""A real master on PostgreSQL (``--store postgresql://...`` and ``CONVEYOR_STORE``)
with real workers: tasks end to end, a master killed with kill -9 mid-load and
restarted on the same database, and the start-up failures a user can meet.

Needs the machine's PostgreSQL (see tests/pg.py): skipped without it, failed in CI.
Each test gets a database of its own.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys

import pytest

import conveyor
from tests.pg import fresh_postgres_dsn  # noqa: F401 (a fixture)

from ..waiting import wait_until
from .conftest import ROOT, TASKS


def _with_password(dsn: str, password: str) -> str:
    """``dsn`` with a password in it (trust authentication on the test server ignores it)."""
    head, rest = dsn.split("://", 1)
    user, host = rest.split("@", 1)
    return f"{head}://{user}:{password}@{host}"


def _db_tasks(dsn: str) -> list[tuple[str, str, bool]]:
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as conn:
        return [(r[0], r[1], r[2]) for r in conn.execute(
            "SELECT id, state, result_ok FROM tasks ORDER BY seq")]


def _master(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "conveyor", "master", "--bind", "127.0.0.1:0",
                           *args], capture_output=True, text=True, timeout=60, cwd=ROOT, env=env)


def test_master_on_postgres_runs_tasks_end_to_end(make_cluster, fresh_postgres_dsn, tmp_path):  # noqa: F811
    secret = "pg-s3cret-pw"
    # --store wins over the --data the cluster passes too
    cluster = make_cluster(workers=2, master_args=[
        "--store", _with_password(fresh_postgres_dsn, secret)]).start()
    cluster.wait_for_workers(2)
    with cluster.client() as client:
        squares = client.submit_many(f"{TASKS}:square", [(i,) for i in range(50)])
        flaky = client.submit(f"{TASKS}:flaky", str(tmp_path / "count"), 2, retries=3,
                              retry_backoff=0.05)
        delayed = client.submit(f"{TASKS}:add", 1, 2, countdown=0.5)
        assert client.inspect(delayed.task_id)["state"] == "delayed"
        first = client.submit(f"{TASKS}:square", 3)
        then = client.submit(f"{TASKS}:add", 10, after=[first])
        broken = client.submit(f"{TASKS}:fail", "broke")
        blocked = client.submit(f"{TASKS}:square", 5, after=[broken])
        keyed = [client.submit(f"{TASKS}:square", 6, key="one-per-key") for _ in range(2)]
        assert [f.result(60) for f in squares] == [i * i for i in range(50)]
        assert flaky.result(60) == "ok"
        assert client.inspect(flaky.task_id)["attempts"] == 3  # two failures, then success
        assert delayed.result(60) == 3
        assert first.result(60) == 9 and then.result(60) == 10
        with pytest.raises(conveyor.TaskError, match="broke"):
            broken.result(60)
        with pytest.raises(conveyor.TaskError) as info:
            blocked.result(60)
        assert info.value.type_name == "conveyor.errors.DependencyFailed"
        assert keyed[0].task_id == keyed[1].task_id and keyed[1].result(60) == 36
        status = client.status()
    assert status["store"] == "PostgresStore"
    assert status["queues"]["default"]["succeeded"] == 50 + 5
    assert secret not in json.dumps(status)
    cluster.stop(grace=10)
    assert secret not in cluster.logs()
    rows = _db_tasks(fresh_postgres_dsn)
    assert len(rows) == 50 + 7  # the keyed submit made one task, not two


def test_master_killed_mid_load_on_postgres_gives_every_submit_one_result(
        make_cluster, fresh_postgres_dsn):  # noqa: F811
    cluster = make_cluster(workers=2, master_args=["--store", fresh_postgres_dsn]).start()
    cluster.wait_for_workers(2)
    n = 400
    with cluster.client() as client:
        futures = client.submit_many(f"{TASKS}:slow_square", [(i, 0.005) for i in range(n)])
        later = client.submit(f"{TASKS}:add", 4, 5, countdown=0.3)
        assert wait_until(lambda: sum(f.done() for f in futures) >= 50)
        cluster.kill_master(signal.SIGKILL)
        cluster.start_master()  # same database, same port
        results = [f.result(120) for f in futures]
        assert later.result(120) == 9
        status = client.status()
    assert results == [i * i for i in range(n)]
    assert status["queues"]["default"]["succeeded"] == n + 1
    rows = _db_tasks(fresh_postgres_dsn)
    assert len(rows) == n + 1 and len({r[0] for r in rows}) == n + 1
    assert {(state, ok) for _, state, ok in rows} == {("succeeded", True)}
    assert all(w.poll() is None for w in cluster.workers)  # workers reconnected


def test_unreachable_database_is_one_line_without_traceback_or_password():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # The port is closed once the socket is: nothing listens there.
    proc = _master("--store", f"postgresql://postgres:hunter2pw@127.0.0.1:{port}/nowhere")
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "cannot open store at postgresql://postgres:***@127.0.0.1" in proc.stderr
    assert "hunter2pw" not in proc.stderr + proc.stdout


def test_a_database_at_a_newer_schema_version_is_refused(fresh_postgres_dsn):  # noqa: F811
    import psycopg

    from conveyor.store.postgres import PostgresStore
    from conveyor.store.postgres_schema import SCHEMA_VERSION, VERSION_TABLE

    PostgresStore(fresh_postgres_dsn).close()
    with psycopg.connect(fresh_postgres_dsn, autocommit=True) as conn:
        conn.execute(f"UPDATE {VERSION_TABLE} SET version = {SCHEMA_VERSION + 1}")
    proc = _master("--store", fresh_postgres_dsn)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert f"schema version {SCHEMA_VERSION + 1}, newer than this conveyor's {SCHEMA_VERSION}" \
        in proc.stderr


def _banner(*args: str, env: dict[str, str]) -> tuple[str, str, int]:
    """Start ``conveyor master ARGS``, read the line it prints once it listens, stop it;
    (that line, its stderr, its exit status)."""
    proc = subprocess.Popen([sys.executable, "-m", "conveyor", "master", "--bind", "127.0.0.1:0",
                             *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=ROOT, env=env)
    try:
        assert proc.stdout is not None
        banner = proc.stdout.readline()
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    return banner, err, proc.returncode


def test_conveyor_store_picks_the_store_and_the_banner_hides_its_password(
        fresh_postgres_dsn, tmp_path):  # noqa: F811
    env = {**os.environ, "CONVEYOR_STORE": _with_password(fresh_postgres_dsn, "banner-pw-123")}
    banner, err, code = _banner(env=env)
    assert "listening on" in banner and "(store: postgresql://postgres:***@" in banner
    assert "banner-pw-123" not in banner + err
    assert code == 0
    # An explicit --data beats the environment.
    banner, err, code = _banner("--data", str(tmp_path / "d"), env=env)
    assert f"(store: {tmp_path / 'd'}," in banner and code == 0, err
