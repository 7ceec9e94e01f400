"""The plain data every layer shares: task states, new tasks, leases, outcomes, results.

Clients, workers, the wire layer, the master and every store speak in these
records; none of them needs a store to use them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# Task states, as stored.
DELAYED = "delayed"
READY = "ready"
LEASED = "leased"
SUCCEEDED = "succeeded"
FAILED = "failed"
DEAD = "dead"
CANCELLED = "cancelled"
WAITING = "waiting"  # waits for the tasks it depends on (NewTask.after) to succeed
STATES = (WAITING, DELAYED, READY, LEASED, SUCCEEDED, FAILED, DEAD, CANCELLED)
FINISHED = (SUCCEEDED, FAILED, DEAD, CANCELLED)

# Outcomes of Store.complete, one per Outcome given.
STORED = "stored"  # the result was stored; the task is finished
DUPLICATE = "duplicate"  # a result was stored already: this one is dropped (and counted)
STALE = "stale"  # a failure from an attempt that no longer holds the lease: ignored
UNKNOWN = "unknown"  # no task with that id


@dataclass(slots=True)
class NewTask:
    """A task (or plain queue item, when ``name`` is None) to enqueue.

    ``payload`` and ``options`` are opaque to the store; ``codec`` names how
    the payload is encoded. ``not_before`` > now makes the task delayed.
    """

    id: str
    queue: str
    name: str | None
    payload: bytes
    codec: str = "msgpack"
    priority: int = 0
    not_before: float = 0.0
    options: dict[str, Any] = field(default_factory=dict)
    after: list[str] = field(default_factory=list)  # ids that must succeed first


@dataclass(slots=True)
class Lease:
    """A task handed to a consumer; ``token`` is its lease's fencing token (64 random bits)."""

    id: str
    queue: str
    name: str | None
    payload: bytes
    codec: str
    token: int
    options: dict[str, Any]
    failures: int = 0  # errors recorded for this task so far (failed attempts)


@dataclass(slots=True)
class Outcome:
    """What a consumer reports for one leased task: a value (ok) or an error.

    ``output`` is the last part (at most 64 KiB) of what the attempt logged and
    printed, when the worker captured it.
    """

    id: str
    token: int
    ok: bool
    payload: bytes
    codec: str = "msgpack"
    output: str | None = None
    # Filled in by the master (never sent on the wire): who ran the attempt and
    # when it reported it began, kept in the task's attempt history.
    worker: dict[str, Any] | None = None
    started_at: float | None = None
    ended: str | None = None  # an attempt outcome more precise than failed (timed out, crashed)


# How an attempt ended, as kept in its AttemptRecord.
ATTEMPT_SUCCEEDED = "succeeded"
ATTEMPT_FAILED = "failed"  # the task failed for good (failed or dead)
ATTEMPT_RETRIED = "retried"  # failed, and the task was given another attempt
ATTEMPT_DEFERRED = "deferred"  # handed back without a failure (e.g. a rate limit)
ATTEMPT_TIMED_OUT = "timed out"
ATTEMPT_CRASHED = "crashed"
ATTEMPT_CANCELLED = "cancelled"
ATTEMPT_LOST = "lost lease"  # the lease expired or its worker went away
ATTEMPT_RELEASED = "released"  # the worker handed it back unstarted (warm shutdown)
ATTEMPTS_KEPT = 20  # attempt records kept per task: the last ones
MAX_ATTEMPT_OUTPUT = 64 * 1024  # characters of output kept per attempt (the last ones)


@dataclass(slots=True)
class AttemptNote:
    """What the master knows about an attempt that ends, for its AttemptRecord:
    the worker that ran it (``name``/``host``/``pid``), when the worker reported
    it began, what it printed, and (optionally) a more precise outcome."""

    worker: dict[str, Any] | None = None
    started_at: float | None = None
    output: str | None = None
    outcome: str | None = None


@dataclass(slots=True)
class AttemptRecord:
    """One attempt of a task, as stored when it ended (``Store.get`` fills
    ``TaskInfo.attempt_log`` with the last ``ATTEMPTS_KEPT``, oldest first).

    ``number`` is the attempt's number (1, 2, ...); ``owner`` the lease owner (a
    session id); ``worker`` its name/host/pid when the master knew them;
    ``error`` the encoded error (as ``TaskInfo.errors`` holds it), ``output``
    the last ``MAX_ATTEMPT_OUTPUT`` characters it logged and printed.
    """

    number: int
    owner: str | None
    worker: dict[str, Any] | None
    leased_at: float | None
    started_at: float | None
    finished_at: float
    outcome: str
    error: bytes | None = None
    output: str | None = None


def attempt_record(number: int, owner: str | None, leased_at: float | None, now: float,
                   outcome: str, note: AttemptNote | None, error: bytes | None = None) -> AttemptRecord:
    """The record of an attempt ending now: ``note`` (when given) adds what the
    master knows; its output is cut to the last ``MAX_ATTEMPT_OUTPUT`` characters."""
    note = note or AttemptNote()
    output = note.output[-MAX_ATTEMPT_OUTPUT:] if note.output else None
    return AttemptRecord(number, owner, dict(note.worker) if note.worker else None, leased_at,
                         note.started_at, now, note.outcome or outcome,
                         bytes(error) if error is not None else None, output)


