"""What the dashboard knows between polls: the latest status and an hour of samples.

One :class:`Monitor` polls the master's ``status`` once per interval for every
browser tab and every Prometheus scrape, so the cost to the master does not
grow with the number of viewers. Samples are kept in a ring buffer in this
process, so a browser reload keeps the charts (a dashboard restart starts them
afresh; the tasks themselves are in the master's store). Workers' records and
the workers gone are the master's (``status()["workers"]``, ``["gone_workers"]``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..records import DEAD, FAILED, STATES, SUCCEEDED
from .gateway import Gateway, MasterDown

log = logging.getLogger("conveyor.dashboard")
POLL_INTERVAL = 2.0  # seconds between status polls: the pages' refresh cadence
HISTORY_SECONDS = 3600.0  # the charts cover the last hour
# A status call costs the master its duration (today a count over the store); waiting at least
# this many times that long between calls keeps the dashboard under 1/20 (5 %) of the master's time.
COST_FACTOR = 20.0


def next_delay(interval: float, poll_seconds: float | None) -> float:
    """Seconds until the next status poll: the interval, stretched when status is expensive."""
    return max(interval, (poll_seconds or 0.0) * COST_FACTOR)


@dataclass(slots=True, frozen=True)
class Sample:
    """One poll's numbers, as the charts plot them."""

    at: float
    completed_per_s: float
    failed_per_s: float
    depth: dict[str, int]  # state -> tasks in that state, over every queue
    workers: int
    clients: int
    inflight: int


def finished_counts(queues: dict[str, dict[str, int]]) -> tuple[int, int]:
    """(succeeded, failed or dead) over every queue."""
    ok = sum(q.get(SUCCEEDED, 0) for q in queues.values())
    bad = sum(q.get(FAILED, 0) + q.get(DEAD, 0) for q in queues.values())
    return ok, bad


@dataclass
class Monitor:
    """Polls ``status`` and keeps the latest document, rates and history."""

    gateway: Gateway
    interval: float = POLL_INTERVAL
    history: deque[Sample] = field(default_factory=deque)
    status: dict[str, Any] | None = None  # the latest status document, None until one arrived
    status_at: float | None = None
    poll_seconds: float | None = None  # how long the latest status call took
    queue_rates: dict[str, float] = field(default_factory=dict)  # queue -> finished tasks/s
    polls: int = 0
    on_poll: Callable[[float], None] | None = None  # told each successful poll's duration

    def __post_init__(self) -> None:
        self.history = deque(maxlen=max(1, int(HISTORY_SECONDS / self.interval)))

    @property
    def up(self) -> bool:
        """True when the latest poll reached the master."""
        return self.gateway.down_reason is None and self.status is not None

    async def poll_once(self) -> None:
        """One status call; updates everything, or records that the master is down."""
        started = time.monotonic()
        try:
            st = await self.gateway.call(lambda c: c.status())
        except MasterDown as exc:
            log.warning("master unreachable: %s", exc)
            return
        self.poll_seconds = time.monotonic() - started
        if self.on_poll is not None:
            self.on_poll(self.poll_seconds)
        self.record(st, time.time())

    def record(self, st: dict[str, Any], now: float) -> None:
        """Fold one status document in (pure apart from the clock value given)."""
        prev, prev_at = self.status, self.status_at
        self.status, self.status_at = st, now
        self.polls += 1
        queues: dict[str, dict[str, int]] = st.get("queues", {})
        completed_s = failed_s = 0.0
        if prev is not None and prev_at is not None and now > prev_at:
            dt = now - prev_at
            # Counts drop when tasks are purged or retried: a negative step counts as 0.
            ok0, bad0 = finished_counts(prev.get("queues", {}))
            ok1, bad1 = finished_counts(queues)
            completed_s = max(0, ok1 - ok0) / dt
            failed_s = max(0, bad1 - bad0) / dt
            self.queue_rates = {}
            for q, counts in queues.items():
                before = prev.get("queues", {}).get(q, {})
                done = sum(counts.get(s, 0) - before.get(s, 0) for s in (SUCCEEDED, FAILED, DEAD))
                self.queue_rates[q] = round(max(0, done) / dt, 2)
        workers = st.get("workers", [])
        depth = {s: sum(q.get(s, 0) for q in queues.values()) for s in STATES}
        self.history.append(Sample(at=now, completed_per_s=round(completed_s, 2),
                                   failed_per_s=round(failed_s, 2), depth=depth,
                                   workers=len(workers), clients=int(st.get("clients", 0)),
                                   inflight=sum(int(w.get("inflight", 0)) for w in workers)))

    def latest(self) -> Sample | None:
        """The newest sample, or None before the first poll."""
        return self.history[-1] if self.history else None

    def series(self) -> dict[str, list[Any]]:
        """The history as columns, for the charts (uPlot takes one array per series)."""
        h = list(self.history)
        return {
            "t": [round(s.at, 1) for s in h],
            "completed_per_s": [s.completed_per_s for s in h],
            "failed_per_s": [s.failed_per_s for s in h],
            "workers": [s.workers for s in h],
            "clients": [s.clients for s in h],
            "inflight": [s.inflight for s in h],
            **{f"depth_{state}": [s.depth.get(state, 0) for s in h] for state in STATES},
        }

    async def run(self) -> None:
        """Poll forever, once per interval or slower if status is costly (until cancelled)."""
        while True:
            await self.poll_once()
            await asyncio.sleep(next_delay(self.interval, self.poll_seconds))
