"""Periodic schedules from a client: ``client.schedule``, ``client.schedules``,
``client.unschedule``, ``client.run_schedule`` (mixed into
:class:`~conveyor.client.client.Client`)."""

from __future__ import annotations

import concurrent.futures as cf
from collections.abc import Callable
from typing import Any

from .. import protocol

TIMEOUT = 30.0
RUN_ONCE = "run_once"  # conveyor.schedule.RUN_ONCE, without importing croniter for a default


class ScheduleMixin:
    """Schedule methods; the class mixing this in provides ``request`` and ``codec``."""

    codec: str
    request: Callable[[str, dict[str, Any]], cf.Future[Any]]

    def schedule(self, name: str, fn: Callable[..., Any] | str, /, *args: Any, cron: str | None = None,
                 every: float | None = None, tz: str = "UTC", queue: str | None = None,
                 missed: str = RUN_ONCE, kwargs: dict[str, Any] | None = None,
                 replace: bool = False) -> dict[str, Any]:
        """Run ``fn(*args, **kwargs)`` periodically on the cluster's workers, from the master.

        Exactly one of ``cron`` (a 5-field expression, read in time zone ``tz``)
        or ``every`` (seconds) says when. ``queue`` defaults to the task's.
        ``missed="run_once"`` runs the latest slot missed while the master was
        down once it is back; ``"skip"`` waits for the next slot. A schedule
        named ``name`` that exists already is an error unless ``replace``.
        Bad input raises ValueError naming the field. Returns the schedule as
        the master stored it (with ``next_slot``).
        """
        from ..periodic import task_defaults  # here: schedules (and croniter) load when used
        from ..schedule import make_schedule

        task, default_queue, options = task_defaults(fn)
        sched = make_schedule(name, task, args, kwargs, cron=cron, every=every, tz=tz,
                              queue=default_queue if queue is None else queue, missed=missed,
                              codec=self.codec, options=options)
        fields = {"schedule": sched.to_wire(), "replace": bool(replace)}
        reply = self.request(protocol.SCHED_ADD, fields).result(TIMEOUT)
        schedule: dict[str, Any] = reply["schedule"]
        return schedule

    def schedules(self) -> list[dict[str, Any]]:
        """Every schedule on the master: name, task, queue, cron/every, tz, missed,
        source ("code" or "cli"), args, last_slot and next_slot (Unix times)."""
        schedules: list[dict[str, Any]] = self.request(protocol.SCHED_LIST, {}).result(TIMEOUT)["schedules"]
        return schedules

    def unschedule(self, name: str) -> None:
        """Remove schedule ``name`` (tasks it already enqueued still run); NotFound if unknown.
        A schedule declared in code comes back when a worker with its module connects."""
        self.request(protocol.SCHED_DEL, {"name": name}).result(TIMEOUT)

    def run_schedule(self, name: str) -> dict[str, Any]:
        """Enqueue schedule ``name``'s task now, outside its timing: ``{"id", "new"}``.

        Calls within the same second make one task (``new`` is False for the
        later ones). ``schedules()`` shows it as the schedule's ``last_run_now``.
        NotFound for an unknown name.
        """
        reply: dict[str, Any] = self.request(protocol.SCHED_RUN, {"name": name}).result(TIMEOUT)
        return reply
