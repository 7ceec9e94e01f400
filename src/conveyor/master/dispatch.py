"""Dispatch and credit: leasing ready work to workers with credit and to parked gets.

The dispatcher asks the store for work only for queues that may have some
(:class:`QueueTracker`). A lease that comes back short marks a queue empty,
unless something may have added work since the lease was planned: each
change bumps a generation, so an enqueue that races a lease is never missed.
Code that adds work calls :meth:`Wake.set`; one dispatch pass runs at a
time, and a wake meanwhile makes it go round again.

A pass fills free slots before prefetch: every worker's credit up to its
free slots (concurrency minus the leases it holds) is planned first, across
all workers, and only then the rest of its credit. So a burst of long tasks
lands one per idle slot across the cluster rather than in one worker's
prefetch. Workers report when a lease actually starts (``started``), which
is how the master tells running from prefetched work.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable
from typing import TYPE_CHECKING, Union

from .. import protocol, wire
from ..ratelimit_log import RateLimitedLog
from ..records import Lease
from . import eager
from .cluster import shared_rate_limit
from .session import Session

if TYPE_CHECKING:
    from .context import Context, Routes
    from .jobs import JobService
    from .queues import Parked, QueueService

log = logging.getLogger("conveyor.master")

#: Who a planned lease is for: a worker with credit, or a parked queue get.
Taker = Union[Session, "Parked"]
#: One planned lease: (taker, queue, how many at most).
Planned = tuple[Taker, str, int]


class QueueTracker:
    """Remembers which queues are known to be empty."""

    def __init__(self) -> None:
        self._gen: dict[str, int] = {}
        self._epoch = 0
        self._empty: set[str] = set()

    def changed(self, queue: str) -> None:
        """Work may have been added to ``queue``."""
        self._gen[queue] = self._gen.get(queue, 0) + 1
        self._empty.discard(queue)

    def changed_unknown(self) -> None:
        """Work may have been added to any queue (leases handed back, delayed work due)."""
        self._epoch += 1
        self._empty.clear()

    def mark(self, queue: str) -> tuple[int, int]:
        """A stamp to take before leasing from ``queue``."""
        return self._epoch, self._gen.get(queue, 0)

    def empty(self, queue: str, mark: tuple[int, int]) -> None:
        """A lease planned at ``mark`` came back short: empty unless it changed since."""
        if mark == (self._epoch, self._gen.get(queue, 0)):
            self._empty.add(queue)

    def first_nonempty(self, queues: list[str]) -> str | None:
        """The first of ``queues`` (in the worker's stated order) that may have work."""
        for q in queues:
            if q not in self._empty:
                return q
        return None

    def pick_weighted(self, queues: list[str], weights: list[int],
                      rand: random.Random | None = None) -> str | None:
        """A queue that may have work, chosen with probability proportional to its weight."""
        live = [(q, w) for q, w in zip(queues, weights) if q not in self._empty]
        if not live:
            return None
        r = (rand or random).random() * sum(w for _, w in live)
        for q, w in live:
            r -= w
            if r < 0:
                return q
        return live[-1][0]

    def is_empty(self, queue: str) -> bool:
        """True if ``queue`` is known to have no ready work."""
        return queue in self._empty


class Wake:
    """Says a dispatch pass is due; ``set()`` is what the code that adds work calls.

    While the master handles the messages of one read (``held``), the pass waits for
    the end of them, so a burst of submits makes one pass, in the same loop turn.
    Elsewhere it runs in a callback soon after, unless a pass is running: that one
    goes round again.
    """

    __slots__ = ("due", "held", "running", "_scheduled", "_on_due")

    def __init__(self) -> None:
        self.due = False
        self.held = False
        self.running = False  # a dispatch pass is running (maybe waiting on the store)
        self._scheduled = False
        self._on_due: Callable[[], None] = lambda: None

    def bind(self, on_due: Callable[[], None]) -> None:
        """What runs the passes (the dispatcher)."""
        self._on_due = on_due

    def set(self) -> None:
        """A dispatch pass is due."""
        self.due = True
        if not (self.held or self._scheduled or self.running):
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._fire)

    def _fire(self) -> None:
        self._scheduled = False
        self._on_due()


