"""The master's connection handling, in process: bytes fed to a connection's
protocol object, what it writes back, and when.

Covers the eager start of handlers (``master/eager.py``), coalesced replies,
dispatch in the loop turn that made work ready, group commit when commits
are not cheap, and the handshake's guarantees (timeout, refusal, garbage).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from conveyor import protocol, wire
from conveyor.errors import AuthenticationError
from conveyor.ids import new_id
from conveyor.master import Master, eager
from conveyor.store import MemoryStore, NewTask

KEY = b"test-key"


# -- eager.start ------------------------------------------------------------------
def test_eager_start_runs_a_coroutine_that_never_waits_to_its_end_now():
    seen = []

    async def handler() -> None:
        seen.append("ran")

    async def main() -> None:
        assert eager.start(handler()) is None
        assert seen == ["ran"]  # before any loop turn

    asyncio.run(main())


def test_eager_start_raises_what_the_coroutine_raised_before_its_first_await():
    async def handler() -> None:
        raise ValueError("bad request")

    async def main() -> None:
        with pytest.raises(ValueError, match="bad request"):
            eager.start(handler())

    asyncio.run(main())


def test_eager_start_makes_a_task_that_carries_on_after_the_first_await():
    steps = []

    async def handler(fut: asyncio.Future, fail: bool) -> int:
        steps.append("first step")
        value = await fut
        await asyncio.sleep(0)  # a bare yield too
        steps.append("resumed")
        if fail:
            raise KeyError("after the await")
        return value + 1

    async def main() -> None:
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        task = eager.start(handler(fut, False))
        assert isinstance(task, asyncio.Task) and steps == ["first step"]
        fut.set_result(41)
        assert await task == 42 and steps == ["first step", "resumed"]

        fut = loop.create_future()
        task = eager.start(handler(fut, True))
        assert task is not None
        fut.set_result(0)
        with pytest.raises(KeyError, match="after the await"):
            await task

    asyncio.run(main())


def test_eager_start_first_yield_may_be_a_bare_yield():
    async def handler() -> str:
        await asyncio.sleep(0)
        return "done"

    async def main() -> None:
        task = eager.start(handler())
        assert task is not None
        assert await task == "done"

    asyncio.run(main())


def test_cancelling_the_task_throws_into_the_coroutine_where_it_waits():
    cleaned = []

    async def handler(fut: asyncio.Future) -> None:
        try:
            await fut
        finally:
            cleaned.append(True)

    async def survivor(fut: asyncio.Future, other: asyncio.Future) -> str:
        try:
            await fut
        except asyncio.CancelledError:
            return await other  # swallows the cancellation and waits on: as in a Task
        return "not cancelled"

    async def main() -> None:
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        task = eager.start(handler(fut))
        assert task is not None
        await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert task.cancelled() and cleaned == [True] and fut.cancelled()

        fut, other = loop.create_future(), loop.create_future()
        task = eager.start(survivor(fut, other))
        assert task is not None
        await asyncio.sleep(0)
        task.cancel()
        await asyncio.sleep(0)
        assert not task.done()
        other.set_result("carried on")
        assert await task == "carried on"

        # Cancelled before its first loop turn: the pending first await gets it.
        fut = loop.create_future()
        task = eager.start(handler(fut))
        assert task is not None
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert cleaned == [True, True]

    asyncio.run(main())


# -- a master and fake connections ------------------------------------------------
class FakeTransport(asyncio.Transport):
    """Records writes; ``close`` only marks it closed (the test decides when the loss is seen)."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: Any) -> None:
        if not self.closed:
            self.writes.append(bytes(data))

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 4242) if name == "peername" else default


