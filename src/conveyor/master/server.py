"""The master: an asyncio server that turns protocol messages into store calls.

It authenticates every connection, accepts submits (answered only after
their commit), pushes leased tasks to workers within the credit each
granted, takes results back, delivers them to the clients waiting, and
hands back the leases of workers that disconnect or stop heartbeating. It
keeps no state a restart on the same store would need: sessions,
subscriptions and credit are rebuilt when connections come back.
"""

from __future__ import annotations

import asyncio
import logging
import os
import ssl
import time
import uuid
from collections import defaultdict
from collections.abc import Callable
from typing import Any, cast

from .. import __version__, loops, protocol, wire
from ..errors import ProtocolError
from ..serde import PICKLE
from ..store import DUPLICATE, STALE, STORED, Store
from . import eager
from .dispatch import QueueTracker
from .jobs import HANDLERS as JOB_HANDLERS
from .jobs import JobService
from .queues import HANDLERS as QUEUE_HANDLERS
from .queues import QueueService
from .rates import RateMeter
from .scheduler import HANDLERS as SCHEDULE_HANDLERS  # periodic schedules
from .scheduler import Scheduler
from .session import Session, WriteHold

log = logging.getLogger("conveyor.master")

DEFAULT_PORT = 7700


class Master:
    """Serves a store's queues over TCP (or TLS) behind an authkey.

    ``clock`` is the wall clock the store's times are read from (injectable
    for tests); heartbeats use the monotonic clock.
    """

    def __init__(
        self,
        store: Store,
        *,
        authkey: bytes | None,
        host: str = "127.0.0.1",
        port: int = DEFAULT_PORT,
        ssl_context: ssl.SSLContext | None = None,
        lease_for: float = 60.0,
        heartbeat_timeout: float = 15.0,
        handshake_timeout: float = 10.0,
        result_ttl: float = 24 * 3600.0,
        allow_pickle: bool = False,
        max_frame_size: int = protocol.DEFAULT_MAX_FRAME,
        clock: Callable[[], float] = time.time,
        queues: dict[str, int] | None = None,
    ) -> None:
        self.store = store
        self.authkey = authkey or b""
        self.host = host
        self.port = port
        self.ssl_context = ssl_context
        self.lease_for = lease_for
        self.heartbeat_timeout = heartbeat_timeout
        self.handshake_timeout = handshake_timeout
        self.result_ttl = result_ttl
        self.allow_pickle = allow_pickle
        self.max_frame_size = max_frame_size
        self.clock = clock
        self.started_at = clock()
        self.sessions: dict[str, Session] = {}
        self.counters: dict[str, int] = defaultdict(int)
        self.completed = RateMeter()
        self.queues = QueueTracker()
        self.queue_service = QueueService(self, declared=dict(queues or {}))
        self.jobs = JobService(self)
        self.scheduler = Scheduler(self)  # periodic schedules (master/scheduler.py)
        self._subs: dict[str, set[Session]] = {}
        self._server: asyncio.base_events.Server | None = None
        self._runner: Any = None
        self._tasks: list[asyncio.Task] = []
        self._conns: set[_Conn] = set()  # open connections, authenticated or not
        self._hold = WriteHold()  # replies and pushes wait for the commit of the read they answer
        self._wake = _Wake(self)  # a dispatch pass is due
        self._dispatching = False  # a dispatch pass is running (maybe waiting on the store)
        self._dispatch_task: asyncio.Task | None = None
        self._rotate = 0
        self._stopping = False
        self._timer_wake = asyncio.Event()
        self._next_due: float | None = None
        self._closed = asyncio.Event()

    # -- life cycle --------------------------------------------------------
    async def start(self) -> None:
        """Recover the store (void every lease), bind, and start the background loops."""
        from .runner import StoreRunner

        loop = asyncio.get_running_loop()
        self._runner = StoreRunner(self.store, loop, inline=self.store.cheap_commits)
        released = await self._runner.call(self.store.release_all, self.clock())
        if released:
            log.info("recovered %d task(s) that were leased when the master stopped", released)
        self._next_due = await self._runner.call(self.store.next_due)
        # asyncio sets TCP_NODELAY on every TCP transport itself.
        self._server = await loop.create_server(
            lambda: _Conn(self), self.host, self.port, ssl=self.ssl_context, reuse_address=True,
        )
        sock = self._server.sockets[0]
        self.port = sock.getsockname()[1]
        for coro in (self._reaper(), self._timer(), self.scheduler.run()):
            self._tasks.append(asyncio.create_task(coro))
        log.info("master listening on %s:%d (store: %s)", self.host, self.port, type(self.store).__name__)

    @property
    def address(self) -> tuple[str, int]:
        """The bound (host, port)."""
        return self.host, self.port

    async def serve_forever(self) -> None:
        """Run until :meth:`close` is called."""
        await self._closed.wait()

    async def close(self) -> None:
        """Stop accepting, close every connection, let pending store calls commit."""
        if self._stopping:  # closed, or being closed by another caller
            await self._closed.wait()
            return
        self._stopping = True
        try:
            if self._server is not None:
                self._server.close()
            for s in list(self.sessions.values()):
                s.close()
            for c in list(self._conns):
                c.close()
            if self._dispatch_task is not None:
                self._tasks.append(self._dispatch_task)
            for t in self._tasks:
                t.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            if self._runner is not None:
                self._runner.close()
        finally:
            self._closed.set()

    # -- connections -------------------------------------------------------
    def _drop(self, s: Session) -> None:
        """Forget a session; hand its leases back and end its subscriptions."""
        s.close()
        if self.sessions.pop(s.id, None) is None:
            return
        for tid in s.subscriptions:
            subs = self._subs.get(tid)
            if subs is not None:
                subs.discard(s)
                if not subs:
                    del self._subs[tid]
        s.subscriptions.clear()
        self.queue_service.drop(s)
        if self._stopping:
            return  # the next start voids every lease anyway
        if s.role == "worker" or s.holds_items:
            if s.role == "worker":
                log.info("worker %s (%s) disconnected with %d task(s) in flight",
                         s.name, s.peer, len(s.inflight))
            fut = self._runner.call(self.store.release_owner, s.id, self.clock())
            fut.add_done_callback(self._after_release)
            s.inflight.clear()

    def _after_release(self, fut: asyncio.Future) -> None:
        if not fut.cancelled() and fut.exception() is None and fut.result():
            self.queues.changed_unknown()
            self._wake.set()

    # -- messages ----------------------------------------------------------
    def _on_data(self, s: Session, events: list) -> None:
        """Handle the messages of one read, replies coalesced; then dispatch what they made ready.

        With cheap commits the store calls of the whole read (the submits and the
        leases that push them on, say) share one commit, and every reply and push
        waits for it. Otherwise (an fsync per commit) the runner groups the calls
        of a loop turn into one commit, and the replies to this session leave
        together at the end of the read.
        """
        one_commit = self._runner.inline
        if one_commit:
            self._hold.begin()
            self._runner.begin()
        else:
            s.cork()
        self._wake.held = True
        try:
            self._on_events(s, events)
        finally:
            self._wake.held = False
            if self._wake.due:
                # Lease and push now, in this loop turn: a worker waiting with credit or a
                # parked get learns of the new work without waiting for another turn.
                self._dispatch_now()
            if not one_commit:
                s.uncork()
            elif self._runner.end():
                self._hold.release(last=s)
            else:
                self._commit_failed()

    def _commit_failed(self) -> None:
        """The commit of a read's store calls failed: none of it happened. Its replies and
        pushes are dropped and their sessions closed; clients resend on reconnect."""
        log.error("a commit failed: closing the connections it would have answered")
        for held in self._hold.drop():
            self._drop(held)

    def _on_events(self, s: Session, events: list) -> None:
        for ev in events:
            if not isinstance(ev, protocol.Message):
                continue
            if s.role is None and ev.op != protocol.HELLO:
                raise ProtocolError("the first message must be hello")
            handler = _HANDLERS.get(ev.op)
            if handler is not None:
                coro = handler(self, s, ev.rid, ev.fields)
            elif ev.op in QUEUE_HANDLERS:
                coro = QUEUE_HANDLERS[ev.op](self.queue_service, s, ev.rid, ev.fields)
            elif ev.op in JOB_HANDLERS:
                coro = JOB_HANDLERS[ev.op](self.jobs, s, ev.rid, ev.fields)
            else:
                s.error(ev.rid, "ProtocolError", f"unknown op {ev.op!r}")
                continue
            # Handlers run now, in arrival order, up to their first await, and make their
            # first store call before it, so one connection's requests reach the store in
            # order. Only a handler that has to wait (for a commit) becomes a Task.
            try:
                task = eager.start(coro)
            except asyncio.CancelledError:
                continue
            except Exception as exc:
                self._handler_failed(s, ev.rid, exc)
                continue
            if task is not None:
                task.add_done_callback(lambda t, s=s, rid=ev.rid: self._handler_done(t, s, rid))

    def _handler_done(self, task: asyncio.Task, s: Session, rid: int) -> None:
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            self._handler_failed(s, rid, exc)

    def _handler_failed(self, s: Session, rid: int, exc: BaseException) -> None:
        if isinstance(exc, ProtocolError):
            log.warning("bad request from %s: %s", s.peer, exc)
            s.error(rid, "ProtocolError", str(exc))
        else:
            log.error("request from %s failed", s.peer, exc_info=exc)
            s.error(rid, type(exc).__name__, str(exc))

    async def _on_hello(self, s: Session, rid: int, f: dict) -> None:
        role = f.get("role")
        if role not in ("client", "worker"):
            raise ProtocolError("hello: role must be 'client' or 'worker'")
        s.role = role
        s.name = str(f.get("name") or "")[:200]
        s.host = str(f.get("host") or "")[:200]
        s.pid = f.get("pid") if isinstance(f.get("pid"), int) else None
        if role == "worker":
            queues = f.get("queues")
            if not isinstance(queues, list) or not queues or not all(isinstance(q, str) and q for q in queues):
                raise ProtocolError("hello: a worker must name its queues")
            s.queues = queues
            weights = f.get("weights")
            if weights is not None:
                if (not isinstance(weights, list) or len(weights) != len(queues)
                        or not all(isinstance(w, int) and w > 0 for w in weights)):
                    raise ProtocolError("hello: weights must be positive integers, one per queue")
                s.weights = weights
            s.concurrency = int(f.get("concurrency") or 0)
            s.codecs = [c for c in f.get("codecs", []) if isinstance(c, str)]
            self.scheduler.declare(s, f.get("periodic"))  # @conveyor.periodic in its modules
            log.info("worker %s connected from %s (queues %s, concurrency %d)",
                     s.name, s.peer, ",".join(queues), s.concurrency)
        s.reply(rid, {"session": s.id, "version": __version__,
                      "heartbeat": self.heartbeat_timeout, "pickle": self.allow_pickle})

    async def _on_submit(self, s: Session, rid: int, f: dict) -> None:
        items = f.get("tasks")
        if not isinstance(items, list) or not items:
            raise ProtocolError("submit: tasks must be a non-empty list")
        tasks = [wire.task_from_wire(item) for item in items]
        if not self.allow_pickle and any(t.codec == PICKLE for t in tasks):
            s.error(rid, "SerializationError",
                    "the pickle codec is disabled on this master (start it with --pickle on a trusted network)")
            return
        now = self.clock()
        for t in tasks:
            self._subscribe(s, t.id)
        try:
            new = await self._runner.call(self.store.enqueue, tasks, now)
        except Exception:
            for t in tasks:
                self._unsubscribe(s, t.id)
            raise
        s.reply(rid, {"new": sum(new)})
        self.counters["submitted"] += sum(new)
        dependents = [t.id for t in tasks if t.after]
        for t, is_new in zip(tasks, new):
            if is_new:
                if t.not_before > now:
                    self._due_at(t.not_before)
                else:
                    self.queues.changed(t.queue)
        self._wake.set()
        existing = [t.id for t, is_new in zip(tasks, new) if not is_new]
        if existing:
            await self._push_stored(existing)
        if dependents:
            # A dependency may have failed already: then these finished as they were stored.
            self.jobs.track_dependents(dependents)
            await self.jobs.settle_dependents()

    async def _push_stored(self, ids: list[str]) -> None:
        found = await self._runner.call(self.store.results, ids)
        if found:
            self._deliver(list(found.values()))

    async def _on_subscribe(self, s: Session, rid: int, f: dict) -> None:
        ids = wire.id_list(f.get("ids"))
        for tid in ids:
            self._subscribe(s, tid)
        await self._push_stored(ids)
        s.reply(rid, {})

    async def _on_fetch(self, s: Session, rid: int, f: dict) -> None:
        ids = wire.id_list(f.get("ids"))
        found = await self._runner.call(self.store.results, ids)
        rest = [tid for tid in ids if tid not in found]
        infos = await self._runner.call(lambda: [self.store.get(tid) for tid in rest]) if rest else []
        pending = [tid for tid, info in zip(rest, infos) if info is not None]
        unknown = [tid for tid, info in zip(rest, infos) if info is None]
        s.reply(rid, {"results": [wire.result_to_wire(r) for r in found.values()],
                      "pending": pending, "unknown": unknown})

    async def _on_ack(self, s: Session, rid: int, f: dict) -> None:
        items = f.get("results")
        if not isinstance(items, list):
            raise ProtocolError("ack: results must be a list")
        pairs = [wire.outcome_from_wire(item) for item in items]
        credit = f.get("credit", 0)
        if isinstance(credit, int) and credit > 0:
            s.credit += credit
            self._wake.set()
        for o, _ in pairs:
            s.inflight.pop(o.id, None)
        outcomes = [o for o, retry in pairs if retry is None]
        retrying = [(o, retry) for o, retry in pairs if retry is not None]
        now = self.clock()
        statuses = await self._runner.call(self.store.complete, outcomes, now) if outcomes else []
        if retrying:
            await self.jobs.retry_or_bury(retrying, now)
        stored = [o.id for o, st in zip(outcomes, statuses) if st == STORED]
        self.counters["duplicates"] += statuses.count(DUPLICATE)
        self.counters["stale"] += statuses.count(STALE)
        self.counters["completed"] += len(stored)
        self.completed.add(len(stored))
        s.reply(rid, {})
        if stored:
            # Results go to their subscribers straight from the worker's message.
            by_id = {o.id: o for o in outcomes}
            now = self.clock()
            results = []
            for tid in stored:
                if tid in self._subs:
                    o = by_id[tid]
                    results.append(wire.Result(tid, o.ok, o.payload, o.codec,
                                               "succeeded" if o.ok else "failed", now))
            if results:
                self._deliver(results)
        if stored:
            await self.jobs.settle_dependents()

    async def _on_credit(self, s: Session, rid: int, f: dict) -> None:
        n = f.get("n")
        if not isinstance(n, int) or n < 0:
            raise ProtocolError("credit: n must be a non-negative integer")
        s.credit += n
        self._wake.set()

    async def _on_return(self, s: Session, rid: int, f: dict) -> None:
        items = wire.lease_pairs(f.get("leases"), "return: leases")
        for tid, _ in items:
            s.inflight.pop(tid, None)
        n = await self._runner.call(self.store.release, [tuple(i) for i in items], self.clock())
        s.reply(rid, {"n": n})
        if n:
            self.queues.changed_unknown()
            self._wake.set()

    async def _on_progress(self, s: Session, rid: int, f: dict) -> None:
        self.jobs.on_progress(s, f)

    async def _on_ping(self, s: Session, rid: int, f: dict) -> None:
        # Answered even as a push (rid 0): the answer is the peer's proof we are alive.
        s.push(protocol.OK, {}) if rid == 0 else s.reply(rid, {})

    async def _on_status(self, s: Session, rid: int, f: dict) -> None:
        stats = await self._runner.call(self.store.stats)
        s.reply(rid, self.status(stats))

    def status(self, stats: dict) -> dict:
        """The status document ``conveyor status`` prints."""
        workers = [
            {"name": w.name, "host": w.host, "pid": w.pid, "peer": w.peer, "queues": w.queues,
             "concurrency": w.concurrency, "inflight": len(w.inflight),
             "idle_for": round(time.monotonic() - w.last_seen, 1)}
            for w in self.sessions.values() if w.role == "worker"
        ]
        return {
            "version": __version__,
            "pid": os.getpid(),
            "uptime": round(self.clock() - self.started_at, 1),
            "store": type(self.store).__name__,
            "loop": loops.name(),
            "queues": {q: st.as_dict() for q, st in sorted(stats.items())},
            "workers": workers,
            "clients": sum(1 for c in self.sessions.values() if c.role == "client"),
            "counters": dict(self.counters),
            "rates": {"completed_10s": self.completed.rate(10), "completed_60s": self.completed.rate(60)},
            "schedules": self.scheduler.summary(),
        }

    # -- results -----------------------------------------------------------
    def _subscribe(self, s: Session, tid: str) -> None:
        self._subs.setdefault(tid, set()).add(s)
        s.subscriptions.add(tid)

    def _unsubscribe(self, s: Session, tid: str) -> None:
        subs = self._subs.get(tid)
        if subs is not None:
            subs.discard(s)
            if not subs:
                del self._subs[tid]
        s.subscriptions.discard(tid)

    def _deliver(self, results: list) -> None:
        """Push each result to the sessions subscribed to it, one frame per session."""
        batches: dict[Session, list] = {}
        for r in results:
            subs = self._subs.pop(r.id, None)
            if not subs:
                continue
            item = wire.result_to_wire(r)
            for sub in subs:
                sub.subscriptions.discard(r.id)
                batches.setdefault(sub, []).append(item)
        for sub, items in batches.items():
            sub.push(protocol.RESULTS, {"results": items})

    # -- background loops --------------------------------------------------
    def _dispatch_now(self) -> None:
        """Start dispatch passes now if one is due and none is running."""
        if self._dispatching or not self._wake.due or self._stopping:
            return
        try:
            task = eager.start(self._dispatch())
        except Exception:
            log.exception("dispatch failed")
            return
        if task is not None:
            self._dispatch_task = task
            task.add_done_callback(self._dispatch_done)

    def _dispatch_done(self, task: asyncio.Task) -> None:
        self._dispatch_task = None
        if not task.cancelled() and task.exception() is not None:
            log.error("dispatch failed", exc_info=task.exception())

    async def _dispatch(self) -> None:
        """Dispatch passes while one is due: one runs at a time, a wake meanwhile makes another."""
        self._dispatching = True
        try:
            while self._wake.due:
                self._wake.due = False
                await self._dispatch_pass()
        finally:
            self._dispatching = False

    async def _dispatch_pass(self) -> None:
        """Lease ready tasks to workers with credit and items to parked gets, at most their credit."""
        workers = [w for w in self.sessions.values() if w.role == "worker" and not w.closed and w.credit > 0]
        plan: list = self.queue_service.plan()
        if workers:
            # Rotate who is served first, so no worker always gets the head of the queue.
            self._rotate = rotate = (self._rotate + 1) % len(workers)
            workers = workers[rotate:] + workers[:rotate]
        for w in workers:
            q = (self.queues.pick_weighted(w.queues, w.weights) if w.weights
                 else self.queues.first_nonempty(w.queues))
            if q is not None:
                plan.append((w, q, w.credit))
        if not plan:
            return
        marks = [self.queues.mark(q) for _, q, _ in plan]
        now = self.clock()
        # Leases need no fsync: every master start voids them anyway. A queue get
        # that acknowledges on get does change durable state, though.
        durable = any(not isinstance(w, Session) and w.ack for w, _, _ in plan)
        leases = await self._runner.call(self._lease_plan, plan, now, durable=durable)
        progress = False
        for (w, q, n), mark, got in zip(plan, marks, leases):
            if len(got) < n:
                self.queues.empty(q, mark)
            if not got:
                continue
            progress = True
            self.queue_service.space_freed(q)
            if not isinstance(w, Session):  # a parked queue get
                self.queue_service.deliver(w, got)
                continue
            if w.closed or self.sessions.get(w.id) is not w:
                fut = self._runner.call(self.store.release, [(g.id, g.token) for g in got], now)
                fut.add_done_callback(self._after_release)
                continue
            got = self.jobs.rate_limit(got, now)
            if not got:
                continue
            w.credit -= len(got)
            for g in got:
                w.inflight[g.id] = g.token
            upstream = await self.jobs.upstream(got)
            w.push(protocol.TASKS, {"tasks": [wire.lease_to_wire(g, upstream.get(g.id)) for g in got]})
        if progress or any(len(got) < n for (_, _, n), got in zip(plan, leases)):
            self._wake.set()

    def _extend(self, owners: list[str], now: float) -> None:
        for owner in owners:
            self.store.extend_owner(owner, now, self.lease_for)

    def _lease_plan(self, plan: list, now: float) -> list:
        return [self.store.lease(q, n, w.id, now, self.lease_for) if isinstance(w, Session)
                else self.queue_service.lease_for(w, now) for w, q, n in plan]

    async def _reaper(self) -> None:
        """Close silent workers, extend live leases, expire lost ones, purge old results."""
        last_extend = last_expire = last_purge = time.monotonic()
        while True:
            await asyncio.sleep(min(1.0, self.heartbeat_timeout / 4, self.lease_for / 4))
            mono = time.monotonic()
            for w in list(self.sessions.values()):
                # A session holding leases (a worker, or a client holding queue items) that
                # goes silent past its heartbeat is presumed dead: its leases go back.
                if (w.role == "worker" or w.holds_items) and mono - w.last_seen > self.heartbeat_timeout:
                    log.warning("%s %s (%s) missed its heartbeat for %.1fs: closing it",
                                w.role, w.name, w.peer, mono - w.last_seen)
                    self._drop(w)
            if mono - last_extend >= self.lease_for / 4:
                last_extend = mono
                owners = [w.id for w in self.sessions.values() if w.inflight]
                if owners:
                    now = self.clock()
                    await self._runner.call(self._extend, owners, now, durable=False)
            if self.queue_service.joiners:
                self.queue_service.joiners_may_be_done()
            if mono - last_expire >= 5.0:
                last_expire = mono
                expired = await self._runner.call(self.store.expire_leases, self.clock())
                if expired:
                    log.warning("%d lease(s) expired and went back to their queues", len(expired))
                    self.queues.changed_unknown()
                    self._wake.set()
            if mono - last_purge >= min(60.0, max(1.0, self.result_ttl / 4)):
                last_purge = mono
                n = await self._runner.call(self.store.purge_finished, self.clock() - self.result_ttl)
                if n:
                    log.info("purged %d finished task(s) older than the result TTL", n)

    def _due_at(self, when: float) -> None:
        if self._next_due is None or when < self._next_due:
            self._next_due = when
            self._timer_wake.set()

    async def _timer(self) -> None:
        """Make delayed tasks ready when their time comes."""
        while True:
            self._timer_wake.clear()
            if self._next_due is None:
                await self._timer_wake.wait()
                continue
            delay = self._next_due - self.clock()
            if delay > 0:
                try:
                    await asyncio.wait_for(self._timer_wake.wait(), min(delay, 1.0))
                except TimeoutError:
                    pass
                continue
            now = self.clock()
            queues = await self._runner.call(self.store.promote_due, now)
            self._next_due = await self._runner.call(self.store.next_due)
            for q in queues:
                self.queues.changed(q)
            if queues:
                self._wake.set()


