"""Plain network queues on the master: bounded puts, blocking gets, acks and join.

A queue item is a task without a call, in the same store, under the same
lease and ack mechanism. What this module adds is waiting: a ``get`` on an
empty queue, a ``put`` on a full one and a ``join`` are parked here until
the queue changes or their timeout passes. The master's dispatcher serves
parked getters exactly as it serves workers with credit.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .. import protocol, wire
from ..records import STORED, Lease, NewTask, Outcome
from ..serde import PICKLE
from .results import PICKLE_DISABLED
from .session import Session

if TYPE_CHECKING:
    from .context import Context, Routes

log = logging.getLogger("conveyor.master")

GET, PUT, JOIN = "get", "put", "join"
#: Network queues ``qlist`` names beyond the declared ones (the most recently used first kept).
MAX_LISTED = 1000
#: Several masters on one store: seconds between retries of every parked put (a safety net
#: only: a get through another master wakes them by its notification, master/notify.py).
#: ``CONVEYOR_PUT_RETRY_EVERY`` sets it (tests make it huge so only notifications wake).
PUT_RETRY_EVERY = 10.0
ENV_PUT_RETRY_EVERY = "CONVEYOR_PUT_RETRY_EVERY"


def put_retry_every(env: dict[str, str] | None = None) -> float:
    """The safety-net retry interval of parked puts: ``CONVEYOR_PUT_RETRY_EVERY`` or the default."""
    text = (os.environ if env is None else env).get(ENV_PUT_RETRY_EVERY, "").strip()
    try:
        value = float(text) if text else PUT_RETRY_EVERY
    except ValueError:
        raise ValueError(f"{ENV_PUT_RETRY_EVERY} must be a number of seconds, not {text!r}") from None
    if not value > 0:
        raise ValueError(f"{ENV_PUT_RETRY_EVERY} must be more than 0 seconds, not {text!r}")
    return value


@dataclass(eq=False)
class Parked:
    """A request parked on a queue until the queue changes or its timeout passes.

    One shape serves the three kinds: a ``get`` on an empty queue (served by the
    dispatcher when items come), a ``put`` on a full one (retried when items
    leave) and a ``join`` (answered when nothing put is unacknowledged).
    """

    kind: str  # GET, PUT or JOIN
    session: Session
    rid: int
    queue: str
    max: int = 0  # GET: most items to hand out
    ack: bool = False  # GET: acknowledged as handed out
    tasks: list[NewTask] = field(default_factory=list)  # PUT: items not yet accepted
    maxsize: int = 0  # PUT: the queue's bound
    accepted: int = 0  # PUT: items accepted so far
    handle: asyncio.TimerHandle | None = None
    done: bool = False

    def settle(self) -> bool:
        """Mark it answered and stop its timeout; False if it was already."""
        if self.done:
            return False
        self.done = True
        if self.handle is not None:
            self.handle.cancel()
        return True


class Waiting:
    """The parked requests of one kind, per queue, oldest first."""

    def __init__(self) -> None:
        self.by_queue: dict[str, list[Parked]] = {}

    def park(self, p: Parked, timeout: float | None, on_timeout: Callable[[Parked], None]) -> None:
        """Park ``p``; after ``timeout`` seconds (None: never) ``on_timeout(p)`` answers it."""
        self.by_queue.setdefault(p.queue, []).append(p)
        if timeout is not None:
            p.handle = asyncio.get_running_loop().call_later(timeout, on_timeout, p)

    def remove(self, p: Parked) -> None:
        waiting = self.by_queue.get(p.queue)
        if waiting is not None and p in waiting:
            waiting.remove(p)
            if not waiting:
                del self.by_queue[p.queue]

    def first(self, queue: str) -> Parked | None:
        """The oldest request still waiting on ``queue`` (answered ones are forgotten)."""
        waiting = self.by_queue.get(queue)
        while waiting:
            if not waiting[0].done:
                return waiting[0]
            waiting.pop(0)
        self.by_queue.pop(queue, None)
        return None

    def drop(self, s: Session) -> None:
        """``s`` went away: forget (and settle) what it had parked."""
        for q in list(self.by_queue):
            for p in self.by_queue[q]:
                if p.session is s:
                    p.settle()
            kept = [p for p in self.by_queue[q] if p.session is not s]
            if kept:
                self.by_queue[q] = kept
            else:
                del self.by_queue[q]

    def __bool__(self) -> bool:
        return bool(self.by_queue)


class QueueService:
    """The master's queue operations and the requests parked on them."""

    def __init__(self, ctx: Context, declared: dict[str, int] | None = None) -> None:
        self.ctx = ctx
        self.declared = dict(declared or {})  # queue -> maxsize, from the master's config
        self.getters = Waiting()
        self.putters = Waiting()
        self.joiners = Waiting()
        self._retrying: set[str] = set()
        # Per bounded queue with a put under way (tried or parked): how often room was
        # announced. A put that found the queue full parks, or tries again, if room came
        # meanwhile: the announcement may arrive while its store call still runs.
        self._freed: dict[str, int] = {}
        self._trying: dict[str, int] = {}  # bounded puts in their first try, per queue
        try:
            self.retry_every = put_retry_every()
        except ValueError as exc:
            log.warning("%s; retrying parked puts every %.0fs", exc, PUT_RETRY_EVERY)
            self.retry_every = PUT_RETRY_EVERY
        self._polled = time.monotonic()
        # Queues put to or got from since the master started (with the declared ones, what
        # qlist lists), and per queue the sessions that got from it: its consumers.
        self.used: dict[str, None] = {}
        self.consumers: dict[str, set[Session]] = {}

    def routes(self) -> Routes:
        return {
            protocol.QPUT: self.on_qput,
            protocol.QGET: self.on_qget,
            protocol.QACK: self.on_qack,
            protocol.QJOIN: self.on_qjoin,
            protocol.QSIZE: self.on_qsize,
            protocol.QINFO: self.on_qinfo,
            protocol.QLIST: self.on_qlist,
        }

    def _used(self, queue: str) -> None:
        """``queue`` was put to or got from: qlist lists it."""
        self.used.pop(queue, None)
        self.used[queue] = None  # most recent last
        if len(self.used) > MAX_LISTED:
            del self.used[next(iter(self.used))]

    # -- put ---------------------------------------------------------------
    async def on_qput(self, s: Session, rid: int, req: wire.QPut) -> None:
        if not self.ctx.limits.allow_pickle and any(t.codec == PICKLE for t in req.items):
            s.error(rid, "SerializationError", PICKLE_DISABLED)
            return
        self._used(req.queue)
        q = req.queue
        p = Parked(PUT, s, rid, q, tasks=list(req.items), maxsize=self.declared.get(q, req.maxsize))
        if p.maxsize <= 0:
            await self._try_put(p)  # unbounded: never parks
            return
        self._trying[q] = self._trying.get(q, 0) + 1
        seen = self._freed.setdefault(q, 0)
        try:
            await self._try_put(p)
            if p.done:
                return
            if req.timeout == 0:
                self._finish_put(p)
                return
            self.putters.park(p, req.timeout, self._finish_put)
            if self._freed.get(q, 0) != seen:  # room was announced while it counted
                self.space_freed(q)
        finally:
            self._trying[q] -= 1
            if not self._trying[q]:
                del self._trying[q]
            self._forget(q)

    async def _try_put(self, p: Parked) -> None:
        ctx = self.ctx
        if p.maxsize > 0:
            accepted = await ctx.runner.call(self._bounded_enqueue, p.queue, p.tasks, p.maxsize, ctx.clock())
        else:  # unbounded: the store call alone (an id put twice is accepted, and stored once)
            await ctx.runner.call(ctx.store.enqueue, p.tasks, ctx.clock())
            accepted = len(p.tasks)
        if accepted:
            p.accepted += accepted
            del p.tasks[:accepted]
            ctx.counters["submitted"] += accepted
            ctx.work_added(p.queue)
        if not p.tasks:
            self._finish_put(p)

    def _bounded_enqueue(self, queue: str, tasks: list[NewTask], maxsize: int, now: float) -> int:
        # Count and insert in one store call: a shared store holds the queue's lock for both.
        return self.ctx.store.enqueue_bounded(queue, tasks, maxsize, now)

    def _finish_put(self, p: Parked) -> None:
        if p.settle():
            self.putters.remove(p)
            p.session.reply(p.rid, {"accepted": p.accepted})
            self._forget(p.queue)

    def _forget(self, queue: str) -> None:
        """Stop counting room announcements of ``queue`` once no put on it is under way."""
        if queue not in self._trying and queue not in self._retrying and queue not in self.putters.by_queue:
            self._freed.pop(queue, None)

    def space_freed(self, queue: str) -> None:
        """Items left ``queue``: let parked putters try again, oldest first.

        Called for this master's own gets and, on a shared store, for another
        master's (its commit's announcement, master/notify.py)."""
        if queue in self._freed:
            self._freed[queue] += 1
        if self.putters.first(queue) is not None and queue not in self._retrying:
            self._retrying.add(queue)
            asyncio.ensure_future(self._retry_putters(queue))

    def space_freed_anywhere(self) -> None:
        """Any bounded queue may have room (an announcement too big to name them, or
        one that may have been missed): every parked put tries again."""
        for q in list(self.putters.by_queue):
            self.space_freed(q)

    def poll_putters(self) -> None:
        """The safety net on a shared store (called every cluster heartbeat): every
        :attr:`retry_every` seconds, parked puts try again even if no room was announced."""
        now = time.monotonic()
        if now - self._polled >= self.retry_every:
            self._polled = now
            self.space_freed_anywhere()

    async def _retry_putters(self, queue: str) -> None:
        try:
            # Re-read every time: a session that goes away takes its puts with it.
            while (p := self.putters.first(queue)) is not None:
                before, seen = p.accepted, self._freed.get(queue, 0)
                await self._try_put(p)
                if not p.done and p.accepted == before and self._freed.get(queue, 0) == seen:
                    break  # still full, and no room announced since it looked
        finally:
            self._retrying.discard(queue)
            self._forget(queue)

    # -- get ---------------------------------------------------------------
    async def on_qget(self, s: Session, rid: int, req: wire.QGet) -> None:
        s.holds_items = True
        self._used(req.queue)
        self.consumers.setdefault(req.queue, set()).add(s)
        g = Parked(GET, s, rid, req.queue, max=req.max, ack=req.ack)
        ctx, q, n = self.ctx, req.queue, req.max
        mark = ctx.queues.mark(q)
        store = ctx.store
        got = await (ctx.runner.call(store.take, q, n, s.id, ctx.clock()) if g.ack else
                     ctx.runner.call(store.lease, q, n, s.id, ctx.clock(), ctx.limits.lease_for, durable=False))
        if got or req.timeout == 0:
            if len(got) < n:
                ctx.queues.empty(q, mark)
            self.deliver(g, got)
            return
        ctx.queues.empty(q, mark)
        if s.closed:
            return
        self.getters.park(g, req.timeout, self._get_timed_out)
        if not ctx.queues.is_empty(q):
            ctx.wake.set()

    def lease_for(self, g: Parked, now: float) -> list[Lease]:
        """Lease (and with ack-on-get, acknowledge) items for a getter; store thread."""
        store = self.ctx.store
        if g.ack:
            return store.take(g.queue, g.max, g.session.id, now)
        return store.lease(g.queue, g.max, g.session.id, now, self.ctx.limits.lease_for)

    def _get_timed_out(self, g: Parked) -> None:
        self.deliver(g, [])

    def deliver(self, g: Parked, got: list[Lease]) -> None:
        """Answer a getter (an empty list: its timeout passed)."""
        if not g.settle():
            if got:  # answered meanwhile: hand these back
                self.ctx.release([(x.id, x.token) for x in got], self.ctx.clock())
            return
        self.getters.remove(g)
        if got and not g.ack:
            for x in got:
                g.session.inflight[x.id] = x.token
        g.session.reply(g.rid, {"items": [wire.item_to_wire(x) for x in got]})
        if got:
            if g.ack:
                self.joiners_may_be_done()
            self.space_freed(g.queue)

    def plan(self) -> list[tuple[Parked, str, int]]:
        """The parked getters the dispatcher should try now, oldest first per queue."""
        out = []
        for q in list(self.getters.by_queue):
            g = self.getters.first(q)
            if g is not None and not g.session.closed and not self.ctx.queues.is_empty(q):
                out.append((g, q, g.max))
        return out

    # -- ack, join, size ---------------------------------------------------
    async def on_qack(self, s: Session, rid: int, req: wire.LeasePairs) -> None:
        for tid, _ in req.pairs:
            s.inflight.pop(tid, None)
        ctx = self.ctx
        outcomes = [Outcome(tid, token, True, b"") for tid, token in req.pairs]
        statuses = await ctx.runner.call(ctx.store.complete, outcomes, ctx.clock()) if outcomes else []
        stored = statuses.count(STORED)
        ctx.counters["acknowledged"] += stored
        s.reply(rid, {"n": stored})
        self.joiners_may_be_done()

    async def on_qjoin(self, s: Session, rid: int, req: wire.QueueWait) -> None:
        self.joiners.park(Parked(JOIN, s, rid, req.queue), req.timeout, self._join_timed_out)
        await self._check_joiners(req.queue)

    def _finish_join(self, j: Parked, done: bool) -> None:
        if j.settle():
            self.joiners.remove(j)
            j.session.reply(j.rid, {"done": done})

    def _join_timed_out(self, j: Parked) -> None:
        self._finish_join(j, False)

    def joiners_may_be_done(self) -> None:
        """Something was acknowledged: answer the joins whose queue is now settled."""
        for q in list(self.joiners.by_queue):
            asyncio.ensure_future(self._check_joiners(q))

    async def _check_joiners(self, q: str) -> None:
        if not self.joiners.by_queue.get(q):
            return
        counts = await self.ctx.runner.call(self.ctx.store.pending_counts, q)
        if sum(counts) == 0:
            for j in list(self.joiners.by_queue.get(q, ())):
                self._finish_join(j, True)

    async def on_qsize(self, s: Session, rid: int, req: wire.QueueName) -> None:
        ready, delayed, leased = await self.ctx.runner.call(self.ctx.store.pending_counts, req.queue)
        s.reply(rid, {"ready": ready, "delayed": delayed, "leased": leased,
                      "maxsize": self.declared.get(req.queue)})

    async def on_qinfo(self, s: Session, rid: int, req: wire.QueueName) -> None:
        q = req.queue
        s.reply(rid, {"declared": q in self.declared, "maxsize": self.declared.get(q, 0),
                      "queues": sorted(self.declared)})

    async def on_qlist(self, s: Session, rid: int, req: wire.NoFields) -> None:
        """Every network queue: declared ones and those used since the master started,
        with their depth (one store transaction) and consumers."""
        names = sorted(self.declared.keys() | self.used.keys())
        store = self.ctx.store
        counts = await self.ctx.runner.call(lambda: [store.pending_counts(q) for q in names])
        s.reply(rid, {"queues": [
            {"queue": q, "ready": ready, "delayed": delayed, "leased": leased,
             "maxsize": self.declared.get(q, 0), "declared": q in self.declared,
             "consumers": len(self.consumers.get(q, ()))}
            for q, (ready, delayed, leased) in zip(names, counts)]})

    # -- sessions ----------------------------------------------------------
    def drop(self, s: Session) -> None:
        """A session went away: forget what it had parked, and that it consumed."""
        for waiting in (self.getters, self.putters, self.joiners):
            waiting.drop(s)
        for q in list(self._freed):
            self._forget(q)
        for q in [q for q, sessions in self.consumers.items() if s in sessions]:
            self.consumers[q].discard(s)
            if not self.consumers[q]:
                del self.consumers[q]
