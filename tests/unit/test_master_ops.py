"""The master's ops for the dashboard, in process with injected clocks: the status
document's worker records and metrics, qlist, sched_run and cancelling many tasks.

Time is the test's (``Clock``), never slept: a run time or a queue wait is the
difference of the clock values the test set.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from conveyor import protocol, wire
from conveyor.master import Master
from conveyor.master.metrics import (
    MAX_TASK_NAMES,
    OTHER,
    TASK_BUCKETS,
    Histogram,
    Metrics,
    created_at,
)
from conveyor.schedule import make_schedule
from conveyor.store import MemoryStore, NewTask

from .test_master_io import KEY, Peer, frame, turns

T0 = 1_800_000_000.0  # a wall-clock second (2027), exact in binary


class Clock:
    """A settable clock for the master's wall and monotonic time."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def tid_created(at: float, n: int = 1) -> str:
    """A conveyor-style id (48-bit milliseconds, then 80 bits) that says it was created ``at``."""
    return f"{int(at * 1000):012x}{n:020x}"


def task(tid: str, queue: str = "q", name: str = "mod:fn", **kw: Any) -> list[Any]:
    return wire.task_to_wire(NewTask(tid, queue, name, b"\x90", "msgpack", **kw))


def run(body: Any, clock: Clock, store: MemoryStore | None = None, **kwargs: Any) -> None:
    async def main() -> None:
        master = Master(store or MemoryStore(), authkey=KEY, port=0, clock=clock, monotonic=clock, **kwargs)
        await master.start()
        try:
            await body(master)
        finally:
            await master.close()

    asyncio.run(main())


def status(client: Peer, rid: int) -> dict[str, Any]:
    client.feed(frame(protocol.STATUS, rid))
    (reply,) = [r for r in client.messages() if r.rid == rid]  # results pushed meanwhile aside
    assert reply.op == protocol.OK, reply
    return reply.fields


def worker_peer(m: Master, credit: int = 10, **hello: Any) -> Peer:
    w = Peer(m)
    w.hello(role="worker", queues=["q"], concurrency=2, **hello)
    w.feed(frame(protocol.CREDIT, 0, n=credit))
    return w


def pushed(w: Peer) -> dict[str, int]:
    """Task id -> lease token of what the master pushed to ``w`` since the last look."""
    return {t[0]: t[1] for msg in w.messages() if msg.op == protocol.TASKS for t in msg.fields["tasks"]}


# -- metrics, unit ---------------------------------------------------------------------
def test_histogram_counts_into_cumulative_buckets_with_an_inf_bucket():
    h = Histogram((0.1, 1.0))
    for v in (0.05, 0.1, 0.5, 7.0, -3.0):  # a negative one (clock step) counts as 0
        h.observe(v)
    snap = h.snapshot()
    assert snap["buckets"] == [[0.1, 3], [1.0, 4], [None, 5]]
    assert snap["count"] == 5 and snap["sum"] == pytest.approx(7.65)


def test_task_names_beyond_the_bound_count_as_other():
    m = Metrics()
    for i in range(MAX_TASK_NAMES + 3):
        m.count("q", f"mod:f{i}", "submitted")
    m.count("q", "mod:f0", "submitted")  # a name seen before the bound keeps its label
    names = {name for _, name, _, _ in m.snapshot()["tasks"]}
    assert len(names) == MAX_TASK_NAMES + 1 and OTHER in names
    counts = {(name, outcome): n for _, name, outcome, n in m.snapshot()["tasks"]}
    assert counts[(OTHER, "submitted")] == 3 and counts[("mod:f0", "submitted")] == 2


def test_creation_time_is_read_only_from_conveyor_ids():
    assert created_at(tid_created(T0 - 2.5), T0) == T0 - 2.5
    assert created_at("job-1", T0) is None
    assert created_at(tid_created(T0 + 60), T0) is None  # from the future: not a time
    assert created_at(tid_created(T0 - 2 * 365 * 86400), T0) is None  # too old: a random id
    assert created_at("z" * 32, T0) is None and created_at("job-" + "0" * 28, T0) is None


