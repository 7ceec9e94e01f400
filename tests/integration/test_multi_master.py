"""Several masters (real processes) on one PostgreSQL database, workers and clients
spread over them: results, dependency failures and cancels cross masters; a delayed
task submitted through a master killed with kill -9 still runs; each periodic slot
runs once while the leader is killed; restarting one master never hands back the
leases held through another live one.

Needs the machine's PostgreSQL (tests/pg.py): skipped without it, failed in CI.
Each test gets a database of its own.
"""

from __future__ import annotations

import concurrent.futures as cf
import json
import secrets
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

import conveyor
from conveyor.cluster import LocalCluster
from tests.pg import fresh_postgres_dsn  # noqa: F401 (a fixture)

from ..waiting import wait_for, wait_until
from .conftest import ROOT, TASKS

MTASKS = "tests.integration.mtasks"
PTASKS = "tests.integration.ptasks"

pytestmark = pytest.mark.timeout(180)


def _masters(make_cluster, dsn: str, workers: list[int], **kwargs) -> list[LocalCluster]:
    """One LocalCluster per entry (its master and that many workers), every master on
    ``dsn`` and all under one authkey; started in order (the first one leads)."""
    authkey = secrets.token_hex(16).encode()
    made = []
    for n in workers:
        c = make_cluster(workers=n, authkey=authkey, master_args=["--store", dsn],
                         modules=[TASKS, MTASKS, PTASKS], **kwargs).start()
        if n:
            c.wait_for_workers(n)
        made.append(c)
    return made


def _lines(path: Path) -> list[str]:
    return path.read_text().split() if path.exists() else []


def test_results_and_dependency_failures_cross_masters(fresh_postgres_dsn, make_cluster):  # noqa: F811
    head, rest = fresh_postgres_dsn.split("://", 1)
    secret = "multi-s3cret-pw"  # trust authentication ignores it; nothing may show it
    dsn = f"{head}://{rest.split('@', 1)[0]}:{secret}@{rest.split('@', 1)[1]}"
    a, b = _masters(make_cluster, dsn, [0, 1])  # the only worker is on B
    with a.client() as ca, b.client() as cb:
        squares = ca.submit_many(f"{TASKS}:square", [(i,) for i in range(20)])
        broken = ca.submit(f"{TASKS}:fail", "broke")
        blocked = ca.submit(f"{TASKS}:square", 5, after=[broken])
        assert [f.result(60) for f in squares] == [i * i for i in range(20)]
        with pytest.raises(conveyor.TaskError, match="broke"):
            broken.result(60)
        with pytest.raises(conveyor.TaskError) as info:
            blocked.result(60)
        assert info.value.type_name == "conveyor.errors.DependencyFailed"
        # Submitted through B (which runs it), waited for through A.
        tid = cb.submit(f"{TASKS}:add", 2, 3).task_id
        assert ca.result(tid, 60) == 5
        # Every master's row (a heartbeat a second) shows the workers it serves.
        status = wait_for(lambda: (st := ca.status()) and all(
            m["info"].get("worker_count") == (1 if m["address"] == b.address else 0)
            for m in st["masters"]) and st, 30, "both masters' rows")
    assert status["leader"] is True  # A started first
    listed = {m["address"]: m for m in status["masters"]}
    assert set(listed) == {a.address, b.address}
    assert all(m["heartbeat_age"] < 10 for m in listed.values())
    shown = subprocess.run([sys.executable, "-m", "conveyor", "status", "--connect", a.address],
                           capture_output=True, text=True, env=a.env(), cwd=ROOT, timeout=60)
    assert shown.returncode == 0, shown.stderr
    assert a.address in shown.stdout and b.address in shown.stdout
    assert "VIA MASTER" in shown.stdout  # B's worker, listed through A
    assert secret not in json.dumps(status) + shown.stdout + a.logs() + b.logs()


def test_progress_reported_through_one_master_reaches_a_client_of_another(
        fresh_postgres_dsn, make_cluster):  # noqa: F811
    a, b = _masters(make_cluster, fresh_postgres_dsn, [0, 1])
    with a.client() as ca:
        fut = ca.submit(f"{TASKS}:with_progress", 4, 0.5)
        seen = wait_for(lambda: fut.progress, 60, "a progress report through B")
        assert 1 <= seen["done"] <= 4 and seen["total"] == 4
        assert fut.result(60) == 4


