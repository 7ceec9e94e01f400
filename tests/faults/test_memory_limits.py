"""The memory bounds' parts, in process: decoding limits, the partial-frame budget,
output backpressure on a session (pause, results held in the store, redelivery), and
the frame limit a client learns in the hello answer."""

from __future__ import annotations

import asyncio
import struct
from typing import Any

import msgpack
import pytest

from conveyor import protocol, wire
from conveyor.errors import FrameTooLarge, ProtocolError
from conveyor.ids import new_id
from conveyor.link.address import parse_addresses
from conveyor.link.opening import Opening, check_request_size
from conveyor.link.state import LinkState
from conveyor.master import Master
from conveyor.master.backpressure import FrameBudget
from conveyor.records import Outcome
from conveyor.store import MemoryStore, NewTask
from tests.unit.test_master_io import KEY, FakeTransport, Peer, frame, run, turns

MiB = 1 << 20


# -- decoding limits -------------------------------------------------------------------
def test_a_small_frame_decodes_as_before():
    body = msgpack.packb(["ping", 1, {"weights": [1, 2, 3], "m": {}}])
    assert protocol.decode_body(body, guarded=True) == protocol.Message("ping", 1, {"weights": [1, 2, 3], "m": {}})


def test_a_large_real_submit_passes_the_guard():
    tasks = [wire.task_to_wire(NewTask(new_id(), "q", None, b"\x92\x90\x80", "msgpack")) for _ in range(10_000)]
    body = protocol.encode_frame(protocol.SUBMIT, 3, {"tasks": tasks})[4:]
    assert len(body) >= protocol.GUARD_FROM
    assert len(protocol.decode_body(body, guarded=True).fields["tasks"]) == 10_000


