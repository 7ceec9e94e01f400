"""Submits and results on the master: who waits for which result, and the
requests that store work and take results back (submit, subscribe, fetch,
ack, return).

A submit is answered only after its commit, and subscribes its sender to
its tasks' results (unless it says ``subscribe: false``, fire-and-forget); a worker's ack stores results (first result wins) and
pushes each to the sessions subscribed to it, straight from the ack.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .. import protocol, wire
from ..records import (
    DUPLICATE,
    FAILED,
    STALE,
    STORED,
    SUCCEEDED,
    AttemptNote,
    NewTask,
    Outcome,
    Result,
)
from ..serde import PICKLE
from . import attempts, backpressure
from .idshards import IdShards
from .refusals import CLIENT_CANNOT_SETTLE, NOT_ALLOWED, codec_refused
from .session import Session

if TYPE_CHECKING:
    from .context import Context, Routes
    from .jobs import JobService

PICKLE_DISABLED = "the pickle codec is disabled on this master (start it with --pickle on a trusted network)"


class Subscriptions:
    """Which sessions wait for which task's result, and the delivery of results to them.

    Kept per session, not per task: each session that waits for results has an
    :class:`IdShards` of the ids it waits for (8-byte fingerprints, no object per
    task, grown a sixty-fourth at a time so no submit stalls the loop), so a million
    tasks submitted with futures held cost the master tens of MB, not hundreds,
    and a submit with ``result=False`` costs nothing here.
    A result is looked up in each waiting session's set: O(sessions waiting),
    which is a handful of clients, never the number of tasks.
    """

    def __init__(self) -> None:
        self._by_session: dict[Session, IdShards] = {}

    def subscribe(self, s: Session, tid: str) -> None:
        ids = self._by_session.get(s)
        if ids is None:
            ids = self._by_session[s] = IdShards()
        ids.add(tid)

    def unsubscribe(self, s: Session, tid: str) -> None:
        ids = self._by_session.get(s)
        if ids is not None:
            ids.discard(tid)
            if not ids:
                del self._by_session[s]

    def drop(self, s: Session) -> None:
        """A session went away: it waits for nothing any more."""
        self._by_session.pop(s, None)

    def watched(self, tid: str) -> bool:
        """True if some session waits for ``tid``'s result."""
        return any(tid in ids for ids in self._by_session.values())

    def subscribers(self, tid: str) -> frozenset[Session]:
        """The sessions waiting for ``tid``'s result (progress reports go to them too)."""
        return frozenset(s for s, ids in self._by_session.items() if tid in ids)

    def waiting(self, s: Session) -> int:
        """How many results ``s`` waits for."""
        ids = self._by_session.get(s)
        return len(ids) if ids is not None else 0

    def nbytes(self) -> int:
        """The memory of every session's subscription table (for status and tests)."""
        return sum(ids.nbytes() for ids in self._by_session.values())

    def deliver(self, results: list[Result]) -> None:
        """Push each result to the sessions subscribed to it, one frame per session.

        A session whose peer does not read (``output_paused``) gets nothing pushed:
        its results stay in the store, noted by id, and are read back and pushed
        once it drained (master/backpressure.py).
        """
        if not self._by_session:
            return
        batches: dict[Session, list[list[object]]] = {}
        for r in results:
            item = None
            for sub, ids in self._by_session.items():
                if ids.discard(r.id):
                    if sub.output_paused:
                        backpressure.defer(sub, r.id)
                        batches.setdefault(sub, [])
                        continue
                    if item is None:
                        item = wire.result_to_wire(r)
                    batches.setdefault(sub, []).append(item)
        for sub, items in batches.items():
            if not self._by_session.get(sub, True):
                del self._by_session[sub]  # it waits for nothing now
            if items:
                sub.push(protocol.RESULTS, {"results": items})


