"""Running one task call and encoding its outcome: shared by the pool children and the
thread pool.

Everything here is what a pool child needs to run a task, so it imports only
that: no event loop, no client, no store. Reading the time-limit options
happens here too (:func:`_timeout_of`, :func:`_soft_timeout_of`), in one place.
"""

from __future__ import annotations

import importlib
import inspect
import signal
import sys
import time
from typing import Any

from .. import serde
from ..context import CurrentTask, set_current
from ..errors import SerializationError, SoftTimeLimitExceeded, TaskTimeout
from ..tasks import Registry
from .jobs import Job, JobResult

CANCELLED_MESSAGE = "task was cancelled"


def _encode_error(exc: BaseException) -> bytes:
    try:
        return serde.encode_error(exc)
    except Exception:  # a __str__ that raises, say
        return serde.packb({"type": type(exc).__name__, "message": "(unprintable error)",
                            "traceback": ""})


def _execute(registry: Registry, name: str, payload: bytes, codec: str,
             allow_pickle: bool, current: CurrentTask | None = None,
             soft_timeout: float | None = None, *,
             signals: bool = True) -> tuple[bool, bytes, str, float]:
    """Run one task: ``(ok, payload, codec, duration)``. Never raises.

    ``current`` is what ``conveyor.current_task()`` returns meanwhile. A
    ``soft_timeout`` raises SoftTimeLimitExceeded inside the task when it
    passes: in a plain function through SIGALRM, so only where ``signals`` is
    true (a process pool child's main thread); in an ``async def`` task, which
    runs to its end on an event loop of its own here, at the ``await`` where it
    waits, in any thread.
    """
    duration = 0.0
    set_current(current)
    try:
        if codec not in serde.CODECS:
            raise SerializationError(f"unknown codec {codec!r}: this worker knows {', '.join(serde.CODECS)}")
        fn = registry.resolve(name)
        args, kwargs = serde.decode_call(payload, codec, allow_pickle=allow_pickle)
        start = time.perf_counter()
        try:
            if inspect.iscoroutinefunction(fn):
                value = _run_coroutine(fn(*args, **kwargs), soft_timeout)
            else:
                alarm = soft_timeout if signals and soft_timeout else None
                if alarm:
                    signal.setitimer(signal.ITIMER_REAL, alarm)
                try:
                    value = fn(*args, **kwargs)
                finally:
                    if alarm:
                        signal.setitimer(signal.ITIMER_REAL, 0)
                if inspect.iscoroutine(value):  # a plain function that returned a coroutine
                    value = _run_coroutine(value, None)
        finally:
            duration = time.perf_counter() - start
        return True, serde.encode(value, codec), codec, duration
    except BaseException as exc:  # SystemExit from a task is its failure, not ours
        return False, _encode_error(exc), serde.MSGPACK, duration
    finally:
        set_current(None)


def _run_coroutine(coro: Any, soft_timeout: float | None) -> Any:
    """Run an ``async def`` task's coroutine to its end on a new loop in this thread."""
    from .coroutine import run_coroutine  # asyncio is imported only once a task needs it

    return run_coroutine(coro, soft_timeout)


def _soft_limit(signum: int, frame: Any) -> None:
    raise SoftTimeLimitExceeded("the task's soft time limit passed")


def _failed(job: Job, exc: BaseException, duration: float = 0.0) -> JobResult:
    return JobResult(job.id, job.token, False, _encode_error(exc), serde.MSGPACK, duration)


def _timeout_of(options: Any) -> float | None:
    """The ``timeout`` option in seconds, or None when absent or not a positive number."""
    if not isinstance(options, dict):
        return None
    value = options.get("timeout")
    if value is None or isinstance(value, bool):
        return None
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        return None
    return seconds if seconds > 0 else None


def _soft_timeout_of(options: Any) -> float | None:
    """The ``soft_timeout`` option in seconds, or None."""
    if not isinstance(options, dict):
        return None
    value = options.get("soft_timeout")
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        return None
    return float(value)


class CancelledTask(Exception):
    """Reported for a job the master cancelled (the master already has its final state)."""


def _timeout_error(name: str, seconds: float) -> TaskTimeout:
    return TaskTimeout(f"task {name} exceeded its time limit of {seconds:g}s")


def _load_registry(modules: list[str]) -> Registry:
    """Import the task modules (cwd importable), naming the module that fails."""
    if "" not in sys.path and "." not in sys.path:
        sys.path.insert(0, "")
    for modname in modules:
        try:
            importlib.import_module(modname)
        except Exception as exc:
            raise ImportError(f"cannot import task module {modname!r}: {type(exc).__name__}: {exc}",
                              name=modname) from exc
    return Registry.from_modules(modules)
