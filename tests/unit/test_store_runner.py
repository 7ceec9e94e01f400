"""The store runner with a store that declares ``blocking_io`` (a networked store).

Its calls run on one store thread, never the loop; a batch is still one
transaction, futures resolve only after its commit, and a failed commit
resolves nothing as done. A real master on 127.0.0.1 keeps answering pings
and heartbeats while such a store is stuck in a commit.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from conveyor import protocol, wire
from conveyor.ids import new_id
from conveyor.master import Master
from conveyor.master.runner import StoreRunner
from conveyor.store import MemoryStore, NewTask

KEY = b"test-key"
WAIT = 10.0  # an upper bound for a condition that should hold at once, never a measurement


def new_task(task_id: str) -> NewTask:
    return NewTask(task_id, "q", "mod:fn", b"\x90", "msgpack")


class NetworkedStore(MemoryStore):
    """A MemoryStore that says it is networked; records its threads and its commits.

    With ``fail_commit`` its next outermost commit fails (and rolls back).
    """

    blocking_io = True

    def __init__(self) -> None:
        super().__init__()
        self.threads: set[int] = set()
        self.log: list[str] = []
        self.fail_commit = False

    def enqueue(self, tasks, now):  # type: ignore[no-untyped-def]
        self.threads.add(threading.get_ident())
        self.log.append("enqueue " + ",".join(t.id for t in tasks))
        return super().enqueue(tasks, now)

    @contextlib.contextmanager
    def transaction(self, durable: bool = True, savepoints: bool = True) -> Iterator[None]:
        with super().transaction(durable, savepoints):
            yield
            if len(self._undo) == 1:  # the outermost level is about to commit
                self.threads.add(threading.get_ident())
                if self.fail_commit:
                    self.fail_commit = False
                    raise RuntimeError("connection lost during commit")
                self.log.append("commit")


def run_async(body: Callable[[asyncio.AbstractEventLoop], Any]) -> None:
    async def main() -> None:
        await asyncio.wait_for(body(asyncio.get_running_loop()), WAIT)

    asyncio.run(main())


def test_a_networked_store_runs_on_one_thread_off_the_loop_and_one_turn_is_one_commit():
    store = NetworkedStore()

    async def body(loop: asyncio.AbstractEventLoop) -> None:
        runner = StoreRunner(store, loop, inline=True)
        assert runner.off_loop and not runner.inline  # a networked call cannot return at once
        seen: list[tuple[str, list[str]]] = []
        futs = [runner.call(store.enqueue, [new_task(t)], 1.0) for t in "abc"]
        for t, fut in zip("abc", futs):
            fut.add_done_callback(lambda _, t=t: seen.append((t, list(store.log))))
        assert await asyncio.gather(*futs) == [[True], [True], [True]]
        # Made in one loop turn: one transaction, in call order, answered after its commit.
        assert store.log == ["enqueue a", "enqueue b", "enqueue c", "commit"]
        assert [t for t, _ in seen] == ["a", "b", "c"] and all(log[-1] == "commit" for _, log in seen)
        assert runner.commits == 1
        await runner.call(store.enqueue, [new_task("d")], 1.0)
        assert len(store.threads) == 1 and threading.get_ident() not in store.threads
        runner.close()
        with pytest.raises(RuntimeError, match="closed"):
            runner.call(store.stats)

    run_async(body)


def test_a_failed_commit_off_the_loop_fails_every_call_of_its_batch_and_keeps_nothing():
    store = NetworkedStore()

    async def body(loop: asyncio.AbstractEventLoop) -> None:
        runner = StoreRunner(store, loop)
        store.fail_commit = True
        futs = [runner.call(store.enqueue, [new_task(t)], 1.0) for t in "ab"]
        results = await asyncio.gather(*futs, return_exceptions=True)
        assert [str(r) for r in results] == ["connection lost during commit"] * 2
        assert store.get("a") is None and store.get("b") is None and runner.commits == 0
        # One call's own error undoes that call alone; the rest of its batch commits.
        bad = runner.call(store.enqueue, [new_task("c")], "not a time")
        good = runner.call(store.enqueue, [new_task("d")], 1.0)
        assert await good == [True]
        with pytest.raises(TypeError):
            await bad
        assert store.get("c") is None and store.get("d") is not None
        runner.close()

    run_async(body)


def test_close_waits_for_the_batch_in_flight_and_the_queued_calls():
    store = NetworkedStore()
    release = threading.Event()
    entered = threading.Event()

    def slow_enqueue(task_id: str) -> list[bool]:
        entered.set()
        release.wait(WAIT)
        return store.enqueue([new_task(task_id)], 1.0)

    async def body(loop: asyncio.AbstractEventLoop) -> None:
        runner = StoreRunner(store, loop)
        first = runner.call(slow_enqueue, "a")
        await loop.run_in_executor(None, entered.wait, WAIT)
        second = runner.call(store.enqueue, [new_task("b")], 1.0)  # queued behind "a"
        release.set()
        runner.close()
        assert first.result() == [True] and second.result() == [True]
        assert store.log == ["enqueue a", "commit", "enqueue b", "commit"]

    try:
        run_async(body)
    finally:
        release.set()


# -- a real master on 127.0.0.1 ----------------------------------------------------------


class GatedStore(NetworkedStore):
    """Its commit of a transaction that enqueued waits for ``gate``: a slow network round trip."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = threading.Event()
        self.waiting = threading.Event()  # set once a commit is held at the gate
        self._enqueued = False

    def enqueue(self, tasks, now):  # type: ignore[no-untyped-def]
        self._enqueued = True
        return super().enqueue(tasks, now)

    @contextlib.contextmanager
    def transaction(self, durable: bool = True, savepoints: bool = True) -> Iterator[None]:
        with super().transaction(durable, savepoints):
            yield
            if len(self._undo) == 1 and self._enqueued:  # the outermost level, before it commits
                self._enqueued = False
                self.waiting.set()
                self.gate.wait(WAIT)