# -- status: workers and metrics --------------------------------------------------------
def test_status_carries_worker_records_outcome_counters_and_histograms():
    clock = Clock(T0)

    async def body(m: Master) -> None:
        w = worker_peer(m, pool="thread", loop="uvloop")
        c = Peer(m)
        c.hello()
        ok_id, bad_id, retry_id = (tid_created(T0 - 2.0, n) for n in (1, 2, 3))
        c.feed(frame(protocol.SUBMIT, 2, tasks=[task(ok_id), task(bad_id), task(retry_id, name="mod:other")]))
        tokens = pushed(w)
        assert set(tokens) == {ok_id, bad_id, retry_id}
        clock.now = T0 + 0.3
        w.feed(frame(protocol.ACK, 2, results=[[ok_id, tokens[ok_id], True, b"\x01", "msgpack", None],
                                               [bad_id, tokens[bad_id], False, b"\x90", "msgpack", None],
                                               [retry_id, tokens[retry_id], False, b"\x90", "msgpack",
                                                {"delay": 0}]]))
        # The retried task comes back at once; its second attempt dies.
        again = pushed(w)
        assert list(again) == [retry_id]
        clock.now = T0 + 1.3
        w.feed(frame(protocol.ACK, 3, results=[[retry_id, again[retry_id], False, b"\x90", "msgpack",
                                                {"dead": True}]]))
        await turns(lambda: m.store.get(retry_id).state == "dead")
        # A result sent twice: the second is a duplicate, dropped and counted.
        w.feed(frame(protocol.ACK, 4, results=[[ok_id, tokens[ok_id], True, b"\x01", "msgpack", None]]))
        while w.messages():
            pass
        st = status(c, 9)
        (wk,) = st["workers"]
        assert (wk["pool"], wk["loop"], wk["done"], wk["failed"]) == ("thread", "uvloop", 1, 2)
        assert wk["started_at"] == T0 and wk["last_heartbeat"] == T0 + 1.3
        assert st["started_at"] == T0 and st["gone_workers"] == []
        met = st["metrics"]
        assert met["tasks"] == [["q", "mod:fn", "failed", 1], ["q", "mod:fn", "submitted", 2],
                                ["q", "mod:fn", "succeeded", 1], ["q", "mod:other", "dead", 1],
                                ["q", "mod:other", "retried", 1], ["q", "mod:other", "submitted", 1]]
        assert met["duplicates"] == 1 and met["lease_expiries"] == 0
        run_h, wait_h = met["task_run_seconds"], met["task_wait_seconds"]
        # Runs: 0.3 s (three first attempts) and 1.0 s (the retry, pushed at T0 + 0.3).
        assert run_h["count"] == 4 and run_h["sum"] == pytest.approx(3 * 0.3 + 1.0)
        le = dict((b, n) for b, n in run_h["buckets"])
        assert (le[0.25], le[0.5], le[1.0], le[None]) == (0, 3, 4, 4)
        # Waits: 2 s from creation for the first three, 0 for the retry (due at once).
        assert wait_h["count"] == 4 and wait_h["sum"] == pytest.approx(6.0)
        assert [b for b, _ in wait_h["buckets"]] == [*TASK_BUCKETS, None]
        commit_h = st["metrics"]["store_commit_seconds"]
        assert commit_h["count"] > 0
        assert m.ctx.metrics.commit.count == m.runner.commits  # every commit timed (this status' too)
        # The worker leaves: it is listed as gone, with when.
        clock.now = T0 + 5
        w.conn.connection_lost(None)
        await turns(lambda: len(m.sessions) == 1)
        st = status(c, 10)
        assert st["workers"] == [] and st["gone_workers"] == [
            {"name": "", "host": "", "pid": None, "gone_at": T0 + 5}]

    run(body, clock)


def test_a_delayed_task_waits_from_when_it_was_due_and_expiries_are_counted():
    clock = Clock(T0)
    store = MemoryStore()

    async def body(m: Master) -> None:
        c = Peer(m)
        c.hello()
        late = tid_created(T0, 1)
        c.feed(frame(protocol.SUBMIT, 2, tasks=[task(late, not_before=T0 + 10)]))
        c.messages()
        w = worker_peer(m)
        clock.now = T0 + 12  # due at T0 + 10, leased at T0 + 12: it waited 2 s, not 12
        await m.delay_timer.step(clock.now)
        await turns(lambda: bool(w.transport.writes[-1:]) and store.get(late).state == "leased")
        assert m.ctx.metrics.snapshot()["task_wait_seconds"]["sum"] == pytest.approx(2.0)
        # A lease nobody extends (its holder is not a session here) expires and is counted.
        c.feed(frame(protocol.SUBMIT, 3, tasks=[task(tid_created(T0, 2), queue="orphans")]))
        store.lease("orphans", 1, "nobody", clock.now, 1.0)
        clock.now += 10_000
        await m.reaper.step(clock.now, clock.now)
        assert m.ctx.metrics.snapshot()["lease_expiries"] == 1

    run(body, clock, store, heartbeat_timeout=1e9)


# -- qlist -------------------------------------------------------------------------------
def test_qlist_lists_declared_and_used_queues_with_depth_and_consumers():
    clock = Clock(T0)

    async def body(m: Master) -> None:
        producer, consumer = Peer(m), Peer(m)
        producer.hello()
        consumer.hello()
        items = [[tid_created(T0, n), b"\x01", "msgpack"] for n in range(3)]
        producer.feed(frame(protocol.QPUT, 2, queue="jobs", items=items, maxsize=0, timeout=0))
        consumer.feed(frame(protocol.QGET, 2, queue="jobs", max=1, timeout=0, ack=False))
        assert len(consumer.messages()[0].fields["items"]) == 1
        producer.feed(frame(protocol.QLIST, 3))
        (reply,) = [r for r in producer.messages() if r.rid == 3]
        assert reply.fields["queues"] == [
            {"queue": "declared", "ready": 0, "delayed": 0, "leased": 0, "maxsize": 5, "declared": True,
             "consumers": 0},
            {"queue": "jobs", "ready": 2, "delayed": 0, "leased": 1, "maxsize": 0, "declared": False,
             "consumers": 1},
        ]
        consumer.conn.connection_lost(None)
        await turns(lambda: len(m.sessions) == 1)
        producer.feed(frame(protocol.QLIST, 4))
        jobs = producer.messages()[0].fields["queues"][1]
        assert (jobs["consumers"], jobs["ready"]) == (0, 3)  # its lease went back with it

    run(body, clock, queues={"declared": 5})


