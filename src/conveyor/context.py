"""``conveyor.current_task()``: what a running task knows about itself."""

from __future__ import annotations

import time
from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

# A context variable, not a thread-local: each thread has its own context, and so does
# each asyncio task, so concurrent coroutines in one thread each see their own task.
_current: ContextVar[CurrentTask | None] = ContextVar("conveyor_current_task", default=None)
_MIN_INTERVAL = 0.05  # progress reports faster than this are coalesced


@dataclass
class CurrentTask:
    """The task running in this thread or coroutine: its id, name, attempt, and a progress reporter.
    ``headers`` are the string headers it was submitted with (``headers=`` or client middleware)."""

    id: str
    name: str
    token: int
    _send: Callable[[dict[str, Any]], None] | None = field(default=None, repr=False)
    headers: dict[str, str] = field(default_factory=dict)
    _last: float = field(default=0.0, repr=False)
    #: Where this attempt's output (logging, stdout, stderr) is captured, or None when it is
    #: not; set by the worker before the task starts, written by conveyor.logs' capture.
    output: OutputRing | None = field(default=None, repr=False)

    def progress(self, done: float, total: float | None = None, message: str = "") -> None:
        """Report progress; the client sees it on ``future.progress`` and ``conveyor inspect``.

        Reports closer together than 50 ms are dropped, except the final one
        (``done == total``), so a tight loop can report freely.
        """
        if isinstance(done, bool) or not isinstance(done, (int, float)):
            raise TypeError("done must be a number")
        if total is not None and (isinstance(total, bool) or not isinstance(total, (int, float))):
            raise TypeError("total must be a number or None")
        now = time.monotonic()
        if now - self._last < _MIN_INTERVAL and done != total:
            return
        self._last = now
        if self._send is not None:
            self._send({"id": self.id, "token": self.token, "done": done, "total": total,
                        "message": str(message)[:500]})


class OutputRing:
    """The last ``limit`` bytes of what one attempt wrote (a ring: older text is dropped).

    Written from the task's own thread or coroutine only, so it needs no lock.
    """

    __slots__ = ("limit", "_parts", "_size")

    def __init__(self, limit: int = 64 * 1024) -> None:
        self.limit = limit
        self._parts: list[str] = []
        self._size = 0  # characters held; trimmed lazily to keep writes cheap

    def write(self, text: str) -> None:
        if not text:
            return
        self._parts.append(text)
        self._size += len(text)
        if self._size > 2 * self.limit:  # compact now and then, not on every write
            self._parts = [self.text()]
            self._size = len(self._parts[0])

    def text(self) -> str:
        """What was written, cut to its last ``limit`` bytes (UTF-8) at a character boundary."""
        joined = "".join(self._parts)[-self.limit:]
        data = joined.encode("utf-8", "replace")
        if len(data) <= self.limit:
            return joined
        return data[-self.limit:].decode("utf-8", "ignore")


def current_output() -> OutputRing | None:
    """The running task's output ring, or None (outside a task, or not captured)."""
    task = _current.get()
    return task.output if task is not None else None


def peek_current() -> CurrentTask | None:
    """The running task, or None outside one (for logging, which must never raise)."""
    return _current.get()


def current_task() -> CurrentTask:
    """The task running in this thread (or asyncio task); RuntimeError outside a task."""
    task = _current.get()
    if task is None:
        raise RuntimeError("current_task() is only available inside a running conveyor task")
    return task


def set_current(task: CurrentTask | None) -> None:
    """Set (or clear) the running task; the worker pools call this around each task."""
    _current.set(task)