def note_of(outcome: Outcome) -> AttemptNote:
    """The AttemptNote an Outcome carries (its worker, start and output)."""
    return AttemptNote(outcome.worker, outcome.started_at, outcome.output, outcome.ended)


@dataclass(slots=True)
class Result:
    """A stored result: ``payload`` is the encoded value when ``ok``, else an encoded error."""

    id: str
    ok: bool
    payload: bytes
    codec: str
    state: str
    finished_at: float


@dataclass(slots=True)
class TaskInfo:
    """Everything stored about one task, for inspection."""

    id: str
    queue: str
    name: str | None
    state: str
    priority: int
    attempts: int
    created_at: float
    not_before: float
    lease_owner: str | None
    lease_deadline: float | None
    started_at: float | None
    finished_at: float | None
    options: dict[str, Any]
    errors: list[bytes]
    result: Result | None
    after: list[str] = field(default_factory=list)
    progress: dict[str, Any] | None = None
    # Filled by Store.get (left empty by listings): the last attempts, oldest
    # first, and the task's arguments as submitted (``codec`` names their encoding).
    attempt_log: list[AttemptRecord] = field(default_factory=list)
    payload: bytes | None = None
    codec: str = "msgpack"


@dataclass(slots=True)
class QueueStats:
    """Counts of tasks by state in one queue."""

    waiting: int = 0
    ready: int = 0
    delayed: int = 0
    leased: int = 0
    succeeded: int = 0
    failed: int = 0
    dead: int = 0
    cancelled: int = 0

    def as_dict(self) -> dict[str, int]:
        return {s: getattr(self, s) for s in STATES}


# Outcome totals (Store.outcome_totals): monotonic counters per (queue, task name,
# outcome), kept in the transactions that change task states, never decreased by
# a purge — what Prometheus counters need. RETRIED counts a task sent back for
# another attempt after a failure: a nack with an error (not dead), or a finished
# task requeued (``conveyor retry``, the dashboard's retry).
RETRIED = "retried"
OUTCOMES = (SUCCEEDED, FAILED, DEAD, CANCELLED, RETRIED)


@dataclass(frozen=True, slots=True)
class TaskFilter:
    """Which tasks a listing, a count or a bulk action selects; every given field must match.

    ``states`` (empty: every state), ``queue``, ``name`` (the task name), ``id_prefix``
    (a prefix of the task id), ``key`` (the idempotency key given at submit: conveyor
    stores only the id derived from it, so a key matches exactly, never by prefix),
    ``created_from`` <= created_at < ``created_to`` (submit time, wall-clock seconds).
    Check one with :func:`conveyor.store.validate.check_filter`.
    """

    states: tuple[str, ...] = ()
    queue: str | None = None
    name: str | None = None
    id_prefix: str | None = None
    key: str | None = None
    created_from: float | None = None
    created_to: float | None = None


@dataclass(slots=True)
class TaskSummary:
    """One row of a task listing: what a list shows, without payloads, results or errors."""

    id: str
    queue: str
    name: str | None
    state: str
    priority: int
    attempts: int
    failures: int  # errors recorded so far
    created_at: float
    not_before: float
    started_at: float | None
    finished_at: float | None
    lease_owner: str | None


@dataclass(slots=True)
class TaskPage:
    """A page of a listing and where the next one starts.

    ``cursor`` is None at the end; otherwise pass it back for the next page. A
    page may hold fewer rows than asked (even none) and still have a cursor:
    each call examines a bounded number of rows, so a sparse filter takes
    several calls to get through a deep store.
    """

    tasks: list[TaskSummary]
    cursor: str | None


@dataclass(frozen=True, slots=True)
class TaskCount:
    """How many tasks a filter selects: exactly ``n`` when ``exact``, else at least ``n``
    (the count stopped at its cap, or at the number of rows one call may examine)."""

    n: int
    exact: bool


@dataclass(slots=True)
class BulkResult:
    """One batch of a bulk action by filter: what it did and where the next batch starts.

    ``ids``: the tasks requeued or cancelled, in enqueue order. ``cancelled``
    (cancel only): (id, the state it had, its lease owner if it was leased) for
    each, so the caller can stop the ones running. ``cursor`` is None when the
    filter has been gone through; otherwise pass it to the next call.
    """

    ids: list[str]
    cursor: str | None
    cancelled: list[tuple[str, str, str | None]] = field(default_factory=list)


def task_id_for_key(key: str) -> str:
    """The task id an idempotency ``key`` stands for: one key, one task (the store is
    idempotent by id, so a resubmit with the same key is a duplicate)."""
    import hashlib

    return "key-" + hashlib.sha256(key.encode()).hexdigest()[:40]


#: The filter that selects every task (the default of listings and counts).
ALL_TASKS = TaskFilter()