class ResultService:
    """Submits, subscriptions, fetches, and workers' acks and hand-backs."""

    def __init__(self, ctx: Context, jobs: JobService) -> None:
        self.ctx = ctx
        self.jobs = jobs

    def routes(self) -> Routes:
        return {
            protocol.SUBMIT: self.on_submit,
            protocol.SUBSCRIBE: self.on_subscribe,
            protocol.FETCH: self.on_fetch,
            protocol.ACK: self.on_ack,
            protocol.RETURN: self.on_return,
        }

    async def on_submit(self, s: Session, rid: int, req: wire.Submit) -> None:
        ctx, tasks = self.ctx, req.tasks
        if not ctx.limits.allow_pickle and any(t.codec == PICKLE for t in tasks):
            s.error(rid, "SerializationError", PICKLE_DISABLED)
            return
        now = ctx.clock()
        if req.subscribe:  # fire-and-forget submits (subscribe False) cost nothing here
            for t in tasks:
                ctx.subs.subscribe(s, t.id)
        stored = ctx.runner.call(ctx.store.enqueue, tasks, now)
        early = not ctx.runner.inline
        if early:
            # The insert waits for its commit: say now that its queues may have work, so the
            # dispatch pass at the end of this read leases in that same commit (a submit and
            # the lease that hands it on cost one transaction, not two in a row).
            self._may_be_ready(tasks, now)
        try:
            new = await stored
        except Exception:
            if req.subscribe:
                for t in tasks:
                    ctx.subs.unsubscribe(s, t.id)
            raise
        s.reply(rid, {"new": sum(new)})
        ctx.counters["submitted"] += sum(new)
        ctx.metrics.submitted(tasks, new, now)
        self._made_ready(tasks, new, now, told=early)
        existing = [t.id for t, is_new in zip(tasks, new) if not is_new]
        if existing:
            await self.push_stored(existing)
        dependents = [t.id for t in tasks if t.after]
        if dependents:
            # A dependency may have failed already: then these finished as they were stored.
            self.jobs.track_dependents(dependents)
            await self.jobs.settle_dependents()

    def _may_be_ready(self, tasks: list[NewTask], now: float) -> None:
        """Tasks whose insert is queued in the runner: their queues may have ready work.

        Runner calls run in the order they are made, so every lease planned from here on
        runs after the insert, in its transaction or a later one: a lease that comes back
        short then (QueueTracker.empty) has seen these tasks, and the queue is empty indeed.
        """
        for t in tasks:
            if not t.after and t.not_before <= now:
                self.ctx.queues.changed(t.queue)
        self.ctx.wake.set()

    def _made_ready(self, tasks: list[NewTask], new: list[bool], now: float, *,
                    told: bool = False) -> None:
        """New tasks are ready now, or at their ``not_before``: tell dispatch, or the delay timer.

        ``told``: :meth:`_may_be_ready` said so before the insert (its queues need no
        second pass: one leasing nothing would cost a transaction for nothing)."""
        woken = False
        for t, is_new in zip(tasks, new):
            if is_new:
                if t.not_before > now:
                    self.ctx.delays.due_at(t.not_before)
                elif t.after or not told:
                    self.ctx.queues.changed(t.queue)
                    woken = True
        if woken:
            self.ctx.wake.set()

    async def push_stored(self, ids: list[str]) -> None:
        """Push the stored results among ``ids`` to their subscribers."""
        found = await self.ctx.runner.call(self.ctx.store.results, ids)
        if found:
            self.ctx.subs.deliver(list(found.values()))

    async def on_subscribe(self, s: Session, rid: int, req: wire.Ids) -> None:
        for tid in req.ids:
            self.ctx.subs.subscribe(s, tid)
        await self.push_stored(req.ids)
        s.reply(rid, {})

    async def on_fetch(self, s: Session, rid: int, req: wire.Ids) -> None:
        store, runner = self.ctx.store, self.ctx.runner
        found = await runner.call(store.results, req.ids)
        rest = [tid for tid in req.ids if tid not in found]
        infos = await runner.call(lambda: [store.get(tid) for tid in rest]) if rest else []
        pending = [tid for tid, info in zip(rest, infos) if info is not None]
        unknown = [tid for tid, info in zip(rest, infos) if info is None]
        s.reply(rid, {"results": [wire.result_to_wire(r) for r in found.values()],
                      "pending": pending, "unknown": unknown})

    async def on_ack(self, s: Session, rid: int, req: wire.Ack) -> None:
        """A worker's results (final, or a retry decision), with the credit it grants anew."""
        ctx, refusals = self.ctx, self.jobs.refusals
        if s.role != "worker":
            refusals.refuse("ack(s) from a client session", len(req.outcomes), s.peer, "clients never settle tasks")
            s.error(rid, NOT_ALLOWED, CLIENT_CANNOT_SETTLE)
            return
        if req.credit > 0:
            s.credit += req.credit
            ctx.wake.set()
        held: list[tuple[Outcome, wire.RetryDecision | None]] = []
        foreign: list[str] = []
        for o, retry in req.outcomes:
            if s.inflight.get(o.id) != o.token:
                foreign.append(o.id)  # not a lease this session holds (or adopted): not stored
                continue
            attempts.note_outcome(s, o)  # before the lease leaves inflight (its start goes with it)
            s.inflight.pop(o.id, None)
            refused = codec_refused(o, ctx.limits.allow_pickle)
            held.append((o, retry) if refused is None else (refused, None))
            if refused is not None:
                refusals.refuse("result(s) in a codec this master does not allow", 1, s.peer,
                                f"task {o.id}: codec {o.codec}; the task fails instead")
        if foreign:
            await self._not_held(s, foreign)
        outcomes = [o for o, retry in held if retry is None]
        retrying = [(o, retry) for o, retry in held if retry is not None]
        now = ctx.clock()
        try:
            statuses = await ctx.runner.call(ctx.store.complete, outcomes, now) if outcomes else []
        except Exception:
            self._still_held(s, [o for o, _ in held])
            raise
        if retrying:
            try:
                await self.jobs.retry_or_bury(retrying, now)
            except Exception:
                self._still_held(s, [o for o, _ in retrying])
                raise
        stored = [o for o, st in zip(outcomes, statuses) if st == STORED]
        self._count(statuses, len(stored))
        self._measure(s, stored, sum(1 for _, retry in retrying if retry.dead), now)
        s.reply(rid, {})
        if stored:
            self._deliver_outcomes(stored)
            await self.jobs.settle_dependents()

    @staticmethod
    def _still_held(s: Session, outcomes: list[Outcome]) -> None:
        """Give back to ``s`` the leases of reports the store failed to settle (nothing of
        them committed, e.g. the database connection was lost): the report, tried again,
        settles them instead of being refused as foreign and left to expire and re-run."""
        if not s.closed:
            for o in outcomes:
                s.inflight.setdefault(o.id, o.token)

    async def _not_held(self, s: Session, ids: list[str]) -> None:
        """Reports a worker sent for leases it does not hold: a late result of a task that
        has one already (a resent ack, a worker back from a stall) is a duplicate, as it
        always was; any other is refused (counted, logged rate-limited)."""
        found = await self.ctx.runner.call(self.ctx.store.results, ids)
        if found:
            self._count([DUPLICATE] * len(found), 0)
        refused = len(ids) - len(found)
        if refused:
            self.jobs.refusals.refuse("report(s) for leases the session does not hold", refused,
                                      s.peer, "not stored")

    def _count(self, statuses: list[str], stored: int) -> None:
        counters = self.ctx.counters
        counters["duplicates"] += statuses.count(DUPLICATE)
        self.ctx.metrics.duplicates += statuses.count(DUPLICATE)
        counters["stale"] += statuses.count(STALE)
        counters["completed"] += stored
        self.ctx.completed.add(stored)

    def _measure(self, s: Session, stored: list[Outcome], dead: int, now: float) -> None:
        """The metrics of results just stored: outcome counters, run times, and the worker's
        tally (its successes, and its final failures: failed, or ``dead`` after its retries)."""
        metrics = self.ctx.metrics
        done = 0
        for o in stored:
            metrics.finished(o.id, SUCCEEDED if o.ok else FAILED, now)
            done += o.ok
        self.ctx.roster.settled(s.id, done, len(stored) - done + dead)

    def _deliver_outcomes(self, stored: list[Outcome]) -> None:
        """Results go to their subscribers straight from the worker's message."""
        now = self.ctx.clock()
        results = [Result(o.id, o.ok, o.payload, o.codec, "succeeded" if o.ok else "failed", now)
                   for o in stored if self.ctx.subs.watched(o.id)]
        if results:
            self.ctx.subs.deliver(results)

    async def on_return(self, s: Session, rid: int, req: wire.LeasePairs) -> None:
        """Prefetched tasks a worker hands back unrun."""
        pairs = [(tid, token) for tid, token in req.pairs if s.inflight.get(tid) == token]
        if s.role != "worker" or len(pairs) < len(req.pairs):
            self.jobs.refusals.refuse("hand-back(s) of leases the session does not hold",
                                      len(req.pairs) - len(pairs), s.peer, "ignored")
        for tid, _ in pairs:
            s.inflight.pop(tid, None)
        self.ctx.metrics.forget(tid for tid, _ in pairs)
        n = await self.ctx.runner.call(lambda: self.ctx.store.release(
            pairs, self.ctx.clock(), note=AttemptNote(attempts.worker_of(s)))) if pairs else 0
        s.reply(rid, {"n": n})
        if n:
            self.ctx.work_added()
