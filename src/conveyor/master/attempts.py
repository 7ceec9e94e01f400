"""What the master adds to each attempt record, and how ``inspect`` shows attempts.

The store writes an attempt's record in the transaction that ends it; the
master knows what the store cannot: which worker (name, host, pid) held the
lease, when the worker reported it began, what it printed (from the ack), and
whether a failure was a timeout or a crash. This module builds those notes
from a session and an outcome, and turns stored records and arguments into
the plain data ``inspect`` and the dashboard show.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from .. import serde
from ..records import (
    ATTEMPT_CRASHED,
    ATTEMPT_TIMED_OUT,
    AttemptNote,
    AttemptRecord,
    Outcome,
)
from .session import Session

#: Encoded arguments larger than this are described by size, not decoded into a reply.
MAX_ARGS_SHOWN = 64 * 1024

#: Dependents ``inspect`` lists (ids of tasks whose ``after`` names the task).
DEPENDENTS_SHOWN = 100

# Error types (as encoded, module.qualname) that name how an attempt ended.
_ENDED_BY = {
    "conveyor.errors.TaskTimeout": ATTEMPT_TIMED_OUT,
    "conveyor.errors.WorkerCrashed": ATTEMPT_CRASHED,
}


def worker_of(s: Session) -> dict[str, Any]:
    """A worker session's identity as an attempt record keeps it."""
    return {"name": s.name, "host": s.host, "pid": s.pid}


def workers_by_owner(sessions: Iterable[Session]) -> dict[str, dict[str, Any]]:
    """Lease owner (session id) -> identity, for every connected worker (lease expiry)."""
    return {s.id: worker_of(s) for s in sessions if s.role == "worker"}


def ended_by(error: bytes | None) -> str | None:
    """The attempt outcome a failure's error names (timed out, crashed), if any."""
    if not error:
        return None
    return _ENDED_BY.get(serde.decode_error(error)["type"])


def note_outcome(s: Session, o: Outcome) -> Outcome:
    """``o`` with what the master knows of its attempt: ``s``'s identity, the start
    the worker reported (call while ``s`` still holds the lease) and, for a
    failure, whether it was a timeout or a crash."""
    o.worker = worker_of(s)
    o.started_at = s.started_at(o.id)
    o.ended = None if o.ok else ended_by(o.payload)
    return o


def note_failure(o: Outcome) -> AttemptNote:
    """The note of a failed attempt given back for a retry or buried (its outcome
    says timed out or crashed when the error does)."""
    return AttemptNote(o.worker, o.started_at, o.output, o.ended)


def describe_attempt(a: AttemptRecord) -> dict[str, Any]:
    """One attempt as ``inspect`` shows it: plain data, its error decoded."""
    return {
        "number": a.number, "worker": a.worker, "leased_at": a.leased_at,
        "started_at": a.started_at, "finished_at": a.finished_at, "outcome": a.outcome,
        "error": _error(a.error) if a.error else None, "output": a.output,
    }


def _error(blob: bytes) -> dict[str, Any]:
    e = serde.decode_error(blob)
    return {"type": e["type"], "message": e["message"], "traceback": e["traceback"]}


def describe_args(payload: bytes | None, codec: str) -> dict[str, Any]:
    """A task's arguments for display: ``args``/``kwargs`` decoded when msgpack;
    a pickled payload is named, never unpickled (it could run code). A plain
    queue item's value shows as ``args``."""
    if payload is None:
        return {}
    if codec != serde.MSGPACK:
        return {"args": f"<{codec} payload, {len(payload)} bytes>", "kwargs": None}
    if len(payload) > MAX_ARGS_SHOWN:
        return {"args": f"<msgpack payload, {len(payload)} bytes>", "kwargs": None}
    try:
        value = serde.unpackb(payload)
    except Exception:
        return {"args": f"<unreadable payload, {len(payload)} bytes>", "kwargs": None}
    if isinstance(value, list) and len(value) == 2 and isinstance(value[0], list) \
            and isinstance(value[1], Mapping):  # serde.encode_call's [args, kwargs]
        return {"args": value[0], "kwargs": dict(value[1])}
    return {"args": value, "kwargs": None}
