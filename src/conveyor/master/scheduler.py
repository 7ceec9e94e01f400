"""Periodic schedules on the master: the loop that enqueues due slots, and the
``sched_add`` / ``sched_list`` / ``sched_del`` requests.

Schedules live in the store (``Store.schedules``); this module keeps nothing
a restart needs. Every tick (at least once a second, and at each slot) the
loop reads them, asks :func:`conveyor.schedule.due_slots` which slot is due
at ``master.clock()``, and in one transaction enqueues that slot's task
under its deterministic id (:func:`~conveyor.schedule.slot_task_id`) and
records the slot as the schedule's ``last_slot``. Enqueue is idempotent by
id and ``last_slot`` only moves forward, so a slot is enqueued once even when
a master is killed between the two, restarted, or shares its store with
another master. ``sched_run`` enqueues a schedule's task at once, outside its
slots, under an id made of its name and the current second.

Workers declare the schedules of their modules (``@conveyor.periodic``) in
their hello; :meth:`Scheduler.declare` adds the new ones and replaces
code-declared ones whose spec changed. A schedule added at run time
(``source="cli"``) is never replaced by a declaration.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from typing import TYPE_CHECKING, Any

from .. import protocol, serde, wire
from ..errors import NotFound, SerializationError
from ..options import priority_of
from ..records import NewTask
from ..schedule import Schedule, due_slots, next_slot, slot_task_id
from .metrics import SUBMITTED
from .session import Session

if TYPE_CHECKING:
    from .context import Context, Routes

log = logging.getLogger("conveyor.scheduler")

MAX_DECLARED = 1000  # schedules one hello may declare
TICK = 1.0  # longest sleep: a changed clock or another master's change is seen within it


class Scheduler:
    """The master's periodic schedules: a loop and three request handlers."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self._wake = asyncio.Event()
        self._records: list[dict[str, Any]] = []  # as last read, for status
        self._warned: set[tuple[str, str]] = set()
        # The latest "run now" of each schedule since the master started: {id, at}.
        self.manual: dict[str, dict[str, Any]] = {}

    def wake(self) -> None:
        """Look at the schedules now (one was added, changed or removed)."""
        self._wake.set()

    # -- the loop ------------------------------------------------------------
    async def run(self) -> None:
        """Enqueue each slot as it comes; sleep until the next one, at most TICK at a time."""
        while True:
            self._wake.clear()
            try:
                delay = await self.tick()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("periodic schedules: tick failed; trying again")
                delay = TICK
            if delay > 0:
                try:
                    await asyncio.wait_for(self._wake.wait(), delay)
                except TimeoutError:
                    pass

    async def tick(self) -> float:
        """Enqueue the due slots; seconds until the next slot (at most TICK)."""
        ctx = self.ctx
        records = await ctx.runner.call(ctx.store.schedules)
        self._records = records
        now = ctx.clock()
        due: list[tuple[Schedule, float]] = []
        upcoming: list[float] = []
        for rec in records:
            sched = self._parse(rec)
            if sched is None:
                continue
            due.extend((sched, slot) for slot in due_slots(sched, rec.get("last_slot"), now))
            upcoming.append(next_slot(sched, now))
        if due and ctx.leader:  # on a shared store, the leader alone fires slots
            fired = await ctx.runner.call(self._fire, due, now)
            new = [(sched, slot) for sched, slot, is_new in fired if is_new]
            for sched, slot in new:
                log.debug("schedule %s: enqueued slot %s", sched.name, slot)
                ctx.queues.changed(sched.queue)
                ctx.metrics.count(sched.queue, sched.task, SUBMITTED)
            if new:
                ctx.counters["scheduled"] += len(new)
                ctx.wake.set()
        if not upcoming:
            return TICK
        return max(0.0, min(TICK, min(upcoming) - ctx.clock()))

    def _parse(self, rec: dict[str, Any]) -> Schedule | None:
        try:
            return Schedule.from_record(rec)
        except (ValueError, TypeError) as exc:
            key = (str(rec.get("name")), str(exc))
            if key not in self._warned:
                self._warned.add(key)
                log.warning("ignoring stored schedule %r: %s", rec.get("name"), exc)
            return None

    def _fire(self, due: list[tuple[Schedule, float]], now: float) -> list[tuple[Schedule, float, bool]]:
        """In one transaction: enqueue each due slot's task and mark the slot (store thread)."""
        store = self.ctx.store
        current = {r["name"]: r for r in store.schedules()}
        out = []
        for sched, slot in due:
            rec = current.get(sched.name)
            if rec is None:
                continue  # removed meanwhile
            if rec.get("last_slot") is not None and rec["last_slot"] >= slot:
                continue  # another master (or an earlier tick) enqueued it
            fresh = self._parse(rec)
            if fresh is None or fresh.spec() != sched.spec() or fresh.created_at != sched.created_at:
                continue  # changed meanwhile: the next tick sees the new spec
            task = _task(sched, slot_task_id(sched.name, slot), {"schedule": sched.name, "slot": slot})
            (is_new,) = store.enqueue([task], now)
            store.mark_slot(sched.name, slot)
            out.append((sched, slot, is_new))
        return out

    # -- declarations from workers -------------------------------------------
    def declare(self, session: Session, entries: Any) -> None:
        """A worker's hello declared ``entries`` (wire schedules): add or update them."""
        if entries is None:
            return
        if not isinstance(entries, list):
            log.warning("worker %s: ignoring 'periodic' in its hello: not a list", session.name)
            return
        schedules = []
        for entry in entries[:MAX_DECLARED]:
            try:
                sched = Schedule.from_wire(entry, source="code")
            except (ValueError, TypeError) as exc:
                log.warning("worker %s declared a bad schedule: %s", session.name, exc)
                continue
            if sched.codec == serde.PICKLE and not self.ctx.limits.allow_pickle:
                log.warning("worker %s: ignoring schedule %s: pickle is disabled", session.name, sched.name)
                continue
            schedules.append(sched)
        if not schedules:
            return
        fut = self.ctx.runner.call(self._upsert, schedules, self.ctx.clock())
        fut.add_done_callback(self._after_upsert)

    def _upsert(self, schedules: list[Schedule], now: float) -> list[str]:
        """Add new declarations, replace changed code-declared ones; their names (store thread)."""
        store = self.ctx.store
        current = {r["name"]: r for r in store.schedules()}
        changed = []
        for sched in schedules:
            rec = current.get(sched.name)
            if rec is not None and rec.get("source") != "code":
                key = (sched.name, "cli")
                if key not in self._warned:
                    self._warned.add(key)
                    log.warning("schedule %s was added at run time: the declaration in code "
                                "is ignored (remove it to use the code's)", sched.name)
                continue
            old = self._parse(rec) if rec is not None else None
            if old is not None and old.spec() == sched.spec():
                continue
            store.save_schedule(_keeping(sched, old, rec, now))
            changed.append(sched.name)
        return changed

    def _after_upsert(self, fut: asyncio.Future[list[str]]) -> None:
        if fut.cancelled():
            return
        exc = fut.exception()
        if exc is not None:
            log.error("could not save declared schedules: %s", exc)
            return
        if fut.result():
            log.info("schedules declared in code: %s", ", ".join(fut.result()))
            self.wake()

    # -- requests --------------------------------------------------------------
    def _add(self, sched: Schedule, replace: bool, now: float) -> dict[str, Any]:
        store = self.ctx.store
        rec = next((r for r in store.schedules() if r["name"] == sched.name), None)
        if rec is not None and not replace:
            raise ValueError(f"name: a schedule named {sched.name!r} exists already "
                             "(remove it first, or replace it)")
        record = _keeping(sched, self._parse(rec) if rec is not None else None, rec, now)
        store.save_schedule(record)
        return record

    def describe(self, rec: dict[str, Any], now: float) -> dict[str, Any]:
        """A stored schedule as ``sched_list`` and ``status`` show it."""
        out = {k: rec.get(k) for k in ("name", "task", "queue", "cron", "every", "tz", "missed",
                                       "source", "created_at", "last_slot")}
        out["options"] = dict(rec.get("options") or {})
        out["args"], out["kwargs"] = _arguments(rec.get("payload") or b"", rec.get("codec"))
        sched = self._parse(rec)
        out["next_slot"] = next_slot(sched, now) if sched is not None else None
        out["last_run_now"] = self.manual.get(str(rec.get("name")))
        return out

    def summary(self) -> list[dict[str, Any]]:
        """The schedules as last read (no store call), for the status document."""
        now = self.ctx.clock()
        return [self.describe(rec, now) for rec in self._records]


    def routes(self) -> Routes:
        return {
            protocol.SCHED_ADD: self.on_sched_add,
            protocol.SCHED_LIST: self.on_sched_list,
            protocol.SCHED_DEL: self.on_sched_del,
            protocol.SCHED_RUN: self.on_sched_run,
        }

    async def on_sched_add(self, s: Session, rid: int, req: wire.SchedAdd) -> None:
        sched = Schedule.from_wire(req.schedule, source="cli")  # ValueError naming the bad field
        if sched.codec == serde.PICKLE and not self.ctx.limits.allow_pickle:
            raise SerializationError("the pickle codec is disabled on this master "
                                     "(start it with --pickle on a trusted network)")
        now = self.ctx.clock()
        record = await self.ctx.runner.call(self._add, sched, req.replace, now)
        s.reply(rid, {"schedule": self.describe(record, now)})
        self.wake()

    async def on_sched_list(self, s: Session, rid: int, req: wire.NoFields) -> None:
        records = await self.ctx.runner.call(self.ctx.store.schedules)
        now = self.ctx.clock()
        s.reply(rid, {"schedules": [self.describe(rec, now) for rec in records]})

    async def on_sched_del(self, s: Session, rid: int, req: wire.Name) -> None:
        if not await self.ctx.runner.call(self.ctx.store.remove_schedule, req.name):
            raise NotFound(f"no schedule named {req.name!r}")
        self.manual.pop(req.name, None)
        s.reply(rid, {})
        self.wake()

    async def on_sched_run(self, s: Session, rid: int, req: wire.Name) -> None:
        """Enqueue a schedule's task now, outside its timing (its slots are untouched).

        The id is the schedule's name with the current second, so a double click
        (or a resent request) within one second enqueues one task.
        """
        ctx = self.ctx
        now = ctx.clock()
        tid, is_new, queue, task_name = await ctx.runner.call(self._run_now, req.name, now)
        self.manual[req.name] = {"id": tid, "at": now}
        s.reply(rid, {"id": tid, "new": is_new})
        if is_new:
            ctx.counters["submitted"] += 1
            ctx.metrics.count(queue, task_name, SUBMITTED)
            ctx.work_added(queue)

    def _run_now(self, name: str, now: float) -> tuple[str, bool, str, str]:
        """In one transaction: read schedule ``name``, enqueue its task (store thread)."""
        rec = next((r for r in self.ctx.store.schedules() if r["name"] == name), None)
        if rec is None:
            raise NotFound(f"no schedule named {name!r}")
        sched = self._parse(rec)
        if sched is None:
            raise ValueError(f"schedule {name!r} is stored in a form this master cannot read")
        task = _task(sched, manual_task_id(name, now), {"schedule": name, "manual": True})
        (is_new,) = self.ctx.store.enqueue([task], now)
        return task.id, is_new, sched.queue, sched.task


