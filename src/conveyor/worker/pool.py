"""The execution pools a worker runs its tasks in.

Three kinds share one interface (``start``, ``submit``, ``discard_pending``,
``pending``, ``running``, ``cancel``, ``avg_duration``, ``shutdown``):

- :class:`ProcessPool` (the default): ``concurrency`` child processes started
  with the ``spawn`` method. A task that crashes its process (``os._exit``, a
  signal, the OOM killer) fails with :class:`~conveyor.errors.WorkerCrashed`
  and a task past its ``timeout`` option is killed and fails with
  :class:`~conveyor.errors.TaskTimeout`; either way a fresh child replaces the
  lost one and the pool keeps serving.
- :class:`ThreadPool`: ``concurrency`` threads in the worker's own process.
  Cheaper, but it contains nothing: a task that crashes the process takes the
  whole worker down, and a thread cannot be stopped, so a task past its time
  limit keeps running and is only reported as timed out when it returns.
- :class:`AsyncioPool`: ``concurrency`` tasks at once on an event loop in one
  child process, for ``async def`` tasks that wait on I/O; time limits and
  cancels cancel the coroutine, and the child is replaced if it crashes or
  does not let go (see :mod:`.asyncio_pool`).

An ``async def`` task runs in every pool: the process and thread pools run
it to its end on an event loop of its own (one per task).

Either pool finds a task's function only through a
:class:`~conveyor.tasks.Registry` built from the worker's modules; nothing
named in a task message is ever imported. Jobs and results cross the
parent/child pipe as msgpack, never pickle; task payloads are decoded with
pickle only when the pool was created with ``allow_pickle=True``.

Results are handed to ``on_results(list_of_results)`` from the pool's own
threads (a thread pool's slots; a process pool's event loop, see
:class:`ProcessPool`); the callback must be thread-safe and quick.

This module is the public face; the pools live in their own modules:
:mod:`.jobs` (Job, JobResult), :mod:`.execute` (running one call, error
encoding, the time-limit options), :mod:`.child` (a process pool child and its
pipe framing), :mod:`.core` (the queue and bookkeeping every pool shares),
:mod:`.process_pool`, :mod:`.thread_pool`, :mod:`.asyncio_pool` (with its child,
:mod:`.async_child`) and :mod:`.coroutine` (how an ``async def`` task is run).
"""

from __future__ import annotations

import asyncio

from .asyncio_pool import CANCEL_GRACE, AsyncioPool
from .core import BATCH_BELOW, EWMA_ALPHA, EXIT_TIMEOUT, MAX_BATCH, STARTUP_TIMEOUT
from .execute import CANCELLED_MESSAGE, CancelledTask
from .jobs import Job, JobResult, OnProgress, OnResults
from .lifecycle import Lifecycle
from .process_pool import PoolStartError, ProcessPool
from .thread_pool import ThreadPool

__all__ = ["Job", "JobResult", "ProcessPool", "ThreadPool", "AsyncioPool", "make_pool", "POOL_KINDS",
           "CancelledTask", "CANCELLED_MESSAGE", "OnResults", "OnProgress",
           "MAX_BATCH", "BATCH_BELOW", "EWMA_ALPHA", "STARTUP_TIMEOUT", "EXIT_TIMEOUT",
           "CANCEL_GRACE", "Lifecycle", "PoolStartError"]

POOL_KINDS = ("process", "thread", "asyncio")


def make_pool(kind: str, concurrency: int, modules: list[str], on_results: OnResults, *,
              allow_pickle: bool = False,
              loop: asyncio.AbstractEventLoop | None = None,
              lifecycle: Lifecycle | None = None) -> ProcessPool | ThreadPool:
    """A pool of ``kind`` "process", "thread" or "asyncio"; ValueError for anything else.

    ``loop`` is the event loop a process or asyncio pool drives its children from
    (see :class:`ProcessPool`); a thread pool ignores it. ``lifecycle`` (recycling,
    autoscaling) applies to the process pool, and its recycling part to the asyncio
    pool; a thread pool has no children to replace and refuses it (ValueError).
    """
    if kind == "process":
        return ProcessPool(concurrency, modules, on_results, allow_pickle=allow_pickle, loop=loop,
                           lifecycle=lifecycle)
    if kind == "thread":
        if lifecycle is not None and lifecycle.active:
            raise ValueError("the thread pool has no child processes to recycle or scale: "
                             "use --pool process (or asyncio for recycling)")
        return ThreadPool(concurrency, modules, on_results, allow_pickle=allow_pickle)
    if kind == "asyncio":
        return AsyncioPool(concurrency, modules, on_results, allow_pickle=allow_pickle, loop=loop,
                           lifecycle=lifecycle)
    raise ValueError(f"unknown pool kind {kind!r}: choose one of {', '.join(POOL_KINDS)}")
