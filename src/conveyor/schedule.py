"""Periodic schedules, pure: the record, its validation, and which slots are due.

A schedule runs one task (``module:function`` with fixed arguments) on a
queue at every *slot*: the times a cron expression names in a time zone
(``cron="*/5 * * * *", tz="Europe/Paris"``), or every ``every`` seconds
(slots aligned to the Unix epoch: ``every=3600`` runs on the hour, UTC).

Nothing here reads a clock or touches the store: :func:`due_slots` takes
``now`` and the last slot already enqueued, so catch-up rules and DST are
unit tests. The master's scheduler loop (``conveyor.master.scheduler``)
calls it and enqueues each due slot's task under :func:`slot_task_id`, a
deterministic id, so a slot is enqueued at most once even when several
masters, or a restarted one, look at it.

Rules:

- A new schedule never runs a slot from before it was created.
- Slots that pass while the master is down (or too busy to look) are
  coalesced: at most the latest one runs. With ``missed="run_once"`` it runs
  as soon as the master sees it; with ``missed="skip"`` it runs only if it is
  at most :data:`LATE_GRACE` seconds old, so after an outage the schedule
  simply waits for its next slot.
- Cron follows the time zone's wall clock. On a spring-forward day a time
  that does not exist runs at the first existing minute after it (02:30
  becomes 03:00 in Europe/Paris); on a fall-back day a fixed-time job
  (``30 2 * * *``) runs once, at the first 02:30, while a job whose minute or
  hour field starts with ``*`` runs in both of the repeated hours — vixie
  cron's rule.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import math
import zoneinfo
from dataclasses import dataclass, field, replace
from typing import Any

from croniter import croniter

from . import serde

RUN_ONCE = "run_once"
SKIP = "skip"
MISSED = (RUN_ONCE, SKIP)
SOURCES = ("code", "cli")
LATE_GRACE = 10.0  # seconds: a slot older than this when first seen was missed
MAX_NAME = 200
_ALIASES = {
    "@yearly": "0 0 1 1 *", "@annually": "0 0 1 1 *", "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0", "@daily": "0 0 * * *", "@midnight": "0 0 * * *", "@hourly": "0 * * * *",
}
_MAX_STEPS = 10_000  # croniter steps when skipping repeated fall-back times (never near it)


@dataclass(frozen=True, slots=True)
class Schedule:
    """One periodic schedule: which task to enqueue on which queue, and when.

    ``payload``/``codec`` are the task's arguments as :func:`serde.encode_call`
    wrote them; ``options`` are task options (``timeout``, ``retries``,
    ``priority``...) sent with every run. ``source`` says who made it:
    ``"code"`` (``@conveyor.periodic``, declared by workers) or ``"cli"``
    (``conveyor schedule add`` / ``client.schedule``). ``created_at`` bounds
    the first run: no slot at or before it ever runs.
    """

    name: str
    task: str
    queue: str = "default"
    payload: bytes = field(default_factory=lambda: serde.encode_call((), {}))
    codec: str = serde.MSGPACK
    cron: str | None = None
    every: float | None = None
    tz: str = "UTC"
    missed: str = RUN_ONCE
    options: dict[str, Any] = field(default_factory=dict)
    source: str = "cli"
    created_at: float = 0.0

    # -- conversions -------------------------------------------------------
    def spec(self) -> tuple[Any, ...]:
        """What the schedule does (everything but who made it and when): equal specs, same schedule."""
        return (self.task, self.queue, bytes(self.payload), self.codec, self.cron, self.every,
                self.tz, self.missed, _canonical(self.options))

    def timing(self) -> tuple[str | None, float | None, str]:
        """When it runs: a change here restarts the schedule (no past slot of the new timing runs)."""
        return (self.cron, self.every, self.tz)

    def to_wire(self) -> dict[str, Any]:
        """The fields a client or worker sends (``sched_add``, the worker's hello)."""
        return {"name": self.name, "task": self.task, "queue": self.queue, "payload": self.payload,
                "codec": self.codec, "cron": self.cron, "every": self.every, "tz": self.tz,
                "missed": self.missed, "options": dict(self.options)}

    @classmethod
    def from_wire(cls, fields: Any, *, source: str, created_at: float = 0.0) -> Schedule:
        """Validate what a peer sent; ValueError naming the field that is wrong."""
        if not isinstance(fields, dict):
            raise ValueError("schedule: must be a map of fields")
        payload = fields.get("payload")
        if not isinstance(payload, bytes):
            raise ValueError("payload: must be bytes (the encoded arguments)")
        options = fields.get("options") or {}
        if not isinstance(options, dict) or not all(isinstance(k, str) for k in options):
            raise ValueError("options: must be a map with string keys")
        codec = fields.get("codec", serde.MSGPACK)
        if codec not in serde.CODECS:
            raise ValueError(f"codec: unknown codec {codec!r}: choose one of {', '.join(serde.CODECS)}")
        name: Any = fields.get("name")  # checked by validate() below, with the other fields
        task: Any = fields.get("task")
        sched = cls(
            name=name, task=task, queue=fields.get("queue", "default"),
            payload=payload, codec=codec, cron=fields.get("cron"), every=fields.get("every"),
            tz=fields.get("tz", "UTC"), missed=fields.get("missed", RUN_ONCE), options=options,
            source=source, created_at=created_at,
        )
        return validate(sched)

    def to_record(self, *, last_slot: float | None = None) -> dict[str, Any]:
        """The record a store keeps (see ``Store.save_schedule``)."""
        rec = self.to_wire()
        rec.update(source=self.source, created_at=float(self.created_at), last_slot=last_slot)
        return rec

    @classmethod
    def from_record(cls, rec: dict[str, Any]) -> Schedule:
        """A stored record back as a Schedule (validated: a store may hold anything)."""
        return cls.from_wire(rec, source=rec.get("source", "cli"), created_at=float(rec.get("created_at") or 0.0))

    def describe(self) -> str:
        """``cron */5 * * * * (Europe/Paris)`` or ``every 30s``."""
        if self.cron is not None:
            return f"cron {self.cron} ({self.tz})"
        return f"every {_seconds(self.every)}"


def _seconds(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{int(value)}s" if float(value).is_integer() else f"{value}s"


def _canonical(options: dict[str, Any]) -> bytes:
    return serde.packb(sorted(options.items())) if options else b""


# -- validation ---------------------------------------------------------------
def check_name(name: Any) -> str:
    """A schedule name: a non-empty string without surrounding spaces."""
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"name: a schedule needs a non-empty name, not {name!r}")
    if name != name.strip() or len(name) > MAX_NAME or any(c in name for c in "\n\r\t"):
        raise ValueError(f"name: {name!r} must be at most {MAX_NAME} characters, "
                         "without surrounding spaces or control characters")
    return name


def check_tz(tz: Any) -> zoneinfo.ZoneInfo:
    """The time zone named ``tz`` (an IANA name such as ``Europe/Paris``)."""
    if not isinstance(tz, str) or not tz:
        raise ValueError(f"tz: expected a time zone name such as 'UTC' or 'Europe/Paris', not {tz!r}")
    try:
        return _zone(tz)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError, OSError):
        raise ValueError(f"tz: unknown time zone {tz!r} (use an IANA name such as 'UTC' "
                         "or 'Europe/Paris')") from None


