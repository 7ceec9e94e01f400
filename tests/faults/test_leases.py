"""Faults around leases (issue #10, items 1 and 2): only the lease holder settles a task,
results in a codec the master refuses never reach anyone, a task that cannot be decoded
fails cleanly, and a worker that lost its leases (a stall, a dropped connection) runs
no work it no longer holds. Real masters and workers on 127.0.0.1; hand-made sessions
(RawPeer) send what no conveyor peer would."""

from __future__ import annotations

import signal
import socket
import threading

import pytest

from conveyor import protocol, serde
from conveyor.errors import TaskError
from tests.faults.history import History, check, inspect_all
from tests.faults.rawpeer import RawPeer
from tests.waiting import wait_for, wait_until

FT = "tests.faults.ftasks"
MODULES = [FT, "tests.integration.itasks"]


def _counter(client, name: str) -> int:
    return int(client.status()["counters"].get(name, 0))


def _result(task_id: str, payload: bytes, codec: str = "msgpack", ok: bool = True,
            token: int = 0) -> list[object]:
    return [task_id, token, ok, payload, codec, None]


def test_a_client_session_cannot_settle_a_task_and_a_guessed_token_settles_nothing(make_cluster, tmp_path):
    cluster = make_cluster(workers=0, modules=MODULES).start()
    with cluster.client() as client:
        fut = client.submit(f"{FT}:logged", str(tmp_path / "runs"), 7)
        forger = RawPeer(cluster.address, cluster.authkey, "client")
        thief = RawPeer(cluster.address, cluster.authkey, "worker")
        try:
            # A client (holding the key) acks another client's task: refused, with a clear error.
            for token in (1, 0, 2 ** 63):
                reply = forger.request(protocol.ACK, results=[_result(fut.task_id, serde.packb(666), token=token)])
                assert reply.op == protocol.ERR and reply.fields["type"] == "NotAllowed"
                assert "client" in reply.fields["message"]
            # A worker session acks a task it was never given, with the attempt numbers
            # an old master used as tokens, and a return and an adopt with them.
            for token in (1, 2, 12345):
                assert thief.request(protocol.ACK, results=[_result(fut.task_id, serde.packb(666), token=token)]).op \
                    == protocol.OK
                assert thief.request(protocol.RETURN, leases=[[fut.task_id, token]]).fields["n"] == 0
                assert thief.request(protocol.ADOPT, leases=[[fut.task_id, token]]).fields["lost"] == [fut.task_id]
            assert client.inspect(fut.task_id)["state"] == "ready"
            assert _counter(client, "refused") >= 3 + 3 * 2
        finally:
            forger.close()
            thief.close()
        cluster.start_worker()
        assert fut.result(60) == 7  # the real worker's result, not the forged 666
        h = History(submitted=[fut.task_id], delivered=[(fut.task_id, fut.result())],
                    inspected=inspect_all(client, [fut.task_id]))
        h.read_executions(tmp_path / "runs", {"7": fut.task_id})
        assert check(h, expected=lambda _tid: 7) == []
        assert h.inspected[fut.task_id]["attempts"] == 1


def test_an_ack_with_another_sessions_token_is_not_stored(make_cluster):
    cluster = make_cluster(workers=0, modules=MODULES).start()
    with cluster.client() as client:
        fut = client.submit(f"{FT}:logged", "/dev/null", 1)
        holder = RawPeer(cluster.address, cluster.authkey, "worker")
        other = RawPeer(cluster.address, cluster.authkey, "worker")
        try:
            [task] = holder.take_tasks(1)
            tid, token = task[0], task[1]
            assert tid == fut.task_id and 0 <= token < 2 ** 64
            before = _counter(client, "refused")
            # The token leaked to another worker session: it still does not hold the lease.
            assert other.request(protocol.ACK, results=[_result(tid, serde.packb("forged"), token=token)]).op \
                == protocol.OK
            other.send(protocol.PROGRESS, id=tid, token=token, done=99)
            assert wait_until(lambda: _counter(client, "refused") >= before + 2)
            info = client.inspect(tid)
            assert (info["state"], info["progress"]) == ("leased", None)
            assert holder.request(protocol.ACK, results=[_result(tid, serde.packb("mine"), token=token)]).op \
                == protocol.OK
            assert fut.result(30) == "mine"
        finally:
            holder.close()
            other.close()