class Peer:
    """A client or worker talking to the master through a fake transport."""

    def __init__(self, master: Master, key: bytes = KEY) -> None:
        self.transport = FakeTransport()
        self.conn = master.connection()
        self.conn.connection_made(self.transport)
        self.proto = protocol.Connection("client", key)
        self._read = 0

    def handshake(self) -> None:
        self.feed(self.proto.initiate())
        self.proto.receive_data(self.take_bytes())
        self.feed(self.proto.data_to_send())
        assert self.proto.receive_data(self.take_bytes()) == [protocol.HandshakeDone()]

    def hello(self, rid: int = 1, **fields: Any) -> dict:
        self.handshake()
        self.feed(protocol.encode_frame(protocol.HELLO, rid, {"role": "client", **fields}))
        (reply,) = self.messages()
        assert reply.op == protocol.OK, reply
        return reply.fields

    def feed(self, *data: bytes) -> None:
        self.conn.data_received(b"".join(data))

    def take_bytes(self) -> bytes:
        out = b"".join(self.transport.writes[self._read:])
        self._read = len(self.transport.writes)
        return out

    def messages(self) -> list[protocol.Message]:
        return [e for e in self.proto.receive_data(self.take_bytes()) if isinstance(e, protocol.Message)]


def frame(op: str, rid: int, **fields: Any) -> bytes:
    return protocol.encode_frame(op, rid, fields)


def a_task(queue: str = "q") -> list:
    return wire.task_to_wire(NewTask(new_id(), queue, "mod:fn", b"\x90", "msgpack"))


def run(store: MemoryStore, body: Callable[[Master], Awaitable[None]], **kwargs: Any) -> None:
    async def main() -> None:
        master = Master(store, authkey=KEY, port=0, **kwargs)
        await master.start()
        try:
            await body(master)
        finally:
            await master.close()

    asyncio.run(main())


class CostlyCommits(MemoryStore):
    """A store whose commits are not cheap: the master batches them (group commit)."""

    cheap_commits = False
    fail_enqueue = False

    def enqueue(self, tasks, now):  # type: ignore[no-untyped-def]
        if self.fail_enqueue:
            raise RuntimeError("disk on fire")
        return super().enqueue(tasks, now)


async def turns(until: Callable[[], bool], limit: int = 1000) -> None:
    """Let the loop run until ``until()`` holds (a bounded number of turns, no clock)."""
    for _ in range(limit):
        if until():
            return
        await asyncio.sleep(0)
    raise AssertionError("condition not reached")


# -- replies, dispatch, errors ---------------------------------------------------
def test_pipelined_requests_are_answered_in_order_in_one_write():
    async def body(m: Master) -> None:
        p = Peer(m)
        p.hello()
        writes = len(p.transport.writes)
        item = [new_id(), b"x", "msgpack"]
        p.feed(frame(protocol.PING, 2), frame(protocol.QPUT, 3, queue="q", items=[item], maxsize=0, timeout=0),
               frame(protocol.QSIZE, 4, queue="q"), frame(protocol.PING, 5))
        assert len(p.transport.writes) == writes + 1  # four replies, one send
        replies = p.messages()
        assert [(r.op, r.rid) for r in replies] == [(protocol.OK, rid) for rid in (2, 3, 4, 5)]
        assert replies[1].fields == {"accepted": 1} and replies[2].fields["ready"] == 1

    run(MemoryStore(), body)