def _zone(tz: str) -> zoneinfo.ZoneInfo:
    return zoneinfo.ZoneInfo(tz)


def check_cron(expr: Any) -> str:
    """A 5-field cron expression (minute hour day-of-month month day-of-week) or an @alias."""
    if not isinstance(expr, str) or not expr.strip():
        raise ValueError(f"cron: expected an expression such as '*/5 * * * *', not {expr!r}")
    expr = " ".join(expr.split())
    fields = _ALIASES.get(expr.lower(), expr).split()
    if len(fields) != 5:
        raise ValueError(f"cron: invalid expression {expr!r}: expected 5 fields (minute hour "
                         f"day-of-month month day-of-week) or one of {', '.join(_ALIASES)}")
    try:
        it = croniter(" ".join(fields), dt.datetime(2000, 1, 1, tzinfo=dt.UTC))
        it.get_next(float)
    except (ValueError, KeyError, TypeError) as exc:  # croniter's errors are ValueErrors
        reason = str(exc) or type(exc).__name__
        if "find next date" in reason:
            reason = "it never matches a date"
        raise ValueError(f"cron: invalid expression {expr!r}: {reason}") from None
    return str(expr)


def check_every(every: Any) -> float:
    """A positive, finite number of seconds."""
    if isinstance(every, bool) or not isinstance(every, (int, float)) or not math.isfinite(every) or every <= 0:
        raise ValueError(f"every: the interval must be a positive number of seconds, not {every!r}")
    return float(every)


def check_missed(missed: Any) -> str:
    if missed not in MISSED:
        raise ValueError(f"missed: must be {' or '.join(repr(m) for m in MISSED)}, not {missed!r}")
    return str(missed)


def check_task(task: Any) -> str:
    if not isinstance(task, str) or ":" not in task or task.startswith(":") or task.endswith(":") \
            or len(task) > 512:
        raise ValueError(f"task: expected 'module:function', not {task!r}")
    return task


def check_queue(queue: Any) -> str:
    if not isinstance(queue, str) or not queue or len(queue) > 512:
        raise ValueError(f"queue: must be a non-empty string, not {queue!r}")
    return queue


