"""kill -9 at the worst moment, dropped connections, hostile bytes: nothing is lost."""

from __future__ import annotations

import signal
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest

import conveyor

from ..faults.history import History, check, inspect_all
from ..waiting import wait_until
from .conftest import ROOT, TASKS


def executions(path: Path) -> list[int]:
    return [int(x) for x in path.read_text().split()] if path.exists() else []


def test_worker_killed_with_tasks_in_flight_loses_nothing(make_cluster, tmp_path):
    cluster = make_cluster(workers=2).start()
    cluster.wait_for_workers(2)
    log = tmp_path / "runs.txt"
    n = 200
    with cluster.client() as client:
        futures = [client.submit(f"{TASKS}:record", str(log), i, 0.02) for i in range(n)]
        # Wait until the victim is mid-work: some tasks done, many still leased.
        assert wait_until(lambda: len(executions(log)) >= 20)
        victim = cluster.workers[0]
        victim.send_signal(signal.SIGKILL)
        victim.wait(10)
        results = [f.result(120) for f in futures]
        status = client.status()
        ids = [f.task_id for f in futures]
        history = History(submitted=ids, delivered=list(zip(ids, results)), inspected=inspect_all(client, ids))
    assert results == list(range(n))
    assert status["queues"]["default"]["succeeded"] == n
    assert status["queues"]["default"]["leased"] == 0
    ran = executions(log)
    assert set(ran) == set(range(n))  # every task ran; some may have run twice (at-least-once)
    # One result each, stored by the holder of the task's last lease; no task ran more
    # often than it was leased.
    history.read_executions(log, {str(i): tid for i, tid in enumerate(ids)})
    assert check(history, expected=ids.index) == []


def test_master_killed_under_load_restarts_and_every_future_resolves(make_cluster):
    cluster = make_cluster(workers=2).start()
    cluster.wait_for_workers(2)
    n = 600
    with cluster.client() as client:
        futures = client.submit_many(f"{TASKS}:slow_square", [(i, 0.005) for i in range(n)])
        assert wait_until(lambda: sum(f.done() for f in futures) >= 50)
        cluster.kill_master(signal.SIGKILL)
        time.sleep(0.5)
        cluster.start_master()  # same data directory, same port
        results = [f.result(120) for f in futures]
        status = client.status()
        ids = [f.task_id for f in futures]
        history = History(submitted=ids, delivered=list(zip(ids, results)), inspected=inspect_all(client, ids))
    assert results == [i * i for i in range(n)]
    assert status["queues"]["default"]["succeeded"] == n
    assert all(w.poll() is None for w in cluster.workers)  # workers reconnected, did not die
    assert check(history, expected=lambda tid: ids.index(tid) ** 2) == []


def test_accepted_tasks_survive_master_kill_with_no_workers(make_cluster):
    cluster = make_cluster(workers=0).start()
    with cluster.client() as client:
        futures = client.submit_many(f"{TASKS}:square", [(i,) for i in range(1000)])
        ids = [f.task_id for f in futures]
    cluster.kill_master(signal.SIGKILL)
    cluster.start_master()
    with cluster.client() as client:
        assert client.status()["queues"]["default"]["ready"] == 1000
        cluster.start_worker()
        assert [client.result(i, timeout=60) for i in ids[:10]] == [i * i for i in range(10)]
        assert client.result(ids[-1], timeout=60) == 999 * 999


def test_wrong_authkey_is_rejected_and_master_keeps_serving(cluster):
    with pytest.raises(conveyor.AuthenticationError, match="authentication failed"):
        conveyor.connect(cluster.address, b"not-the-key", connect_timeout=5)
    with cluster.client() as client:
        assert client.submit(f"{TASKS}:square", 4).result(30) == 16


def test_garbage_truncated_and_oversized_frames_leave_the_master_serving(make_cluster):
    cluster = make_cluster(workers=1, master_args=["--handshake-timeout", "1"]).start()
    host, port = "127.0.0.1", cluster.port
    # Garbage instead of a handshake: closed.
    with socket.create_connection((host, port), timeout=5) as s:
        s.sendall(b"GET / HTTP/1.1\r\n\r\n" + bytes(range(256)) * 4)
        assert s.recv(100) == b""
    # A connection that never finishes the handshake: closed after the timeout.
    with socket.create_connection((host, port), timeout=5) as s:
        s.sendall(b"CNV")
        start = time.monotonic()
        assert s.recv(100) == b""
        assert time.monotonic() - start < 5
    # An authenticated peer sending an oversized frame, then garbage: closed.
    from conveyor import protocol

    for payload in (struct.pack(">I", 2**31), struct.pack(">I", 5) + b"\xc1\xc1\xc1\xc1\xc1"):
        with socket.create_connection((host, port), timeout=5) as s:
            conn = protocol.Connection("client", cluster.authkey)
            s.sendall(conn.initiate())
            while not conn.authenticated:
                conn.receive_data(s.recv(4096))
                s.sendall(conn.data_to_send())
            s.sendall(payload)
            data = b"x"
            while data:
                data = s.recv(4096)  # the master closes it
    cluster.wait_for_workers(1)
    with cluster.client() as client:
        assert client.submit(f"{TASKS}:square", 5).result(30) == 25


