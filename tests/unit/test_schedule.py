"""Periodic schedules with time as an argument: slots, catch-up, DST, validation,
the @periodic registry, and the master's scheduler against a store and a fake clock."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import importlib
import zoneinfo

import pytest

import conveyor
from conveyor import serde
from conveyor.errors import SerializationError
from conveyor.master.context import Context, Limits
from conveyor.master.scheduler import Scheduler
from conveyor.schedule import (
    LATE_GRACE,
    Schedule,
    due_slots,
    latest_slot,
    make_schedule,
    next_slot,
    slot_task_id,
)
from conveyor.store import MemoryStore

periodic_mod = importlib.import_module("conveyor.periodic")  # conveyor.periodic is the decorator

UTC = dt.UTC
PARIS = zoneinfo.ZoneInfo("Europe/Paris")


def ts(*args, tz=UTC) -> float:
    return dt.datetime(*args, tzinfo=tz).timestamp()


def cron(expr: str, *, tz: str = "UTC", created_at: float = 0.0, missed: str = "run_once") -> Schedule:
    return make_schedule("s", "mod:fn", cron=expr, tz=tz, created_at=created_at, missed=missed)


def every(seconds: float, *, created_at: float = 0.0, missed: str = "run_once") -> Schedule:
    return make_schedule("s", "mod:fn", every=seconds, created_at=created_at, missed=missed)


def walk(sched: Schedule, start: float, end: float, step: float = 1.0) -> list[float]:
    """Run a loop that looks every ``step`` seconds from ``start`` to ``end``; the slots it enqueues."""
    sched = dataclasses.replace(sched, created_at=start)  # created when the loop starts
    last = None
    fired = []
    now = start
    while now <= end:
        for slot in due_slots(sched, last, now):
            fired.append(slot)
            last = slot
        now += step
    return fired


# -- slots ----------------------------------------------------------------------


def test_cron_every_five_minutes():
    s = cron("*/5 * * * *", created_at=ts(2024, 5, 1, 12, 3))
    assert next_slot(s, ts(2024, 5, 1, 12, 3)) == ts(2024, 5, 1, 12, 5)
    assert next_slot(s, ts(2024, 5, 1, 12, 5)) == ts(2024, 5, 1, 12, 10)  # strictly after
    assert latest_slot(s, ts(2024, 5, 1, 12, 5)) == ts(2024, 5, 1, 12, 5)  # at or before
    assert latest_slot(s, ts(2024, 5, 1, 12, 9, 59)) == ts(2024, 5, 1, 12, 5)
    assert due_slots(s, None, ts(2024, 5, 1, 12, 4)) == []
    assert due_slots(s, None, ts(2024, 5, 1, 12, 5, 0)) == [ts(2024, 5, 1, 12, 5)]
    assert due_slots(s, ts(2024, 5, 1, 12, 5), ts(2024, 5, 1, 12, 9)) == []
    fired = walk(s, ts(2024, 5, 1, 12, 3), ts(2024, 5, 1, 12, 31), step=7.0)
    assert fired == [ts(2024, 5, 1, 12, m) for m in (5, 10, 15, 20, 25, 30)]


def test_cron_in_a_time_zone():
    s = cron("0 9 * * *", tz="Europe/Paris")
    assert next_slot(s, ts(2024, 1, 15)) == ts(2024, 1, 15, 8)  # 09:00 CET is 08:00 UTC
    assert next_slot(s, ts(2024, 7, 15)) == ts(2024, 7, 15, 7)  # 09:00 CEST is 07:00 UTC


def test_cron_across_spring_forward():
    # 2024-03-31 in Paris: 02:00 CET becomes 03:00 CEST; 02:30 does not exist that day.
    daily = cron("30 2 * * *", tz="Europe/Paris")
    slots = walk(daily, ts(2024, 3, 30, 3, tz=PARIS), ts(2024, 4, 1, 3, tz=PARIS), step=60)
    assert slots == [ts(2024, 3, 31, 3, 0, tz=PARIS), ts(2024, 4, 1, 2, 30, tz=PARIS)]
    hourly = cron("0 * * * *", tz="Europe/Paris")
    slots = walk(hourly, ts(2024, 3, 31, 0, 30, tz=PARIS), ts(2024, 3, 31, 4, 30, tz=PARIS), step=60)
    assert len(slots) == 3  # 01:00, 03:00, 04:00: an hour shorter
    assert [b - a for a, b in zip(slots, slots[1:])] == [3600, 3600]


def test_cron_across_fall_back():
    # 2024-10-27 in Paris: 03:00 CEST goes back to 02:00 CET; 02:00-02:59 happens twice.
    start, end = ts(2024, 10, 26, 12, tz=PARIS), ts(2024, 10, 28, 12, tz=PARIS)
    daily = cron("30 2 * * *", tz="Europe/Paris")
    slots = walk(daily, start, end, step=60)
    assert slots == [ts(2024, 10, 27, 0, 30), ts(2024, 10, 28, 1, 30)]  # once a day, UTC
    half_hourly = cron("*/30 * * * *", tz="Europe/Paris")
    slots = walk(half_hourly, ts(2024, 10, 27, 1, 45, tz=PARIS), ts(2024, 10, 27, 3, 15, tz=PARIS), step=60)
    assert [b - a for a, b in zip(slots, slots[1:])] == [1800] * (len(slots) - 1)
    assert len(slots) == 5  # 02:00, 02:30 in CEST, both again in CET, then 03:00


def test_interval_slots_are_aligned_to_the_epoch():
    s = every(60, created_at=1_000_030.0)
    assert next_slot(s, 1_000_030.0) == 1_000_080.0
    assert latest_slot(s, 1_000_080.0) == 1_000_080.0
    assert walk(s, 1_000_030.0, 1_000_250.0, step=0.5) == [1_000_080.0, 1_000_140.0, 1_000_200.0]
    frac = every(0.25, created_at=0.0)
    assert walk(frac, 10.0, 11.0, step=0.25) == [10.25, 10.5, 10.75, 11.0]


def test_first_run_after_creation_never_runs_a_past_slot():
    s = cron("*/5 * * * *", created_at=ts(2024, 5, 1, 12, 3))
    assert due_slots(s, None, ts(2024, 5, 1, 12, 3)) == []
    assert due_slots(s, None, ts(2024, 5, 1, 12, 4, 59)) == []
    exact = cron("*/5 * * * *", created_at=ts(2024, 5, 1, 12, 5))  # created on a slot
    assert due_slots(exact, None, ts(2024, 5, 1, 12, 5, 30)) == []
    assert due_slots(every(10, created_at=105.0), None, 109.0) == []
    assert due_slots(every(10, created_at=105.0), None, 110.0) == [110.0]


def test_missed_slots_after_a_long_gap():
    created = ts(2024, 5, 1, 12, 0)
    last = ts(2024, 5, 1, 12, 5)
    back = ts(2024, 5, 1, 13, 2)  # the master was down for an hour: 11 slots missed
    once = cron("*/5 * * * *", created_at=created)
    assert due_slots(once, last, back) == [ts(2024, 5, 1, 13, 0)]
    skip = cron("*/5 * * * *", created_at=created, missed="skip")
    assert due_slots(skip, last, back) == []
    # ...and with skip the next slot runs on time.
    assert due_slots(skip, last, ts(2024, 5, 1, 13, 5, 1)) == [ts(2024, 5, 1, 13, 5)]
    # A slot seen within the grace period is not "missed", whatever the policy.
    assert due_slots(skip, last, ts(2024, 5, 1, 13, 0) + LATE_GRACE) == [ts(2024, 5, 1, 13, 0)]
    # Never created: a gap before the first slot runs only the latest one too.
    assert due_slots(once, None, back) == [ts(2024, 5, 1, 13, 0)]
    assert due_slots(every(2, created_at=100.0), 110.0, 1000.5) == [1000.0]
    assert due_slots(every(2, created_at=100.0, missed="skip"), 110.0, 1000.5) == [1000.0]  # on time
    assert due_slots(every(60, created_at=100.0, missed="skip"), 120.0, 1020.0 + 25) == []


def test_clock_going_back_runs_nothing_again():
    s = every(10, created_at=0.0)
    assert due_slots(s, 100.0, 95.0) == []
    assert due_slots(s, 100.0, 100.0) == []


def test_slot_task_ids_are_deterministic_and_distinct():
    a = slot_task_id("nightly", 1_700_000_000.0)
    assert a == slot_task_id("nightly", 1_700_000_000)
    assert len(a) == 32 and int(a, 16) >= 0
    assert a != slot_task_id("nightly", 1_700_000_300.0) != slot_task_id("other", 1_700_000_000.0)


# -- validation -----------------------------------------------------------------


@pytest.mark.parametrize("kwargs, field", [
    ({"cron": "61 * * * *"}, "cron: invalid expression"),
    ({"cron": "* * * *"}, "cron: invalid expression"),
    ({"cron": "*/5 * * * * *"}, "cron: invalid expression"),
    ({"cron": "0 0 30 2 *"}, "never matches"),
    ({"cron": "bogus"}, "cron: invalid expression"),
    ({"cron": ""}, "cron:"),
    ({"cron": "* * * * *", "tz": "Mars/Olympus_Mons"}, "tz: unknown time zone 'Mars/Olympus_Mons'"),
    ({"cron": "* * * * *", "tz": ""}, "tz:"),
    ({"every": 0}, "every: the interval must be a positive"),
    ({"every": -5}, "every:"),
    ({"every": float("inf")}, "every:"),
    ({"every": "10"}, "every:"),
    ({"every": True}, "every:"),
    ({"cron": "* * * * *", "every": 10}, "cron/every: .* not both"),
    ({}, "cron/every: .* not neither"),
    ({"every": 10, "missed": "always"}, "missed: must be 'run_once' or 'skip', not 'always'"),
    ({"every": 10, "queue": ""}, "queue:"),
])
def test_bad_schedules_name_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        make_schedule("s", "mod:fn", **kwargs)


@pytest.mark.parametrize("name", ["", "   ", None, " padded", "x" * 201, "two\nlines"])
def test_bad_names(name):
    with pytest.raises(ValueError, match="name:"):
        make_schedule(name, "mod:fn", every=10)


def test_bad_task_and_arguments():
    with pytest.raises(ValueError, match="task: expected 'module:function'"):
        make_schedule("s", "nocolon", every=10)
    with pytest.raises(SerializationError, match="argument 0"):
        make_schedule("s", "mod:fn", [object()], every=10)


def test_aliases_and_spacing_are_accepted():
    assert make_schedule("s", "m:f", cron="@hourly").cron == "@hourly"
    assert make_schedule("s", "m:f", cron="  */5  *  * * * ").cron == "*/5 * * * *"
    s = make_schedule("s", "m:f", cron="@daily", tz="Europe/Paris")
    assert next_slot(s, ts(2024, 1, 1, 12)) == ts(2024, 1, 2, tz=PARIS)


def test_wire_and_record_round_trip():
    s = make_schedule("s", "mod:fn", [1, "two"], {"k": 3}, every=5, queue="q", options={"timeout": 2.0})
    assert serde.decode_call(s.payload) == ([1, "two"], {"k": 3})
    again = Schedule.from_wire(serde.unpackb(serde.packb(s.to_wire())), source="cli")
    assert again == s
    rec = s.to_record(last_slot=10.0)
    assert rec["last_slot"] == 10.0 and Schedule.from_record(rec) == s
    with pytest.raises(ValueError, match="payload"):
        Schedule.from_wire({**s.to_wire(), "payload": "text"}, source="cli")
    with pytest.raises(ValueError, match="codec"):
        Schedule.from_wire({**s.to_wire(), "codec": "yaml"}, source="cli")
    with pytest.raises(ValueError, match="schedule: must be a map"):
        Schedule.from_wire([1, 2], source="cli")


# -- @periodic --------------------------------------------------------------------


@pytest.fixture
def registry():
    periodic_mod.forget()
    yield periodic_mod
    periodic_mod.forget()


def _fn(name: str):
    """A module-level-looking function (decorators refuse <locals>)."""
    def f(*args, **kwargs):
        return args
    f.__qualname__ = name
    f.__module__ = "tests.unit.fake_tasks"
    return f


def test_periodic_declares_and_marks_a_task(registry):
    fn = conveyor.periodic("*/5 * * * *", tz="Europe/Paris", args=(1,), kwargs={"k": 2}, queue="q")(_fn("job"))
    assert fn.__conveyor_task__.name == "tests.unit.fake_tasks:job"
    (s,) = registry.declarations(["tests.unit.fake_tasks"])
    assert (s.name, s.task, s.queue, s.cron, s.tz, s.source) == (
        "tests.unit.fake_tasks:job", "tests.unit.fake_tasks:job", "q", "*/5 * * * *", "Europe/Paris", "code")
    assert serde.decode_call(s.payload) == ([1], {"k": 2})
    assert registry.declarations(["other.module"]) == []
    wire = registry.hello_entries([])
    assert wire == []


def test_periodic_keeps_task_options_and_names(registry):
    fn = conveyor.task(_fn("opt"), name="tests.unit.fake_tasks:renamed", timeout=5, retries=2, queue="tq")
    conveyor.periodic(every=30, name="fast")(fn)
    conveyor.periodic(every=60, name="slow", missed="skip")(fn)
    fast, slow = registry.declarations(["tests.unit.fake_tasks"])
    assert (fast.name, fast.task, fast.queue, fast.every) == ("fast", "tests.unit.fake_tasks:renamed", "tq", 30.0)
    assert fast.options == {"timeout": 5, "retries": 2}
    assert slow.missed == "skip"


@pytest.mark.parametrize("kwargs, field", [
    ({"cron": "61 * * * *"}, "cron:"),
    ({"cron": "* * * * *", "tz": "Nowhere/City"}, "tz: unknown time zone"),
    ({"every": 0}, "every:"),
    ({"cron": "* * * * *", "every": 5}, "cron/every"),
    ({}, "cron/every"),
    ({"every": 5, "missed": "later"}, "missed:"),
    ({"every": 5, "name": ""}, "name:"),
])
def test_periodic_errors_at_declaration(registry, kwargs, field):
    with pytest.raises(ValueError, match=field):
        conveyor.periodic(**kwargs)(_fn("bad"))
    assert registry.declarations() == []


def test_periodic_duplicate_names(registry):
    conveyor.periodic(every=5, name="dup")(_fn("one"))
    with pytest.raises(ValueError, match="name: schedule 'dup' is declared twice"):
        conveyor.periodic(every=5, name="dup")(_fn("two"))
    fn = conveyor.periodic(every=5)(_fn("three"))
    with pytest.raises(ValueError, match="declared twice"):
        conveyor.periodic(every=10)(fn)  # the same function twice without names
    # The same function defined again (a reloaded module) replaces its declaration.
    conveyor.periodic(every=7, name="dup")(_fn("one"))
    assert {s.name: s.every for s in registry.declarations()}["dup"] == 7.0


def test_periodic_refuses_lambdas_and_unencodable_args(registry):
    with pytest.raises(TypeError, match="module-level"):
        conveyor.periodic(every=5)(lambda: None)
    with pytest.raises(SerializationError):
        conveyor.periodic(every=5, args=(object(),))
    with pytest.raises(TypeError, match="needs a schedule"):
        conveyor.periodic(_fn("bare"))


# -- the master's scheduler, with a store and a fake clock ----------------------------


class _Runner:
    """Runs store calls at once, each call in one transaction (like StoreRunner's batches)."""

    def __init__(self, store):
        self.store = store

    def call(self, fn, *args):
        fut = asyncio.get_running_loop().create_future()
        try:
            with self.store.transaction():
                fut.set_result(fn(*args))
        except Exception as exc:
            fut.set_exception(exc)
        return fut


class _Queues:
    def __init__(self):
        self.changed_queues = []

    def changed(self, q):
        self.changed_queues.append(q)


class FakeMaster:
    """What the Scheduler uses of a Master: a Context with a settable clock and an inline runner."""

    def __init__(self, store, now):
        self.store = store
        self.now = now
        self.queues = _Queues()
        ctx = Context(store, Limits(60.0, 15.0, 3600.0, False), clock=lambda: self.now, queues=self.queues)
        ctx.bind_runner(_Runner(store))
        self.scheduler = Scheduler(ctx)


def _save(store, sched: Schedule, last_slot=None):
    store.save_schedule(sched.to_record(last_slot=last_slot))


def test_scheduler_enqueues_each_slot_once_across_restarts():
    async def main():
        store = MemoryStore()
        _save(store, make_schedule("tick", "mod:fn", [7], every=2, queue="q", created_at=100.0))
        m = FakeMaster(store, 100.5)
        assert await m.scheduler.tick() == pytest.approx(1.0)  # at most a second of sleep
        assert store.stats() == {}
        m.now = 101.5
        assert await m.scheduler.tick() == pytest.approx(0.5)  # sleeps until the slot at 102
        m.now = 102.01
        await m.scheduler.tick()
        info = store.get(slot_task_id("tick", 102.0))
        assert info is not None and info.queue == "q" and info.name == "mod:fn"
        assert info.options == {"schedule": "tick", "slot": 102.0}
        assert store.schedules()[0]["last_slot"] == 102.0 and m.queues.changed_queues == ["q"]
        await m.scheduler.tick()  # nothing new
        assert store.stats()["q"].ready == 1
        # A "restart": a new master on the same store, after 10 s down.
        m2 = FakeMaster(store, 112.5)
        await m2.scheduler.tick()
        assert store.stats()["q"].ready == 2  # only the latest missed slot (112)
        assert store.get(slot_task_id("tick", 112.0)) is not None
        # A second master looking at the same slot adds nothing.
        await m.scheduler.tick()
        assert store.stats()["q"].ready == 2

    asyncio.run(main())


def test_scheduler_skip_policy_and_new_schedules_after_downtime():
    async def main():
        store = MemoryStore()
        _save(store, make_schedule("skip", "mod:fn", every=60, missed="skip", created_at=0.0), last_slot=60.0)
        _save(store, make_schedule("once", "mod:fn", every=60, created_at=0.0), last_slot=60.0)
        m = FakeMaster(store, 1000.0)  # slot 960 is 40 s old: missed
        await m.scheduler.tick()
        assert {r["name"]: r["last_slot"] for r in store.schedules()} == {"skip": 60.0, "once": 960.0}
        m.now = 1020.2
        await m.scheduler.tick()
        assert {r["name"]: r["last_slot"] for r in store.schedules()} == {"skip": 1020.0, "once": 1020.0}

    asyncio.run(main())


def test_scheduler_declarations_from_workers():
    async def main():
        store = MemoryStore()
        m = FakeMaster(store, 500.0)

        class S:
            name = "w1"

        decl = make_schedule("code", "mod:fn", every=5, source="code")
        m.scheduler.declare(S, [decl.to_wire(), {"name": "broken"}])
        await asyncio.sleep(0)
        (rec,) = store.schedules()
        assert (rec["name"], rec["source"], rec["created_at"], rec["last_slot"]) == ("code", "code", 500.0, None)
        store.mark_slot("code", 505.0)
        m.now = 600.0
        m.scheduler.declare(S, [decl.to_wire()])  # the same spec again: nothing changes
        await asyncio.sleep(0)
        assert store.schedules()[0]["created_at"] == 500.0 and store.schedules()[0]["last_slot"] == 505.0
        args_changed = make_schedule("code", "mod:fn", [1], every=5, source="code")
        m.scheduler.declare(S, [args_changed.to_wire()])
        await asyncio.sleep(0)
        (rec,) = store.schedules()
        assert serde.decode_call(rec["payload"]) == ([1], {}) and rec["last_slot"] == 505.0
        timing_changed = make_schedule("code", "mod:fn", [1], every=7, source="code")
        m.scheduler.declare(S, [timing_changed.to_wire()])
        await asyncio.sleep(0)
        (rec,) = store.schedules()
        assert (rec["every"], rec["created_at"], rec["last_slot"]) == (7.0, 600.0, None)
        # A schedule added at run time is not replaced by a declaration.
        _save(store, make_schedule("cli", "mod:other", every=9, created_at=1.0))
        m.scheduler.declare(S, [make_schedule("cli", "mod:fn", every=5, source="code").to_wire()])
        await asyncio.sleep(0)
        assert {r["name"]: r["task"] for r in store.schedules()}["cli"] == "mod:other"

    asyncio.run(main())
