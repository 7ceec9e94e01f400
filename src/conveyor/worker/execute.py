"""Running one task call and encoding its outcome: shared by the pool children and the
thread pool.

Everything here is what a pool child needs to run a task, so it imports only
that: no event loop, no client, no store. Reading the time-limit options
happens through :mod:`conveyor.options` (``timeout_of``, ``soft_timeout_of``), where every option is declared.
"""

from __future__ import annotations

import importlib
import inspect
import signal
import sys
import time
from collections.abc import Callable
from typing import Any

from .. import middleware, serde
from ..context import CurrentTask, OutputRing, set_current
from ..errors import SerializationError, SoftTimeLimitExceeded, TaskTimeout
from ..tasks import Registry
from .jobs import Job, JobResult

CANCELLED_MESSAGE = "task was cancelled"
#: The most of one attempt's output (logging, stdout, stderr) kept and sent with its outcome.
OUTPUT_LIMIT = 64 * 1024


def _encode_error(exc: BaseException) -> bytes:
    try:
        return serde.encode_error(exc)
    except Exception:  # a __str__ that raises, say
        return serde.packb({"type": type(exc).__name__, "message": "(unprintable error)",
                            "traceback": ""})


def _execute(registry: Registry, name: str, payload: bytes, codec: str,
             allow_pickle: bool, current: CurrentTask | None = None,
             soft_timeout: float | None = None, *,
             signals: bool = True, capture: bool = False) -> tuple[bool, bytes, str, float, str | None]:
    """Run one task: ``(ok, payload, codec, duration, output)``. Never raises.

    ``capture``: ``output`` is the last :data:`OUTPUT_LIMIT` bytes of what the
    task logged or printed meanwhile (see :func:`conveyor.logs.capture_output`);
    else None.

    ``current`` is what ``conveyor.current_task()`` returns meanwhile. A
    ``soft_timeout`` raises SoftTimeLimitExceeded inside the task when it
    passes: in a plain function through SIGALRM, so only where ``signals`` is
    true (a process pool child's main thread); in an ``async def`` task, which
    runs to its end on an event loop of its own here, at the ``await`` where it
    waits, in any thread.
    """
    duration = 0.0
    ring = OutputRing(OUTPUT_LIMIT) if capture and current is not None else None
    if ring is not None:
        current.output = ring  # type: ignore[union-attr]
    set_current(current)
    hooked = _hooked(current)
    if hooked is not None:
        middleware.before_task(hooked)
    try:
        fn, args, kwargs = _prepare(registry, name, payload, codec, allow_pickle)
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
        encoded = serde.encode(value, codec)
        if hooked is not None:
            middleware.after_task(hooked, value)
        return True, encoded, codec, duration, _output(ring)
    except BaseException as exc:  # SystemExit from a task is its failure, not ours
        if hooked is not None:
            middleware.on_failure(hooked, exc)
        return False, _encode_error(exc), serde.MSGPACK, duration, _output(ring)
    finally:
        set_current(None)


def _prepare(registry: Registry, name: str, payload: bytes, codec: str,
             allow_pickle: bool) -> tuple[Callable[..., Any], list[Any], dict[str, Any]]:
    """The task's function and its decoded arguments; raises (UnknownTask, SerializationError)
    what the task then fails with. Every pool kind goes through here."""
    if codec not in serde.CODECS:
        raise SerializationError(f"unknown codec {codec!r}: this worker knows {', '.join(serde.CODECS)}")
    fn = registry.resolve(name)
    args, kwargs = serde.decode_call(payload, codec, allow_pickle=allow_pickle)
    return fn, args, kwargs


def _hooked(current: CurrentTask | None) -> middleware.TaskCall | None:
    """What the middleware hooks see of the running task; None when no middleware is registered."""
    if current is None or not middleware.active():
        return None
    return middleware.TaskCall(current.id, current.name, current.token, dict(current.headers))
def _output(ring: OutputRing | None) -> str | None:
    """What the attempt wrote (None if not captured; an empty attempt sends nothing)."""
    if ring is None:
        return None
    return ring.text() or None


def _run_coroutine(coro: Any, soft_timeout: float | None) -> Any:
    """Run an ``async def`` task's coroutine to its end on a new loop in this thread."""
    from .coroutine import run_coroutine  # asyncio is imported only once a task needs it

    return run_coroutine(coro, soft_timeout)


def _soft_limit(signum: int, frame: Any) -> None:
    raise SoftTimeLimitExceeded("the task's soft time limit passed")


def _failed(job: Job, exc: BaseException, duration: float = 0.0) -> JobResult:
    return JobResult(job.id, job.token, False, _encode_error(exc), serde.MSGPACK, duration)


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