@pytest.mark.parametrize("inner", [[], {}, [[]]], ids=["arrays", "maps", "nested"])
def test_a_large_frame_of_tiny_containers_is_refused(inner):
    n = protocol.GUARD_FROM  # about one byte each: far more containers than the frame may hold
    body = msgpack.packb(["submit", 1, {"tasks": [[inner] * 1000] * (n // 1000)}])
    with pytest.raises(ProtocolError, match="arrays and maps"):
        protocol.decode_body(body, guarded=True)
    protocol.decode_body(body)  # the client side trusts the master it authenticated


def test_an_array_longer_than_a_quarter_of_its_frame_is_refused_at_its_header():
    body = msgpack.packb(["submit", 1, {"ids": [0] * protocol.GUARD_FROM}])
    with pytest.raises(ProtocolError, match="undecodable"):
        protocol.decode_body(body, guarded=True)


def test_a_forged_length_inside_a_small_frame_is_refused():
    # array32 announcing 2**32-1 items in a 9-byte body: msgpack must not allocate for it.
    body = b"\x93\xa4ping\x01\xdd\xff\xff\xff\xff"
    with pytest.raises(ProtocolError):
        protocol.decode_body(body, guarded=True)


def test_nesting_depth_is_bounded():
    body = msgpack.packb(["ping", 1, {"x": 1}])[:-3] + b"\x81\xa1x" + _nested(5000)
    with pytest.raises(ProtocolError):
        protocol.decode_body(body, guarded=True)


def _nested(depth: int) -> bytes:
    return b"\x91" * depth + b"\xc0"


def test_the_request_id_of_an_oversized_frame_is_read_from_its_first_bytes():
    body = protocol.encode_frame(protocol.SUBMIT, 77, {"tasks": [], "pad": b"\x00" * 500})[4:]
    assert protocol.peek_request_id(body[:64]) == 77
    assert protocol.peek_request_id(body[:3]) is None  # too few bytes
    assert protocol.peek_request_id(b"\xc1\xc1\xc1") is None  # not a frame
    s = protocol.Connection("server", KEY, max_frame_size=100)
    s.authenticated, s.state = True, "open"
    with pytest.raises(protocol.OversizeFrame) as info:
        s.receive_data(struct.pack(">I", len(body)) + body[:100])
    assert (info.value.rid, info.value.size, info.value.limit) == (77, len(body), 100)
    assert isinstance(info.value, FrameTooLarge)


def test_partial_frame_reports_the_announced_size_of_the_frame_under_way():
    s = protocol.Connection("server", KEY)
    s.authenticated, s.state = True, "open"
    data = protocol.encode_frame("ping", 1, {})
    assert s.receive_data(data + data[:6]) == [protocol.Message("ping", 1, {})]
    assert s.partial_frame() == len(data) and s.buffered == 6
    s.receive_data(data[6:])
    assert s.partial_frame() == 0 and s.buffered == 0


# -- the budget for partial frames ----------------------------------------------------------
class Who:
    def __init__(self) -> None:
        self.granted = 0

    def budget_granted(self) -> None:
        self.granted += 1


def test_the_budget_lets_frames_in_while_they_fit_and_the_rest_wait_in_order():
    b = FrameBudget(100, waiting_limit=50)
    a, c, d = Who(), Who(), Who()
    assert b.want(a, 60, 10) is True
    assert b.want(c, 60, 10) is False  # does not fit: waits
    assert b.want(d, 10, 10) is False  # would fit, but comes after c: waits too
    assert b.waiting == 2
    b.want(a, 0, 0)  # a's frame completed
    assert (c.granted, d.granted, b.used) == (1, 1, 70)
    b.release(c)
    b.release(d)
    assert b.used == 0


def test_a_frame_larger_than_the_budget_is_let_in_alone():
    b = FrameBudget(100)
    a, c = Who(), Who()
    assert b.want(a, 500, 10) is True
    assert b.want(c, 1, 1) is False
    b.release(a)
    assert c.granted == 1


def test_too_much_waiting_closes_the_newcomer():
    b = FrameBudget(100, waiting_limit=30)
    a, c, d = Who(), Who(), Who()
    assert b.want(a, 100, 10) is True
    assert b.want(c, 100, 20) is False
    assert b.want(d, 100, 20) is None  # 40 bytes would wait: closed instead
    assert b.waiting == 1


def test_a_connection_let_in_at_once_behind_a_waiter_is_told_to_read_on():
    b = FrameBudget(100)
    a, c = Who(), Who()
    assert b.want(a, 60, 10) is True
    assert b.want(c, 60, 10) is False
    # a's frame completes and a new one of 30 begins in the same read: c goes first, a fits too.
    assert b.want(a, 30, 5) is True
    assert c.granted == 1 and b.used == 90 and b.waiting == 0


def test_a_growing_frame_keeps_one_reservation():
    b = FrameBudget(100)
    a = Who()
    assert b.want(a, 80, 10) is True
    assert b.want(a, 80, 50) is True
    assert b.used == 80


# -- the master: partial frames and output backpressure -----------------------------------------
class PausableTransport(FakeTransport):
    """A fake transport that records whether reading is paused."""

    def __init__(self) -> None:
        super().__init__()
        self.reading = True

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass


class PausablePeer(Peer):
    def __init__(self, master: Master) -> None:
        self.transport = PausableTransport()
        self.conn = master.connection()
        self.conn.connection_made(self.transport)
        self.proto = protocol.Connection("client", KEY)
        self._read = 0


def test_a_second_large_partial_frame_waits_until_the_first_completes():
    async def body(m: Master) -> None:
        first, second = PausablePeer(m), PausablePeer(m)
        first.hello()
        second.hello()
        big = frame(protocol.PING, 5, pad=b"\x00" * (3 * MiB))
        first.feed(big[:MiB])
        assert first.transport.reading and m.budget.used == len(big)
        second.feed(big[:1000])
        assert not second.transport.reading  # its frame does not fit beside the first
        first.feed(big[MiB:])
        assert first.messages()[0].rid == 5
        assert second.transport.reading  # the first completed: the second reads on
        assert m.budget.used == len(big)
        second.conn.connection_lost(None)
        assert m.budget.used == 0

    run(MemoryStore(), body, frame_budget=4 * MiB)


def test_a_paused_client_gets_no_results_pushed_and_every_one_once_it_drained():
    async def body(m: Master) -> None:
        client, worker = PausablePeer(m), PausablePeer(m)
        client.hello()
        worker.hello(role="worker", queues=["q"], concurrency=8)
        tasks = [wire.task_to_wire(NewTask(new_id(), "q", "mod:fn", b"\x90", "msgpack")) for _ in range(6)]
        client.feed(frame(protocol.SUBMIT, 2, tasks=tasks))
        assert [m_.op for m_ in client.messages()] == [protocol.OK]
        worker.feed(frame(protocol.CREDIT, 0, n=6))
        tokens: dict[str, int] = {}  # task id -> its lease's token, from the pushes

        def pushed() -> bool:
            for msg in worker.messages():
                if msg.op == protocol.TASKS:
                    tokens.update((item[0], item[1]) for item in msg.fields["tasks"])
            return len(tokens) == len(tasks)

        await turns(pushed)
        client.conn.pause_writing()  # its transport is over the high-water mark
        assert not client.transport.reading
        done = [wire.outcome_to_wire(Outcome(t[0], tokens[t[0]], True, b"\xa2ok", "msgpack")) for t in tasks]
        worker.feed(frame(protocol.ACK, 3, results=done[:3]))
        await turns(lambda: len(_backlog(m)) == 3)
        assert len(_backlog(m)) == 3
        assert client.messages() == []  # nothing pushed while paused
        worker.feed(frame(protocol.ACK, 4, results=done[3:]))
        await turns(lambda: len(_backlog(m)) == 6)
        assert len(_backlog(m)) == 6
        assert client.messages() == []
        client.conn.resume_writing()
        got: set[str] = set()

        def arrived() -> bool:
            for msg in client.messages():
                if msg.op == protocol.RESULTS:
                    got.update(r[0] for r in msg.fields["results"])
            return len(got) == 6

        await turns(arrived)
        assert got == {t[0] for t in tasks}
        assert client.transport.reading and _backlog(m) == []

    run(MemoryStore(), body)


def _backlog(m: Master) -> list[str]:
    return [tid for s in m.sessions.values() for tid in s.backlog.ids]


def test_a_paused_worker_is_pushed_no_tasks_until_it_drained():
    async def body(m: Master) -> None:
        client, worker = PausablePeer(m), PausablePeer(m)
        client.hello()
        worker.hello(role="worker", queues=["q"], concurrency=8)
        worker.conn.pause_writing()
        worker.feed(frame(protocol.CREDIT, 0, n=4))  # read before the pause took effect
        tasks = [wire.task_to_wire(NewTask(new_id(), "q", "mod:fn", b"\x90", "msgpack")) for _ in range(2)]
        client.feed(frame(protocol.SUBMIT, 2, tasks=tasks))
        for _ in range(20):
            await asyncio.sleep(0)
        assert not any(msg.op == protocol.TASKS for msg in worker.messages())
        worker.conn.resume_writing()
        pushed: list[protocol.Message] = []
        await turns(lambda: bool(pushed.extend(worker.messages()) or any(x.op == protocol.TASKS for x in pushed)))
        assert any(x.op == protocol.TASKS for x in pushed)

    run(MemoryStore(), body)


def test_an_oversized_request_is_answered_with_an_error_naming_both_sizes():
    async def body(m: Master) -> None:
        p = PausablePeer(m)
        p.hello()
        big = frame(protocol.PING, 9, pad=b"\x00" * 2000)
        p.feed(big[:200])
        (reply,) = p.messages()
        assert (reply.op, reply.rid, reply.fields["type"]) == (protocol.ERR, 9, "FrameTooLarge")
        assert f"request of {len(big) - 4} bytes exceeds the master's frame limit of 1000 bytes" \
            == reply.fields["message"]
        assert not p.transport.reading and not p.transport.closed  # nothing more is read ...
        for _ in range(200):  # ... and it closes after a grace (connection.REFUSAL_GRACE)
            if p.transport.closed:
                break
            await asyncio.sleep(0.05)
        assert p.transport.closed

    run(MemoryStore(), body, max_frame_size=1000)


# -- the client side ------------------------------------------------------------------------------
def test_the_hello_answer_carries_the_frame_limit():
    o = Opening(parse_addresses("127.0.0.1:1")[0], KEY, {"role": "client"}, 1)
    o.state = "hello"
    o._accept(protocol.Message(protocol.OK, 1, {"session": "s", "heartbeat": 15.0, "max_frame": 1234}))
    assert o.welcome is not None and o.welcome.max_frame == 1234
    o2 = Opening(parse_addresses("127.0.0.1:1")[0], KEY, {"role": "client"}, 1)
    o2._accept(protocol.Message(protocol.OK, 1, {"session": "s", "heartbeat": 15.0}))  # an older master
    assert o2.welcome is not None and o2.welcome.max_frame is None


def test_check_request_size_names_both_sizes():
    check_request_size("submit", b"\x00" * 104, 100)
    with pytest.raises(FrameTooLarge, match="submit request of 101 bytes exceeds the master's frame limit of 100"):
        check_request_size("submit", b"\x00" * 105, 100)


class RecordingLink(LinkState):
    def __init__(self) -> None:
        super().__init__("127.0.0.1:1", KEY)
        self.sent: list[bytes] = []
        self.target: object | None = None

    def _new_future(self) -> Any:
        import concurrent.futures as cf
        return cf.Future()

    def _target(self) -> object | None:
        return self.target

    def _send_to(self, target: object | None, data: bytes) -> None:
        if target is not None:
            self.sent.append(data)


def test_a_request_over_the_limit_is_never_registered_so_never_resent():
    link = RecordingLink()
    link.send_limit = 100
    with pytest.raises(FrameTooLarge):
        link.request_nowait("submit", {"pad": b"\x00" * 200})
    assert link._requests == {}
    link.target = object()
    link._resend()
    assert link.sent == []


def test_a_waiting_request_over_a_newly_learned_limit_fails_at_the_resend():
    link = RecordingLink()
    small = link.request_nowait("ping", {})
    big = link.request_nowait("submit", {"pad": b"\x00" * 200})  # queued while disconnected
    link.send_limit = 100  # the master we reconnected to says so
    link.target = object()
    link._resend()
    assert len(link.sent) == 1 and not small.done()
    with pytest.raises(FrameTooLarge):
        big.result(0)


def test_a_refusal_from_the_master_fails_that_request():
    link = RecordingLink()
    fut = link.request_nowait("submit", {"pad": b"\x00"})
    (rid,) = link._requests
    link._on_message(protocol.Message(protocol.ERR, rid, {"type": "FrameTooLarge", "message": "too big"}))
    with pytest.raises(FrameTooLarge, match="too big"):
        fut.result(0)
    assert link._requests == {}
