"""Lifecycle hooks: functions a task module registers to run once per pool child or per worker.

::

    @conveyor.on_child_start
    def open_db():          # once in each pool child, before its first task
        global db
        db = connect()

    @conveyor.on_child_exit
    def close_db():         # once in each pool child, when it is asked to exit
        db.close()

    @conveyor.on_worker_start   # once in the worker process, after the pool started
    @conveyor.on_worker_stop    # once in the worker process, after the pool stopped

Hooks take no arguments and run in the order they were registered. They are
registered when the worker (or its child) imports the task modules, so they
must be declared at module level of a module the worker names. A child-start
hook that raises keeps the child from serving: the pool reports it, and
retries with backoff (at the worker's start the worker stops with the hook's
error). An exit hook that raises is logged; the child exits anyway. A child
killed (crash, time limit, cancel, cold shutdown) runs no exit hook.

This module imports nothing but ``logging`` so a task module can use it freely.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TypeVar

__all__ = ["on_child_start", "on_child_exit", "on_worker_start", "on_worker_stop",
           "run_hooks", "HookFailed", "CHILD_START", "CHILD_EXIT", "WORKER_START", "WORKER_STOP"]

log = logging.getLogger("conveyor.hooks")

CHILD_START = "child_start"
CHILD_EXIT = "child_exit"
WORKER_START = "worker_start"
WORKER_STOP = "worker_stop"

Hook = Callable[[], object]
H = TypeVar("H", bound=Hook)

_hooks: dict[str, list[Hook]] = {CHILD_START: [], CHILD_EXIT: [], WORKER_START: [], WORKER_STOP: []}


class HookFailed(Exception):
    """A lifecycle hook raised; the message names the hook and its error."""


def _register(kind: str, fn: H) -> H:
    if not callable(fn):
        raise TypeError(f"@conveyor.on_{kind} decorates a function, not {fn!r}")
    if fn not in _hooks[kind]:  # a module imported twice registers once
        _hooks[kind].append(fn)
    return fn


def on_child_start(fn: H) -> H:
    """Run ``fn()`` once in each pool child (process or asyncio pool), before its first task."""
    return _register(CHILD_START, fn)


def on_child_exit(fn: H) -> H:
    """Run ``fn()`` once in each pool child when it is asked to exit (recycled, scaled down,
    warm shutdown); not when it is killed."""
    return _register(CHILD_EXIT, fn)


def on_worker_start(fn: H) -> H:
    """Run ``fn()`` once in the worker process, after its pool started, before it connects."""
    return _register(WORKER_START, fn)


def on_worker_stop(fn: H) -> H:
    """Run ``fn()`` once in the worker process after its pool stopped."""
    return _register(WORKER_STOP, fn)


def _describe(fn: Hook) -> str:
    return f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', repr(fn))}"


def run_hooks(kind: str, *, stop_on_error: bool) -> None:
    """Run the hooks of ``kind`` in order. ``stop_on_error``: the first that raises stops
    the rest and raises HookFailed naming it; otherwise each failure is logged."""
    for fn in list(_hooks[kind]):
        try:
            fn()
        except Exception as exc:
            message = f"{kind.replace('_', '-')} hook {_describe(fn)} failed: {type(exc).__name__}: {exc}"
            if stop_on_error:
                raise HookFailed(message) from exc
            log.exception("%s", message)


def registered(kind: str) -> list[Hook]:
    """The hooks of ``kind`` registered in this process (a copy)."""
    return list(_hooks[kind])