class Dispatcher:
    """Leases ready tasks to workers within their credit, and items to parked gets."""

    def __init__(self, ctx: Context, queues: QueueService, jobs: JobService) -> None:
        self.ctx = ctx
        self.queue_service = queues
        self.jobs = jobs
        self.task: asyncio.Task[None] | None = None  # the running pass, if it had to wait
        self.stopping = False
        self.limited = RateLimitedLog(log)  # a pass that fails fails again on the next wake: one line per interval
        self._rotate = 0
        ctx.wake.bind(self.dispatch_now)

    def routes(self) -> Routes:
        return {protocol.CREDIT: self.on_credit, protocol.STARTED: self.on_started}

    async def on_credit(self, s: Session, rid: int, req: wire.Credit) -> None:
        """A worker can take ``n`` more tasks (or ``revoke`` fewer: its window shrank)."""
        s.credit += req.n - req.revoke
        if req.n:
            self.ctx.wake.set()

    async def on_started(self, s: Session, rid: int, req: wire.LeasePairs) -> None:
        """A worker began these leases: they are running now, no longer prefetched."""
        s.mark_started(req.pairs, self.ctx.clock())

    def dispatch_now(self) -> None:
        """Start dispatch passes now if one is due and none is running."""
        wake = self.ctx.wake
        if wake.running or not wake.due or self.stopping:
            return
        try:
            task = eager.start(self._dispatch())
        except Exception:
            self.limited.error("dispatch failed", "dispatch failed", exc_info=True)
            return
        if task is not None:
            self.task = task
            task.add_done_callback(self._dispatch_done)

    def _dispatch_done(self, task: asyncio.Task[None]) -> None:
        self.task = None
        if not task.cancelled() and task.exception() is not None:
            self.limited.error("dispatch failed", "dispatch failed", exc_info=task.exception())

    async def _dispatch(self) -> None:
        """Dispatch passes while one is due: one runs at a time, a wake meanwhile makes another."""
        wake = self.ctx.wake
        wake.running = True
        try:
            while wake.due:
                wake.due = False
                await self.dispatch_pass()
        finally:
            wake.running = False

    async def dispatch_pass(self) -> None:
        """Lease ready work to the takers that want some, at most what each wants, and hand it out."""
        plan = self.plan()
        if not plan:
            return
        ctx = self.ctx
        marks = [ctx.queues.mark(q) for _, q, _ in plan]
        now = ctx.clock()
        # Leases need no fsync: every master start voids them anyway. A queue get
        # that acknowledges on get does change durable state, though.
        durable = any(not isinstance(t, Session) and t.ack for t, _, _ in plan)
        leases = await ctx.runner.call(self._lease_plan, plan, now, durable=durable)
        again = False
        for (taker, q, n), mark, got in zip(plan, marks, leases):
            if len(got) < n:
                ctx.queues.empty(q, mark)
                # Another of the worker's queues may have work: the next pass tries it.
                again = again or (isinstance(taker, Session) and len(taker.queues) > 1)
            else:
                again = True  # the queue may have more for the takers this pass did not serve
            if not got:
                continue
            self.queue_service.space_freed(q)
            if isinstance(taker, Session):
                await self._push(taker, got, now)
            else:
                self.queue_service.deliver(taker, got)
        if again:
            # Go round again: the next pass leases what this one left, or finds nothing and stops.
            # Not when every lease came back short from a queue its taker has alone: those queues
            # are empty (or were changed since, and whatever changed them woke dispatch).
            ctx.wake.set()

    def plan(self) -> list[Planned]:
        """Parked gets first, then free slots across every worker, then prefetch.

        Each worker with credit gets one entry for its free slots (as much of its credit
        as it has slots without a lease) and one for the rest of its credit; all the slot
        entries come before any prefetch entry, and the store leases a plan in order, so
        an idle slot anywhere wins over a busy worker's prefetch.
        """
        ctx = self.ctx
        plan: list[Planned] = list(self.queue_service.plan())
        # A worker that does not read what it is sent (output_paused) gets nothing more until it does.
        workers = [w for w in ctx.sessions.values()
                   if w.role == "worker" and not w.closed and w.credit > 0 and not w.output_paused]
        if workers:
            # Rotate who is served first, so no worker always gets the head of the queue.
            self._rotate = rotate = (self._rotate + 1) % len(workers)
            workers = workers[rotate:] + workers[:rotate]
        prefetch: list[Planned] = []
        for w in workers:
            q = (ctx.queues.pick_weighted(w.queues, w.weights) if w.weights
                 else ctx.queues.first_nonempty(w.queues))
            if q is None:
                continue
            # A worker that did not say its concurrency is all slots.
            slots = min(w.credit, w.free_slots()) if w.concurrency > 0 else w.credit
            if slots:
                plan.append((w, q, slots))
            if w.credit > slots:
                prefetch.append((w, q, w.credit - slots))
        return plan + prefetch

    def _lease_plan(self, plan: list[Planned], now: float) -> list[list[Lease]]:
        """The leases of a plan, in one store transaction (store thread)."""
        store, lease_for = self.ctx.store, self.ctx.limits.lease_for
        got = [store.lease(q, n, t.id, now, lease_for) if isinstance(t, Session)
               else self.queue_service.lease_for(t, now) for t, q, n in plan]
        if store.shared:  # rate limits of the whole cluster, in this same transaction
            got = [shared_rate_limit(store, leases, now) if isinstance(t, Session) else leases
                   for (t, _, _), leases in zip(plan, got)]
        return got

    async def _push(self, w: Session, got: list[Lease], now: float) -> None:
        """Send leased tasks to a worker, within its rate limits; hand them back if it is gone."""
        ctx = self.ctx
        if w.closed or ctx.sessions.get(w.id) is not w:
            ctx.release([(g.id, g.token) for g in got], now)
            return
        got = self.jobs.rate_limit(got, now)
        if not got:
            return
        w.credit -= len(got)
        for g in got:
            w.inflight[g.id] = g.token
        upstream = await self.jobs.upstream(got)
        w.push(protocol.TASKS, {"tasks": [wire.lease_to_wire(g, upstream.get(g.id)) for g in got]})
