"""Room in a bounded queue crosses masters: the PostgreSQL store announces, on
SPACE_CHANNEL and only when the transaction commits, the bounded queues items left
(none for an unbounded queue), and master/notify.py lets the puts parked on them try
again.

The PostgreSQL tests need the machine's PostgreSQL (tests/pg.py): skipped without it,
failed in CI.
"""

from __future__ import annotations

import asyncio
import json
import time

import pytest

from conveyor.master.context import Context, Limits
from conveyor.master.notify import Notices
from conveyor.store import MemoryStore
from conveyor.store.base import SPACE_CHANNEL, WORK_CHANNEL
from conveyor.store.conformance import T0, ok, task
from tests.pg import fresh_postgres_dsn  # noqa: F401 (a fixture)

from ..waiting import wait_until
from .test_cluster_store import _listening, two  # noqa: F401 (a fixture)


def _space(heard) -> list[list[str] | None]:
    return [items for ch, items in heard if ch == SPACE_CHANNEL]


def test_items_leaving_a_bounded_queue_announce_room_unbounded_ones_nothing(two) -> None:  # noqa: F811
    a, b, _ = two
    heard, stop, t = _listening(b)
    try:
        assert a.enqueue_bounded("bq", [task(f"b{i}", "bq") for i in range(3)], 3, T0) == 3
        a.enqueue([task(f"u{i}", "uq") for i in range(3)], T0)  # unbounded
        with pytest.raises(RuntimeError), a.transaction():
            a.lease("bq", 1, "w", T0, 30)
            raise RuntimeError("rolled back: announces nothing")
        a.lease("uq", 3, "w", T0, 30)  # unbounded: no room to announce
        with a.transaction():  # one commit, two ways out of one queue: one notification
            got = a.lease("bq", 1, "w", T0, 30)
            a.take("bq", 1, "w", T0)
        a.complete([ok(got[0].id, got[0].token)], T0)  # already out of the count: nothing
        a.lease("uq", 1, "w", T0, 30)
        assert wait_until(lambda: _space(heard), timeout=30)
        time.sleep(0.3)  # anything else would have come by now
        assert _space(heard) == [["bq"]]
        assert a.cancel("b2", T0, b"cancelled")[0] == "ready"  # a cancel makes room too
        assert wait_until(lambda: len(_space(heard)) == 2, timeout=30)
        assert _space(heard)[1] == ["bq"]
    finally:
        stop.set()
        t.join(30)


def test_room_in_more_bounded_queues_than_fit_is_announced_as_any(two) -> None:  # noqa: F811
    a, b, _ = two
    heard, stop, t = _listening(b)
    try:
        names = [f"bounded-queue-with-a-long-name-{i:04d}" for i in range(300)]  # > 7000 bytes
        for q in names:
            assert a.enqueue_bounded(q, [task(f"t-{q}", q)], 5, T0) == 1
        with a.transaction():
            for q in names:
                assert len(a.lease(q, 1, "w", T0, 30)) == 1
        assert wait_until(lambda: _space(heard), timeout=30)
        assert _space(heard) == [None]  # "every bounded queue": no payload past the limit
    finally:
        stop.set()
        t.join(30)


class _Queues:
    """Stands in for the QueueService: records what the notices ask of it."""

    def __init__(self) -> None:
        self.freed: list[str | None] = []

    def space_freed(self, queue: str) -> None:
        self.freed.append(queue)

    def space_freed_anywhere(self) -> None:
        self.freed.append(None)


def test_room_announced_by_another_master_wakes_the_puts_parked_here() -> None:
    ctx = Context(MemoryStore(), Limits(60.0, 15.0, 3600.0, False))
    ctx.wake.held = True
    queues = _Queues()
    notices = Notices(ctx, "me", queues=queues)  # type: ignore[arg-type]
    notices.handle(SPACE_CHANNEL, json.dumps(["me", ["q"]]))  # its own: acted on already
    notices.handle(SPACE_CHANNEL, json.dumps(["other", ["q", "r"]]))
    notices.handle(SPACE_CHANNEL, json.dumps(["other", None]))
    notices.handle(SPACE_CHANNEL, "not json")
    notices.handle(WORK_CHANNEL, json.dumps(["other", ["q"]]))  # new work is no room
    notices.handle(None, "")  # listening (re)started: anything may have been missed
    assert queues.freed == ["q", "r", None, None]


def test_a_parked_put_tries_again_when_room_comes_while_it_counted() -> None:
    """The announcement may arrive while the put's own store call still runs: the put
    must not park and miss it."""
    from conveyor import wire
    from conveyor.master.queues import QueueService

    async def run() -> list[int]:
        store = MemoryStore()
        ctx = Context(store, Limits(60.0, 15.0, 3600.0, False))
        svc = QueueService(ctx)
        calls: list[int] = []
        gate = asyncio.Event()

        async def call(fn, *args, **kwargs):
            calls.append(len(calls))
            if len(calls) == 1:  # the first count finds the queue full; room comes meanwhile
                svc.space_freed("q")
                return 0
            return fn(*args, **kwargs)

        ctx._runner = type("Runner", (), {"call": staticmethod(call)})()  # type: ignore[assignment]
        replies: list[dict] = []

        class S:
            closed = False

            def reply(self, rid, body) -> None:
                replies.append(body)
                gate.set()

        req = wire.QPut("q", [task("x", "q")], 1, 30.0)
        await svc.on_qput(S(), 1, req)  # type: ignore[arg-type]
        await asyncio.wait_for(gate.wait(), 10)
        return [r["accepted"] for r in replies]

    assert asyncio.run(run()) == [1]