def validate(sched: Schedule) -> Schedule:
    """Check every field of ``sched``; the same schedule, normalised, or ValueError naming the field."""
    check_name(sched.name)
    check_task(sched.task)
    check_queue(sched.queue)
    if (sched.cron is None) == (sched.every is None):
        which = "both" if sched.cron is not None else "neither"
        raise ValueError(f"cron/every: give exactly one of cron (an expression) or every "
                         f"(seconds), not {which}")
    cron = check_cron(sched.cron) if sched.cron is not None else None
    every = check_every(sched.every) if sched.every is not None else None
    check_tz(sched.tz)
    check_missed(sched.missed)
    if sched.source not in SOURCES:
        raise ValueError(f"source: must be one of {', '.join(SOURCES)}, not {sched.source!r}")
    serde.check_codec(sched.codec)
    if cron != sched.cron or every != sched.every:
        sched = replace(sched, cron=cron, every=every)
    return sched


def make_schedule(name: str, task: str, args: tuple[Any, ...] | list[Any] = (), kwargs: dict[str, Any] | None = None, *,
                  cron: str | None = None, every: float | None = None, tz: str = "UTC",
                  queue: str = "default", missed: str = RUN_ONCE, codec: str = serde.MSGPACK,
                  options: dict[str, Any] | None = None, source: str = "cli",
                  created_at: float = 0.0) -> Schedule:
    """Build and validate a schedule; ValueError names the field that is wrong (an
    argument the codec cannot encode raises SerializationError, a TypeError, naming it)."""
    check_name(name)
    sched = Schedule(name=name, task=task, queue=queue, payload=b"", codec=codec, cron=cron,
                     every=every, tz=tz, missed=missed, options=dict(options or {}), source=source,
                     created_at=created_at)
    sched = validate(sched)
    payload = serde.encode_call(tuple(args), dict(kwargs or {}), codec)
    return replace(sched, payload=payload)


# -- slots --------------------------------------------------------------------
def slot_task_id(name: str, slot: float) -> str:
    """The id of the task a schedule's slot enqueues: the same on every master, every time."""
    return hashlib.sha256(f"{name}@{float(slot)!r}".encode()).hexdigest()[:32]


def _wildcard(expr: str) -> bool:
    minute, hour = _ALIASES.get(expr.lower(), expr).split()[:2]
    return minute.startswith("*") or hour.startswith("*")


def _repeated(sched: Schedule, ts: float, tz: zoneinfo.ZoneInfo) -> bool:
    """A fixed-time cron slot in the second pass of a fall-back hour: not run."""
    assert sched.cron is not None  # only cron schedules have slots croniter finds
    return not _wildcard(sched.cron) and dt.datetime.fromtimestamp(ts, tz).fold == 1


def _cron(sched: Schedule, start: float) -> tuple[croniter, zoneinfo.ZoneInfo]:
    assert sched.cron is not None  # validate() makes a schedule either cron or every
    tz = _zone(sched.tz)
    expr = _ALIASES.get(sched.cron.lower(), sched.cron)
    return croniter(expr, dt.datetime.fromtimestamp(start, tz)), tz


def next_slot(sched: Schedule, after: float) -> float:
    """The first slot strictly after ``after``."""
    if sched.every is not None:
        every = sched.every
        k = math.floor(after / every)
        while k * every > after:
            k -= 1
        while k * every <= after:
            k += 1
        return k * every
    it, tz = _cron(sched, after)
    for _ in range(_MAX_STEPS):
        ts = float(it.get_next(float))
        if ts > after and not _repeated(sched, ts, tz):
            return ts
    raise ValueError(f"cron: no slot of {sched.cron!r} found after {after}")  # pragma: no cover


def latest_slot(sched: Schedule, now: float) -> float:
    """The last slot at or before ``now``."""
    if sched.every is not None:
        every = sched.every
        k = math.floor(now / every)
        while k * every > now:
            k -= 1
        while (k + 1) * every <= now:
            k += 1
        return k * every
    it, tz = _cron(sched, now)
    for _ in range(_MAX_STEPS):
        prev = float(it.get_prev(float))  # strictly before now
        if not _repeated(sched, prev, tz):
            break
    else:  # pragma: no cover
        raise ValueError(f"cron: no slot of {sched.cron!r} found before {now}")
    latest = prev
    following = next_slot(sched, prev)
    while following <= now:  # now itself is a slot (croniter's get_prev is strict)
        latest = following
        following = next_slot(sched, following)
    return latest


def due_slots(sched: Schedule, last_slot: float | None, now: float, *,
              grace: float = LATE_GRACE) -> list[float]:
    """The slots to enqueue now: at most one, the latest slot after ``last_slot``.

    ``last_slot`` is the last slot already enqueued (None: none yet, and then
    nothing at or before ``sched.created_at`` runs). Slots between it and the
    latest are missed and coalesced into the latest; the latest runs when it
    is at most ``grace`` seconds old, or, older, when ``missed="run_once"``.
    """
    base = sched.created_at if last_slot is None else last_slot
    latest = latest_slot(sched, now)
    if latest <= base:
        return []
    if now - latest <= grace or sched.missed == RUN_ONCE:
        return [latest]
    return []
