"""Job control on the master: retries, cancellation, dependencies, rate limits,
progress, and inspection.

Each feature is a small piece the master calls at a named point: after a
worker's report (``retry_or_bury``, ``settle_dependents``), after a lease
(``rate_limit``, ``upstream``), or as a request handler.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .. import protocol, serde, wire
from ..errors import ProtocolError
from ..ratelimit import TokenBucket, parse_rate
from ..records import DEAD, FAILED, FINISHED, LEASED, STATES, Lease, Outcome, TaskInfo

if TYPE_CHECKING:
    from .server import Master
    from .session import Session

CANCELLED_ERROR = serde.packb({"type": "concurrent.futures.CancelledError", "message": "task was cancelled",
                               "traceback": ""})
RETRYABLE_STATES = (DEAD, FAILED, "cancelled")

def _states(value: Any, default: Sequence[str]) -> list[str]:
    if value is None:
        return list(default)
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(v in FINISHED for v in value):
        raise ProtocolError(f"states must be finished states: {', '.join(FINISHED)}")
    return value

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

@dataclass
class JobService:
    """The master's job-scheduling features."""

    master: Master
    dependents: set[str] = field(default_factory=set)  # waiting tasks whose fate is not yet delivered
    buckets: dict[tuple[str, float, float], TokenBucket] = field(default_factory=dict)

    # -- retries -----------------------------------------------------------
    async def retry_or_bury(self, retrying: list[tuple[Outcome, dict]], now: float) -> None:
        """Carry out the workers' retry decisions: back to the queue after a delay, or dead."""
        m = self.master

        def apply() -> tuple[list[tuple[str, float]], dict]:
            again, dead = [], []
            for o, decision in retrying:
                if decision.get("dead"):
                    if m.store.nack(o.id, o.token, now, error=o.payload, dead=True):
                        dead.append(o.id)
                else:
                    delay = float(decision["delay"])
                    if m.store.nack(o.id, o.token, now, delay=delay, error=o.payload):
                        again.append((o.id, delay))
            return again, m.store.results(dead) if dead else {}

        again, dead = await m._runner.call(apply)
        m.counters["retried"] += len(again)
        m.counters["dead"] += len(dead)
        for _, delay in again:
            if delay > 0:
                m._due_at(now + delay)
        if again:
            m.queues.changed_unknown()
            m._wake.set()
        if dead:
            m._deliver(list(dead.values()))
            await self.settle_dependents()

    # -- dependencies ------------------------------------------------------
    def track_dependents(self, ids: list[str]) -> None:
        """Tasks submitted with ``after``: their subscribers learn when a dependency fails them."""
        self.dependents.update(ids)

    async def settle_dependents(self) -> None:
        """Something finished: deliver the dependents it failed, dispatch those it freed."""
        if not self.dependents:
            return
        m = self.master
        found = await m._runner.call(m.store.results, list(self.dependents))
        for tid in found:
            self.dependents.discard(tid)
        if found:
            m._deliver(list(found.values()))
        m.queues.changed_unknown()
        m._wake.set()

    async def upstream(self, leases: list[Lease]) -> dict[str, list]:
        """For ``pass_results`` tasks: the results of the tasks they waited for."""
        wanted = [x for x in leases if x.options.get("pass_results")]
        if not wanted:
            return {}
        ids = sorted({d for x in wanted for d in x.options.get("after", [])})
        found = await self.master._runner.call(self.master.store.results, ids)
        out = {}
        for x in wanted:
            out[x.id] = [[found[d].ok, found[d].payload, found[d].codec] if d in found else [False, b"", "msgpack"]
                         for d in x.options.get("after", [])]
        return out

    # -- rate limits -------------------------------------------------------
    def rate_limit(self, leases: list[Lease], now: float) -> list[Lease]:
        """Keep the leases within their task's rate; defer the rest until a token is due."""
        if not any("rate_limit" in x.options for x in leases):
            return leases
        keep, defer = [], []
        for x in leases:
            rate = x.options.get("rate_limit")
            if not rate:
                keep.append(x)
                continue
            try:
                capacity, per = parse_rate(rate)
            except ValueError:
                keep.append(x)
                continue
            # One bucket per task name and rate: a changed rate_limit takes effect at once.
            key = (x.name or "", capacity, per)
            bucket = self.buckets.get(key)
            if bucket is None:
                bucket = self.buckets[key] = TokenBucket(capacity, per)
            wait = bucket.take(time.monotonic())
            if wait > 0:
                defer.append((x, wait))
            else:
                keep.append(x)
        if defer:
            m = self.master

            def put_back() -> None:
                for x, wait in defer:
                    m.store.nack(x.id, x.token, now, delay=wait)  # error=None: not a failed attempt

            m._runner.call(put_back)
            m.counters["rate_limited"] += len(defer)
            m._due_at(now + min(w for _, w in defer))
        return keep

    # -- requests ----------------------------------------------------------
    async def on_cancel(self, s: Session, rid: int, f: dict) -> None:
        m = self.master
        ids = wire.id_list(f.get("ids"))
        now = m.clock()
        outcomes = await m._runner.call(lambda: [m.store.cancel(tid, now, CANCELLED_ERROR) for tid in ids])
        cancelled, finished, unknown = [], [], []
        stop: dict[str, list[str]] = {}
        for tid, outcome in zip(ids, outcomes):
            if outcome is None:
                unknown.append(tid)
                continue
            before, owner = outcome
            if before in FINISHED:
                finished.append(tid)
                continue
            cancelled.append(tid)
            if before == LEASED and owner:
                stop.setdefault(owner, []).append(tid)
        for owner, tids in stop.items():
            holder = m.sessions.get(owner)
            if holder is not None:
                for tid in tids:
                    holder.inflight.pop(tid, None)
                holder.push(protocol.CANCEL, {"ids": tids})
        m.counters["cancelled"] += len(cancelled)
        s.reply(rid, {"cancelled": cancelled, "finished": finished, "unknown": unknown})
        if cancelled:
            results = await m._runner.call(m.store.results, cancelled)
            m._deliver(list(results.values()))
            await self.settle_dependents()

    async def on_retry(self, s: Session, rid: int, f: dict) -> None:
        m = self.master
        ids = wire.id_list(f.get("ids") or [])
        queue = f.get("queue")
        if queue is not None and not isinstance(queue, str):
            raise ProtocolError("retry: queue must be a string")
        if not ids and not queue:
            raise ProtocolError("retry: give task ids or a queue")
        states = _states(f.get("states"), RETRYABLE_STATES if ids else (DEAD,))
        now = m.clock()
        requeued = await m._runner.call(lambda: m.store.requeue(now, ids=ids, queue=queue, states=states))
        rest = [tid for tid in ids if tid not in set(requeued)]
        infos = await m._runner.call(lambda: [m.store.get(tid) for tid in rest]) if rest else []
        skipped = [tid for tid, info in zip(rest, infos) if info is not None]
        unknown = [tid for tid, info in zip(rest, infos) if info is None]
        # Why each was skipped: in a state not asked for, or (in one that was) because it
        # waits on a dependency that did not succeed and would fail again at once.
        wanted = " or ".join(filter(None, [", ".join(states[:-1]), states[-1]])) if states else "in a state asked for"
        reasons = {info.id: (f"it is {info.state}, not {wanted}" if info.state not in states
                             else "a task it depends on did not succeed: retry that one first")
                   for info in infos if info is not None}
        if requeued:
            m.queues.changed_unknown()
            m._wake.set()
        s.reply(rid, {"requeued": requeued, "skipped": skipped, "unknown": unknown, "reasons": reasons})

    async def on_purge(self, s: Session, rid: int, f: dict) -> None:
        m = self.master
        queue = f.get("queue")
        if queue is not None and not isinstance(queue, str):
            raise ProtocolError("purge: queue must be a string")
        states = _states(f.get("states"), (DEAD,))
        n = await m._runner.call(lambda: m.store.purge(queue=queue, states=states))
        s.reply(rid, {"n": n})

    async def on_inspect(self, s: Session, rid: int, f: dict) -> None:
        tid = wire.id_list([f.get("id")], "id")[0]
        info = await self.master._runner.call(self.master.store.get, tid)
        if info is None:
            s.error(rid, "NotFound", f"no task {tid}")
            return
        s.reply(rid, {"task": self.describe(info)})

    async def on_tasks(self, s: Session, rid: int, f: dict) -> None:
        queue, state = f.get("queue"), f.get("state")
        limit, offset = f.get("limit", 50), f.get("offset", 0)
        if state is not None and state not in STATES:
            raise ProtocolError(f"state must be one of {', '.join(STATES)}")
        if not isinstance(limit, int) or not 1 <= limit <= 1000 or not isinstance(offset, int) or offset < 0:
            raise ProtocolError("limit must be 1..1000 and offset >= 0")
        infos = await self.master._runner.call(
            lambda: self.master.store.list_tasks(queue=queue, state=state, limit=limit, offset=offset))
        s.reply(rid, {"tasks": [self.describe(i, brief=True) for i in infos]})

    def on_progress(self, s: Session, f: dict) -> None:
        """A worker's progress report: record it and pass it to the task's subscribers."""
        tid, token = f.get("id"), f.get("token")
        if not isinstance(tid, str) or not isinstance(token, int):
            raise ProtocolError("progress: id and token required")
        report = {"done": f.get("done"), "total": f.get("total"), "message": str(f.get("message") or "")[:500]}
        if not all(v is None or (isinstance(v, (int, float)) and not isinstance(v, bool))
                   for v in (report["done"], report["total"])):
            raise ProtocolError("progress: done and total must be numbers")
        m = self.master
        m._runner.call(m.store.set_progress, tid, token, report, durable=False)
        for sub in m._subs.get(tid, ()):
            sub.push(protocol.PROGRESS, {"id": tid, **report})

    # -- describing tasks --------------------------------------------------
    def describe(self, info: TaskInfo, *, brief: bool = False) -> dict[str, Any]:
        """A task as ``conveyor inspect`` shows it (plain data, safe to print)."""
        worker = None
        if info.lease_owner:
            holder = self.master.sessions.get(info.lease_owner)
            worker = ({"name": holder.name, "host": holder.host, "pid": holder.pid} if holder is not None
                      else {"name": f"(gone) {info.lease_owner[:8]}"})
        out: dict[str, Any] = {
            "id": info.id, "queue": info.queue, "name": info.name, "state": info.state,
            "priority": info.priority, "attempts": info.attempts, "created_at": info.created_at,
            "not_before": info.not_before or None, "started_at": info.started_at,
            "finished_at": info.finished_at, "worker": worker, "progress": info.progress,
            "after": info.after, "failures": len(info.errors),
        }
        if brief:
            return out
        out["options"] = {k: v for k, v in info.options.items() if k != "after"}
        out["errors"] = [serde.decode_error(e) for e in info.errors]
        if info.result is not None:
            r = info.result
            out["result"] = ({"ok": True, "value": _payload_preview(r.payload, r.codec)} if r.ok
                             else {"ok": False, "error": serde.decode_error(r.payload)})
        return out

HANDLERS = {
    protocol.CANCEL: JobService.on_cancel,
    protocol.RETRY: JobService.on_retry,
    protocol.PURGE: JobService.on_purge,
    protocol.INSPECT: JobService.on_inspect,
    protocol.TASKLIST: JobService.on_tasks,
}