class TcpPeer:
    """A client or worker connected to the master over TCP, speaking the real protocol."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.proto = protocol.Connection("client", KEY)
        self.messages: list[protocol.Message] = []
        self.handshake_done = False

    @classmethod
    async def open(cls, port: int, role: str = "client", **hello: Any) -> TcpPeer:
        peer = cls(*await asyncio.open_connection("127.0.0.1", port))
        peer.writer.write(peer.proto.initiate())
        await peer.pump(lambda: peer.handshake_done)
        peer.send(protocol.HELLO, 1, role=role, **hello)
        assert (await peer.reply(1)).op == protocol.OK
        return peer

    def send(self, op: str, rid: int, **fields: Any) -> None:
        self.writer.write(protocol.encode_frame(op, rid, fields))

    async def pump(self, done: Callable[[], bool]) -> None:
        """Read until ``done()`` holds (each read's events collected)."""
        while not done():
            data = await self.reader.read(65536)
            if not data:
                raise ConnectionError("the master closed the connection")
            for ev in self.proto.receive_data(data):
                if isinstance(ev, protocol.HandshakeDone):
                    self.handshake_done = True
                elif isinstance(ev, protocol.Message):
                    self.messages.append(ev)
            out = self.proto.data_to_send()
            if out:
                self.writer.write(out)

    def got(self, rid: int, op: str | None = None) -> protocol.Message | None:
        return next((m for m in self.messages if m.rid == rid and (op is None or m.op == op)), None)

    async def reply(self, rid: int, op: str | None = None) -> protocol.Message:
        await self.pump(lambda: self.got(rid, op) is not None)
        msg = self.got(rid, op)
        assert msg is not None
        self.messages.remove(msg)
        return msg

    def close(self) -> None:
        self.writer.close()


def test_a_master_keeps_answering_pings_and_heartbeats_while_a_networked_store_commits():
    store = GatedStore()

    async def body(loop: asyncio.AbstractEventLoop) -> None:
        master = Master(store, authkey=KEY, host="127.0.0.1", port=0)
        await master.start()
        peers: list[TcpPeer] = []
        try:
            client = await TcpPeer.open(master.port)
            worker = await TcpPeer.open(master.port, role="worker", queues=["q"], concurrency=1)
            other = await TcpPeer.open(master.port)
            peers += [client, worker, other]
            task = wire.task_to_wire(NewTask(new_id(), "q", "mod:fn", b"\x90", "msgpack"))
            client.send(protocol.SUBMIT, 2, tasks=[task])
            client.send(protocol.PING, 3)
            await loop.run_in_executor(None, store.waiting.wait, WAIT)
            assert store.waiting.is_set() and "commit" not in store.log[-1:]  # held in its commit

            # While the store thread waits on the commit, the loop serves everyone else.
            other.send(protocol.PING, 5)
            assert (await other.reply(5)).op == protocol.OK
            worker.send(protocol.PING, 0)  # a heartbeat: answered with a push
            assert (await worker.reply(0, protocol.OK)).op == protocol.OK
            assert (await client.reply(3)).op == protocol.OK  # a ping sent after the submit
            assert client.got(2) is None  # ... answered, while the submit waits for its commit

            commits = master.runner.commits
            store.gate.set()
            reply = await client.reply(2)
            assert (reply.op, reply.fields) == (protocol.OK, {"new": 1})
            assert store.log[-1] == "commit" and master.runner.commits > commits
            assert threading.get_ident() not in store.threads
        finally:
            store.gate.set()
            for p in peers:
                p.close()
            await master.close()

    run_async(body)
