"""No log storms (issue 10, must-have 7): errors that repeat are logged once per kind
per interval, with the count of what was held back."""

from __future__ import annotations

import logging

import pytest

from conveyor import protocol
from conveyor.errors import AuthenticationError, ConnectionLost, ProtocolError
from conveyor.link.state import LinkState
from conveyor.master import Master
from conveyor.ratelimit_log import MAX_KEYS, RateLimitedLog
from conveyor.store import MemoryStore
from tests.unit.test_master_io import CommitSpy, CostlyCommits, Peer, a_task, frame, run, turns


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_one_line_per_key_per_interval_then_the_count_of_those_held_back(caplog):
    clock = Clock()
    limited = RateLimitedLog(logging.getLogger("test.storm"), 10.0, clock=clock)
    with caplog.at_level(logging.WARNING, logger="test.storm"):
        assert limited.warning("disk", "disk full on %s", "a") is True
        for _ in range(500):
            assert limited.warning("disk", "disk full on %s", "b") is False
        assert limited.warning("other", "something else") is True  # another key is not held back
        assert limited.suppressed("disk") == 500
        clock.now += 10.0
        assert limited.warning("disk", "disk full on %s", "c") is True
    lines = [r.getMessage() for r in caplog.records]
    assert lines == ["disk full on a", "something else", "disk full on c (500 similar suppressed)"]
    assert limited.suppressed("disk") == 0


def test_the_record_names_the_caller_not_the_helper(caplog):
    limited = RateLimitedLog(logging.getLogger("test.storm"))
    with caplog.at_level(logging.ERROR, logger="test.storm"):
        limited.error("k", "boom")
    assert caplog.records[0].filename == "test_log_storms.py"


def test_keys_are_bounded():
    clock = Clock()
    limited = RateLimitedLog(logging.getLogger("test.storm"), clock=clock)
    for i in range(MAX_KEYS * 3):
        limited.info(f"peer {i}", "x")
    assert len(limited._last) <= MAX_KEYS


def test_a_disabled_level_costs_no_bookkeeping():
    limited = RateLimitedLog(logging.getLogger("test.storm.quiet"))
    logging.getLogger("test.storm.quiet").setLevel(logging.ERROR)
    assert limited.info("k", "x") is False
    assert limited.suppressed("k") == 0


def test_a_thousand_garbage_connections_make_one_line_on_the_master(caplog):
    async def body(m: Master) -> None:
        with caplog.at_level(logging.WARNING, logger="conveyor.master"):
            for _ in range(1000):
                p = Peer(m)
                p.hello()
                p.feed(b"\x00\x00\x00\x05\xc1\xc1\xc1\xc1\xc1")
                assert p.transport.closed
                p.conn.connection_lost(None)
        lines = [r.getMessage() for r in caplog.records if "undecodable" in r.getMessage()]
        assert len(lines) == 1

    run(MemoryStore(), body)


def test_repeated_wrong_keys_make_one_line(caplog):
    async def body(m: Master) -> None:
        with caplog.at_level(logging.WARNING, logger="conveyor.master"):
            for _ in range(200):
                p = Peer(m, key=b"wrong")
                p.feed(p.proto.initiate())
                with pytest.raises(AuthenticationError):
                    p.proto.receive_data(p.take_bytes())
                p.feed(p.proto.data_to_send())
                assert p.transport.closed
                p.conn.connection_lost(None)
        assert sum("authentication failed" in r.getMessage() for r in caplog.records) == 1

    run(MemoryStore(), body)


def test_repeated_commit_failures_make_one_line_and_close_what_they_would_have_answered(caplog):
    store = CommitSpy()

    def fail() -> None:
        raise RuntimeError("disk full")

    async def body(m: Master) -> None:
        store.on_commit = fail
        with caplog.at_level(logging.ERROR, logger="conveyor.master"):
            peers = []
            for _ in range(50):
                p = Peer(m)
                p.hello()
                p.feed(frame(protocol.SUBMIT, 2, tasks=[a_task()]))
                peers.append(p)
        assert all(p.transport.closed for p in peers)
        assert sum("a commit failed" in r.getMessage() for r in caplog.records) == 1

    run(store, body)


def test_requests_failing_the_same_way_make_one_line_and_every_one_is_answered(caplog):
    store = CostlyCommits()
    store.fail_enqueue = True

    async def body(m: Master) -> None:
        p = Peer(m)
        p.hello()
        got: list[protocol.Message] = []
        with caplog.at_level(logging.ERROR, logger="conveyor.master"):
            for rid in range(2, 102):
                p.feed(frame(protocol.SUBMIT, rid, tasks=[a_task()]))
            await turns(lambda: bool(got.extend(p.messages())) or len(got) == 100)
        assert sorted(r.rid for r in got) == list(range(2, 102))
        assert all(r.op == protocol.ERR and r.fields["message"] == "disk on fire" for r in got)
        assert sum("request from" in r.getMessage() for r in caplog.records) == 1

    run(store, body)


class Link(LinkState):
    def _new_future(self):  # type: ignore[no-untyped-def]
        import concurrent.futures as cf
        return cf.Future()

    def _target(self) -> None:
        return None

    def _send_to(self, target: object, data: bytes) -> None:
        pass


def test_a_reconnect_loop_that_fails_loudly_logs_once_per_interval(caplog):
    link = Link("127.0.0.1:1", b"k", reconnect_first=0.0, reconnect_max=0.0)
    with caplog.at_level(logging.WARNING, logger="conveyor.link"):
        for _ in range(1000):  # something that is not a master answers on the port, again and again
            assert link._attempt_failed(ProtocolError("the peer is not a conveyor master (bad magic)")) is not None
        for _ in range(1000):  # a master that is away: quiet, as before
            link._attempt_failed(ConnectionLost("refused"))
    assert len(caplog.records) == 1
    assert "reconnecting to tcp://127.0.0.1:1 failed" in caplog.records[0].getMessage()
    assert link.limited.suppressed(f"reconnect failed {link.address}") == 999