def test_a_pickled_result_is_refused_by_a_master_without_pickle(make_cluster, tmp_path):
    cluster = make_cluster(workers=0, modules=MODULES).start()
    marker = tmp_path / "unpickled"
    with cluster.client() as client:
        fut = client.submit(f"{FT}:logged", "/dev/null", 1)
        dependent = client.submit(f"{FT}:collect", after=[fut], pass_results=True)
        evil = RawPeer(cluster.address, cluster.authkey, "worker")
        try:
            [task] = evil.take_tasks(1)
            # What unpickling would run: it would create the marker file.
            payload = (b"cbuiltins\nexec\n(V" + f"open({str(marker)!r}, 'w')".encode()
                       + b"\ntR.")
            assert evil.request(protocol.ACK, results=[_result(task[0], payload, "pickle", token=task[1])]).op \
                == protocol.OK
        finally:
            evil.close()
        with pytest.raises(TaskError, match="pickle codec"):
            fut.result(30)
        assert client.inspect(fut.task_id)["state"] == "failed"
        assert _counter(client, "refused") >= 1
        cluster.start_worker("--pickle")  # even a worker that would unpickle never sees it
        with pytest.raises(TaskError, match="dependency"):
            dependent.result(60)
        assert not marker.exists()


def test_an_upstream_result_the_worker_cannot_decode_fails_the_task(make_cluster, tmp_path):
    cluster = make_cluster(workers=0, modules=MODULES, master_args=["--pickle"]).start()
    with cluster.client() as client:
        fut = client.submit(f"{FT}:logged", "/dev/null", 1)
        dependent = client.submit(f"{FT}:collect", after=[fut], pass_results=True)
        peer = RawPeer(cluster.address, cluster.authkey, "worker")
        try:
            [task] = peer.take_tasks(1)
            # A pickled value: this master allows pickle, the worker below does not.
            assert peer.request(protocol.ACK, results=[_result(task[0], serde.encode(5, "pickle"), "pickle",
                                                               token=task[1])]).op == protocol.OK
        finally:
            peer.close()
        wait_for(lambda: client.inspect(fut.task_id)["state"] == "succeeded", what="the pickled result stored")
        cluster.start_worker()  # without --pickle
        with pytest.raises(TaskError, match="cannot decode the upstream results"):
            dependent.result(60)
        info = client.inspect(dependent.task_id)
        assert info["state"] == "failed" and info["worker"] is None  # finished, not leased forever


def test_a_stalled_worker_does_not_run_the_prefetched_tasks_it_lost(make_cluster, tmp_path):
    runs = tmp_path / "runs"
    cluster = make_cluster(workers=1, modules=MODULES, concurrency=2,
                           master_args=["--heartbeat-timeout", "2"], worker_args=["--prefetch", "6"]).start()
    cluster.wait_for_workers(1)
    frozen = cluster.workers[0]
    with cluster.client() as client:
        futs = [client.submit(f"{FT}:logged", str(runs), i, 1.5) for i in range(12)]
        # Two running (their line is written), four prefetched, the rest ready.
        wait_for(lambda: runs.exists() and len(runs.read_text().split()) >= 2, what="two tasks running")
        wait_for(lambda: client.status()["workers"][0]["prefetched"] >= 4, what="four tasks prefetched")
        running_at_stop = len(runs.read_text().split())
        frozen.send_signal(signal.SIGSTOP)
        try:
            wait_for(lambda: not client.status()["workers"], timeout=30, what="the stalled worker reaped")
            cluster.start_worker()
            values = [f.result(120) for f in futs]
        finally:
            frozen.send_signal(signal.SIGCONT)
        # The resumed worker asks which leases it still holds before starting anything.
        wait_for(lambda: len(client.status()["workers"]) == 2, timeout=30, what="the resumed worker back")
        wait_for(lambda: all(w["inflight"] == 0 for w in client.status()["workers"]), timeout=30,
                 what="both workers idle")
        h = History(submitted=[f.task_id for f in futs], delivered=[(f.task_id, v) for f, v in zip(futs, values)],
                    inspected=inspect_all(client, [f.task_id for f in futs]))
        h.read_executions(runs, {str(i): f.task_id for i, f in enumerate(futs)})
        assert check(h, expected=lambda tid: [f.task_id for f in futs].index(tid)) == []
        executions = sum(h.executions.values())
        assert executions - len(futs) <= running_at_stop, (executions, running_at_stop)
    log = cluster.log_path(frozen).read_text()
    assert "stalled" in log