def test_cancel_of_a_running_task_reaches_the_worker_on_another_master(
        fresh_postgres_dsn, make_cluster, tmp_path):  # noqa: F811
    a, b = _masters(make_cluster, fresh_postgres_dsn, [0, 1], concurrency=1)
    started = tmp_path / "started"
    with a.client() as ca:
        fut = ca.submit(f"{TASKS}:hang", 120, str(started))
        assert wait_until(started.exists, timeout=60)  # running on B's worker
        assert ca.cancel(fut.task_id)["cancelled"] == [fut.task_id]
        with pytest.raises(cf.CancelledError):
            fut.result(30)
        # B's one worker slot is free again only if the hang was stopped there.
        assert ca.submit(f"{TASKS}:square", 7).result(60) == 49
        assert ca.inspect(fut.task_id)["state"] == "cancelled"
    assert all(w.poll() is None for w in b.workers)


def test_restarting_a_master_leaves_the_leases_of_a_live_one(
        fresh_postgres_dsn, make_cluster, tmp_path):  # noqa: F811
    # A holds the lease through its worker; B has an idle worker that would run the task
    # again if B's restart handed A's lease back (as one master's start used to).
    a, b = _masters(make_cluster, fresh_postgres_dsn, [1, 1], concurrency=1)
    marks = tmp_path / "marks"
    with a.client() as ca:
        fut = ca.submit(f"{MTASKS}:mark_then_sleep", str(marks), 6)
        assert wait_until(lambda: _lines(marks), timeout=60)
        b.kill_master(signal.SIGKILL)
        b.start_master()
        b.wait_for_workers(1)  # B's worker is back and idle, with credit
        with b.client() as cb:
            status = cb.status()
        assert status["masters"] and len(status["masters"]) >= 2
        assert fut.result(60) == 1  # the one execution: nothing ran it again
        assert len(_lines(marks)) == 1
        assert ca.inspect(fut.task_id)["attempts"] == 1


def test_a_delayed_task_submitted_through_a_killed_master_still_runs(
        fresh_postgres_dsn, make_cluster):  # noqa: F811
    # B starts first: it leads, and takes the delay timer with it when killed.
    b, a = _masters(make_cluster, fresh_postgres_dsn, [0, 1])
    with b.client() as cb:
        tid = cb.submit(f"{TASKS}:add", 20, 22, countdown=2).task_id
        assert cb.inspect(tid)["state"] == "delayed"
    b.kill_master(signal.SIGKILL)
    with a.client() as ca:
        assert ca.result(tid, 60) == 42
        assert wait_until(lambda: ca.status()["leader"], timeout=30)  # A took over


def _slot_lines(path: Path) -> list[str]:
    return [line.split()[0] for line in path.read_text().splitlines()] if path.exists() else []


def test_each_periodic_slot_runs_once_with_three_masters_while_the_leader_is_killed(
        fresh_postgres_dsn, make_cluster, tmp_path):  # noqa: F811
    lead, m2, m3 = _masters(make_cluster, fresh_postgres_dsn, [0, 1, 1])
    out = tmp_path / "ticks"
    with m2.client() as client:
        client.schedule("tick", f"{PTASKS}:log_slot", str(out), every=1)
    before = wait_for(lambda: _slot_lines(out), 30, "a first run")
    lead.kill_master(signal.SIGKILL)
    killed = time.time()
    runs = wait_for(lambda: (r := _slot_lines(out)) and len(r) >= len(before) + 3 and r, 60,
                    "three runs after the leader was killed")
    counts = Counter(runs)
    assert set(counts.values()) == {1}, f"a slot ran twice: {counts}"
    with m2.client() as c2, m3.client() as c3:
        slots = sorted(c3.inspect(tid)["options"]["slot"] for tid in counts)
        assert wait_until(lambda: c2.status()["leader"] or c3.status()["leader"], timeout=30)
    assert len(set(slots)) == len(slots)
    assert max(slots) > killed  # slots kept coming after the leader died


def test_a_rate_limit_holds_for_the_whole_cluster_of_three_masters(
        fresh_postgres_dsn, make_cluster, tmp_path):  # noqa: F811
    masters = _masters(make_cluster, fresh_postgres_dsn, [1, 1, 1], concurrency=4)
    out = tmp_path / "stamps"
    n = 45
    clients = [m.client() for m in masters]
    try:
        futures = [clients[i % 3].submit(f"{TASKS}:stamp", str(out), i, rate_limit="10/s")
                   for i in range(n)]
        assert sorted(f.result(120) for f in futures) == list(range(n))
    finally:
        for c in clients:
            c.close()
    times = sorted(float(line.split()[1]) for line in out.read_text().splitlines())
    assert len(times) == n
    # A bucket of 10 refilled at 10/s lets at most 10 + 10 runs into any one-second window
    # (3 masters with a bucket each would let 30 + 30: all 45 within about a second).
    busiest = max(sum(1 for t in times if start <= t < start + 1.0) for start in times)
    assert busiest <= 20 + 3, f"{busiest} runs within one second"


