"""One log line per task event on the worker, Celery-style, under ``conveyor.worker.tasks``.

::

    Task tasks.add[3f2c...] received
    Task tasks.add[3f2c...] started
    Task tasks.add[3f2c...] succeeded in 0.001s: 4
    Task tasks.add[3f2c...] failed in 0.002s: ValueError: boom
    Task tasks.add[3f2c...] retry in 5s (failed in 0.002s): ValueError: boom
    Task tasks.add[3f2c...] timed out after 1.000s: task tasks.add exceeded its time limit of 1s
    Task tasks.add[3f2c...] crashed after 0.100s: worker process exited with code -9 (SIGKILL) ...
    Task tasks.add[3f2c...] cancelled

Started, succeeded, retry and cancelled are logged at INFO; failed, timed out
and crashed at WARNING (shown at the default level, and louder); received at
DEBUG (a task that starts at once would otherwise cost a third line: about
10 us of the worker's time each, a tenth of its no-op task throughput).
Each record carries ``task_id`` and ``task_name`` (the JSON format's fields).
A result's repr is cut to :data:`RESULT_REPR_LIMIT` characters; nothing is
decoded for these lines unless INFO is enabled.

The lines of one batch (the jobs a pool started together, the results that
arrived together) go out through :func:`conveyor.logs.log_lines`: one write for
the lot when only the worker's own handler would see them.
"""

from __future__ import annotations

import logging
from typing import Any

from .. import serde
from ..logs import LogLine, log_lines
from .jobs import Job, JobResult

__all__ = ["TaskLog", "RESULT_REPR_LIMIT", "log"]

log = logging.getLogger("conveyor.worker.tasks")

#: Most characters of a result's repr shown in a "succeeded" line.
RESULT_REPR_LIMIT = 200
#: Most characters of an error message shown in a "failed" line.
MESSAGE_LIMIT = 500


def _bounded(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _short_type(name: str) -> str:
    return name.rpartition(".")[2]


class TaskLog:
    """Remembers each held task's name (results carry only ids) and logs its events."""

    def __init__(self, allow_pickle: bool = False) -> None:
        self.allow_pickle = allow_pickle
        self._names: dict[str, str] = {}

    def _line(self, level: int, task_id: str, message: str, *args: Any) -> LogLine:
        name = self._names.get(task_id, "?")
        return level, "Task %s[%s] " + message, (name, task_id, *args), task_id, name

    def received(self, jobs: list[Job]) -> None:
        """The master sent these jobs."""
        for job in jobs:
            self._names[job.id] = job.name
        if log.isEnabledFor(logging.DEBUG):
            log_lines(log, [self._line(logging.DEBUG, job.id, "received") for job in jobs])

    def forget(self, task_ids: list[str]) -> None:
        """Jobs handed back unstarted (a warm stop, a new session): no line, no memory."""
        for task_id in task_ids:
            self._names.pop(task_id, None)

    def cancelled(self, task_id: str) -> None:
        """The master cancelled a job this worker held."""
        log_lines(log, [self._line(logging.INFO, task_id, "cancelled")])
        self._names.pop(task_id, None)

    def finished(self, result: JobResult, retry: dict[str, Any] | None) -> None:
        """A job's outcome, as reported to the master (``retry`` is the retry decision)."""
        self.finished_many([(result, retry)])

    def finished_many(self, done: list[tuple[JobResult, dict[str, Any] | None]]) -> None:
        """Outcomes reported together (each with its retry decision): their lines in one go."""
        lines: list[LogLine] = []
        info = log.isEnabledFor(logging.INFO)
        for result, retry in done:
            try:
                line = self._outcome_line(result, retry, info)
                if line is not None:
                    lines.append(line)
            finally:
                self._names.pop(result.id, None)
        if lines:
            log_lines(log, lines)

    def _outcome_line(self, result: JobResult, retry: dict[str, Any] | None, info: bool) -> LogLine | None:
        if result.ok:
            if not info:
                return None
            return self._line(logging.INFO, result.id, "succeeded in %.3fs: %s", result.duration,
                              self._value_repr(result))
        error = serde.decode_error(result.payload)
        kind = _short_type(error["type"])
        message = _bounded(error["message"], MESSAGE_LIMIT)
        if kind == "CancelledTask":
            return self._line(logging.INFO, result.id, "cancelled")
        if kind == "TaskTimeout":
            return self._line(logging.WARNING, result.id, "timed out after %.3fs: %s", result.duration, message)
        if kind == "WorkerCrashed":
            return self._line(logging.WARNING, result.id, "crashed after %.3fs: %s", result.duration, message)
        if retry is not None and "delay" in retry:
            return self._line(logging.INFO, result.id, "retry in %gs (failed in %.3fs): %s: %s",
                              retry["delay"], result.duration, kind, message)
        dead = " (no retries left)" if retry is not None and retry.get("dead") else ""
        return self._line(logging.WARNING, result.id, "failed in %.3fs%s: %s: %s", result.duration,
                          dead, kind, message)

    def _value_repr(self, result: JobResult) -> str:
        try:
            value = serde.decode(result.payload, result.codec, allow_pickle=self.allow_pickle)
            return _bounded(repr(value), RESULT_REPR_LIMIT)
        except Exception:
            return f"<{len(result.payload)} bytes, {result.codec}>"


def log_started(jobs: list[Job]) -> None:
    """A pool handed these jobs to a child or thread (called by every pool kind)."""
    if log.isEnabledFor(logging.INFO):
        log_lines(log, [(logging.INFO, "Task %s[%s] started", (job.name, job.id), job.id, job.name)
                        for job in jobs])