_HANDLERS = {
    protocol.HELLO: Master._on_hello,
    protocol.SUBMIT: Master._on_submit,
    protocol.SUBSCRIBE: Master._on_subscribe,
    protocol.FETCH: Master._on_fetch,
    protocol.ACK: Master._on_ack,
    protocol.CREDIT: Master._on_credit,
    protocol.RETURN: Master._on_return,
    protocol.PING: Master._on_ping,
    protocol.PROGRESS: Master._on_progress,
    protocol.STATUS: Master._on_status,
}
_HANDLERS.update(SCHEDULE_HANDLERS)  # sched_add, sched_list, sched_del


class _Wake:
    """Says a dispatch pass is due; ``set()`` is what the code that adds work calls.

    While the master handles the messages of one read (``held``), the pass waits for
    the end of them, so a burst of submits makes one pass, in the same loop turn.
    Elsewhere it runs in a callback soon after, unless a pass is running: that one
    goes round again.
    """

    __slots__ = ("_master", "due", "held", "_scheduled")

    def __init__(self, master: Master) -> None:
        self._master = master
        self.due = False
        self.held = False
        self._scheduled = False

    def set(self) -> None:
        """A dispatch pass is due."""
        self.due = True
        if not (self.held or self._scheduled or self._master._dispatching):
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._fire)

    def _fire(self) -> None:
        self._scheduled = False
        self._master._dispatch_now()


