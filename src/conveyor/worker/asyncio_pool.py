"""The asyncio pool: ``async def`` tasks run concurrently on an event loop in one child
process.

``concurrency`` is how many tasks run at once, all in one child
(:mod:`.async_child`). One child, not one per unit of concurrency: an event
loop's tasks wait on I/O, not on a CPU, so a single loop serves hundreds of
them, and one process keeps the memory of a worker with
``--concurrency 500`` that of one interpreter. ``concurrency`` keeps the
meaning it has for the other pools (tasks at once), which is what the
worker's credit is computed from; to use more cores, start more workers.

The child is a process, not a thread of the worker, so a task that crashes
it or blocks its loop cannot take the worker down: the child is replaced
and the tasks that were running in it fail (the crashed or killed task
with WorkerCrashed or TaskTimeout, the others with WorkerCrashed naming
why); nothing is lost, every job held is reported. A task past its
``timeout`` has its coroutine cancelled (TaskTimeout); if it has not ended
``grace`` seconds later (it blocks the loop, or swallows the cancellation)
the child is killed. Cancelling a running task works the same way. A
``soft_timeout`` raises SoftTimeLimitExceeded inside the coroutine, at the
``await`` where it waits.

A plain ``def`` task runs too, on one of ``concurrency`` threads of the
child; a thread cannot be stopped, so its time limit and its cancellation
kill the child after the grace period, and its soft limit does nothing.
"""

from __future__ import annotations

import asyncio
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .. import serde
from ..errors import WorkerCrashed
from ..options import headers_of
from .async_child import MSG_CANCEL, MSG_JOBS, _async_child_main
from .child import _exit_description
from .core import _Entry, log
from .execute import CANCELLED_MESSAGE, CancelledTask, _failed, _timeout_error
from .jobs import JobResult, OnResults
from .lifecycle import Lifecycle
from .process_pool import ProcessPool, _finalize, _kill, _ProcessCore, _reap, _Slot
from .tasklog import log_started

__all__ = ["AsyncioPool", "CANCEL_GRACE"]

#: Seconds a task may take to end after its coroutine was cancelled (time limit or
#: cancel) before its child is killed.
CANCEL_GRACE = 2.0


@dataclass(slots=True)
class _Inside:
    """A job the child holds."""

    entry: _Entry
    started: float
    timer: asyncio.TimerHandle | None = None
    timed_out: bool = False
    cancelled: bool = False


