"""What the master's services share, handed to each one at construction.

A service (submit and results, dispatch, queues, jobs, schedules, timers)
reaches the rest of the master only through a :class:`Context`: the store
and its runner, the clocks, the sessions, the counters and metrics, the
worker roster, the wake-up of dispatch, result delivery, and the delay timer. Nothing reads another
module's private attributes.
"""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

from ..store import Store
from .dispatch import QueueTracker, Wake
from .metrics import Metrics
from .rates import RateMeter
from .results import Subscriptions
from .roster import Roster
from .runner import StoreRunner
from .session import Session
from .timers import DueTimes

#: A route's handler: (session, request id, decoded request record).
Handler = Callable[[Session, int, Any], Coroutine[Any, Any, None]]
#: A service's routes: op -> handler. The master merges every service's into one table.
Routes = dict[str, Handler]


@dataclass(frozen=True, slots=True)
class Limits:
    """The master's configured durations and permissions the services read."""

    lease_for: float
    heartbeat_timeout: float
    result_ttl: float
    allow_pickle: bool


@dataclass(eq=False)
class Context:
    """The master's shared parts, as its services see them.

    ``clock`` is wall time (stored deadlines and timestamps outlive a restart);
    ``monotonic`` is for silences and rate buckets. Both are injectable, so
    unit tests drive time instead of sleeping.
    """

    store: Store
    limits: Limits
    clock: Callable[[], float] = time.time
    monotonic: Callable[[], float] = time.monotonic
    sessions: dict[str, Session] = field(default_factory=dict)
    counters: defaultdict[str, int] = field(default_factory=lambda: defaultdict(int))
    queues: QueueTracker = field(default_factory=QueueTracker)
    wake: Wake = field(default_factory=Wake)  # a dispatch pass is due
    subs: Subscriptions = field(default_factory=Subscriptions)
    delays: DueTimes = field(default_factory=DueTimes)  # when the next delayed task is due
    metrics: Metrics = field(default_factory=Metrics)  # counters and histograms since start
    roster: Roster = field(default_factory=Roster)  # worker sessions' records, workers gone
    #: This master leads the cluster (runs expiry, delay promotion, purges, schedules):
    #: always, on a store only one master serves; on a shared one, while it holds the
    #: store's leader lock (master/cluster.py).
    leader: bool = True
    completed: RateMeter = field(init=False)
    _runner: StoreRunner | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        self.completed = RateMeter(clock=self.monotonic)

    def bind_runner(self, runner: StoreRunner) -> None:
        """The store runner, made by ``Master.start`` once the loop runs."""
        self._runner = runner
        runner.on_commit = self.metrics.commit.observe

    @property
    def started(self) -> bool:
        return self._runner is not None

    @property
    def runner(self) -> StoreRunner:
        """Runs store calls in transactions; replies wait for its commits."""
        if self._runner is None:
            raise RuntimeError("the master has not started")
        return self._runner

    def work_added(self, queue: str | None = None) -> None:
        """Work may be ready in ``queue`` (None: in any queue): a dispatch pass is due."""
        if queue is None:
            self.queues.changed_unknown()
        else:
            self.queues.changed(queue)
        self.wake.set()

    def release(self, pairs: list[tuple[str, int]], now: float) -> None:
        """Hand leases back to their queues (their holder is gone, or never got them)."""
        self.after_release(self.runner.call(self.store.release, pairs, now))

    def after_release(self, fut: asyncio.Future[Any]) -> None:
        """When a release commits: dispatch what it made ready."""
        def done(f: asyncio.Future[Any]) -> None:
            if not f.cancelled() and f.exception() is None and f.result():
                self.work_added()

        fut.add_done_callback(done)
