"""The master: an asyncio server that turns protocol messages into store calls.

It authenticates every connection, accepts submits (answered only after
their commit), pushes leased tasks to workers within the credit each
granted, takes results back, delivers them to the clients waiting, and
hands back the leases of workers that disconnect or stop heartbeating. It
keeps no state a restart on the same store would need: sessions,
subscriptions and credit are rebuilt when connections come back.

This module is the life cycle and the route table; each service (results,
dispatch, queues, jobs, schedules) gets the shared parts through one
:class:`~conveyor.master.context.Context` and declares its own routes,
op -> ``handler(session, rid, record)``. Every request's fields are decoded
by :mod:`conveyor.wire` before its handler runs.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
import os
import ssl
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any

from .. import __version__, loops, protocol, wire
from ..errors import ProtocolError, StoreError
from ..ratelimit_log import RateLimitedLog
from ..records import AttemptNote, QueueStats
from ..store import Store
from . import attempts, backpressure, eager, maintenance, storefaults
from .cluster import Membership
from .connection import Connection
from .context import Context, Limits, Routes
from .dispatch import Dispatcher
from .jobs import JobService
from .notify import Notices
from .queues import QueueService
from .refusals import CLIENT_CANNOT_SETTLE, NOT_ALLOWED
from .results import ResultService
from .runner import StoreRunner
from .scheduler import Scheduler
from .session import Session, WriteHold
from .timers import DelayTimer, Reaper

log = logging.getLogger("conveyor.master")

DEFAULT_PORT = 7700
#: Seconds before a worker's results that a store fault (a full disk) refused are tried again.
ACK_RETRY = 1.0


class Master:
    """Serves a store's queues over TCP (or TLS) behind an authkey.

    ``clock`` is the wall clock the store's times are read from; ``monotonic``
    times heartbeat silences and rate buckets. Both are injectable for tests.
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
        monotonic: Callable[[], float] = time.monotonic,
        queues: dict[str, int] | None = None,
        frame_budget: int = backpressure.PARTIAL_BUDGET,
    ) -> None:
        self.store = store
        self.authkey = authkey or b""
        self.host = host
        self.port = port
        self.ssl_context = ssl_context
        self.handshake_timeout = handshake_timeout
        self.max_frame_size = max_frame_size
        # The bytes of partially received frames all connections may hold (master/backpressure.py).
        self.budget = backpressure.FrameBudget(frame_budget)
        # Errors that repeat (a full disk fails every request; refused peers come back):
        # one line per kind per interval, with the count of those held back.
        self.limited = RateLimitedLog(log)
        self.ctx = Context(store, Limits(lease_for, heartbeat_timeout, result_ttl, allow_pickle),
                           clock=clock, monotonic=monotonic)
        self.started_at = clock()
        self.jobs = JobService(self.ctx)
        self.queue_service = QueueService(self.ctx, declared=queues)
        self.results = ResultService(self.ctx, self.jobs)
        self.dispatcher = Dispatcher(self.ctx, self.queue_service, self.jobs)
        self.scheduler = Scheduler(self.ctx)  # periodic schedules (master/scheduler.py)
        self.reaper = Reaper(self.ctx, drop=self.drop, acked=self.queue_service.joiners_may_be_done,
                             settled=self.jobs.settle_dependents)
        self.delay_timer = DelayTimer(self.ctx)
        self.routes = merge_routes(self._routes(), self.results.routes(), self.dispatcher.routes(),
                                   self.queue_service.routes(), self.jobs.routes(), self.scheduler.routes())
        self.hold = WriteHold()  # replies and pushes wait for the commit of the read they answer
        self._server: asyncio.base_events.Server | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._conns: set[Connection] = set()  # open connections, authenticated or not
        self._stopping = False
        self._closed = asyncio.Event()
        #: The store error the master stopped on (a corrupt store met at run time), else None.
        self.fatal: BaseException | None = None
        self._unfilter: Callable[[], None] | None = None
        # Several masters on one shared store (PostgreSQL): this master's row, heartbeat and
        # leadership, and what it hears from the others (master/cluster.py, master/notify.py).
        self.membership: Membership | None = None
        self.notices: Notices | None = None
        if store.shared:
            self.membership = Membership(
                self.ctx, address=lambda: f"{self.host}:{self.port}", on_lead=self.scheduler.wake,
                on_step=self._retry_putters,
                settings={"pickle": allow_pickle, "lease_for": lease_for, "result_ttl": result_ttl})

    # -- configuration, as the services see it --------------------------------
    @property
    def clock(self) -> Callable[[], float]:
        return self.ctx.clock

    @property
    def lease_for(self) -> float:
        return self.ctx.limits.lease_for

    @property
    def heartbeat_timeout(self) -> float:
        return self.ctx.limits.heartbeat_timeout

    @property
    def allow_pickle(self) -> bool:
        return self.ctx.limits.allow_pickle

    @property
    def sessions(self) -> dict[str, Session]:
        """The authenticated sessions, by id."""
        return self.ctx.sessions

    @property
    def counters(self) -> dict[str, int]:
        return self.ctx.counters

    @property
    def runner(self) -> StoreRunner:
        """The store runner (once started)."""
        return self.ctx.runner

    # -- life cycle --------------------------------------------------------
    async def start(self) -> None:
        """Recover the store (void every lease; on a shared store, only dead masters'),
        bind, and start the background loops."""
        loop = asyncio.get_running_loop()
        ctx = self.ctx
        ctx.bind_runner(StoreRunner(self.store, loop, inline=self.store.cheap_commits))
        # A corrupt store stops the master (from whichever thread met it: the loop's, or a store thread).
        def on_fatal(exc: BaseException) -> None:
            loop.call_soon_threadsafe(self._fatal, exc)

        ctx.runner.on_fatal = on_fatal
        self._unfilter = storefaults.install_filter(self.limited)
        # Every recovery sweep in bounded batches (maintenance.py): a deep store does not
        # make one long transaction, and dependency cascades are cut at CASCADE_LIMIT
        # per call, the rest continued by the reaper.
        self.store.cascade_limit = maintenance.CASCADE_LIMIT
        if self.membership is not None:
            # A shared store: register first (leases name this master), and hand back only
            # the leases of masters that died; live peers keep theirs.
            await self.membership.join()
            self.notices = Notices(ctx, self.membership.id, queues=self.queue_service)
            self.notices.start()
        else:
            released = await maintenance.release_all(ctx, ctx.clock())
            if released:
                log.info("recovered %d task(s) that were leased when the master stopped", released)
        await maintenance.settle_pending(ctx, ctx.clock())
        next_due = await ctx.runner.call(self.store.next_due)
        if next_due is not None:
            ctx.delays.due_at(next_due)
        # asyncio sets TCP_NODELAY on every TCP transport itself.
        self._server = await loop.create_server(
            self.connection, self.host, self.port, ssl=self.ssl_context, reuse_address=True,
        )
        sock = self._server.sockets[0]
        self.port = sock.getsockname()[1]
        for run in (self.reaper.run, self.delay_timer.run, self.scheduler.run):
            self._tasks.append(asyncio.create_task(self._keep_running(run)))
        if self.membership is not None:
            await self.membership.heartbeat()  # the row names the bound port from now on
            self._tasks.append(asyncio.create_task(self._keep_running(self.membership.run)))
        log.info("master listening on %s:%d (store: %s)", self.host, self.port, type(self.store).__name__)

    async def _keep_running(self, run: Callable[[], Any]) -> None:
        """Run a background loop; after a store fault (a full disk), say so and start it again.

        Without this one failed sweep or lease extension would end the reaper for good,
        and the master would stop noticing silent workers once the disk had room again.
        """
        while True:
            try:
                await run()
                return
            except StoreError as exc:
                if storefaults.is_fatal(exc):
                    return  # the runner reported it: the master is stopping
                self.limited.error(f"loop:{storefaults.fault_key(exc)}",
                                  f"{getattr(run, '__qualname__', run)} failed: {exc}; trying again")
                await asyncio.sleep(1.0)

    def _fatal(self, exc: BaseException) -> None:
        """The store is corrupt: say so in one line and stop (the CLI exits non-zero)."""
        if self.fatal is not None or self._stopping:
            return
        self.fatal = exc
        log.critical("stopping: %s", exc)
        asyncio.ensure_future(self.close())

    def _retry_putters(self) -> None:
        """Puts parked on a full queue try again now and then: the safety net behind the
        room other masters announce (a shared store; looked at every cluster heartbeat)."""
        self.queue_service.poll_putters()

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
        self.dispatcher.stopping = True
        try:
            if self._server is not None:
                self._server.close()
            for s in list(self.sessions.values()):
                s.close()
            for c in list(self._conns):
                c.close()
            if self.notices is not None:
                self.notices.close()
            if self.dispatcher.task is not None:
                self._tasks.append(self.dispatcher.task)
            for t in self._tasks:
                t.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            if self.ctx.started:
                self.ctx.runner.close()
        finally:
            if self._unfilter is not None:
                self._unfilter()
                self._unfilter = None
            self._closed.set()

    # -- connections (the ConnectionHost of connection.py) -----------------
    def connection(self) -> Connection:
        """A new connection's protocol object (the server's protocol factory)."""
        return Connection(self)

    @property
    def stopping(self) -> bool:
        return self._stopping

    def opened(self, conn: Connection) -> None:
        self._conns.add(conn)

    def closed(self, conn: Connection) -> None:
        self._conns.discard(conn)

    def new_session(self, peer: str, transport: asyncio.Transport, conn: protocol.Connection) -> Session:
        s = Session(uuid.uuid4().hex, peer, transport, conn, hold=self.hold, last_seen=self.ctx.monotonic())
        self.sessions[s.id] = s
        return s

    def drained(self, s: Session) -> None:
        """``s``'s peer read what was waiting: push the results held back, and tasks again."""
        backpressure.redeliver(self.ctx, s)
        if s.role == "worker" and s.credit > 0:
            self.ctx.wake.set()

    def drop(self, s: Session) -> None:
        """Forget a session; hand its leases back and end its subscriptions."""
        s.close()
        if self.sessions.pop(s.id, None) is None:
            return
        if s.role == "worker":
            self.ctx.roster.left(s.id, s.name, s.host, s.pid, self.ctx.clock())
        self.ctx.subs.drop(s)
        self.queue_service.drop(s)
        if self._stopping:
            return  # the next start voids every lease anyway
        if s.role == "worker" or s.holds_items:
            if s.role == "worker":
                log.info("worker %s (%s) disconnected with %d task(s) in flight",
                         s.name, s.peer, len(s.inflight))
            self.ctx.metrics.forget(s.inflight)  # handed back unfinished: no run to time
            note = AttemptNote(attempts.worker_of(s)) if s.role == "worker" else None
            self.ctx.after_release(self.ctx.runner.call(
                lambda: self.store.release_owner(s.id, self.ctx.clock(), note=note)))
            s.inflight.clear()

    # -- messages ----------------------------------------------------------
    def received(self, s: Session, events: Sequence[object]) -> None:
        """Handle the messages of one read, replies coalesced; then dispatch what they made ready.

        With cheap commits the store calls of the whole read (the submits and the
        leases that push them on, say) share one commit, and every reply and push
        waits for it. Otherwise (an fsync per commit) the runner groups the calls
        of a loop turn into one commit, and the replies to this session leave
        together at the end of the read.
        """
        ctx, wake = self.ctx, self.ctx.wake
        s.last_seen = ctx.monotonic()
        one_commit = ctx.runner.inline
        if one_commit:
            self.hold.begin()
            ctx.runner.begin()
        else:
            s.cork()
        wake.held = True
        try:
            self._handle(s, events)
        finally:
            wake.held = False
            if wake.due:
                # Lease and push now, in this loop turn: a worker waiting with credit or a
                # parked get learns of the new work without waiting for another turn.
                self.dispatcher.dispatch_now()
            if not one_commit:
                s.uncork()
            elif ctx.runner.end():
                self.hold.release(last=s)
            else:
                self._commit_failed(s, events)

    def _commit_failed(self, s: Session, events: Sequence[object]) -> None:
        """The commit of a read's store calls failed: none of it happened. Its replies and
        pushes are dropped and their sessions closed.

        When the store said why (a full disk, an I/O error), the requests of the read are
        first answered with that error, so their callers raise it instead of resending
        them on reconnect (which would fail the same way, forever); meanwhile the runner
        runs calls one by one, each failing alone (see runner.DEGRADED_FOR).
        """
        exc = self.ctx.runner.failure
        held = self.hold.drop()
        if isinstance(exc, StoreError):
            if storefaults.is_fatal(exc):
                return  # the master is stopping (_fatal)
            self.limited.error(f"commit:{storefaults.fault_key(exc)}",
                              f"a commit failed, nothing of it was stored: {exc}")
            if s.role != "worker":  # a worker keeps its results and resends them on reconnect
                for ev in events:
                    if isinstance(ev, protocol.Message) and ev.rid:
                        s.error(ev.rid, type(exc).__name__, str(exc))
                s.uncork()  # the errors leave before the close
        else:
            self.limited.error("commit failed", "a commit failed: closing the connections it would have answered")
        for session in held:
            self.drop(session)

    def _handle(self, s: Session, events: Sequence[object]) -> None:
        for ev in events:
            if not isinstance(ev, protocol.Message):
                continue
            if s.role is None and ev.op != protocol.HELLO:
                raise ProtocolError("the first message must be hello")
            handler = self.routes.get(ev.op)
            if handler is None:
                s.error(ev.rid, "ProtocolError", f"unknown op {ev.op!r}")
                continue
            # Fields are decoded first: a bad one is an error reply to this request alone.
            # Handlers run now, in arrival order, up to their first await, and make their
            # first store call before it, so one connection's requests reach the store in
            # order. Only a handler that has to wait (for a commit) becomes a Task.
            try:
                record = wire.decode(ev.op, ev.fields)
            except Exception as exc:
                self._handler_failed(s, ev.rid, exc)
                continue
            self._start(s, ev.rid, ev.op, record)

    def _start(self, s: Session, rid: int, op: str, record: Any) -> None:
        """Run the handler of ``op`` for one decoded request."""
        try:
            task = eager.start(self.routes[op](s, rid, record))
        except asyncio.CancelledError:
            return
        except Exception as exc:
            self._handler_failed(s, rid, exc, op, record)
            return
        if task is not None:
            task.add_done_callback(functools.partial(self._handler_done, s=s, rid=rid, op=op, record=record))

    def _handler_done(self, task: asyncio.Task[Any], *, s: Session, rid: int, op: str = "",
                      record: Any = None) -> None:
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            self._handler_failed(s, rid, exc, op, record)

    def _handler_failed(self, s: Session, rid: int, exc: BaseException, op: str = "",
                        record: Any = None) -> None:
        if op == protocol.ACK and isinstance(record, wire.Ack) and storefaults.is_store_fault(exc):
            # A worker forgets results the master refused: instead of an error, its results
            # wait here, unanswered, and are tried again (the worker resends them itself if
            # the connection drops meanwhile). Their credit counted the first time.
            self.limited.error(f"ack:{storefaults.fault_key(exc)}",
                              f"results from {s.peer} not stored, trying again in {ACK_RETRY:g}s: {exc}")
            again = dataclasses.replace(record, credit=0)
            asyncio.get_running_loop().call_later(ACK_RETRY, self._retry, s, rid, op, again)
            return
        if isinstance(exc, ProtocolError):
            self.limited.warning("bad request", "bad request from %s: %s", s.peer, exc)
            s.error(rid, "ProtocolError", str(exc))
        else:
            # Keyed by the error's type: a failing store fails every request the same way.
            self.limited.error(f"request failed {type(exc).__name__}", "request from %s failed", s.peer, exc_info=exc)
            s.error(rid, type(exc).__name__, str(exc))

    def _retry(self, s: Session, rid: int, op: str, record: Any) -> None:
        """Handle a request again that a store fault failed (while its session lives)."""
        if not s.closed and s.id in self.sessions and not self._stopping:
            self._start(s, rid, op, record)

    # -- the master's own routes: hello, ping, status ----------------------
    def _routes(self) -> Routes:
        return {protocol.HELLO: self.on_hello, protocol.PING: self.on_ping, protocol.STATUS: self.on_status,
                protocol.ADOPT: self.on_adopt}

    async def on_hello(self, s: Session, rid: int, req: wire.Hello) -> None:
        s.role, s.name, s.host, s.pid = req.role, req.name, req.host, req.pid
        if req.role == "worker":
            s.queues = list(req.queues or [])
            s.weights = req.weights
            s.concurrency = req.concurrency
            self.scheduler.declare(s, req.periodic)  # @conveyor.periodic in its modules
            self.ctx.roster.joined(s.id, self.ctx.clock(), req.pool, req.loop)
            log.info("worker %s connected from %s (queues %s, concurrency %d)",
                     s.name, s.peer, ",".join(s.queues), s.concurrency)
        # max_frame: the largest frame body it accepts; a peer refuses a larger request itself.
        s.reply(rid, {"session": s.id, "version": __version__, "heartbeat": self.heartbeat_timeout,
                      "pickle": self.allow_pickle, "max_frame": self.max_frame_size})

    async def on_adopt(self, s: Session, rid: int, req: wire.LeasePairs) -> None:
        """A worker claims the leases it holds (after a reconnect, maybe to another master,
        or after a stall): those whose token still holds in the store become this session's;
        the reply names the rest, which the worker drops unrun."""
        if s.role != "worker":
            self.jobs.refusals.refuse("adopt request(s) from a client session", 1, s.peer,
                                      "clients hold no task leases")
            s.error(rid, NOT_ALLOWED, CLIENT_CANNOT_SETTLE)
            return
        # Held from now on, before the store call: the acks that follow in this same read
        # pass the session check, and the store's token fence (adopt runs first) decides.
        for tid, token in req.pairs:
            s.inflight[tid] = token
        ctx = self.ctx
        adopted = set(await ctx.runner.call(
            ctx.store.adopt, req.pairs, s.id, ctx.clock(), self.lease_for, durable=False))
        lost = [tid for tid, token in dict(req.pairs).items()
                if tid not in adopted and s.inflight.get(tid) == token]
        for tid in lost:
            del s.inflight[tid]
        if adopted:
            ctx.counters["adopted"] += len(adopted)
            log.info("worker %s (%s) kept %d lease(s) across its reconnect; %d lost",
                     s.name, s.peer, len(adopted), len(lost))
        s.reply(rid, {"lost": lost})

    async def on_ping(self, s: Session, rid: int, req: wire.NoFields) -> None:
        # Answered even as a push (rid 0): the answer is the peer's proof we are alive.
        s.push(protocol.OK, {}) if rid == 0 else s.reply(rid, {})

    async def on_status(self, s: Session, rid: int, req: wire.NoFields) -> None:
        store = self.store

        def read() -> tuple[dict[str, QueueStats], dict[str, Any], list[dict[str, Any]]]:
            # All three from the store's counters: O(queues x task names), never a scan.
            return store.stats(), {"tasks": _series(store.task_counts()),
                                   "outcomes": _series(store.outcome_totals())}, store.masters()

        stats, stored, masters = await self.ctx.runner.call(read)
        doc = self.status(stats)
        doc["stored"] = stored
        if self.membership is not None:  # every master of the cluster (a shared store)
            doc["master_id"], doc["leader"] = self.membership.id, self.ctx.leader
            doc["masters"] = masters
        s.reply(rid, doc)

    def status(self, stats: dict[str, QueueStats]) -> dict[str, Any]:
        """The status document ``conveyor status`` prints (and the dashboard polls)."""
        ctx = self.ctx
        mono, now = ctx.monotonic(), ctx.clock()
        return {
            "version": __version__,
            "pid": os.getpid(),
            "uptime": round(now - self.started_at, 1),
            "started_at": self.started_at,
            "store": type(self.store).__name__,
            "loop": loops.name(),
            "queues": {q: st.as_dict() for q, st in sorted(stats.items())},
            "workers": [self._worker(w, mono, now) for w in self.sessions.values() if w.role == "worker"],
            "gone_workers": list(ctx.roster.gone),
            "clients": sum(1 for c in self.sessions.values() if c.role == "client"),
            "counters": dict(ctx.counters),
            "rates": {"completed_10s": ctx.completed.rate(10), "completed_60s": ctx.completed.rate(60)},
            "schedules": self.scheduler.summary(),
            "metrics": ctx.metrics.snapshot(),
            # Partly received frames: the bytes reserved of the shared budget, and the
            # connections not read until there is room (master/backpressure.py).
            "frames": {"partial_bytes": self.budget.used, "budget": self.budget.total,
                       "waiting": self.budget.waiting},
        }

    def _worker(self, w: Session, mono: float, now: float) -> dict[str, Any]:
        """One connected worker, as the status document shows it."""
        rec = self.ctx.roster.get(w.id)
        idle = mono - w.last_seen
        running = w.running()
        return {"name": w.name, "host": w.host, "pid": w.pid, "peer": w.peer, "queues": w.queues,
                "concurrency": w.concurrency, "inflight": len(w.inflight), "running": running,
                "prefetched": len(w.inflight) - running, "idle_for": round(idle, 1),
                # Wall-clock time of its last message: silences are timed on the monotonic clock.
                "last_heartbeat": now - idle,
                "started_at": rec.started_at if rec else None, "pool": rec.pool if rec else None,
                "loop": rec.loop if rec else None, "done": rec.done if rec else 0,
                "failed": rec.failed if rec else 0}


#: The most (queue, task name, state or outcome) rows status carries per series: a
#: store with more task names than this sends the largest ones (metrics stay bounded).
MAX_STORED_SERIES = 2000


def _series(counts: dict[tuple[str, str | None, str], int]) -> list[list[Any]]:
    """Store counters as [queue, task name or None, state or outcome, n] rows, bounded."""
    rows: list[list[Any]] = [[q, name, what, n] for (q, name, what), n in counts.items()]
    if len(rows) > MAX_STORED_SERIES:
        rows.sort(key=lambda r: -r[3])
        del rows[MAX_STORED_SERIES:]
    rows.sort(key=lambda r: (r[0], r[1] or "", r[2]))
    return rows


def merge_routes(*tables: Routes) -> Routes:
    """One route table from every service's; each op served once, and every inbound op served."""
    routes: Routes = {}
    for table in tables:
        for op, handler in table.items():
            if op in routes:
                raise RuntimeError(f"two services route {op!r}")
            routes[op] = handler
    missing = protocol.INBOUND_OPS - routes.keys()
    if missing:
        raise RuntimeError(f"no service routes {', '.join(sorted(missing))}")
    return routes
