"""Turning a call and its submit options into a task record, validated at submit time."""

from __future__ import annotations

import datetime as dt
import hashlib
import math
import time
from collections.abc import Callable
from typing import Any

from .. import serde
from ..ids import new_id
from ..ratelimit import parse_rate
from ..records import NewTask
from ..retries import normalise_options
from ..tasks import task_options

# Keyword arguments of Client.submit that are options, not arguments of the task.
SUBMIT_OPTIONS = frozenset({
    "queue", "priority", "countdown", "eta", "timeout", "soft_timeout", "codec", "task_id", "key",
    "after", "pass_results", "rate_limit", "retries", "retry_backoff", "retry_backoff_max",
    "retry_jitter", "retry_on",
})
# Options that travel with the task for the worker and master (the rest shape the record).
_TASK_OPTIONS = ("retries", "retry_backoff", "retry_backoff_max", "retry_jitter", "retry_on",
                 "rate_limit")


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
    soft_timeout: float | None = None,
    task_id: str | None = None,
    key: str | None = None,
    after: Any = (),
    pass_results: bool = False,
    now: float | None = None,
    **extra: Any,
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
    unknown = set(extra) - set(_TASK_OPTIONS)
    if unknown:
        raise TypeError(f"unknown submit option(s): {', '.join(sorted(unknown))}")
    options.update(extra)
    normalise_options(options)
    if options.get("rate_limit") is not None:
        parse_rate(options["rate_limit"])
    if timeout is None:
        timeout = options.get("timeout")
    if timeout is not None:
        options["timeout"] = _number("timeout", timeout, strict=True)
    if soft_timeout is None:
        soft_timeout = options.get("soft_timeout")
    if soft_timeout is not None:
        options["soft_timeout"] = _number("soft_timeout", soft_timeout, strict=True)
    deps = _dependency_ids(after)
    if pass_results:
        if not deps:
            raise ValueError("pass_results needs after=[...] tasks whose results to pass")
        options["pass_results"] = True
        options["after"] = deps
    if key is not None:
        if task_id is not None:
            raise ValueError("give key or task_id, not both")
        if not isinstance(key, str) or not key:
            raise ValueError("key must be a non-empty string")
        # One key, one task: the id is derived from the key, and the store is idempotent by id.
        task_id = "key-" + hashlib.sha256(key.encode()).hexdigest()[:40]
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
    return NewTask(task_id or new_id(), queue, spec.name, payload, codec, priority,
                   not_before, options, deps)


def _dependency_ids(after: Any) -> list[str]:
    """Task ids from futures, ids, or a mix (``after=[f1, f2]`` or ``after=f1``)."""
    if after is None:
        return []
    if isinstance(after, str) or hasattr(after, "task_id"):
        after = [after]
    ids = []
    for dep in after:
        tid = getattr(dep, "task_id", dep)
        if not isinstance(tid, str) or not tid:
            raise ValueError(f"after must list task futures or ids, not {dep!r}")
        ids.append(tid)
    return ids
