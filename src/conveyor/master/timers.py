"""The master's timers: the reaper (silent sessions, lease extension, expiry
sweeps, purges) and the delay timer (delayed tasks made ready when due).

Time is an argument: :meth:`Reaper.step` takes the monotonic and the wall
time and decides everything from them with the rules of
:mod:`conveyor.timing`; only the ``run`` loops read the clocks (the ones
the master was given, so tests inject them).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from .. import timing
from . import maintenance
from .session import Session

if TYPE_CHECKING:
    from .context import Context

log = logging.getLogger("conveyor.master")


class DueTimes:
    """When the earliest delayed task is due (wall time), and a wake-up when that moves earlier."""

    def __init__(self) -> None:
        self.next_due: float | None = None
        self.changed = asyncio.Event()

    def due_at(self, when: float) -> None:
        """A task becomes ready at ``when``."""
        if self.next_due is None or when < self.next_due:
            self.next_due = when
            self.changed.set()


class DelayTimer:
    """Makes delayed tasks ready when their time comes."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    async def step(self, now: float) -> float | None:
        """Promote what is due at ``now``; seconds until the next look (None: nothing is delayed)."""
        ctx, times = self.ctx, self.ctx.delays
        if times.next_due is None or not ctx.leader:
            return None  # (not the leader of a shared store: the leader promotes)
        if times.next_due > now:
            return min(times.next_due - now, timing.TIMER_TICK_MAX)
        queues, times.next_due = await maintenance.promote_due(ctx, now)
        for q in queues:
            ctx.queues.changed(q)
        if queues:
            ctx.wake.set()
        return 0.0

    async def run(self) -> None:
        changed = self.ctx.delays.changed
        while True:
            changed.clear()
            wait = await self.step(self.ctx.clock())
            if wait == 0.0:
                continue
            try:
                await asyncio.wait_for(changed.wait(), wait)
            except TimeoutError:
                pass


class Reaper:
    """Closes silent sessions, extends live leases, expires lost ones, purges old results.

    ``drop`` forgets a session (and hands its leases back); ``acked`` is called
    each step so parked joins notice acknowledgements made elsewhere; ``settled``
    after each batch of dependency cascades continued here (it delivers the
    dependents failed and dispatches those freed). Every store sweep runs in
    bounded batches (:mod:`.maintenance`), so other requests are served between them.
    """

    def __init__(self, ctx: Context, *, drop: Callable[[Session], None], acked: Callable[[], None],
                 settled: Callable[[], Awaitable[None]] | None = None) -> None:
        self.ctx = ctx
        self.drop = drop
        self.acked = acked
        self.settled = settled
        limits, start = ctx.limits, ctx.monotonic()
        self.extend = timing.Cadence(timing.extend_every(limits.lease_for), start)
        self.expire = timing.Cadence(timing.EXPIRE_EVERY, start)
        self.purge = timing.Cadence(timing.purge_every(limits.result_ttl), start)

    @property
    def tick(self) -> float:
        """How long :meth:`run` sleeps between steps."""
        return timing.reaper_tick(self.ctx.limits.heartbeat_timeout, self.ctx.limits.lease_for)

    def silent(self, mono: float) -> list[Session]:
        """The sessions holding leases (a worker's tasks, a client's queue items) that have
        been silent past the heartbeat timeout at ``mono``: presumed dead."""
        timeout = self.ctx.limits.heartbeat_timeout
        return [s for s in self.ctx.sessions.values()
                if (s.role == "worker" or s.holds_items) and timing.session_silent(mono, s.last_seen, timeout)]

    async def step(self, mono: float, now: float) -> None:
        """One look at the sessions and the store at monotonic ``mono`` and wall time ``now``."""
        ctx = self.ctx
        for s in self.silent(mono):
            log.warning("%s %s (%s) missed its heartbeat for %.1fs: closing it",
                        s.role, s.name, s.peer, mono - s.last_seen)
            self.drop(s)
        if self.extend.due(mono):
            owners = [s.id for s in ctx.sessions.values() if s.inflight]
            if owners:
                await ctx.runner.call(self._extend, owners, now, durable=False)
        self.acked()
        if self.expire.due(mono) and ctx.leader:  # a shared store's leader alone sweeps
            expired = await maintenance.expire_leases(ctx, now)
            if expired:
                log.warning("%d lease(s) expired and went back to their queues", len(expired))
                ctx.metrics.expired(expired)
                ctx.work_added()
        if self.purge.due(mono) and ctx.leader:
            n = await maintenance.purge_finished(ctx, now - ctx.limits.result_ttl)
            if n:
                log.info("purged %d finished task(s) older than the result TTL", n)
        await maintenance.settle_pending(ctx, now, after_batch=self.settled)

    def _extend(self, owners: list[str], now: float) -> None:
        for owner in owners:
            self.ctx.store.extend_owner(owner, now, self.ctx.limits.lease_for)

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.tick)
            await self.step(self.ctx.monotonic(), self.ctx.clock())