class _Conn(asyncio.Protocol):
    """One connection to the master: the handshake, then its session's messages.

    Received bytes are handled in ``data_received`` itself, with no reader task
    in between: decoding, the handlers' first steps, and (with cheap commits)
    the store calls and the replies all happen in the loop turn the bytes came in.
    """

    def __init__(self, master: Master) -> None:
        self.master = master
        self.conn = protocol.Connection("server", master.authkey, max_frame_size=master.max_frame_size)
        self.transport: asyncio.Transport | None = None
        self.session: Session | None = None
        self.peer = "?"
        self._timer: asyncio.TimerHandle | None = None
        self._closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.peer = _peer(transport)
        m = self.master
        if m._stopping:
            self.close()
            return
        m._conns.add(self)
        self._timer = asyncio.get_running_loop().call_later(m.handshake_timeout, self._handshake_timed_out)

    def _handshake_timed_out(self) -> None:
        self._timer = None
        if self.session is None and not self._closed:
            log.warning("closing %s: handshake not finished within %.0fs", self.peer, self.master.handshake_timeout)
            self.close()

    def data_received(self, data: bytes) -> None:
        if self._closed:
            return
        s = self.session
        try:
            if s is not None:
                if s.closed:  # closed by the master (a missed heartbeat, a failed write)
                    return
                s.last_seen = time.monotonic()
                self.master._on_data(s, self.conn.receive_data(data))
                return
            events = self._handshake(data)
            if events is not None and self.session is not None:
                self.master._on_data(self.session, events)
        except ProtocolError as exc:
            log.warning("closing %s: %s", self.peer, exc)
            self.close()
        except (ConnectionError, OSError, ssl.SSLError):
            self.close()

    def _handshake(self, data: bytes) -> list | None:
        """Feed handshake bytes; the events that came after it once it succeeded, else None."""
        assert self.transport is not None  # set by connection_made
        events = self.conn.receive_data(data)
        out = self.conn.data_to_send()
        if out:
            self.transport.write(out)
        for i, ev in enumerate(events):
            if isinstance(ev, protocol.HandshakeFailed):
                log.warning("refused %s: %s", self.peer, ev.reason)
                self.close()  # the transport sends the verdict before it closes
                return None
            if isinstance(ev, protocol.HandshakeDone):
                if self._timer is not None:
                    self._timer.cancel()
                    self._timer = None
                self.session = s = Session(uuid.uuid4().hex, self.peer, self.transport, self.conn,
                                           hold=self.master._hold)
                self.master.sessions[s.id] = s
                return events[i + 1:]
        return None

    def close(self) -> None:
        """Close the connection (its session too, if it has one)."""
        if self._closed:
            return
        self._closed = True
        if self.session is not None:
            self.session.close()
        elif self.transport is not None:
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        m = self.master
        m._conns.discard(self)
        if self.session is not None:
            m._drop(self.session)


def _peer(transport: asyncio.BaseTransport) -> str:
    peer = transport.get_extra_info("peername")
    if isinstance(peer, tuple) and len(peer) >= 2:
        return f"{peer[0]}:{peer[1]}"
    return str(peer)
