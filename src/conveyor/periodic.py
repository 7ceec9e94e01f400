"""``@conveyor.periodic``: declare a periodic schedule next to the task it runs.

::

    @conveyor.periodic("*/5 * * * *", tz="Europe/Paris", args=("daily",))
    def report(kind):
        ...

    @conveyor.periodic(every=30, missed="skip")
    def heartbeat():
        ...

The decorator validates the schedule at once (ValueError naming the field)
and marks the function as a task (``@conveyor.task``). Declarations are kept
here per module; a worker started with that module sends them to the master
in its hello, and the master adds them (or replaces a code-declared schedule
whose spec changed). A schedule declared in code and later deleted from the
code stays on the master until ``conveyor schedule remove NAME``.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from typing import Any

from . import serde, tasks
from .options import check_task_defaults
from .schedule import RUN_ONCE, Schedule, check_name, make_schedule

log = logging.getLogger("conveyor.periodic")

TASK_ATTR = "__conveyor_periodic__"


@dataclass(frozen=True, slots=True)
class Declaration:
    """One ``@periodic`` on one function; the task name and options are read when sent."""

    fn: Callable[..., Any]
    schedule: Schedule  # validated at declaration; task, queue and options refreshed by current()
    queue: str | None  # as given to @periodic (None: the task's default queue)

    def current(self) -> Schedule:
        """The schedule with the function's task name, queue and options as they are now
        (an ``@task`` applied after ``@periodic`` may have renamed it)."""
        task, queue, options = task_defaults(self.fn)
        return replace(self.schedule, task=task, queue=self.queue or queue, options=options)


def task_defaults(fn: Callable[..., Any] | str) -> tuple[str, str, dict[str, Any]]:
    """(task name, default queue, task options as they travel) for ``fn``: what a
    scheduled run is submitted with, as ``client.submit`` would."""
    spec = tasks.task_options(fn)
    return spec.name, spec.queue, dict(spec.options)  # checked by @task (conveyor.options)


# module name -> schedule name -> declaration; and schedule name -> its function
_declared: dict[str, dict[str, Declaration]] = {}
_owners: dict[str, tuple[str, str]] = {}


def _where(fn: Callable[..., Any]) -> tuple[str, str]:
    return tasks.module_name(fn), getattr(fn, "__qualname__", repr(fn))


def periodic(cron: str | None = None, *, every: float | None = None, tz: str = "UTC",
             queue: str | None = None, args: tuple[Any, ...] | list[Any] = (), kwargs: dict[str, Any] | None = None,
             name: str | None = None, missed: str = RUN_ONCE, **task_options: Any) -> Callable[..., Any]:
    """Run the decorated module-level function on a schedule: ``cron`` (a 5-field
    expression in time zone ``tz``) or ``every`` seconds, with ``args``/``kwargs``,
    on ``queue`` (default: the task's queue). ``name`` defaults to the task name
    (``"module:function"``); give one to schedule a function more than once.
    ``missed`` is "run_once" (after an outage the latest missed slot runs once)
    or "skip". Other keywords are task options (``timeout``, ``retries``...), as
    for ``@conveyor.task``. Errors name the field: ValueError, or TypeError for
    an argument msgpack cannot encode.
    """
    if callable(cron):
        raise TypeError("@periodic needs a schedule: @periodic('*/5 * * * *') or @periodic(every=60)")
    check_task_defaults(task_options)  # bad task options fail here, before any function is touched
    if name is not None:
        check_name(name)
    if queue is not None and (not isinstance(queue, str) or not queue):
        raise ValueError(f"queue: must be a non-empty string, not {queue!r}")
    # Validate everything but the task name now, before any function is touched.
    base = make_schedule(name or "periodic:check", "periodic:check", tuple(args), dict(kwargs or {}),
                         cron=cron, every=every, tz=tz, queue=queue or tasks.DEFAULT_QUEUE,
                         missed=missed, codec=serde.MSGPACK, source="code")

    def mark(fn: Callable[..., Any]) -> Callable[..., Any]:
        if not callable(fn):
            raise TypeError("@periodic decorates a function")
        qualname = getattr(fn, "__qualname__", "")
        if "<lambda>" in qualname or "<locals>" in qualname:
            raise TypeError(f"@periodic needs a module-level function, not {qualname}")
        marked = getattr(fn, tasks.TASK_ATTR, None)
        if marked is not None and task_options:
            raise ValueError(f"{', '.join(sorted(task_options))}: {qualname} is an @task already; "
                             "give task options to @task")
        where = _where(fn)
        sched_name = name or (marked.name if marked is not None else f"{where[0]}:{where[1]}")
        mine: list[str] = getattr(fn, TASK_ATTR, [])
        owner = _owners.get(sched_name)
        if sched_name in mine or (owner is not None and owner != where):
            by = f"{owner[0]}:{owner[1]}" if owner is not None else f"{where[0]}:{where[1]}"
            raise ValueError(f"name: schedule {sched_name!r} is declared twice (already by {by}); "
                             "give each @periodic its own name=")
        if marked is None:
            tasks.task(fn, queue=queue or tasks.DEFAULT_QUEUE, **task_options)
        decl = Declaration(fn, replace(base, name=sched_name), queue)
        decl.current()  # the task name must be valid too
        # The same function declared again (a reloaded module) replaces its declaration.
        _declared.setdefault(where[0], {})[sched_name] = decl
        _owners[sched_name] = where
        setattr(fn, TASK_ATTR, [*mine, sched_name])
        return fn

    return mark


def declarations(modules: Iterable[str] | None = None) -> list[Schedule]:
    """The schedules declared in ``modules`` (all modules: None), by name."""
    wanted = _declared if modules is None else {m: _declared.get(m, {}) for m in modules}
    out = [d.current() for decls in wanted.values() for d in decls.values()]
    return sorted(out, key=lambda s: s.name)


def hello_entries(modules: Iterable[str]) -> list[dict[str, Any]]:
    """What a worker serving ``modules`` declares in its hello: the wire form of their
    schedules. Imports the modules (they are cached if the worker did already)."""
    names = list(modules)
    for modname in names:
        try:
            importlib.import_module(modname)
        except Exception as exc:  # the pool reports a broken module on its own
            log.warning("cannot read schedules of module %s: %s: %s", modname, type(exc).__name__, exc)
    return [s.to_wire() for s in declarations(names)]


def forget(module: str | None = None) -> None:
    """Drop the declarations of ``module`` (all: None) — for tests."""
    for mod in list(_declared) if module is None else [module]:
        for sched_name in _declared.pop(mod, {}):
            _owners.pop(sched_name, None)