def test_a_submit_reaches_a_worker_with_credit_in_the_same_loop_turn():
    async def body(m: Master) -> None:
        worker = Peer(m)
        worker.hello(role="worker", queues=["q"], concurrency=1)
        worker.feed(frame(protocol.CREDIT, 0, n=2))
        client = Peer(m)
        client.hello()
        task = a_task()
        client.feed(frame(protocol.SUBMIT, 2, tasks=[task]))
        # No await since the submit: leased and pushed while handling the client's bytes.
        (push,) = worker.messages()
        assert push.op == protocol.TASKS and [t[0] for t in push.fields["tasks"]] == [task[0]]
        (reply,) = client.messages()
        assert (reply.op, reply.rid, reply.fields) == (protocol.OK, 2, {"new": 1})
        task2 = a_task()
        client.feed(frame(protocol.SUBMIT, 3, tasks=[task2]))
        assert [t[0] for t in worker.messages()[0].fields["tasks"]] == [task2[0]]
        before = len(worker.transport.writes)
        task3 = a_task()
        client.feed(frame(protocol.SUBMIT, 4, tasks=[task3]))
        assert len(worker.transport.writes) == before  # no credit left
        # The ack's credit lets task3 go: the ack's reply and the push leave in one write.
        token = push.fields["tasks"][0][1]
        worker.feed(frame(protocol.ACK, 7, results=[[task[0], token, True, b"\x01", "msgpack", None]], credit=1))
        assert len(worker.transport.writes) == before + 1
        ack_reply, push3 = worker.messages()
        assert (ack_reply.op, ack_reply.rid) == (protocol.OK, 7)
        assert push3.op == protocol.TASKS and push3.fields["tasks"][0][0] == task3[0]
        *replies, result = client.messages()  # the result went to the submitter at once too
        assert [r.rid for r in replies] == [3, 4] and result.op == protocol.RESULTS and result.fields["results"][0][0] == task[0]

    run(MemoryStore(), body)


class CommitSpy(MemoryStore):
    """Calls ``on_commit`` as an outermost transaction commits; if it raises, nothing commits."""

    on_commit: Callable[[], None] | None = None

    @contextlib.contextmanager
    def transaction(self, durable: bool = True, savepoints: bool = True):  # type: ignore[override]
        with super().transaction(durable, savepoints):
            yield
            if len(self._undo) == 1 and self.on_commit is not None:
                self.on_commit()


def _worker_and_client(m: Master) -> tuple[Peer, Peer]:
    worker = Peer(m)
    worker.hello(role="worker", queues=["q"], concurrency=1)
    worker.feed(frame(protocol.CREDIT, 0, n=2))
    client = Peer(m)
    client.hello()
    return worker, client


def test_a_submit_and_the_lease_that_pushes_it_share_one_commit_and_wait_for_it():
    store = CommitSpy()

    async def body(m: Master) -> None:
        worker, client = _worker_and_client(m)
        at_commit: list[tuple[int, int]] = []
        store.on_commit = lambda: at_commit.append((len(worker.transport.writes), len(client.transport.writes)))
        before = (len(worker.transport.writes), len(client.transport.writes))
        commits = m.runner.commits
        task = a_task()
        client.feed(frame(protocol.SUBMIT, 2, tasks=[task]))
        assert m.runner.commits == commits + 1  # the enqueue and the lease: one commit
        assert at_commit == [before]  # neither the push nor the reply had left before it
        (push,) = worker.messages()
        assert push.op == protocol.TASKS and push.fields["tasks"][0][0] == task[0]
        (reply,) = client.messages()
        assert (reply.op, reply.rid, reply.fields) == (protocol.OK, 2, {"new": 1})
        assert store.get(task[0]).state == "leased"

    run(store, body)


def test_a_failed_commit_sends_nothing_it_would_have_made_true(caplog):
    store = CommitSpy()

    async def body(m: Master) -> None:
        worker, client = _worker_and_client(m)
        failures: list[int] = []

        def fail_once() -> None:
            if not failures:
                failures.append(1)
                raise RuntimeError("disk full")

        store.on_commit = fail_once
        task = a_task()
        with caplog.at_level(logging.ERROR, logger="conveyor.master"):
            client.feed(frame(protocol.SUBMIT, 2, tasks=[task]))
        # No OK for a submit that is not stored, no push of a lease that is not held:
        # both connections are closed instead (a client resends what went unanswered).
        assert worker.messages() == [] and client.messages() == []
        assert worker.transport.closed and client.transport.closed
        assert store.get(task[0]) is None
        assert "a commit failed" in caplog.text

    run(store, body)


