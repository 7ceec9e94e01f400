"""Job control on the master: retries, cancellation, dependencies, rate limits,
progress, and inspection.

Each feature is a small piece the master calls at a named point: after a
worker's report (``retry_or_bury``, ``settle_dependents``), after a lease
(``rate_limit``, ``upstream``), or as a request handler (its ``routes``).
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any

from .. import protocol, serde, wire
from ..options import dependencies_of, passes_results, rate_limit_of
from ..ratelimit import TokenBucket
from ..records import (
    FINISHED,
    LEASED,
    BulkResult,
    Lease,
    Outcome,
    Result,
    TaskCount,
    TaskFilter,
    TaskInfo,
    TaskPage,
    TaskSummary,
)
from . import attempts, maintenance
from .metrics import CANCELLED, DEAD, RETRIED
from .refusals import Refusals
from .session import Session

if TYPE_CHECKING:
    from .context import Context, Routes

#: The most ids a bulk reply lists (it always says how many in all).
MAX_REPLY_IDS = 1000

CANCELLED_ERROR = serde.packb({"type": "concurrent.futures.CancelledError", "message": "task was cancelled",
                               "traceback": ""})


def _payload_preview(payload: bytes, codec: str) -> Any:
    """A printable form of a stored value; pickled payloads are never unpickled here."""
    if codec != serde.MSGPACK:
        return f"<{codec} payload, {len(payload)} bytes>"
    try:
        value = serde.unpackb(payload)
    except Exception:
        return f"<undecodable, {len(payload)} bytes>"
    text = repr(value)
    return text if len(text) <= 2000 else text[:2000] + "..."


class JobService:
    """The master's job-scheduling features."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.dependents: set[str] = set()  # waiting tasks whose fate is not yet delivered
        self.buckets: dict[tuple[str, float, float], TokenBucket] = {}
        # Reports from sessions that do not hold the lease they name (shared with results).
        self.refusals = Refusals(ctx.counters, ctx.monotonic)

    def routes(self) -> Routes:
        return {
            protocol.CANCEL: self.on_cancel,
            protocol.RETRY: self.on_retry,
            protocol.PURGE: self.on_purge,
            protocol.INSPECT: self.on_inspect,
            protocol.TASKLIST: self.on_tasks,
            protocol.COUNT: self.on_count,
            protocol.RETRY_MATCHING: self.on_retry_matching,
            protocol.CANCEL_MATCHING: self.on_cancel_matching,
            protocol.PROGRESS: self.on_progress,
        }

    # -- retries -----------------------------------------------------------
    async def retry_or_bury(self, retrying: list[tuple[Outcome, wire.RetryDecision]], now: float) -> None:
        """Carry out the workers' retry decisions: back to the queue after a delay, or dead."""
        ctx, store = self.ctx, self.ctx.store

        def apply() -> tuple[list[tuple[str, float]], dict[str, Result]]:
            again, dead = [], []
            for o, decision in retrying:
                note = attempts.note_failure(o)
                if decision.dead:
                    if store.nack(o.id, o.token, now, error=o.payload, dead=True, note=note):
                        dead.append(o.id)
                elif store.nack(o.id, o.token, now, delay=decision.delay, error=o.payload,
                                note=note):
                    again.append((o.id, decision.delay))
            return again, store.results(dead) if dead else {}

        again, dead = await ctx.runner.call(apply)
        ctx.counters["retried"] += len(again)
        ctx.counters["dead"] += len(dead)
        self._measure(again, dead, now)
        for _, delay in again:
            if delay > 0:
                ctx.delays.due_at(now + delay)
        if again:
            ctx.work_added()
        if dead:
            ctx.subs.deliver(list(dead.values()))
            await self.settle_dependents()

    def _measure(self, again: list[tuple[str, float]], dead: dict[str, Result], now: float) -> None:
        """Metrics of failed attempts: retried ones wait again from when they are due."""
        metrics = self.ctx.metrics
        for tid, delay in again:
            metrics.finished(tid, RETRIED, now)
            metrics.due_at(tid, now + delay)
        for tid in dead:
            metrics.finished(tid, DEAD, now)

    # -- dependencies ------------------------------------------------------
    def track_dependents(self, ids: list[str]) -> None:
        """Tasks submitted with ``after``: their subscribers learn when a dependency fails them."""
        self.dependents.update(ids)

    async def settle_dependents(self) -> None:
        """Something finished: deliver the dependents it failed, dispatch those it freed."""
        if not self.dependents:
            return
        ctx = self.ctx
        found = await ctx.runner.call(ctx.store.results, list(self.dependents))
        for tid in found:
            self.dependents.discard(tid)
        if found:
            ctx.subs.deliver(list(found.values()))
        ctx.work_added()

    async def upstream(self, leases: list[Lease]) -> dict[str, list[Any]]:
        """For ``pass_results`` tasks: the results of the tasks they waited for."""
        wanted = [x for x in leases if passes_results(x.options)]
        if not wanted:
            return {}
        ids = sorted({d for x in wanted for d in dependencies_of(x.options)})
        found = await self.ctx.runner.call(self.ctx.store.results, ids)
        out: dict[str, list[Any]] = {}
        for x in wanted:
            out[x.id] = [[found[d].ok, found[d].payload, found[d].codec] if d in found else [False, b"", "msgpack"]
                         for d in dependencies_of(x.options)]
        return out

    # -- rate limits -------------------------------------------------------
    def rate_limit(self, leases: list[Lease], now: float) -> list[Lease]:
        """Keep the leases within their task's rate; defer the rest until a token is due.

        Buckets fill on the master's monotonic clock; ``now`` (wall time) dates the deferral.
        The leases kept are the ones pushed to the worker: the metrics note their queue
        wait ending and their run starting here.
        """
        if self.ctx.store.shared or not any("rate_limit" in x.options for x in leases):
            # (a shared store's buckets were taken in the leasing transaction: cluster.py)
            self.ctx.metrics.leased(leases, now)
            return leases
        mono = self.ctx.monotonic()
        keep: list[Lease] = []
        defer: list[tuple[Lease, float]] = []
        for x in leases:
            rate = rate_limit_of(x.options)
            if rate is None:
                keep.append(x)
                continue
            capacity, per = rate
            # One bucket per task name and rate: a changed rate_limit takes effect at once.
            key = (x.name or "", capacity, per)
            bucket = self.buckets.get(key)
            if bucket is None:
                bucket = self.buckets[key] = TokenBucket(capacity, per)
            wait = bucket.take(mono)
            if wait > 0:
                defer.append((x, wait))
            else:
                keep.append(x)
        if defer:
            ctx = self.ctx

            def put_back() -> None:
                for x, wait in defer:
                    ctx.store.nack(x.id, x.token, now, delay=wait)  # error=None: not a failed attempt

            ctx.runner.call(put_back)
            ctx.counters["rate_limited"] += len(defer)
            ctx.delays.due_at(now + min(w for _, w in defer))
        self.ctx.metrics.leased(keep, now)
        return keep

    # -- requests ----------------------------------------------------------
    async def on_cancel(self, s: Session, rid: int, req: wire.Ids) -> None:
        ctx, store, ids = self.ctx, self.ctx.store, req.ids
        now = ctx.clock()

        def cancel_each() -> list[tuple[tuple[str, str | None] | None, TaskInfo | None]]:
            # Each task's queue and name too, for the metrics (cancelling is rare, and per id).
            return [(store.cancel(tid, now, CANCELLED_ERROR), store.get(tid)) for tid in ids]

        outcomes = await ctx.runner.call(cancel_each)
        cancelled, finished, unknown = [], [], []
        stop: dict[str, list[str]] = {}
        for tid, (outcome, info) in zip(ids, outcomes):
            if outcome is None:
                unknown.append(tid)
                continue
            before, owner = outcome
            if before in FINISHED:
                finished.append(tid)
                continue
            cancelled.append(tid)
            if ctx.metrics.finished(tid, CANCELLED, now) is None and info is not None:
                ctx.metrics.count(info.queue, info.name, CANCELLED)  # it never ran here
            if before == LEASED and owner:
                stop.setdefault(owner, []).append(tid)
        self._stop_running(stop)
        ctx.counters["cancelled"] += len(cancelled)
        s.reply(rid, {"cancelled": cancelled, "finished": finished, "unknown": unknown})
        if cancelled:
            results = await ctx.runner.call(store.results, cancelled)
            ctx.subs.deliver(list(results.values()))
            await self.settle_dependents()

    def _stop_running(self, stop: dict[str, list[str]]) -> None:
        """Tell the workers running cancelled tasks to stop them (owner -> task ids)."""
        for owner, tids in stop.items():
            holder = self.ctx.sessions.get(owner)
            if holder is not None:
                for tid in tids:
                    holder.inflight.pop(tid, None)
                holder.push(protocol.CANCEL, {"ids": tids})

    async def on_retry(self, s: Session, rid: int, req: wire.Retry) -> None:
        ctx, store = self.ctx, self.ctx.store
        ids, states = req.ids, req.states
        now = ctx.clock()
        if not ids and req.queue is not None:
            # A whole queue: bounded batches, one runner call each (maintenance.py).
            requeued = await self._requeue_all(TaskFilter(states=tuple(states), queue=req.queue), now)
            if requeued:
                ctx.work_added()
            s.reply(rid, {"requeued": requeued, "skipped": [], "unknown": [], "reasons": {}})
            return
        requeued = await ctx.runner.call(lambda: store.requeue(now, ids=ids, queue=req.queue, states=states))
        rest = [tid for tid in ids if tid not in set(requeued)]
        infos = await ctx.runner.call(lambda: [store.get(tid) for tid in rest]) if rest else []
        skipped = [tid for tid, info in zip(rest, infos) if info is not None]
        unknown = [tid for tid, info in zip(rest, infos) if info is None]
        # Why each was skipped: in a state not asked for, or (in one that was) because it
        # waits on a dependency that did not succeed and would fail again at once.
        wanted = " or ".join(filter(None, [", ".join(states[:-1]), states[-1]])) if states else "in a state asked for"
        reasons = {info.id: (f"it is {info.state}, not {wanted}" if info.state not in states
                             else "a task it depends on did not succeed: retry that one first")
                   for info in infos if info is not None}
        if requeued:
            ctx.work_added()
        s.reply(rid, {"requeued": requeued, "skipped": skipped, "unknown": unknown, "reasons": reasons})

    async def _requeue_all(self, flt: TaskFilter, now: float) -> list[str]:
        """Requeue every finished task ``flt`` selects, batch by batch; their ids."""
        ctx, done = self.ctx, []
        cursor: str | None = None
        while True:
            got: BulkResult = await ctx.runner.call(
                functools.partial(ctx.store.requeue_matching, flt, now, limit=maintenance.BATCH, cursor=cursor))
            done.extend(got.ids)
            cursor = got.cursor
            if cursor is None:
                return done

    async def on_purge(self, s: Session, rid: int, req: wire.Purge) -> None:
        n = await maintenance.purge(self.ctx, req.queue, req.states)
        s.reply(rid, {"n": n})

    async def on_inspect(self, s: Session, rid: int, req: wire.TaskId) -> None:
        store = self.ctx.store
        info, dependents = await self.ctx.runner.call(
            lambda: (store.get(req.id), store.dependents(req.id, attempts.DEPENDENTS_SHOWN)))
        if info is None:
            s.error(rid, "NotFound", f"no task {req.id}")
            return
        task = self.describe(info)
        task["dependents"] = dependents
        s.reply(rid, {"task": task})

    async def on_tasks(self, s: Session, rid: int, req: wire.TaskList) -> None:
        store, flt = self.ctx.store, req.flt
        if req.keyset:
            page: TaskPage = await self.ctx.runner.call(functools.partial(
                store.list_page, flt, limit=req.limit, cursor=req.cursor, newest_first=req.newest_first))
            s.reply(rid, {"tasks": [self.summarize(t) for t in page.tasks], "cursor": page.cursor})
            return
        # Offset paging (peers from before cursors): one queue, one state, by offset.
        state = flt.states[0] if flt.states else None
        infos = await self.ctx.runner.call(
            lambda: store.list_tasks(queue=flt.queue, state=state, limit=req.limit, offset=req.offset))
        s.reply(rid, {"tasks": [self.describe(i, brief=True) for i in infos]})

    async def on_count(self, s: Session, rid: int, req: wire.CountTasks) -> None:
        got: TaskCount = await self.ctx.runner.call(
            functools.partial(self.ctx.store.count_tasks, req.flt, cap=req.cap))
        s.reply(rid, {"n": got.n, "exact": got.exact})

    async def on_retry_matching(self, s: Session, rid: int, req: wire.Matching) -> None:
        """Requeue every finished task the filter selects, a batch per runner call."""
        requeued = await self._requeue_all(req.flt, self.ctx.clock())
        if requeued:
            self.ctx.work_added()
        s.reply(rid, {"n": len(requeued), "ids": requeued[:MAX_REPLY_IDS]})

    async def on_cancel_matching(self, s: Session, rid: int, req: wire.Matching) -> None:
        """Cancel every unfinished task the filter selects, a batch per runner call; each
        batch's running tasks are stopped and its subscribers told before the next."""
        ctx, store, flt = self.ctx, self.ctx.store, req.flt
        cancelled: list[str] = []
        cursor: str | None = None

        def batch(after: str | None, now: float) -> tuple[BulkResult, dict[str, TaskInfo | None], dict[str, Result]]:
            got = store.cancel_matching(flt, now, CANCELLED_ERROR, limit=maintenance.BATCH, cursor=after)
            # Queue and name of the ones that never ran, for the metrics (the rest are followed).
            never_ran = {tid: store.get(tid) for tid, before, _ in got.cancelled if before != LEASED}
            return got, never_ran, store.results(got.ids) if got.ids else {}

        while True:
            now = ctx.clock()
            got, never_ran, results = await ctx.runner.call(batch, cursor, now)
            stop: dict[str, list[str]] = {}
            for tid, before, owner in got.cancelled:
                info = never_ran.get(tid)
                if ctx.metrics.finished(tid, CANCELLED, now) is None and info is not None:
                    ctx.metrics.count(info.queue, info.name, CANCELLED)
                if before == LEASED and owner:
                    stop.setdefault(owner, []).append(tid)
            self._stop_running(stop)
            ctx.counters["cancelled"] += len(got.ids)
            cancelled.extend(got.ids)
            if results:
                ctx.subs.deliver(list(results.values()))
            cursor = got.cursor
            if cursor is None:
                break
        s.reply(rid, {"n": len(cancelled), "ids": cancelled[:MAX_REPLY_IDS]})
        if cancelled:
            await self.settle_dependents()

    async def on_progress(self, s: Session, rid: int, req: wire.Progress) -> None:
        """A worker's progress report: record it and pass it to the task's subscribers."""
        ctx, report = self.ctx, req.report()
        if s.role != "worker" or s.inflight.get(req.id) != req.token:
            # Only the lease holder reports progress: no one else's reaches subscribers.
            self.refusals.refuse("progress report", 1, s.peer, "not the holder of that lease")
            return
        ctx.runner.call(ctx.store.set_progress, req.id, req.token, report, durable=False)
        for sub in ctx.subs.subscribers(req.id):
            sub.push(protocol.PROGRESS, {"id": req.id, **report})

    # -- describing tasks --------------------------------------------------
    def summarize(self, t: TaskSummary) -> dict[str, Any]:
        """A listed task (plain data): the brief form of :meth:`describe`, from a
        listing row (no progress or dependencies: those need the full record)."""
        return {
            "id": t.id, "queue": t.queue, "name": t.name, "state": t.state, "priority": t.priority,
            "attempts": t.attempts, "created_at": t.created_at, "not_before": t.not_before or None,
            "started_at": self._started_at(t.id, t.lease_owner, t.started_at), "finished_at": t.finished_at,
            "worker": self._worker(t.lease_owner), "failures": t.failures,
        }

    def _started_at(self, tid: str, owner: str | None, stored: float | None) -> float | None:
        """When a task began: the store stamps the lease's time, but a worker holding it says
        when it really started (None while it is only prefetched)."""
        holder = self.ctx.sessions.get(owner) if owner else None
        if holder is not None and holder.role == "worker" and tid in holder.inflight:
            return holder.started_at(tid)
        return stored

    def _worker(self, owner: str | None) -> dict[str, Any] | None:
        """Who holds a lease: its session's name, host and pid, or a note that it is gone."""
        if not owner:
            return None
        holder = self.ctx.sessions.get(owner)
        return ({"name": holder.name, "host": holder.host, "pid": holder.pid} if holder is not None
                else {"name": f"(gone) {owner[:8]}"})

    def describe(self, info: TaskInfo, *, brief: bool = False) -> dict[str, Any]:
        """A task as ``conveyor inspect`` shows it (plain data, safe to print)."""
        worker = self._worker(info.lease_owner)
        started_at = self._started_at(info.id, info.lease_owner, info.started_at)
        out: dict[str, Any] = {
            "id": info.id, "queue": info.queue, "name": info.name, "state": info.state,
            "priority": info.priority, "attempts": info.attempts, "created_at": info.created_at,
            "not_before": info.not_before or None, "started_at": started_at,
            "finished_at": info.finished_at, "worker": worker, "progress": info.progress,
            "after": info.after, "failures": len(info.errors),
        }
        if brief:
            return out
        out["options"] = {k: v for k, v in info.options.items() if k != "after"}
        out["errors"] = [serde.decode_error(e) for e in info.errors]
        out["attempt_log"] = [attempts.describe_attempt(a) for a in info.attempt_log]
        out.update(attempts.describe_args(info.payload, info.codec))
        if info.result is not None:
            r = info.result
            out["result"] = ({"ok": True, "value": _payload_preview(r.payload, r.codec)} if r.ok
                             else {"ok": False, "error": serde.decode_error(r.payload)})
        return out