class _Proxy:
    """A TCP proxy whose connections the test can cut (the peers stay alive)."""

    def __init__(self, target: str) -> None:
        host, port = target.rsplit(":", 1)
        self.target = (host, int(port))
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.address = f"127.0.0.1:{self.listener.getsockname()[1]}"
        self.pairs: list[tuple[socket.socket, socket.socket]] = []
        self.accepted = 0
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                a, _ = self.listener.accept()
            except OSError:
                return
            b = socket.create_connection(self.target)
            with self.lock:
                self.pairs.append((a, b))
                self.accepted += 1
            for src, dst in ((a, b), (b, a)):
                threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def cut(self) -> None:
        """Reset every connection through the proxy."""
        with self.lock:
            pairs, self.pairs = self.pairs, []
        for a, b in pairs:
            for s in (a, b):
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
                s.close()

    def close(self) -> None:
        self.listener.close()
        self.cut()


def test_a_worker_that_reconnects_keeps_its_running_task_and_its_result_counts_once(make_cluster, tmp_path):
    runs = tmp_path / "runs"
    cluster = make_cluster(workers=0, modules=MODULES, concurrency=1).start()
    proxy = _Proxy(cluster.address)
    try:
        worker = cluster.start_worker("--connect", proxy.address, "--prefetch", "2")
        cluster.wait_for_workers(1)
        with cluster.client() as client:
            futs = [client.submit(f"{FT}:logged", str(runs), i, 2.0) for i in range(2)]
            wait_for(lambda: runs.exists() and runs.read_text().split() == ["0"], what="the first task running")
            wait_for(lambda: client.status()["workers"][0]["prefetched"] == 1, what="the second prefetched")
            proxy.cut()  # the connection drops; the worker process and its running task do not
            wait_until(lambda: proxy.accepted >= 2, timeout=30)
            values = [f.result(60) for f in futs]
            assert values == [0, 1]
            ids = [f.task_id for f in futs]
            h = History(submitted=ids, delivered=list(zip(ids, values)), inspected=inspect_all(client, ids))
            h.read_executions(runs, {"0": ids[0], "1": ids[1]})
            assert check(h, expected=lambda tid: ids.index(tid)) == []
            assert sorted(h.executions.values()) == [1, 1]  # each ran once: nothing ran twice
            assert [h.inspected[t]["attempts"] for t in ids] == [1, 1]  # kept, not leased again
            assert _counter(client, "adopted") >= 1
            assert proxy.accepted >= 2 and worker.poll() is None
    finally:
        proxy.close()


def test_a_task_whose_arguments_the_worker_cannot_decode_fails_cleanly(make_cluster, tmp_path):
    cluster = make_cluster(workers=1, modules=MODULES, master_args=["--pickle"]).start()
    cluster.wait_for_workers(1)  # a worker without --pickle
    runs = tmp_path / "runs"
    with cluster.client(codec="pickle") as client:
        fut = client.submit(f"{FT}:logged", str(runs), 1)
        with pytest.raises(TaskError, match="pickle"):
            fut.result(60)
        info = client.inspect(fut.task_id)
        assert info["state"] == "failed" and info["worker"] is None  # settled, not held
        assert not runs.exists()  # never ran