# -- sched_run -----------------------------------------------------------------------------
def test_sched_run_enqueues_once_per_second_and_sched_list_shows_it():
    clock = Clock(T0 + 0.2)
    store = MemoryStore()

    async def body(m: Master) -> None:
        c = Peer(m)
        c.hello()
        sched = make_schedule("nightly", "mod:fn", [1], cron="0 3 * * *", queue="q")
        c.feed(frame(protocol.SCHED_ADD, 2, schedule=sched.to_wire(), replace=False))
        await turns(lambda: bool(c.messages()))
        c.feed(frame(protocol.SCHED_RUN, 3, name="nightly"))
        await turns(lambda: bool(c.transport.writes[-1:]))
        (first,) = c.messages()
        clock.now = T0 + 0.9  # a double click within the same second: the same task
        c.feed(frame(protocol.SCHED_RUN, 4, name="nightly"))
        (second,) = c.messages()
        assert first.fields["new"] is True and second.fields == {"id": first.fields["id"], "new": False}
        info = store.get(first.fields["id"])
        assert (info.queue, info.name, info.state) == ("q", "mod:fn", "ready")
        assert info.options["manual"] is True and info.options["schedule"] == "nightly"
        clock.now = T0 + 1.0  # the next second: another task
        c.feed(frame(protocol.SCHED_RUN, 5, name="nightly"))
        (third,) = c.messages()
        assert third.fields["new"] is True and third.fields["id"] != first.fields["id"]
        c.feed(frame(protocol.SCHED_LIST, 6))
        (listed,) = c.messages()
        (row,) = listed.fields["schedules"]
        assert row["last_run_now"] == {"id": third.fields["id"], "at": T0 + 1.0}
        assert row["last_slot"] is None  # its slots are untouched
        c.feed(frame(protocol.SCHED_RUN, 7, name="nope"))
        (err,) = c.messages()
        assert (err.op, err.fields["type"]) == (protocol.ERR, "NotFound")

    run(body, clock, store)


# -- cancelling many ----------------------------------------------------------------------
def test_one_cancel_request_for_many_ids_counts_each_by_queue_and_task():
    clock = Clock(T0)
    store = MemoryStore()

    async def body(m: Master) -> None:
        c = Peer(m)
        c.hello()
        a, b = tid_created(T0, 1), tid_created(T0, 2)
        c.feed(frame(protocol.SUBMIT, 2, tasks=[task(a), task(b, queue="r", name="mod:g")]))
        c.messages()
        c.feed(frame(protocol.CANCEL, 3, ids=[a, b, "missing"]))
        await turns(lambda: bool(c.transport.writes[-1:]) and store.get(a).state == "cancelled")
        reply = next(r for r in c.messages() if r.rid == 3)
        assert reply.fields == {"cancelled": [a, b], "finished": [], "unknown": ["missing"]}
        tasks = m.ctx.metrics.snapshot()["tasks"]
        assert ["q", "mod:fn", "cancelled", 1] in tasks and ["r", "mod:g", "cancelled", 1] in tasks

    run(body, clock, store)


# -- the asyncio client's calls, over a real socket ----------------------------------------
def test_async_client_cancel_many_queues_and_run_schedule():
    from conveyor.client.aio import AsyncClient

    async def main() -> None:
        master = Master(MemoryStore(), authkey=KEY, port=0, queues={"jobs": 3})
        await master.start()
        try:
            async with AsyncClient(f"127.0.0.1:{master.port}", KEY) as c:
                await c.connect()
                futs = [await c.submit("mod:fn", i, countdown=3600) for i in range(2)]
                ids = [master.store.list_tasks(limit=10)[i].id for i in range(2)]
                out = await c.cancel_many([*ids, "missing"])
                assert out == {"cancelled": ids, "finished": [], "unknown": ["missing"]}
                for f in futs:
                    with pytest.raises(asyncio.CancelledError):
                        await f
                assert (await c.cancel(ids[0]))["finished"] == [ids[0]]
                assert await c.queues() == [{"queue": "jobs", "ready": 0, "delayed": 0, "leased": 0,
                                             "maxsize": 3, "declared": True, "consumers": 0}]
                sched = make_schedule("s", "mod:fn", [1], every=3600, queue="q")
                await c._core.request(protocol.SCHED_ADD, {"schedule": sched.to_wire(), "replace": False})
                ran = await c.run_schedule("s")
                assert ran["new"] is True and master.store.get(ran["id"]).queue == "q"
        finally:
            await master.close()

    asyncio.run(main())
