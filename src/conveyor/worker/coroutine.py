"""Running an ``async def`` task: awaiting its coroutine so that an exception can be
raised inside it where it waits, which is how a soft time limit reaches a coroutine.

Used by the asyncio pool's child (many coroutines on one loop) and by the
process and thread pools (one ``asyncio`` run per ``async def`` task). Only
imported once a task is a coroutine, so a pool that never sees one never
imports asyncio.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, Generator
from typing import Any

from .. import loops
from ..errors import SoftTimeLimitExceeded

__all__ = ["Interruptible", "run_coroutine", "soft_limit_error"]


def soft_limit_error() -> SoftTimeLimitExceeded:
    """The error a soft time limit raises inside a task (the same text in every pool)."""
    return SoftTimeLimitExceeded("the task's soft time limit passed")


class Interruptible:
    """Awaits ``coro`` and lets :meth:`interrupt` raise an exception inside it, at the
    ``await`` where it is suspended.

    asyncio can only cancel a task; to deliver another exception the task is
    cancelled and, where the ``CancelledError`` reaches this wrapper on its way in,
    the wanted exception is thrown into the coroutine instead (and the cancel
    request withdrawn, so ``asyncio.timeout`` and the like are not confused).
    A coroutine that blocks its loop without awaiting is reached at its next
    ``await``.
    """

    __slots__ = ("_coro", "_task", "_pending", "_active")

    def __init__(self, coro: Coroutine[Any, Any, Any]) -> None:
        self._coro = coro
        self._task: asyncio.Task[Any] | None = None
        self._pending: BaseException | None = None
        self._active = False

    def interrupt(self, exc: BaseException) -> bool:
        """Raise ``exc`` inside the coroutine at its current ``await`` (call on its loop).
        False if it is not running (not started, or finished)."""
        task = self._task
        if not self._active or task is None or task.done():
            return False
        self._pending = exc
        task.cancel()
        return True

    def __await__(self) -> Generator[Any, Any, Any]:
        self._task = asyncio.current_task()
        self._active = True
        coro = self._coro
        sent: Any = None
        thrown: BaseException | None = None
        try:
            while True:
                try:
                    if thrown is not None:
                        exc, thrown = thrown, None
                        yielded = coro.throw(exc)
                    else:
                        yielded = coro.send(sent)
                except StopIteration as stop:
                    return stop.value
                try:
                    sent = yield yielded
                except BaseException as exc:  # thrown in by the task: pass it on, or swap it
                    sent = None
                    thrown = exc
                    if isinstance(exc, asyncio.CancelledError) and self._pending is not None:
                        thrown, self._pending = self._pending, None
                        if self._task is not None:
                            self._task.uncancel()
        finally:
            self._active = False


async def _run_with_soft_limit(coro: Coroutine[Any, Any, Any], soft_timeout: float | None) -> Any:
    waiter = Interruptible(coro)
    timer = None
    if soft_timeout:
        timer = asyncio.get_running_loop().call_later(soft_timeout, waiter.interrupt, soft_limit_error())
    try:
        return await waiter
    finally:
        if timer is not None:
            timer.cancel()


def run_coroutine(coro: Coroutine[Any, Any, Any], soft_timeout: float | None = None) -> Any:
    """Run one task's coroutine to its end on a new event loop in this thread (the
    process and thread pools' way to run an ``async def`` task); a ``soft_timeout``
    raises SoftTimeLimitExceeded inside it when it passes. The caller's context
    (``current_task()``) is the coroutine's."""
    with asyncio.Runner(loop_factory=loops.new_event_loop) as runner:
        return runner.run(_run_with_soft_limit(coro, soft_timeout))