def test_a_parked_get_is_answered_in_the_loop_turn_of_the_put():
    async def body(m: Master) -> None:
        getter, putter = Peer(m), Peer(m)
        getter.hello()
        putter.hello()
        getter.feed(frame(protocol.QGET, 2, queue="q", max=5, timeout=None, ack=True))
        assert getter.messages() == []
        item = [new_id(), b"x", "msgpack"]
        putter.feed(frame(protocol.QPUT, 2, queue="q", items=[item], maxsize=0, timeout=None))
        (got,) = getter.messages()
        assert got.rid == 2 and [i[0] for i in got.fields["items"]] == [item[0]]
        assert putter.messages()[0].fields == {"accepted": 1}

    run(MemoryStore(), body)


def test_handler_errors_are_answered_whether_raised_before_or_after_the_first_await(caplog):
    store = CostlyCommits()

    async def body(m: Master) -> None:
        p = Peer(m)
        p.hello()
        await turns(lambda: True)
        # Before the first await: a ProtocolError answer, and the connection stays.
        p.feed(frame(protocol.SUBMIT, 2, tasks="nope"))
        (err,) = p.messages()
        assert (err.op, err.rid, err.fields["type"]) == (protocol.ERR, 2, "ProtocolError")
        # After it: the commit fails in the runner's batch, and the handler's Task reports it.
        store.fail_enqueue = True
        with caplog.at_level(logging.ERROR, logger="conveyor.master"):
            p.feed(frame(protocol.SUBMIT, 3, tasks=[a_task()]))
            assert p.messages() == []  # waiting for the batch's commit
            got: list[protocol.Message] = []
            await turns(lambda: bool(got.extend(p.messages()) or got))
        assert (got[0].op, got[0].rid) == (protocol.ERR, 3)
        assert got[0].fields == {"type": "RuntimeError", "message": "disk on fire"}
        assert "request from 127.0.0.1:4242 failed" in caplog.text
        store.fail_enqueue = False
        p.feed(frame(protocol.PING, 4))
        assert [(r.op, r.rid) for r in p.messages()] == [(protocol.OK, 4)]

    run(store, body)


def test_without_cheap_commits_one_read_of_submits_is_one_commit_answered_after_it():
    store = CostlyCommits()

    async def body(m: Master) -> None:
        p = Peer(m)
        p.hello()
        await turns(lambda: True)
        commits = m.runner.commits
        p.feed(*(frame(protocol.SUBMIT, rid, tasks=[a_task()]) for rid in (2, 3, 4)))
        assert p.messages() == [] and store.stats() == {}  # nothing answered before the commit
        got: list[protocol.Message] = []
        await turns(lambda: bool(got.extend(p.messages())) or len(got) == 3)
        assert [(r.rid, r.fields) for r in got] == [(rid, {"new": 1}) for rid in (2, 3, 4)]
        assert m.runner.commits == commits + 1 and store.stats()["q"].ready == 3

    run(store, body)


# -- the handshake and bad peers -------------------------------------------------
def test_garbage_closes_only_that_connection(caplog):
    async def body(m: Master) -> None:
        good, bad, rude = Peer(m), Peer(m), Peer(m)
        good.hello()
        bad.hello()
        rude.handshake()
        with caplog.at_level(logging.WARNING, logger="conveyor.master"):
            bad.feed(b"\x00\x00\x00\x05\xc1\xc1\xc1\xc1\xc1")
            rude.feed(frame(protocol.PING, 1))  # not a hello first
        assert bad.transport.closed and rude.transport.closed
        assert "closing 127.0.0.1:4242: undecodable frame" in caplog.text
        assert "the first message must be hello" in caplog.text
        bad.conn.connection_lost(None)
        assert bad.conn.session is not None and bad.conn.session.id not in m.sessions
        good.feed(frame(protocol.PING, 9))
        assert [(r.op, r.rid) for r in good.messages()] == [(protocol.OK, 9)]
        assert not good.transport.closed

    run(MemoryStore(), body)


def test_oversized_frame_closes_the_connection():
    async def body(m: Master) -> None:
        p = Peer(m)
        p.hello()
        p.feed((1024).to_bytes(4, "big"))
        assert p.transport.closed

    run(MemoryStore(), body, max_frame_size=512)


