"""The numbers the master keeps about the work it does, since it started, in memory.

Counters of tasks by (queue, task name, outcome), results dropped as
duplicates, lease expiries, and histograms of task run time, queue wait and
store commit time. ``status()["metrics"]`` carries :meth:`Metrics.snapshot`;
the dashboard's ``/metrics`` turns it into Prometheus series. Nothing here
reads the store: every number is noted where the master already has it in
hand, so keeping them costs a dict update per task. A restart starts them
from zero (Prometheus treats that as a counter reset).

Sizes are bounded: task names beyond :data:`MAX_TASK_NAMES` distinct ones
count under :data:`OTHER`; the tasks followed from lease to outcome, and the
delayed tasks' due times, are capped (the oldest are forgotten first; a
forgotten task is still counted, only without its queue wait or run time).
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable
from typing import Any, NamedTuple

from ..records import Lease, NewTask

#: Outcomes of ``conveyor_tasks_total``.
SUBMITTED, SUCCEEDED, FAILED, RETRIED, DEAD, CANCELLED = (
    "submitted", "succeeded", "failed", "retried", "dead", "cancelled")
OUTCOMES = (SUBMITTED, SUCCEEDED, FAILED, RETRIED, DEAD, CANCELLED)
#: Distinct task names counted under their own label; the rest count under OTHER.
MAX_TASK_NAMES = 500
OTHER = "other"
#: Label of tasks without a name (network queue items).
NO_NAME = ""
#: Tasks followed from their lease to their outcome (for run time); beyond, the oldest go.
MAX_FOLLOWED = 1_000_000
#: Due times of delayed tasks remembered (for queue wait); beyond, the oldest go.
MAX_DUE = 100_000
#: Bucket bounds in seconds, Prometheus style (a +Inf bucket is implied).
TASK_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 1800.0)
COMMIT_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)


class Histogram:
    """Observations counted into fixed buckets, with their sum (a Prometheus histogram)."""

    __slots__ = ("bounds", "counts", "sum", "count")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last one is +Inf
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        """Count one observation (negative ones, from a clock step, count as 0)."""
        value = max(0.0, value)
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.sum += value
        self.count += 1

    def snapshot(self) -> dict[str, Any]:
        """``{"buckets": [[le, cumulative count]...], "sum", "count"}``; the last ``le`` is None (+Inf)."""
        cumulative, running = [], 0
        for le, n in zip([*self.bounds, None], self.counts):
            running += n
            cumulative.append([le, running])
        return {"buckets": cumulative, "sum": self.sum, "count": self.count}


class Followed(NamedTuple):
    """A leased task, as its outcome is counted: where it came from and when it started."""

    queue: str
    name: str
    started: float


class Metrics:
    """The master's counters and histograms (see the module docstring)."""

    def __init__(self) -> None:
        self.tasks: dict[tuple[str, str, str], int] = {}
        self.names: set[str] = set()
        self.duplicates = 0
        self.lease_expiries = 0
        self.run = Histogram(TASK_BUCKETS)
        self.wait = Histogram(TASK_BUCKETS)
        self.commit = Histogram(COMMIT_BUCKETS)
        self._followed: dict[str, Followed] = {}
        self._due: dict[str, float] = {}  # delayed task id -> when it is due (its not_before)

    def _name(self, name: str | None) -> str:
        """The label of a task name, bounded to MAX_TASK_NAMES distinct ones."""
        if not name:
            return NO_NAME
        if name in self.names:
            return name
        if len(self.names) >= MAX_TASK_NAMES:
            return OTHER
        self.names.add(name)
        return name

    def count(self, queue: str, name: str | None, outcome: str, n: int = 1) -> None:
        """``n`` tasks of ``queue`` and ``name`` had ``outcome``."""
        if n:
            key = (queue, self._name(name), outcome)
            self.tasks[key] = self.tasks.get(key, 0) + n

    def submitted(self, tasks: Iterable[NewTask], new: Iterable[bool], now: float) -> None:
        """Tasks a submit stored (``new``: False for an id stored already, not counted)."""
        for t, is_new in zip(tasks, new):
            if is_new:
                self.count(t.queue, t.name, SUBMITTED)
                if t.not_before > now:
                    self.due_at(t.id, t.not_before)

    def due_at(self, tid: str, when: float) -> None:
        """``tid`` waits until ``when`` (delayed, or retried after a delay): its queue wait starts then."""
        if len(self._due) >= MAX_DUE:
            del self._due[next(iter(self._due))]
        self._due[tid] = when

    def leased(self, leases: Iterable[Lease], now: float) -> None:
        """Tasks pushed to a worker at ``now``: their queue wait ends, their run starts.

        The wait counts from the task's creation (read from its id), or from
        when it was due if it was delayed or retried; a task whose id carries
        no creation time and that was never delayed gives no wait sample.
        """
        # Called for every task pushed: Histogram.observe and _name inlined for the common case.
        followed, due_at, names = self._followed, self._due, self.names
        wait = self.wait
        bounds, buckets = wait.bounds, wait.counts
        for x in leases:
            tid = x.id
            due = due_at.pop(tid, None) if due_at else None  # most tasks were never delayed
            ready = max(due or 0.0, created_at(tid, now) or 0.0)
            if ready:
                value = max(0.0, now - ready)
                buckets[bisect.bisect_left(bounds, value)] += 1
                wait.sum += value
                wait.count += 1
            if len(followed) >= MAX_FOLLOWED:
                del followed[next(iter(followed))]
            name = x.name
            followed[tid] = Followed(x.queue, name if name and name in names else self._name(name), now)

    def finished(self, tid: str, outcome: str, now: float) -> Followed | None:
        """A leased task's attempt ended with ``outcome`` at ``now``: count it, time its run.
        None if the task was not followed (leased before a cap dropped it, or not leased here)."""
        f = self._followed.pop(tid, None)
        if f is None:
            return None
        self.run.observe(now - f.started)
        key = (f.queue, f.name, outcome)
        self.tasks[key] = self.tasks.get(key, 0) + 1
        return f

    def forget(self, ids: Iterable[str]) -> None:
        """These leases went back unrun (handed back, or their holder left): no run to time."""
        for tid in ids:
            self._followed.pop(tid, None)

    def expired(self, ids: Iterable[str]) -> None:
        """These leases expired (their holder went silent): counted, and no run to time."""
        ids = list(ids)
        self.lease_expiries += len(ids)
        self.forget(ids)

    def snapshot(self) -> dict[str, Any]:
        """Plain data for ``status()["metrics"]``."""
        return {
            "tasks": [[q, name, outcome, n] for (q, name, outcome), n in sorted(self.tasks.items())],
            "duplicates": self.duplicates,
            "lease_expiries": self.lease_expiries,
            "task_run_seconds": self.run.snapshot(),
            "task_wait_seconds": self.wait.snapshot(),
            "store_commit_seconds": self.commit.snapshot(),
        }


#: Oldest creation time an id may carry to be believed (random 32-hex ids fall here rarely).
ID_TIME_WINDOW = 365 * 24 * 3600.0


def created_at(tid: str, now: float) -> float | None:
    """When a task with a conveyor id (:func:`conveyor.ids.new_id`) was created; None for
    another id (chosen by the caller, or a schedule's slot id): one that is not 32
    characters, or whose first 12 are not hex digits of a time within the last year."""
    if len(tid) != 32:
        return None
    try:
        at = int(tid[:12], 16) / 1000.0
    except ValueError:
        return None
    return at if now - ID_TIME_WINDOW <= at <= now + 1.0 else None
