"""Conversions between store records and the lists they travel as on the wire.

Kept apart from protocol.py (which knows frames, not tasks) so that the
master, the client and the worker share one spelling of each record.
"""

from __future__ import annotations

from typing import Any

from .errors import ProtocolError
from .records import FINISHED, Lease, NewTask, Outcome, Result
from .serde import CODECS

MAX_ID = 128
MAX_NAME = 512


def task_to_wire(t: NewTask) -> list:
    """A submit's task: [id, queue, name, payload, codec, priority, not_before, options, after]."""
    return [t.id, t.queue, t.name, t.payload, t.codec, t.priority, t.not_before, t.options, t.after]


def _str(value: Any, what: str, limit: int, *, optional: bool = False) -> str | None:
    if value is None and optional:
        return None
    if not isinstance(value, str) or not value or len(value) > limit:
        raise ProtocolError(f"{what} must be a non-empty string of at most {limit} characters")
    return value


def task_from_wire(item: Any) -> NewTask:
    """Validate and convert a submitted task; ProtocolError names what is wrong."""
    if not isinstance(item, list) or len(item) != 9:
        raise ProtocolError("a task must be a list of 9 fields")
    tid, queue, name, payload, codec, priority, not_before, options, after = item
    if not isinstance(payload, bytes):
        raise ProtocolError("task payload must be bytes")
    if codec not in CODECS:
        raise ProtocolError(f"unknown codec {codec!r}")
    if not isinstance(priority, int) or isinstance(priority, bool):
        raise ProtocolError("priority must be an integer")
    if not isinstance(not_before, (int, float)) or isinstance(not_before, bool):
        raise ProtocolError("not_before must be a number")
    if not isinstance(options, dict):
        raise ProtocolError("options must be a map")
    return NewTask(
        _str(tid, "task id", MAX_ID), _str(queue, "queue", MAX_NAME),
        _str(name, "task name", MAX_NAME, optional=True), payload, codec,
        priority, float(not_before), options, id_list(after, "after"),
    )


def lease_to_wire(lease: Lease, upstream: list | None = None) -> list:
    """A pushed task: [id, token, name, payload, codec, options, extra].

    ``extra`` carries ``failures`` (earlier failed attempts, for the retry
    budget) and, for ``pass_results`` tasks, ``upstream``: the results of the
    tasks it waited for, as [[ok, payload, codec]...] in ``after`` order.
    """
    extra: dict = {"failures": lease.failures}
    if upstream is not None:
        extra["upstream"] = upstream
    return [lease.id, lease.token, lease.name, lease.payload, lease.codec, lease.options, extra]


def outcome_from_wire(item: Any) -> tuple[Outcome, dict | None]:
    """Validate a worker's result: [id, token, ok, payload, codec, retry].

    ``retry`` is None (a final result), ``{"delay": s}`` (run again after s
    seconds) or ``{"dead": True}`` (retries spent).
    """
    if not isinstance(item, list) or len(item) != 6:
        raise ProtocolError("a result must be a list of 6 fields")
    tid, token, ok, payload, codec, retry = item
    if retry is not None:
        if not isinstance(retry, dict) or ok:
            raise ProtocolError("malformed retry decision")
        delay = retry.get("delay")
        if not retry.get("dead") and (not isinstance(delay, (int, float)) or delay < 0):
            raise ProtocolError("malformed retry decision")
    if not isinstance(token, int) or not isinstance(ok, bool) or not isinstance(payload, bytes):
        raise ProtocolError("malformed result")
    if codec not in CODECS:
        raise ProtocolError(f"unknown codec {codec!r}")
    return Outcome(_str(tid, "task id", MAX_ID), token, ok, payload, codec), retry


def result_to_wire(r: Result) -> list:
    """A pushed or fetched result: [id, ok, payload, codec, state]."""
    return [r.id, r.ok, r.payload, r.codec, r.state]


def result_from_wire(item: Any) -> Result:
    """Validate a result pushed by the master."""
    if not isinstance(item, list) or len(item) != 5:
        raise ProtocolError("malformed result")
    tid, ok, payload, codec, state = item
    if state not in FINISHED or not isinstance(payload, bytes):
        raise ProtocolError("malformed result")
    return Result(tid, bool(ok), payload, codec, state, 0.0)


def id_list(value: Any, what: str = "ids") -> list[str]:
    """Validate a list of task ids."""
    if not isinstance(value, list) or not all(isinstance(v, str) and 0 < len(v) <= MAX_ID for v in value):
        raise ProtocolError(f"{what} must be a list of task ids")
    return value


def lease_pairs(value: Any, what: str) -> list[list]:
    """Validate a list of [task id, lease token] pairs (acks and hand-backs)."""
    if not isinstance(value, list) or not all(
        isinstance(i, list) and len(i) == 2 and isinstance(i[0], str) and isinstance(i[1], int)
        and not isinstance(i[1], bool) for i in value
    ):
        raise ProtocolError(f"{what} must be a list of [id, token]")
    return value