def test_a_connection_that_never_finishes_the_handshake_is_closed_and_logged(caplog):
    async def body(m: Master) -> None:
        p = Peer(m)
        p.feed(b"CNV")
        with caplog.at_level(logging.WARNING, logger="conveyor.master"):
            for _ in range(500):
                if p.transport.closed:
                    break
                await asyncio.sleep(0.01)
        assert p.transport.closed and "handshake not finished within" in caplog.text
        assert m.sessions == {}

    run(MemoryStore(), body, handshake_timeout=0.05)


def test_a_failed_handshake_writes_its_verdict_then_closes(caplog):
    async def body(m: Master) -> None:
        p = Peer(m, key=b"not-the-key")
        p.feed(p.proto.initiate())
        with pytest.raises(AuthenticationError):
            p.proto.receive_data(p.take_bytes())
        with caplog.at_level(logging.WARNING, logger="conveyor.master"):
            p.feed(p.proto.data_to_send() + frame(protocol.PING, 1))  # the proof, and a frame after it
        assert p.take_bytes() == b"\x00" and p.transport.closed
        assert "refused 127.0.0.1:4242: authentication failed" in caplog.text
        assert m.sessions == {}

    run(MemoryStore(), body)


def test_nothing_but_the_handshake_is_decoded_before_it_succeeds():
    async def body(m: Master) -> None:
        p = Peer(m)
        # A frame instead of the handshake (longer than a handshake hello).
        p.feed(frame(protocol.HELLO, 1, role="client", name="x" * 64))
        assert p.transport.closed and m.sessions == {}

    run(MemoryStore(), body)


def test_a_lost_connection_hands_back_its_workers_leases():
    store = MemoryStore()

    async def body(m: Master) -> None:
        worker, client = Peer(m), Peer(m)
        worker.hello(role="worker", queues=["q"], concurrency=1)
        worker.feed(frame(protocol.CREDIT, 0, n=1))
        client.hello()
        client.feed(frame(protocol.SUBMIT, 2, tasks=[a_task()]))
        assert store.stats()["q"].leased == 1
        worker.conn.connection_lost(None)
        await turns(lambda: store.stats()["q"].ready == 1)
        assert len(m.sessions) == 1

    run(store, body)


# -- routes ------------------------------------------------------------------------
def test_every_inbound_op_has_one_route_and_a_bad_field_is_answered_on_that_request_only():
    async def body(m: Master) -> None:
        assert set(m.routes) == protocol.INBOUND_OPS
        p = Peer(m)
        p.hello()
        p.feed(frame(protocol.QGET, 2, queue="q", max=0), frame(protocol.CREDIT, 3, n=-1),
               frame(protocol.QSIZE, 4, queue="q"))
        bad_max, bad_n, size = p.messages()
        assert (bad_max.op, bad_max.rid, bad_max.fields["type"]) == (protocol.ERR, 2, "ProtocolError")
        assert "max" in bad_max.fields["message"]
        assert (bad_n.op, bad_n.rid) == (protocol.ERR, 3) and "n" in bad_n.fields["message"]
        assert (size.op, size.rid, size.fields["ready"]) == (protocol.OK, 4, 0)
        assert not p.transport.closed

    run(MemoryStore(), body)


def test_routes_are_merged_once_and_must_cover_every_inbound_op():
    from conveyor.master.server import merge_routes

    async def handler(s: Any, rid: int, req: Any) -> None:
        pass

    everything = dict.fromkeys(protocol.INBOUND_OPS, handler)
    assert merge_routes(everything) == everything
    with pytest.raises(RuntimeError, match="two services route 'ping'"):
        merge_routes(everything, {protocol.PING: handler})
    with pytest.raises(RuntimeError, match="no service routes qget"):
        merge_routes({op: h for op, h in everything.items() if op != protocol.QGET})