def test_maxsize_holds_with_producers_on_two_masters_and_a_get_wakes_the_other(
        fresh_postgres_dsn, make_cluster):  # noqa: F811
    a, b = _masters(make_cluster, fresh_postgres_dsn, [0, 0])
    maxsize, per_producer = 8, 30
    with a.client() as ca, b.client() as cb, b.client() as consumer:
        qa, qb = ca.queue("bounded", maxsize), cb.queue("bounded", maxsize)
        qc = consumer.queue("bounded", maxsize, ack="get")
        errors: list[BaseException] = []

        def produce(q, label: str) -> None:
            try:
                for i in range(per_producer):
                    q.put(f"{label}{i}", timeout=60)  # parks while full
            except BaseException as exc:  # noqa: BLE001 - reported by the test
                errors.append(exc)

        producers = [threading.Thread(target=produce, args=(q, label))
                     for q, label in ((qa, "a"), (qb, "b"))]
        for t in producers:
            t.start()
        assert wait_until(lambda: qc.qsize() == maxsize, timeout=60)
        got, sizes = [], []
        for _ in range(2 * per_producer - maxsize):
            got.append(qc.get(timeout=60))  # through B only: A's parked putter must hear of it
            sizes.append(qc.qsize())
        for t in producers:
            t.join(60)
        assert not errors
        assert max(sizes) <= maxsize
        assert qc.qsize() == maxsize  # every put went in, never past the bound
        assert {x[0] for x in got} == {"a", "b"}


def test_a_master_started_with_other_settings_than_a_live_peer_warns(
        fresh_postgres_dsn, make_cluster):  # noqa: F811
    (a,) = _masters(make_cluster, fresh_postgres_dsn, [0])
    b = make_cluster(workers=0, authkey=a.authkey,
                     master_args=["--store", fresh_postgres_dsn, "--pickle"]).start()
    assert b.master is not None
    log = b.log_path(b.master).read_text()
    assert f"at {a.address} runs with other settings" in log
    assert "'pickle': False" in log and "'pickle': True" in log


def test_a_putter_parked_on_one_master_is_woken_by_a_get_on_the_other(
        fresh_postgres_dsn, make_cluster, monkeypatch):  # noqa: F811
    # The safety-net retry of parked puts an hour away: only B's announcement can wake A's putter.
    monkeypatch.setenv("CONVEYOR_PUT_RETRY_EVERY", "3600")
    a, b = _masters(make_cluster, fresh_postgres_dsn, [0, 0])
    maxsize = 3
    with a.client() as ca, b.client() as cb:
        qa, qb = ca.queue("full", maxsize), cb.queue("full", maxsize, ack="get")
        unbounded = cb.queue("free", ack="get")  # gets from an unbounded queue meanwhile: no harm
        for i in range(maxsize):
            qa.put(i)
        assert qb.qsize() == maxsize
        with cf.ThreadPoolExecutor(1) as pool:
            put = pool.submit(qa.put, "late", timeout=120)
            with pytest.raises(cf.TimeoutError):
                put.result(timeout=1.0)  # parked on A: the queue is full
            unbounded.put("x")
            assert unbounded.get(timeout=10) == "x"
            assert not put.done()
            assert qb.get(timeout=10) == 0  # through B: room in the queue A's putter waits on
            put.result(timeout=30)  # far sooner than the hour-long safety net
        assert [qb.get(timeout=10) for _ in range(maxsize)] == [1, 2, "late"]


