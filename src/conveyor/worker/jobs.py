"""The jobs a pool runs and the results it reports: plain data shared by every pool kind,
the pool children and the worker."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Job", "JobResult", "OnResults", "OnProgress", "OnStarted"]

OnResults = Callable[[list["JobResult"]], None]
OnProgress = Callable[[dict[str, Any]], None]
OnStarted = Callable[[list["Job"]], None]


@dataclass(slots=True)
class Job:
    """One leased task to run."""

    id: str
    token: int
    name: str
    payload: bytes
    codec: str
    options: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class JobResult:
    """What to report to the master about one job.

    ``ok``: ``payload`` is the return value encoded with the job's codec.
    Not ok: ``payload`` is :func:`conveyor.serde.encode_error` (msgpack) and
    ``codec`` is ``"msgpack"``. ``duration`` is how long the function ran in
    seconds (0 if it never started). ``output`` is the last part (at most 64 KiB)
    of what the attempt logged and printed, where the pool captures it (None if not).
    """

    id: str
    token: int
    ok: bool
    payload: bytes
    codec: str
    duration: float = 0.0
    output: str | None = None

