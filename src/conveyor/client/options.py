"""Turning a call and its submit options into a task record, validated at submit time."""

from __future__ import annotations

import datetime as dt
import math
import time
import uuid
from collections.abc import Callable
from typing import Any

from .. import serde
from ..store.base import NewTask
from ..tasks import task_options

# Keyword arguments of Client.submit that are options, not arguments of the task.
SUBMIT_OPTIONS = frozenset({"queue", "priority", "countdown", "eta", "timeout", "codec", "task_id"})


def split_options(kwargs: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Separate submit options from the task's own keyword arguments."""
    options = {k: kwargs[k] for k in kwargs.keys() & SUBMIT_OPTIONS}
    call_kwargs = {k: v for k, v in kwargs.items() if k not in SUBMIT_OPTIONS}
    return call_kwargs, options


def _number(name: str, value: Any, *, minimum: float = 0.0, strict: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value) or math.isinf(value):
        raise ValueError(f"{name} must be a finite number, not {value!r}")
    if value < minimum or (strict and value == minimum):
        raise ValueError(f"{name} must be {'>' if strict else '>='} {minimum}, not {value!r}")
    return float(value)


def make_task(
    fn: Callable | str,
    args: tuple | list,
    kwargs: dict[str, Any],
    *,
    codec: str = serde.MSGPACK,
    queue: str | None = None,
    priority: int | None = None,
    countdown: float | None = None,
    eta: dt.datetime | None = None,
    timeout: float | None = None,
    task_id: str | None = None,
    now: float | None = None,
) -> NewTask:
    """Build the task a submit sends, raising ValueError/TypeError for bad options or arguments."""
    spec = task_options(fn)
    serde.check_codec(codec)
    options = dict(spec.options)
    queue = spec.queue if queue is None else queue
    if not isinstance(queue, str) or not queue:
        raise ValueError("queue must be a non-empty string")
    priority = options.pop("priority", 0) if priority is None else priority
    if isinstance(priority, bool) or not isinstance(priority, int):
        raise ValueError(f"priority must be an integer, not {priority!r}")
    if timeout is None:
        timeout = options.get("timeout")
    if timeout is not None:
        options["timeout"] = _number("timeout", timeout, strict=True)
    now = time.time() if now is None else now
    not_before = 0.0
    if countdown is not None and eta is not None:
        raise ValueError("give countdown or eta, not both")
    if countdown is not None:
        not_before = now + _number("countdown", countdown)
    elif eta is not None:
        if not isinstance(eta, dt.datetime):
            raise ValueError(f"eta must be a datetime, not {type(eta).__name__}")
        if eta.tzinfo is None or eta.tzinfo.utcoffset(eta) is None:
            raise ValueError("eta must be timezone-aware (a naive datetime is ambiguous): "
                             "use datetime.now(timezone.utc) + timedelta(...)")
        not_before = eta.timestamp()
    payload = serde.encode_call(tuple(args), kwargs, codec)
    return NewTask(task_id or uuid.uuid4().hex, queue, spec.name, payload, codec, priority,
                   not_before, options)