def test_a_manager_given_two_masters_keeps_its_queues_when_the_first_is_killed(
        fresh_postgres_dsn, make_cluster):  # noqa: F811
    from conveyor.managers import SyncManager

    authkey = secrets.token_hex(16).encode()
    a, b = (make_cluster(workers=0, authkey=authkey, master_args=["--store", fresh_postgres_dsn, "--pickle"],
                         modules=[TASKS]).start() for _ in range(2))
    pairs = [("127.0.0.1", a.port), ("127.0.0.1", b.port)]
    m = SyncManager(address=pairs, authkey=authkey)
    with pytest.raises(ValueError, match="several masters"):
        m.start()  # a list is for connecting: serving needs one address
    m.connect()
    try:
        q = m.Queue()
        for i in range(3):
            q.put({"n": i})
        assert q.get(timeout=30) == {"n": 0}
        assert f"127.0.0.1:{a.port}" in repr(q)
        a.kill_master()  # kill -9 of the master the manager's client uses
        q.put({"n": 3})  # the proxy moves to B
        assert [q.get(timeout=30) for _ in range(3)] == [{"n": 1}, {"n": 2}, {"n": 3}]
        assert q.qsize() == 0
        # The string form, its first master down: connect() reaches the one that answers.
        other = SyncManager(address=f"127.0.0.1:{a.port},127.0.0.1:{b.port}", authkey=authkey)
        other.connect()
        try:
            q2 = other.Queue()
            q2.put("via b")
            assert q2.get(timeout=30) == "via b"
        finally:
            other.shutdown()
    finally:
        m.shutdown()


def _dashboard(cluster: LocalCluster, env: dict[str, str], *args: str):
    """``conveyor dashboard`` with ``env`` over the cluster's (no --connect unless in ``args``):
    the process, and a Browser on it."""
    from .dashboard_helpers import Browser

    cmd = [sys.executable, "-m", "conveyor", "dashboard", "--bind", "127.0.0.1:0", "--interval", "0.3",
           "--timeout", "2", *args]
    with open(cluster.log_dir / "dashboard.log", "ab") as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, cwd=ROOT, env={**cluster.env(), **env})
    line = proc.stdout.readline().decode() if proc.stdout else ""
    if "listening on " not in line:
        proc.kill()
        raise RuntimeError(f"dashboard did not start: {line!r}")
    return proc, Browser(line.split("listening on ", 1)[1].strip())


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)
    if proc.stdout:
        proc.stdout.close()


def _up(web) -> bool:
    reply = web.get("/api/history")
    return reply.status == 200 and json.loads(reply.body)["up"] is True


def test_a_dashboard_given_the_masters_of_conveyor_address_keeps_answering_when_the_first_is_killed(
        fresh_postgres_dsn, make_cluster):  # noqa: F811
    a, b = _masters(make_cluster, fresh_postgres_dsn, [0, 0])
    assert a.master is not None and b.master is not None
    proc, web = _dashboard(a, {"CONVEYOR_ADDRESS": f"{a.address},{b.address}"})  # no --connect
    try:
        assert wait_until(lambda: f"pid {a.master.pid}," in web.get("/").body, timeout=30)
        assert _up(web)
        a.kill_master()  # kill -9 of the master the dashboard's client uses
        assert wait_until(lambda: f"pid {b.master.pid}," in web.get("/").body, timeout=30)
        assert wait_until(lambda: _up(web), timeout=30)
        assert "Master unreachable" not in web.get("/").body
        assert web.get("/tasks").status == 200
    finally:
        _stop(proc)


def test_a_dashboard_given_two_masters_moves_off_a_silent_one(fresh_postgres_dsn, make_cluster):  # noqa: F811
    a, b = _masters(make_cluster, fresh_postgres_dsn, [0, 0])
    assert a.master is not None and b.master is not None
    proc, web = _dashboard(a, {}, "--connect", f"{a.address},{b.address}")
    try:
        assert wait_until(lambda: f"pid {a.master.pid}," in web.get("/").body, timeout=30)
        a.master.send_signal(signal.SIGSTOP)  # silent, its port still accepting: not refused
        # A new client per failure would start at the silent master each time and time out
        # there; the kept client's link notices the silence and moves to B.
        assert wait_until(lambda: f"pid {b.master.pid}," in web.get("/").body, timeout=60)
        assert wait_until(lambda: _up(web), timeout=30)
    finally:
        a.master.send_signal(signal.SIGCONT)
        _stop(proc)


def test_a_dashboard_reads_every_master_of_conveyor_address(monkeypatch):
    from conveyor.http.cli import _default_address
    from conveyor.http.gateway import Gateway

    monkeypatch.setenv("CONVEYOR_ADDRESS", "127.0.0.1:7001,tls://h:7002")
    assert _default_address() == "tcp://127.0.0.1:7001,tls://h:7002"
    gateway = Gateway("127.0.0.1:7001,127.0.0.1:7002", None)
    try:
        assert gateway.fails_over
    finally:
        gateway.close()
    with pytest.raises(ValueError, match="empty entry"):
        Gateway("127.0.0.1:7001,,", None)
