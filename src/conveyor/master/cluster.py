"""Several masters on one shared store (PostgreSQL): membership and leadership.

Each master registers in the store's masters table and heartbeats every
:data:`HEARTBEAT_EVERY` seconds (the heartbeat time is the database's clock, so
skew between masters decides nothing). Each heartbeat also measures the offset
between the master's clock and the database's, and the master's wall clock
(``ctx.clock``: lease deadlines, delays, finish times) follows the database's. Leases name the master whose session
holds them, and only the leases of a master silent for :data:`DEAD_AFTER`
seconds (or of none) are handed back: at start-up, and by the leader on every
step. A master never voids the leases a live peer holds.

One master leads (the store's leader lock, taken over when its holder dies):
the leader alone expires leases, promotes delayed tasks, purges old results and
fires periodic schedules. It also looks at the store's next due time on every
step, so a delayed task submitted through another master (or one that died) is
promoted on time. A store that only one master serves needs none of this: its
master is always the leader and :class:`Membership` is not started.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import uuid
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .. import __version__
from ..options import rate_limit_of
from ..records import Lease
from ..store import Store

if TYPE_CHECKING:
    from .context import Context

log = logging.getLogger("conveyor.master")

#: Seconds between a master's heartbeats (and leadership checks).
HEARTBEAT_EVERY = 1.0
#: A master silent this long (database clock) is dead: its leases go back to their queues.
DEAD_AFTER = 10.0
#: Heartbeats whose clock readings are kept; the one with the shortest round trip sets
#: the offset between this machine's clock and the database's.
OFFSET_SAMPLES = 30
#: An offset larger than this (seconds) is logged: the machine's clock is off.
SKEW_WARNING = 1.0
#: Leases handed back per store call when releasing dead masters' leases.
BATCH = 1000
#: The most workers one master lists in its row (what ``conveyor status`` shows).
MAX_LISTED = 200


class Membership:
    """This master's row in the shared store, its heartbeat and its leadership.

    ``address`` gives the address clients reach this master at; ``on_lead`` runs
    when this master becomes the leader (to wake the leader-only loops); ``on_step``
    after every heartbeat (to look again at what other masters may have changed).
    """

    def __init__(self, ctx: Context, *, address: Callable[[], str],
                 on_lead: Callable[[], None] | None = None, settings: dict[str, Any] | None = None,
                 on_step: Callable[[], None] | None = None, dead_after: float = DEAD_AFTER) -> None:
        self.ctx = ctx
        self.id = uuid.uuid4().hex
        self.address = address
        self.on_lead = on_lead
        self.on_step = on_step
        self.settings = dict(settings or {})
        self.dead_after = dead_after
        ctx.leader = False  # until the store's leader lock says otherwise
        # The master's wall clock becomes the database's: deadlines, delays and finish
        # times written by every master then agree, whatever the skew between their
        # machines. The offset is measured at each heartbeat; the sample with the
        # shortest round trip of the last ones is the most exact.
        self.offset = 0.0
        self._samples: deque[tuple[float, float]] = deque(maxlen=OFFSET_SAMPLES)
        self._wall = ctx.clock
        ctx.clock = self.clock

    def info(self) -> dict[str, Any]:
        """What this master's row shows: who it is and the sessions it serves."""
        sessions = list(self.ctx.sessions.values())
        workers = [s for s in sessions if s.role == "worker"]
        return {
            "pid": os.getpid(), "host": socket.gethostname(), "version": __version__,
            "leader": self.ctx.leader, "settings": self.settings,
            "clients": sum(1 for s in sessions if s.role == "client"),
            "workers": [{"name": w.name, "host": w.host, "pid": w.pid, "queues": w.queues,
                         "concurrency": w.concurrency, "inflight": len(w.inflight)}
                        for w in workers[:MAX_LISTED]],
            "worker_count": len(workers),
        }

    async def join(self) -> None:
        """Register (before this master leases anything) and hand back dead masters' leases."""
        await self.heartbeat()
        await self.release_dead()
        await self.lead()
        peers = await self.ctx.runner.call(self.ctx.store.masters)
        for peer in peers:
            theirs = peer["info"].get("settings")
            if (peer["id"] != self.id and peer["heartbeat_age"] < self.dead_after
                    and theirs is not None and theirs != self.settings):
                log.warning("master %s at %s runs with other settings (%s) than this one (%s): "
                            "tasks behave differently depending on the master they reach",
                            peer["id"], peer["address"], theirs, self.settings)

    def clock(self) -> float:
        """Wall time on the database's clock (this machine's, corrected by the offset)."""
        return self._wall() + self.offset

    async def heartbeat(self) -> None:
        ctx = self.ctx
        sent = self._wall()
        theirs = await ctx.runner.call(ctx.store.heartbeat_master, self.id, self.address(),
                                       self.info(), self.clock(), durable=False)
        back = self._wall()
        if theirs is not None:
            self._samples.append((back - sent, theirs - (sent + back) / 2))
            offset = min(self._samples)[1]
            if abs(offset) > SKEW_WARNING and abs(self.offset) <= SKEW_WARNING:
                log.warning("this machine's clock is %.1fs off the database's: this master "
                            "uses the database's", offset)
            self.offset = offset

    async def lead(self) -> None:
        """Take (or keep) the leadership if free; on taking it, wake the leader's work."""
        ctx = self.ctx
        was = ctx.leader
        ctx.leader = await asyncio.to_thread(ctx.store.try_lead)
        if ctx.leader and not was:
            log.info("this master (%s) leads the cluster", self.id)
            await self.poll_due()
            if self.on_lead is not None:
                self.on_lead()
        elif was and not ctx.leader:
            log.warning("this master (%s) lost the cluster's leadership", self.id)

    async def release_dead(self) -> int:
        """Hand back the leases of dead masters (and of none), in bounded batches."""
        ctx, total = self.ctx, 0
        while True:
            n: int = await ctx.runner.call(
                lambda: ctx.store.release_dead(self.dead_after, ctx.clock(), limit=BATCH))
            total += n
            if n < BATCH:
                break
        if total:
            log.warning("%d lease(s) of masters gone silent went back to their queues", total)
            ctx.work_added()
        return total

    async def poll_due(self) -> None:
        """Learn when the next delayed task is due, whoever submitted it."""
        ctx = self.ctx
        next_due = await ctx.runner.call(ctx.store.next_due)
        if next_due is not None:
            ctx.delays.due_at(next_due)
            ctx.delays.changed.set()

    async def step(self) -> None:
        """One heartbeat, leadership check, and (leader) dead-lease sweep and due-time look.
        Every master also treats every queue as possibly non-empty again: work another
        master added is found within a step even if its announcement was missed."""
        await self.heartbeat()
        await self.lead()
        if self.ctx.leader:
            await self.release_dead()
            await self.poll_due()
        self.ctx.work_added()
        if self.on_step is not None:
            self.on_step()

    async def run(self) -> None:
        while True:
            await asyncio.sleep(HEARTBEAT_EVERY)
            try:
                await self.step()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("cluster heartbeat failed; trying again")


def shared_rate_limit(store: Store, leases: list[Lease], now: float) -> list[Lease]:
    """Keep the leases within their task's rate for the whole cluster; put the rest back,
    delayed until a token is due (not a failed attempt). Store thread, inside the
    leasing transaction: the buckets are rows of the shared store, on its clock, so N
    masters together lease no more than the rate."""
    groups: dict[tuple[str, float, float], list[Lease]] = {}
    keep: list[Lease] = []
    for x in leases:
        rate = rate_limit_of(x.options)
        if rate is None:
            keep.append(x)
        else:
            groups.setdefault((x.name or "", *rate), []).append(x)
    if not groups:
        return leases
    for (name, capacity, per), group in groups.items():
        taken, left = store.take_tokens(f"{name} {capacity:g}/{per:g}", capacity, per, len(group))
        keep.extend(group[:taken])
        per_second = capacity / per
        for k, x in enumerate(group[taken:]):
            # The k-th one short is due when k+1 more tokens have come (others may take
            # them first: then it is put back again).
            store.nack(x.id, x.token, now, delay=max(0.001, (k + 1 - left) / per_second))
    order = {x.id: i for i, x in enumerate(leases)}
    return sorted(keep, key=lambda x: order[x.id])

