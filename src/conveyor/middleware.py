"""Middleware: hooks around a task's life cycle, for what every team plugs in (error
reporting, tracing, metrics, logging context).

Subclass :class:`Middleware`, override the hooks you need, and register an instance
with :func:`add_middleware` at import time of a module the process loads: the task
modules for the worker side (a worker imports them in its own process and in every
pool child), the submitting program for the client side::

    import conveyor

    class ReportFailures(conveyor.Middleware):
        def on_failure(self, task, exc):
            errors.capture(exc, tags={"task": task.name, "id": task.id})

    conveyor.add_middleware(ReportFailures())

Where each hook runs:

- ``before_submit(call)`` — in the client, once per task, before the task is built:
  it may change ``call.options`` and add ``call.headers`` (they travel with the task).
- ``before_task(task)`` — where the task runs (the pool child or thread), before the
  function is called, in the same thread and context as the task: a context variable or
  logging context set here is seen by the task.
- ``after_task(task, value)`` — there, after it returned ``value``.
- ``on_failure(task, exc)`` — there, after it raised ``exc`` (also when the worker could
  not call it: an unknown task, arguments that do not decode).
- ``on_retry(task, error, delay)`` — in the worker's own process, when a failure is
  retried after ``delay`` seconds; ``error`` is the failure as it travels
  (``{"type", "message", "traceback"}``), the exception object stays in the child.

Hooks run in the order the middleware was registered. A hook that raises is logged
(logger ``conveyor.middleware``, with the traceback) and otherwise ignored: the other
hooks still run, the task still runs, and its outcome is what the task made it; a
failing ``before_submit`` leaves the submit as it was. A task killed with its process
(a crash, a hard time limit) gets no ``after_task`` or ``on_failure`` in that process.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Middleware", "SubmitCall", "TaskCall", "add_middleware", "middlewares", "remove_middleware"]

log = logging.getLogger("conveyor.middleware")


@dataclass
class SubmitCall:
    """A submit as ``before_submit`` sees it: the task's name, its arguments, the submit's
    options (may be changed) and the headers that will travel with the task (may be added to)."""

    name: str
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    options: dict[str, Any]
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class TaskCall:
    """A task as the worker-side hooks see it. ``attempt`` is the lease token (it grows with
    every attempt); ``state`` is scratch space a middleware keeps between ``before_task`` and
    ``after_task``/``on_failure`` of the same run (a span, a start time)."""

    id: str
    name: str
    attempt: int
    headers: dict[str, str] = field(default_factory=dict)
    state: dict[str, Any] = field(default_factory=dict)


class Middleware:
    """Hooks around submitting and running tasks; every hook does nothing by default."""

    def before_submit(self, call: SubmitCall) -> None:
        """Client: before the task is built; may change ``call.options``, add ``call.headers``."""

    def before_task(self, task: TaskCall) -> None:
        """Worker pool: before the task's function is called."""

    def after_task(self, task: TaskCall, value: Any) -> None:
        """Worker pool: the task returned ``value``."""

    def on_failure(self, task: TaskCall, exc: BaseException) -> None:
        """Worker pool: the task raised ``exc`` (or could not be called)."""

    def on_retry(self, task: TaskCall, error: dict[str, Any], delay: float) -> None:
        """Worker process: the failed attempt runs again after ``delay`` seconds."""


_registered: list[Middleware] = []


def add_middleware(middleware: Middleware) -> Middleware:
    """Register ``middleware`` in this process (after those registered before it); returns it.
    Registering the same instance twice is a no-op, so a module imported twice is harmless."""
    if not isinstance(middleware, Middleware):
        raise TypeError(f"add_middleware needs a conveyor.Middleware instance, not {middleware!r}")
    if not any(m is middleware for m in _registered):
        _registered.append(middleware)
    return middleware


def remove_middleware(middleware: Middleware) -> None:
    """Unregister ``middleware`` (a no-op if it is not registered)."""
    _registered[:] = [m for m in _registered if m is not middleware]


def middlewares() -> list[Middleware]:
    """The registered middleware, in order."""
    return list(_registered)


def _call(hook: str, *args: Any) -> None:
    """Run one hook of every middleware in order; a hook that raises is logged, not raised."""
    for m in list(_registered):
        try:
            getattr(m, hook)(*args)
        except Exception:
            log.exception("middleware %s.%s failed (ignored)", type(m).__name__, hook)


def before_submit(call: SubmitCall) -> None:
    """Run every ``before_submit`` hook (client)."""
    if _registered:
        _call("before_submit", call)


def before_task(task: TaskCall) -> None:
    """Run every ``before_task`` hook (where the task runs)."""
    if _registered:
        _call("before_task", task)


def after_task(task: TaskCall, value: Any) -> None:
    """Run every ``after_task`` hook (where the task ran)."""
    if _registered:
        _call("after_task", task, value)


def on_failure(task: TaskCall, exc: BaseException) -> None:
    """Run every ``on_failure`` hook (where the task ran)."""
    if _registered:
        _call("on_failure", task, exc)


def on_retry(task: TaskCall, error: dict[str, Any], delay: float) -> None:
    """Run every ``on_retry`` hook (the worker's process)."""
    if _registered:
        _call("on_retry", task, error, delay)


def active() -> bool:
    """True when any middleware is registered (callers skip building events otherwise)."""
    return bool(_registered)
