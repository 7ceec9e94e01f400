"""The asyncio pool's child: many tasks at once on one event loop.

Started with ``spawn`` like a process pool child (:mod:`.child`), with the
same start-up and pipe framing, but jobs arrive one message at a time and
run concurrently: an ``async def`` task as an asyncio task on the child's
loop, a plain ``def`` task on one of ``concurrency`` threads of the child.
Each answer goes back as soon as its task ends (answers that are ready in
the same loop turn share one message).

Messages from the parent (msgpack): ``["j", [[id, token, name, payload,
codec, soft_timeout, timeout], ...]]`` runs jobs, ``["c", id]`` cancels one,
an empty frame stops the child. To the parent: ``["r", [[id, ok, payload,
codec, duration, output], ...]]``, and progress as from a process pool child.

Time limits and cancellation of an ``async def`` task cancel its coroutine
(the task fails with TaskTimeout or as cancelled); a soft limit raises
SoftTimeLimitExceeded inside it. A thread cannot be stopped, so for a plain
``def`` task these are left to the parent, which kills the child when a
task outlives its limit (or its cancel) by a grace period.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import functools
import inspect
import multiprocessing.connection
import os
import threading
import time
from typing import Any

from .. import loops, middleware, serde
from ..context import CurrentTask, OutputRing, set_current
from ..tasks import Registry
from .child import _MSG_PROGRESS, _MSG_RESULTS, _READ_SIZE, _child_exit, _child_start, _frames_from
from .coroutine import Interruptible, soft_limit_error
from .execute import (
    CANCELLED_MESSAGE,
    OUTPUT_LIMIT,
    CancelledTask,
    _encode_error,
    _hooked,
    _output,
    _prepare,
    _timeout_error,
)
from .lifecycle import rss_bytes

__all__ = ["MSG_JOBS", "MSG_CANCEL"]

MSG_JOBS = "j"
MSG_CANCEL = "c"


def _async_child_main(conn: multiprocessing.connection.Connection, modules: list[str],
                      allow_pickle: bool, concurrency: int = 1,
                      settings: dict[str, Any] | None = None) -> None:
    """An asyncio pool child: import the modules once, then run jobs concurrently until
    told to stop (then its ``on_child_exit`` hooks run)."""
    settings = settings or {}
    registry = _child_start(conn, modules, settings)
    loop = loops.new_event_loop()
    child = _Child(conn, registry, allow_pickle, concurrency, bool(settings.get("capture")),
                   bool(settings.get("memory")))
    try:
        loop.run_until_complete(child.serve())
    finally:
        loop.close()
    if child.asked_to_stop:
        _child_exit()


class _Run:
    """One job running in this child."""

    __slots__ = ("id", "name", "task", "waiter", "timed_out", "cancelled", "timeout")

    def __init__(self, job_id: str, name: str, timeout: float | None) -> None:
        self.id = job_id
        self.name = name
        self.timeout = timeout
        self.task: asyncio.Task[None] | None = None
        self.waiter: Interruptible | None = None  # set while an async def task runs
        self.timed_out = False
        self.cancelled = False


class _Child:
    def __init__(self, conn: multiprocessing.connection.Connection, registry: Registry,
                 allow_pickle: bool, concurrency: int, capture: bool = False,
                 measure_memory: bool = False) -> None:
        self.conn = conn
        self.capture = capture
        self.measure_memory = measure_memory
        self.asked_to_stop = False
        self.fd = conn.fileno()
        self.registry = registry
        self.allow_pickle = allow_pickle
        # Plain def tasks run here, as many at once as the pool runs tasks.
        self.threads = concurrent.futures.ThreadPoolExecutor(max(1, concurrency),
                                                             thread_name_prefix="conveyor-sync")
        self.runs: dict[str, _Run] = {}
        self.buf = bytearray()
        self.outbox: list[list[Any]] = []
        self.loop: asyncio.AbstractEventLoop | None = None
        self.loop_thread: int | None = None  # ident of the thread running the loop
        self.stopped: asyncio.Future[None] | None = None

    async def serve(self) -> None:
        self.loop = loop = asyncio.get_running_loop()
        self.loop_thread = threading.get_ident()
        self.stopped = loop.create_future()
        loop.add_reader(self.fd, self._readable)
        try:
            await self.stopped
        finally:
            loop.remove_reader(self.fd)
            self.threads.shutdown(wait=False, cancel_futures=True)

    def _stop(self) -> None:
        if self.stopped is not None and not self.stopped.done():
            self.stopped.set_result(None)

    # -- from the parent ---------------------------------------------------------------
    def _readable(self) -> None:
        try:
            chunk = os.read(self.fd, _READ_SIZE)
        except BlockingIOError:
            return
        except OSError:
            chunk = b""
        if not chunk:
            self._stop()  # the parent is gone
            return
        for body in _frames_from(self.buf, chunk):
            if not body:
                self.asked_to_stop = True
                self._stop()  # asked to stop (the parent waits until nothing runs)
                return
            kind, detail = serde.unpackb(body)
            if kind == MSG_JOBS:
                for job in detail:
                    self._start(*job)
            elif kind == MSG_CANCEL:
                self._cancel(detail)

    def _start(self, job_id: str, token: int, name: str, payload: bytes, codec: str,
               soft: float | None, timeout: float | None, headers: dict[str, str] | None = None) -> None:
        assert self.loop is not None
        run = _Run(job_id, name, timeout)
        self.runs[job_id] = run
        current = CurrentTask(job_id, name, token, self._send_progress, headers=headers or {})
        if self.capture:
            current.output = OutputRing(OUTPUT_LIMIT)
        # create_task copies this context: each task sets its own current_task().
        run.task = self.loop.create_task(self._run(run, current, payload, codec, soft))

    def _cancel(self, job_id: str) -> None:
        run = self.runs.get(job_id)
        if run is None:
            return
        # Marked even before its coroutine started (the cancel can arrive in the same read as
        # the job): _run checks the mark before it calls the task.
        run.cancelled = True
        if run.waiter is not None and run.task is not None:
            run.task.cancel()
        # A plain def task cannot be stopped: the parent kills this child after its grace.

    def _time_out(self, run: _Run) -> None:
        if run.task is not None and not run.task.done():
            run.timed_out = True
            run.task.cancel()

    # -- running one job ---------------------------------------------------------------
    async def _run(self, run: _Run, current: CurrentTask, payload: bytes, codec: str,
                   soft: float | None) -> None:
        assert self.loop is not None
        set_current(current)
        duration = 0.0
        timers: list[asyncio.TimerHandle] = []
        hooked = _hooked(current)
        if hooked is not None:
            middleware.before_task(hooked)
        try:
            fn, args, kwargs = _prepare(self.registry, run.name, payload, codec, self.allow_pickle)
            if run.cancelled:  # cancelled before it started
                raise asyncio.CancelledError()
            start = time.perf_counter()
            try:
                if inspect.iscoroutinefunction(fn):
                    run.waiter = waiter = Interruptible(fn(*args, **kwargs))
                    if run.timeout:
                        timers.append(self.loop.call_later(run.timeout, self._time_out, run))
                    if soft:
                        timers.append(self.loop.call_later(soft, waiter.interrupt, soft_limit_error()))
                    value = await waiter
                else:
                    call = functools.partial(contextvars.copy_context().run, fn, *args, **kwargs)
                    value = await self.loop.run_in_executor(self.threads, call)
                    if inspect.iscoroutine(value):  # a plain function that returned a coroutine
                        value = await value
            finally:
                duration = time.perf_counter() - start
                if run.timeout and duration > run.timeout:  # it ended, but past its limit
                    run.timed_out = True
            if run.timed_out or run.cancelled:  # it caught the cancellation and returned
                raise asyncio.CancelledError()
            answer = [run.id, True, serde.encode(value, codec), codec, duration, _output(current.output)]
            if hooked is not None:
                middleware.after_task(hooked, value)
        except BaseException as exc:  # a task's failure, whatever it raised
            if run.timed_out:
                error: BaseException = _timeout_error(run.name, run.timeout or 0.0)
            elif run.cancelled:
                error = CancelledTask(CANCELLED_MESSAGE)
            else:
                error = exc
            if hooked is not None:
                middleware.on_failure(hooked, error)
            answer = [run.id, False, _encode_error(error), serde.MSGPACK, duration, _output(current.output)]
        finally:
            for timer in timers:
                timer.cancel()
        del self.runs[run.id]
        self._answer(answer)

    # -- to the parent -----------------------------------------------------------------
    def _answer(self, answer: list[Any]) -> None:
        """Queue an answer; the ones ready in this loop turn go in one message."""
        if not self.outbox:
            assert self.loop is not None
            self.loop.call_soon(self._flush)
        self.outbox.append(answer)

    def _flush(self) -> None:
        answers, self.outbox = self.outbox, []
        try:
            # The pipe stays blocking: the parent always reads, so a large answer only
            # holds this loop while the parent takes it.
            rss = rss_bytes() if self.measure_memory else None
            self.conn.send_bytes(serde.packb([_MSG_RESULTS, answers, rss]))
        except OSError:
            self._stop()  # the parent is gone

    def _send_progress(self, report: dict[str, Any]) -> None:
        """Called in the task's coroutine or in a plain task's thread: send from the loop.

        From a coroutine it is written at once: its answer may join an outbox whose
        flush is already scheduled, and a report must never trail its task's answer.
        """
        assert self.loop is not None
        if threading.get_ident() == self.loop_thread:
            self._write_progress(report)
            return
        try:
            self.loop.call_soon_threadsafe(self._write_progress, report)
        except RuntimeError:  # the loop is closed
            pass

    def _write_progress(self, report: dict[str, Any]) -> None:
        try:
            self.conn.send_bytes(serde.packb([_MSG_PROGRESS, report]))
        except OSError:
            pass
