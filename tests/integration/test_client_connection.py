"""The sync client's connection (client/threaded.py) against a real master."""

from __future__ import annotations

import queue
import signal
import threading
import time

import pytest

from conveyor.errors import ConnectionLost

from .conftest import TASKS


def test_many_threads_share_one_client_without_mixing_frames(make_cluster):
    """Threads write their own frames on one socket: every request gets its own answer."""
    cluster = make_cluster(workers=0).start()
    errors: list[BaseException] = []
    with cluster.client() as client:
        q = client.queue("threads", ack="get")

        def work(base: int) -> None:
            try:
                for i in range(200):
                    q.put(base + i)
                    assert client.queue_info("threads")["declared"] is False
            except BaseException as exc:  # reported by the main thread
                errors.append(exc)

        threads = [threading.Thread(target=work, args=(k * 1000,)) for k in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert not errors
        got = sorted(q.get_many(5000, timeout=5))
        assert got == sorted(k * 1000 + i for k in range(8) for i in range(200))
        with pytest.raises(queue.Empty):
            q.get_nowait()


def test_close_fails_pending_futures(make_cluster):
    cluster = make_cluster(workers=0).start()  # no worker: the task stays queued
    client = cluster.client()
    fut = client.submit(f"{TASKS}:square", 3)
    client.close()
    with pytest.raises(ConnectionLost):
        fut.result(5)
    with pytest.raises(ConnectionLost):
        client.submit(f"{TASKS}:square", 4)


def test_client_survives_a_master_frozen_past_its_heartbeat(make_cluster):
    """A silent master is presumed gone; when it answers again the client's work completes."""
    cluster = make_cluster(workers=1, master_args=["--heartbeat-timeout", "1.5"]).start()
    cluster.wait_for_workers(1)
    with cluster.client() as client:
        assert client.submit(f"{TASKS}:square", 2).result(10) == 4
        cluster.master.send_signal(signal.SIGSTOP)
        try:
            time.sleep(3)  # the client pings every 0.5 s and gives up on a master silent for 2 s
            fut_holder: list = []
            t = threading.Thread(target=lambda: fut_holder.append(client.submit(f"{TASKS}:square", 5)))
            t.start()
        finally:
            cluster.master.send_signal(signal.SIGCONT)
        t.join(30)
        assert fut_holder and fut_holder[0].result(30) == 25
        assert client.submit(f"{TASKS}:square", 6).result(30) == 36
