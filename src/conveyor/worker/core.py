"""What every pool kind shares: the queue of pending jobs, the in-flight count, the
run-time average and batching rule (:class:`_Core`), and the public methods
(:class:`_PoolBase`). A pool kind subclasses both and adds where its jobs run."""

from __future__ import annotations

import collections
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..options import soft_timeout_of, timeout_of
from .execute import CANCELLED_MESSAGE, CancelledTask, _failed
from .jobs import Job, JobResult, OnProgress, OnResults, OnStarted

# Every pool module logs under this one name (operators filter on it).
log = logging.getLogger("conveyor.worker.pool")

#: Most jobs a slot takes as one batch while tasks are very short.
MAX_BATCH = 64
#: Below this mean run time (seconds) jobs are batched.
BATCH_BELOW = 0.001
#: Weight of the newest run time in :attr:`avg_duration`.
EWMA_ALPHA = 0.1
#: How long a new child may take to import the task modules.
STARTUP_TIMEOUT = 60.0
#: How long a child may take to exit after it was asked to.
EXIT_TIMEOUT = 5.0
#: How often a waiting slot thread looks at its flags.
_TICK = 0.5


@dataclass(slots=True)
class _Entry:
    job: Job
    timeout: float | None
    soft: float | None = None  # the soft_timeout option
    alone: bool = False  # a soft time limit, or requeued after a crash in a batch: run it by itself