class _AsyncCore(_ProcessCore):
    """One child running up to ``concurrency`` jobs at once, driven from the event loop
    like a process pool's children; jobs go to it as soon as it has room."""

    def __init__(self, concurrency: int, modules: list[str], on_results: OnResults,
                 allow_pickle: bool, loop: asyncio.AbstractEventLoop | None, grace: float,
                 lifecycle: Lifecycle | None = None) -> None:
        if lifecycle is not None and lifecycle.autoscale is not None:
            raise ValueError("the asyncio pool runs one child: autoscale applies to the process pool")
        super().__init__(concurrency, modules, on_results, allow_pickle, loop, lifecycle)
        if not isinstance(grace, (int, float)) or isinstance(grace, bool) or grace < 0:
            raise ValueError(f"grace must be a number of seconds >= 0, not {grace!r}")
        self.grace = float(grace)
        self.slots = [_Slot(0)]
        self.inside: dict[str, _Inside] = {}  # by job id (changed under cond)
        self.kill_reason = ""  # why the pool killed its child, for the other jobs' errors

    def _child_target(self) -> tuple[Callable[..., None], tuple[Any, ...]]:
        return _async_child_main, (self.modules, self.allow_pickle, self.concurrency, self.settings)

    # -- the loop side (loop thread only) ----------------------------------------------
    def _dispatch(self) -> None:
        """Send the child as many pending jobs as it has room for, in one message."""
        if not self.pending_jobs:  # only this thread takes jobs; whoever adds some kicks
            return
        slot = self.slots[0]
        if not slot.attached or slot.recycle:
            return
        left = self.lifecycle.tasks_left(slot.done + len(self.inside))
        with self.cond:
            if self.closing or not self.gate_open():
                return
            now = time.monotonic()
            sent: list[_Inside] = []
            while self.pending_jobs and len(self.inside) < self.concurrency \
                    and (left is None or len(sent) < left):
                inside = _Inside(self.pending_jobs.popleft(), now)
                self.inside[inside.entry.job.id] = inside
                sent.append(inside)
            self.in_flight += len(sent)
            self.began([inside.entry for inside in sent])
        if not sent:
            return
        log_started([inside.entry.job for inside in sent])
        assert self.loop is not None
        for inside in sent:
            if inside.entry.timeout is not None:  # the child cancels it at the limit; this is the backstop
                inside.timer = self.loop.call_later(inside.entry.timeout + self.grace, self._overdue,
                                                    slot, inside, "passed its time limit")
        self._write(slot, serde.packb([MSG_JOBS, [
            [i.entry.job.id, i.entry.job.token, i.entry.job.name, i.entry.job.payload, i.entry.job.codec,
             i.entry.soft, i.entry.timeout, headers_of(i.entry.job.options) or None] for i in sent]]))

    def _answered(self, slot: _Slot, detail: Any, entries: list[_Entry], results: list[JobResult]) -> None:
        """Answers for some of the jobs the child holds."""
        try:
            answers = [(str(job_id), bool(ok), bytes(payload), str(codec), float(duration),
                        output if isinstance(output, str) else None)
                       for job_id, ok, payload, codec, duration, output in detail]
        except (ValueError, TypeError):
            log.error("pool process %d sent a malformed answer; replacing it", slot.proc.pid)
            _kill(slot.proc)
            return
        for job_id, ok, payload, codec, duration, output in answers:
            with self.cond:
                inside = self.inside.pop(job_id, None)
            if inside is None:
                continue
            if inside.timer is not None:
                inside.timer.cancel()
            job = inside.entry.job
            entries.append(inside.entry)
            results.append(JobResult(job.id, job.token, ok, payload, codec, duration, output))
            self._count_done(slot, 1)

    def _slot_idle(self, slot: _Slot) -> bool:
        return not self.inside

    def _overdue(self, slot: _Slot, inside: _Inside, why: str) -> None:
        """A job outlived its time limit or its cancel by the grace period: kill the child."""
        inside.timer = None
        with self.cond:
            if self.inside.get(inside.entry.job.id) is not inside or slot.proc is None:
                return
            if not inside.cancelled:
                inside.timed_out = True
            self.kill_reason = self.kill_reason or f"killed because task {inside.entry.job.name} {why}"
            proc = slot.proc
        _kill(proc)

    def cancel_running(self, task_id: str) -> bool:
        """Cancel the job's coroutine in the child (its answer reports it cancelled); the
        child is killed if it has not ended within the grace period."""
        with self.cond:
            inside = self.inside.get(task_id)
            if inside is None or self.slots[0].proc is None:
                return False
            inside.cancelled = True
        if self.on_loop():
            self._send_cancel(inside)
        else:
            self._call_soon(self._send_cancel, inside)
        return True

    def _send_cancel(self, inside: _Inside) -> None:
        slot = self.slots[0]
        if self.inside.get(inside.entry.job.id) is not inside or not slot.attached:
            return  # answered meanwhile, or the child is gone (its loss reports it)
        if inside.timer is not None:
            inside.timer.cancel()
        assert self.loop is not None
        inside.timer = self.loop.call_later(self.grace, self._overdue, slot, inside,
                                            "did not stop when cancelled")
        self._write(slot, serde.packb([MSG_CANCEL, inside.entry.job.id]))

    def _lost(self, slot: _Slot) -> None:
        """The child's pipe closed: a helper thread reaps it, reports every job it held,
        and replaces it."""
        self._detach(slot)
        with self.cond:
            held = list(self.inside.values())
            self.inside.clear()
            reason, self.kill_reason = self.kill_reason, ""
        for inside in held:
            if inside.timer is not None:
                inside.timer.cancel()
                inside.timer = None
        self._helper(self._bury_all, slot, held, reason)

    # -- helper threads ---------------------------------------------------------------
    def _bury_all(self, slot: _Slot, held: list[_Inside], reason: str) -> None:
        try:
            proc = slot.proc
            code = _reap(proc, 1.0) if proc is not None else None
            self._retire(slot, graceful=False)
            if held:
                self._report_held(held, code, reason)
            self._replace(slot)
        except Exception:
            log.exception("the asyncio pool's process failed")

    def _report_held(self, held: list[_Inside], code: int | None, reason: str) -> None:
        entries = [inside.entry for inside in held]
        if self.killed:
            self.report(entries, [])  # nothing is reported once killed
            return
        now = time.monotonic()
        died = f"{_exit_description(code)}{f' ({reason})' if reason else ''}"
        if not reason:
            log.warning("%s while running %d task(s)", died, len(held))
        results = []
        for inside in held:
            job, elapsed = inside.entry.job, now - inside.started
            if inside.timed_out:
                results.append(_failed(job, _timeout_error(job.name, inside.entry.timeout or 0.0), elapsed))
            elif inside.cancelled:
                results.append(_failed(job, CancelledTask(CANCELLED_MESSAGE)))
            else:
                results.append(_failed(job, WorkerCrashed(f"{died} while running task {job.name}"), elapsed))
        self.report(entries, results)


class AsyncioPool(ProcessPool):
    """Runs up to ``concurrency`` tasks at once on an event loop in one child process
    (see the module's description); the same interface as :class:`ProcessPool`.

    ``grace`` is how long (seconds) a task may take to end once its coroutine was
    cancelled, by its time limit or a cancel, before the child is killed.
    """

    def __init__(self, concurrency: int, modules: list[str], on_results: OnResults, *,
                 allow_pickle: bool = False, loop: asyncio.AbstractEventLoop | None = None,
                 grace: float = CANCEL_GRACE, lifecycle: Lifecycle | None = None) -> None:
        self._core = _AsyncCore(concurrency, modules, on_results, allow_pickle, loop, grace, lifecycle)
        self._finalizer = weakref.finalize(self, _finalize, self._core)
