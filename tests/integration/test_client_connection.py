"""The clients' connections (conveyor.link, client/core.py) against a real master."""

from __future__ import annotations

import queue
import signal
import threading
import time

import pytest

from conveyor.errors import ConnectionLost

from ..waiting import wait_until
from .conftest import TASKS


def test_many_threads_share_one_client_without_mixing_frames(master):
    """Threads write their own frames on one socket: every request gets its own answer."""
    cluster = master
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


def test_close_fails_pending_futures(master):
    cluster = master  # no worker: the task stays queued
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
            # The client pings every 0.5 s and gives up on a master silent for 2 s.
            assert wait_until(lambda: not client._core.connected)
            fut_holder: list = []
            t = threading.Thread(target=lambda: fut_holder.append(client.submit(f"{TASKS}:square", 5)))
            t.start()
        finally:
            cluster.master.send_signal(signal.SIGCONT)
        t.join(30)
        assert fut_holder and fut_holder[0].result(30) == 25
        assert client.submit(f"{TASKS}:square", 6).result(30) == 36


def _garbage_server(port: int, stop: threading.Event, answered: list) -> None:
    """Something else on the master's port while it is down: answers every connection with junk."""
    import socket

    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("127.0.0.1", port))
    srv.listen()
    srv.settimeout(0.1)
    try:
        while not stop.is_set():
            try:
                conn, _ = srv.accept()
            except TimeoutError:
                continue
            with conn:
                conn.sendall(b"HTTP/1.1 400 Bad Request\r\n\r\n" * 4)
                answered.append(1)
    finally:
        srv.close()


def test_client_and_worker_keep_reconnecting_past_a_peer_that_is_not_a_master(make_cluster):
    """A garbled handshake while the master is away is one failed attempt, not the end of
    reconnecting: once the master is back, the worker delivers and the client gets its result."""
    cluster = make_cluster(workers=1, concurrency=1).start()
    cluster.wait_for_workers(1)
    with cluster.client() as client:
        assert client.submit(f"{TASKS}:square", 2).result(10) == 4
        cluster.kill_master(signal.SIGKILL)
        stop, answered = threading.Event(), []
        junk = threading.Thread(target=_garbage_server, args=(cluster.port, stop, answered))
        junk.start()
        try:
            deadline = time.monotonic() + 20
            while len(answered) < 4 and time.monotonic() < deadline:  # both tried it, twice
                time.sleep(0.05)
            assert len(answered) >= 4
        finally:
            stop.set()
            junk.join(10)
        cluster.start_master()
        assert client.submit(f"{TASKS}:square", 7).result(30) == 49  # needs the worker back too
        assert len(client.status()["workers"]) == 1


def _fail_once(core) -> list:
    """Make the core's next incoming message raise, as a bug in its handling would."""
    real, failed = core._on_message, []

    def once(msg):
        if not failed:
            failed.append(msg)
            raise RuntimeError("bug in a handler")
        real(msg)

    core._on_message = once
    return failed


def test_an_error_handling_a_message_reconnects_instead_of_going_dead(master, caplog):
    """A bug in handling one message costs a reconnect (logged), and the request is resent."""
    import asyncio

    from conveyor import protocol
    from conveyor.client.core import ClientCore

    cluster = master
    with cluster.client() as client:
        failed = _fail_once(client._core)
        assert client._core.request(protocol.PING, {}, timeout=30) == {}  # answered on the new connection
        assert failed and "unexpected error; reconnecting" in caplog.text

    async def async_core() -> None:
        core = ClientCore(cluster.address, cluster.authkey)
        await core.connect()
        try:
            failed = _fail_once(core)
            assert await core.request(protocol.PING, {}, timeout=30) == {}
            assert failed
        finally:
            await core.close()

    asyncio.run(async_core())