def _task(sched: Schedule, tid: str, marks: dict[str, Any]) -> NewTask:
    """The task ``sched`` enqueues, under id ``tid``, its options marked with ``marks``."""
    options = dict(sched.options)
    priority = priority_of(options)
    options.pop("priority", None)
    options.update(marks)
    return NewTask(tid, sched.queue, sched.task, sched.payload, sched.codec, priority, 0.0, options)


def manual_task_id(name: str, now: float) -> str:
    """The id of a "run now" of schedule ``name`` at ``now``: the same within one second."""
    return hashlib.sha256(f"{name}@manual@{int(now)}".encode()).hexdigest()[:32]


def _keeping(sched: Schedule, old: Schedule | None, rec: dict[str, Any] | None, now: float) -> dict[str, Any]:
    """The record to save for ``sched``: a new timing starts afresh at ``now``; the same
    timing keeps the old creation time and last slot (no slot runs twice or is lost)."""
    if old is not None and rec is not None and old.timing() == sched.timing():
        return Schedule(**{**_fields(sched), "created_at": old.created_at}).to_record(
            last_slot=rec.get("last_slot"))
    return Schedule(**{**_fields(sched), "created_at": now}).to_record()


def _fields(sched: Schedule) -> dict[str, Any]:
    return {name: getattr(sched, name) for name in Schedule.__dataclass_fields__}


def _arguments(payload: bytes, codec: Any) -> tuple[Any, Any]:
    if codec != serde.MSGPACK:
        return f"<{codec} payload, {len(payload)} bytes>", {}
    try:
        args, kwargs = serde.decode_call(payload)
    except Exception:
        return f"<undecodable, {len(payload)} bytes>", {}
    return args, kwargs