def test_hung_worker_past_heartbeat_has_its_tasks_requeued(make_cluster):
    cluster = make_cluster(workers=1, master_args=["--heartbeat-timeout", "2"]).start()
    cluster.wait_for_workers(1)
    with cluster.client() as client:
        fut = client.submit(f"{TASKS}:sleep", 1.0)
        assert wait_until(lambda: client.status()["queues"]["default"]["leased"] == 1)
        frozen = cluster.workers[0]
        frozen.send_signal(signal.SIGSTOP)  # alive but silent: no heartbeats
        try:
            assert wait_until(lambda: client.status()["queues"]["default"]["ready"] == 1, timeout=20)
            cluster.start_worker()
            assert fut.result(60) == 1.0
        finally:
            frozen.send_signal(signal.SIGCONT)


def test_warm_shutdown_finishes_running_task_and_hands_back_the_rest(make_cluster, tmp_path):
    cluster = make_cluster(workers=1, concurrency=1).start()
    cluster.wait_for_workers(1)
    started = tmp_path / "started"
    with cluster.client() as client:
        running = client.submit(f"{TASKS}:hang", 1.5, str(started))
        queued = [client.submit(f"{TASKS}:square", i) for i in range(5)]
        assert wait_until(started.exists)  # running in the pool child
        worker = cluster.workers[0]
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(30) == 0
        assert running.result(10) == "woke"  # finished and delivered before it exited
        cluster.start_worker()
        assert [f.result(60) for f in queued] == [i * i for i in range(5)]


def test_corrupt_data_directory_makes_master_exit_with_one_line(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "conveyor.db").write_bytes(b"this is not sqlite" * 100)
    proc = subprocess.run([sys.executable, "-m", "conveyor", "master", "--bind", "127.0.0.1:0",
                           "--data", str(data)], capture_output=True, text=True, timeout=30, cwd=ROOT)
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    assert "conveyor.db" in proc.stderr and "not a database" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_unwritable_data_directory_makes_master_exit_with_one_line(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    proc = subprocess.run([sys.executable, "-m", "conveyor", "master", "--bind", "127.0.0.1:0",
                           "--data", str(blocker / "data")], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr and "cannot" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_second_signal_stops_a_worker_cold_and_its_task_runs_elsewhere(make_cluster):
    cluster = make_cluster(workers=1, concurrency=1).start()
    cluster.wait_for_workers(1)
    with cluster.client() as client:
        fut = client.submit(f"{TASKS}:sleep", 2.0)
        assert wait_until(lambda: client.status()["workers"][0]["inflight"] == 1)
        worker = cluster.workers[0]
        worker.send_signal(signal.SIGTERM)
        # The second signal must find the first one handled (a warm stop under way).
        log = cluster.log_path(worker)
        assert wait_until(lambda: "warm shutdown" in log.read_text(errors="replace"))
        worker.send_signal(signal.SIGTERM)
        worker.wait(10)  # cold: it does not wait out the 2 s task
        assert wait_until(lambda: client.status()["queues"]["default"]["ready"] == 1, timeout=20)
        cluster.start_worker()
        assert fut.result(60) == 2.0


def test_result_finished_while_master_is_down_is_delivered_after_restart(make_cluster, tmp_path):
    cluster = make_cluster(workers=1, concurrency=1).start()
    cluster.wait_for_workers(1)
    log = tmp_path / "runs"
    with cluster.client() as client:
        fut = client.submit(f"{TASKS}:record", str(log), 7, 1.0)
        assert wait_until(lambda: client.status()["workers"][0]["inflight"] == 1)
        cluster.kill_master(signal.SIGKILL)
        assert wait_until(lambda: executions(log) == [7])  # it finished with no master to tell
        time.sleep(0.5)
        cluster.start_master()
        assert fut.result(60) == 7
        assert client.status()["queues"]["default"]["succeeded"] == 1


def test_results_expire_after_their_ttl(make_cluster):
    cluster = make_cluster(workers=1, master_args=["--result-ttl", "1"]).start()
    cluster.wait_for_workers(1)
    with cluster.client() as client:
        fut = client.submit(f"{TASKS}:square", 3)
        assert fut.result(30) == 9
        assert client.result(fut.task_id, timeout=5) == 9

        def gone():
            try:
                client.result(fut.task_id, timeout=5)
            except conveyor.NotFound:
                return True
            return False

        assert wait_until(gone, timeout=20)


def test_second_master_on_the_same_data_directory_is_refused(make_cluster):
    cluster = make_cluster(workers=0).start()
    proc = subprocess.run([sys.executable, "-m", "conveyor", "master", "--bind", "127.0.0.1:0",
                           "--data", str(cluster.data)], capture_output=True, text=True, timeout=30,
                          env=cluster.env())
    assert proc.returncode == 1
    assert f"in use by another master (pid {cluster.master.pid})" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    with cluster.client() as client:
        assert client.status()["queues"] == {}