class _Core:
    """Pending jobs, counters and the run-time average shared by a pool's slots."""

    def __init__(self, concurrency: int, modules: list[str], on_results: OnResults,
                 allow_pickle: bool) -> None:
        if not isinstance(concurrency, int) or isinstance(concurrency, bool) or concurrency < 1:
            raise ValueError(f"concurrency must be a positive integer, not {concurrency!r}")
        self.on_progress: OnProgress | None = None
        self.on_started: OnStarted | None = None
        # While it returns False, no pending job starts (the worker is not sure it still
        # holds their leases: after a stall or a reconnect, until the master confirms).
        self.may_start: Callable[[], bool] | None = None
        self.concurrency = concurrency
        self.modules = list(modules)
        self.on_results = on_results
        self.allow_pickle = allow_pickle
        self.cond = threading.Condition()
        self.pending_jobs: collections.deque[_Entry] = collections.deque()
        self.in_flight = 0
        self.avg = 0.0
        self.samples = 0
        self.started = False
        self.closing = False  # no new batches are started
        self.killed = False  # results of running batches are dropped
        self.threads: list[threading.Thread] = []

    # called by the pool's user
    def submit(self, jobs: list[Job]) -> None:
        entries = []
        for job in jobs:
            if not job.options:  # most tasks: no time limits to read
                entries.append(_Entry(job, None))
                continue
            soft = soft_timeout_of(job.options)
            entries.append(_Entry(job, timeout_of(job.options), soft, soft is not None))
        with self.cond:
            if self.closing:
                raise RuntimeError("the pool is shut down")
            self.pending_jobs.extend(entries)
            self.cond.notify(len(entries))
        self.kick()

    def kick(self) -> None:
        """Jobs became pending (slot threads waiting on ``cond`` were notified already)."""

    def discard_pending(self) -> list[Job]:
        with self.cond:
            jobs = [entry.job for entry in self.pending_jobs]
            self.pending_jobs.clear()
        return jobs

    def cancel(self, task_id: str) -> bool:
        """Cancel a job: pending ones are reported cancelled at once, running ones stopped
        where the pool can stop them. False if the pool does not hold it or cannot stop it."""
        with self.cond:
            for entry in self.pending_jobs:
                if entry.job.id == task_id:
                    self.pending_jobs.remove(entry)
                    self.in_flight += 1
                    break
            else:
                entry = None
        if entry is not None:
            self.report([entry], [_failed(entry.job, CancelledTask(CANCELLED_MESSAGE))])
            return True
        return self.cancel_running(task_id)

    def cancel_running(self, task_id: str) -> bool:
        return False  # threads cannot be stopped

    def progress(self, report: dict[str, Any]) -> None:
        """A running task reported progress."""
        if self.on_progress is not None and not self.killed:
            try:
                self.on_progress(report)
            except Exception:
                log.exception("the pool's on_progress callback failed")

    def began(self, entries: list[_Entry]) -> None:
        """These jobs left the pending queue for a slot: tell ``on_started`` (it must not block)."""
        if self.on_started is not None and entries and not self.killed:
            try:
                self.on_started([entry.job for entry in entries])
            except Exception:
                log.exception("the pool's on_started callback failed")

    def gate_open(self) -> bool:
        """True unless the worker holds pending jobs back (see ``may_start``)."""
        gate = self.may_start
        return gate is None or gate()

    def resume(self) -> None:
        """The gate may have opened: look at the pending jobs again."""
        with self.cond:
            self.cond.notify_all()
        self.kick()

    def pending(self) -> int:
        return len(self.pending_jobs)

    def running(self) -> int:
        return self.in_flight

    # called by slot threads
    def take_batch(self) -> list[_Entry] | None:
        """Wait for work; None once the pool is closing (pending jobs stay unstarted)."""
        with self.cond:
            while not self.closing:
                if self.pending_jobs:
                    batch = self.take_batch_locked()  # None while the gate is closed
                    if batch is not None:
                        return batch
                self.cond.wait(_TICK)
            return None

    def take_batch_locked(self, most: int | None = None) -> list[_Entry] | None:
        """The next batch (of at most ``most`` jobs), or None if nothing is pending or the
        pool is closing (hold ``cond``)."""
        if self.closing or not self.pending_jobs or (most is not None and most < 1) \
                or not self.gate_open():
            return None
        first = self.pending_jobs.popleft()
        batch = [first]
        if (not first.alone and first.timeout is None and self.samples
                and self.avg < BATCH_BELOW):
            # Share what is queued among the slots, up to MAX_BATCH each.
            limit = min(MAX_BATCH, max(1, (len(self.pending_jobs) + 1) // self.concurrency))
            if most is not None:
                limit = min(limit, most)
            while len(batch) < limit and self.pending_jobs:
                nxt = self.pending_jobs[0]
                if nxt.alone or nxt.timeout is not None:
                    break
                batch.append(self.pending_jobs.popleft())
        self.in_flight += len(batch)
        self.began(batch)
        return batch

    def requeue_alone(self, batch: list[_Entry]) -> None:
        """Put a batch back at the front of the queue, each job to run by itself."""
        with self.cond:
            for entry in reversed(batch):
                entry.alone = True
                self.pending_jobs.appendleft(entry)
            self.in_flight -= len(batch)
            self.cond.notify_all()
        self.kick()

    def report(self, batch: list[_Entry], results: list[JobResult]) -> None:
        """Hand results to the callback (unless killed), then count the batch as done."""
        try:
            if not self.killed:
                self.on_results(results)
        except Exception:
            log.exception("the pool's on_results callback failed")
        finally:
            with self.cond:
                self.in_flight -= len(batch)
                for result in results:
                    if result.duration > 0:
                        if self.samples:
                            self.avg += EWMA_ALPHA * (result.duration - self.avg)
                        else:
                            self.avg = result.duration
                        self.samples += 1
                if self.closing:
                    self.cond.notify_all()  # shutdown(wait=True) waits for in_flight to drain

    def join_threads(self, timeout: float | None) -> None:
        me = threading.current_thread()
        with self.cond:
            threads = list(self.threads)
        for thread in threads:
            if thread is not me:
                thread.join(timeout)


class _PoolBase:
    """The public face of a pool; the threads hold only the core, so an
    unreferenced pool is collected and its core shut down."""

    _core: _Core

    def submit(self, jobs: list[Job]) -> None:
        """Queue jobs to run (thread-safe, never blocks)."""
        self._core.submit(list(jobs))

    def discard_pending(self) -> list[Job]:
        """Take back and return the jobs that have not started yet (warm shutdown)."""
        return self._core.discard_pending()

    def pending(self) -> int:
        """Jobs queued and not yet started."""
        return self._core.pending()

    def running(self) -> int:
        """Jobs started (handed to a slot) and not yet reported."""
        return self._core.running()

    def cancel(self, task_id: str) -> bool:
        """Cancel a job: a pending one is reported failed (cancelled) at once; a running one
        is stopped by killing its process (process pool) or cancelling its coroutine (asyncio
        pool; its process is killed if it does not end). False if not held or unstoppable
        (a thread pool's running job)."""
        return self._core.cancel(task_id)

    def set_progress_callback(self, fn: OnProgress | None) -> None:
        """Call ``fn(report)`` (where results are reported) when a task reports progress."""
        self._core.on_progress = fn

    def set_start_gate(self, fn: Callable[[], bool] | None) -> None:
        """Start pending jobs only while ``fn()`` is true (called holding the pool's lock,
        from any thread: it must only look at flags and return); :meth:`resume` once it
        may have become true."""
        self._core.may_start = fn

    def resume(self) -> None:
        """Look at the pending jobs again (the start gate may have opened)."""
        self._core.resume()

    def discard(self, ids: set[str]) -> list[Job]:
        """Take back the pending jobs among ``ids`` (their leases were lost); the others stay."""
        with self._core.cond:
            kept = [e for e in self._core.pending_jobs if e.job.id not in ids]
            gone = [e.job for e in self._core.pending_jobs if e.job.id in ids]
            self._core.pending_jobs.clear()
            self._core.pending_jobs.extend(kept)
        return gone

    def set_started_callback(self, fn: OnStarted | None) -> None:
        """Call ``fn(jobs)`` when jobs leave the pending queue for a slot (from the thread that
        took them, maybe holding the pool's lock: ``fn`` must only record and return)."""
        self._core.on_started = fn

    @property
    def avg_duration(self) -> float:
        """Exponentially weighted mean run time of a task in seconds (0 before the first)."""
        return self._core.avg

