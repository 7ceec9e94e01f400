"""Every submit and task option, declared once.

An option is what a caller may pass to ``client.submit``/``submit_call``/``map``
(sync and asyncio), as a default to ``@conveyor.task``/``@conveyor.periodic``,
or to ``conveyor submit`` on the command line. :data:`OPTIONS` says, for each:
how its value is checked (one validator, raising ValueError that names the
option), its default, where it travels and who reads it, and its command-line
flag. Everything else reads through this module: :func:`resolve` merges a
task's defaults with a submit's options, and the small readers at the end
(:func:`timeout_of`, :func:`priority_of`, ...) are how the worker pool, the
master's scheduler and job control read a stored task's options.

Where an option travels:

- ``OPTIONS_DICT``: stored in the task's ``options`` dict, read on the worker or master;
- ``RECORD``: becomes a field of the task record (:class:`conveyor.records.NewTask`);
- ``CLIENT``: shapes the submit only and is not stored as such.

This module imports nothing heavy (no msgpack, no asyncio, no store): a task
module that says ``@conveyor.task(timeout=5)`` loads it and little else.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

OPTIONS_DICT = "options"
RECORD = "record"
CLIENT = "client"

DEFAULT_QUEUE = "default"


@dataclass(frozen=True, slots=True)
class Option:
    """One submit/task option: its check, default, route, readers and CLI form."""

    name: str
    validate: Callable[[Any], Any]  # the value as it travels, or ValueError naming the option
    default: Any  # what a task that does not set it gets (None: not set)
    travels: str  # OPTIONS_DICT, RECORD or CLIENT
    readers: str  # who reads it (documentation, and the report of `conveyor submit --help`)
    help: str  # the command-line help
    task_default: bool = False  # may be set by @conveyor.task / @conveyor.periodic
    cli_type: Callable[[str], Any] | None = str  # parses the flag's text; None: not on the CLI
    cli_action: str | None = None  # "append" (repeatable), "flag" (store_true), "bool" (--x/--no-x)
    metavar: str | None = None


# -- validators: each returns the value as it travels ------------------------------
def _finite(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, not {value!r}")
    return float(value)


def _positive_seconds(name: str) -> Callable[[Any], float]:
    def check(value: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
                or value <= 0:
            raise ValueError(f"{name} must be a positive number of seconds, not {value!r}")
        return float(value)
    return check


def _non_negative_seconds(name: str) -> Callable[[Any], float]:
    def check(value: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
                or value < 0:
            raise ValueError(f"{name} must be a non-negative number of seconds, not {value!r}")
        return float(value)
    return check


def _non_empty_string(name: str) -> Callable[[Any], str]:
    def check(value: Any) -> str:
        if not isinstance(value, str) or not value:
            raise ValueError(f"{name} must be a non-empty string, not {value!r}")
        return value
    return check


def _priority(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"priority must be an integer, not {value!r}")
    return value


def _countdown(value: Any) -> float:
    seconds = _finite("countdown", value)
    if seconds < 0:
        raise ValueError(f"countdown must be >= 0 seconds, not {value!r}")
    return seconds


def _eta(value: Any) -> dt.datetime:
    if not isinstance(value, dt.datetime):
        raise ValueError(f"eta must be a datetime, not {type(value).__name__}")
    if value.tzinfo is None or value.tzinfo.utcoffset(value) is None:
        raise ValueError("eta must be timezone-aware (a naive datetime is ambiguous): "
                         "use datetime.now(timezone.utc) + timedelta(...)")
    return value


def _codec(value: Any) -> str:
    from .serde import check_codec  # here: the table itself loads no codec

    return check_codec(value)


def _after(value: Any) -> list[str]:
    """Task ids from futures, ids, or a mix (``after=[f1, f2]`` or ``after=f1``)."""
    if value is None:
        return []
    if isinstance(value, str) or hasattr(value, "task_id"):
        value = [value]
    if not isinstance(value, Iterable):
        raise ValueError(f"after must list task futures or ids, not {value!r}")
    ids = []
    for dep in value:
        tid = getattr(dep, "task_id", dep)
        if not isinstance(tid, str) or not tid:
            raise ValueError(f"after must list task futures or ids, not {dep!r}")
        ids.append(tid)
    return ids


def _flag(name: str) -> Callable[[Any], bool]:
    def check(value: Any) -> bool:
        if not isinstance(value, bool):
            raise ValueError(f"{name} must be True or False, not {value!r}")
        return value
    return check


def _rate_limit(value: Any) -> str:
    from .ratelimit import parse_rate

    parse_rate(value)  # ValueError naming rate_limit
    return str(value)


def _retries(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"retries must be a non-negative integer, not {value!r}")
    return value


#: Most headers a task carries, and the longest name and value (bytes of text).
MAX_HEADERS = 64
MAX_HEADER_LENGTH = 4096


def _headers(value: Any) -> dict[str, str]:
    """String headers that travel with the task to its worker (trace context, request ids):
    a mapping, or ``KEY=VALUE`` strings as the command line gives them."""
    items: list[tuple[Any, Any]]
    if isinstance(value, Mapping):
        items = list(value.items())
    elif isinstance(value, Iterable) and not isinstance(value, (str, bytes)):
        items = []
        for text in value:
            if not isinstance(text, str) or "=" not in text:
                raise ValueError(f"headers must be KEY=VALUE strings, not {text!r}")
            key, _, val = text.partition("=")
            items.append((key, val))
    else:
        raise ValueError(f"headers must be a mapping of strings, not {value!r}")
    if len(items) > MAX_HEADERS:
        raise ValueError(f"headers: at most {MAX_HEADERS}, not {len(items)}")
    for k, v in items:
        if not isinstance(k, str) or not isinstance(v, str) or not k \
                or len(k) > MAX_HEADER_LENGTH or len(v) > MAX_HEADER_LENGTH:
            raise ValueError(f"headers must map non-empty strings to strings (at most "
                             f"{MAX_HEADER_LENGTH} characters), not {k!r}: {v!r}")
    return dict(items)


def exception_name(kind: type[BaseException]) -> str:
    """An exception type's name as errors carry it (``serde.type_name``): ``ValueError``,
    ``pkg.mod.MyError``."""
    return kind.__qualname__ if kind.__module__ in ("builtins", None) else f"{kind.__module__}.{kind.__qualname__}"


def _retry_on(value: Any) -> list[str]:
    kinds = (value,) if isinstance(value, (type, str)) else value
    if not isinstance(kinds, Iterable):
        raise ValueError(f"retry_on must name exception types, not {value!r}")
    names = []
    for k in kinds:
        if isinstance(k, type) and issubclass(k, BaseException):
            names.append(exception_name(k))
        elif isinstance(k, str) and k:
            names.append(k)
        else:
            raise ValueError(f"retry_on must name exception types, not {k!r}")
    return names


def _iso_datetime(text: str) -> dt.datetime:
    """An ISO 8601 time for ``--eta``; without a zone it is read as UTC."""
    try:
        when = dt.datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"eta must be an ISO 8601 time like 2030-01-01T09:00:00+00:00, not {text!r}") from None
    return when if when.tzinfo is not None else when.replace(tzinfo=dt.UTC)


# -- the table ----------------------------------------------------------------------
OPTIONS: dict[str, Option] = {o.name: o for o in (
    Option("queue", _non_empty_string("queue"), DEFAULT_QUEUE, RECORD,
           "master: the queue the task waits in",
           "queue (default: the task's, else 'default')", cli_type=str, metavar="NAME"),
    Option("priority", _priority, 0, RECORD, "master: higher is leased first; schedules carry it in options",
           "higher runs first (an integer, default 0)", task_default=True, cli_type=int, metavar="N"),
    Option("countdown", _countdown, None, CLIENT, "client: sets the record's not_before",
           "run no sooner than this many seconds from now", cli_type=float, metavar="S"),
    Option("eta", _eta, None, CLIENT, "client: sets the record's not_before",
           "run no sooner than this ISO 8601 time (UTC unless it names a zone)",
           cli_type=_iso_datetime, metavar="TIME"),
    Option("timeout", _positive_seconds("timeout"), None, OPTIONS_DICT,
           "worker pool (timeout_of): the task is stopped past it and fails with TaskTimeout",
           "stop the task after this many seconds (TaskTimeout)", task_default=True, cli_type=float,
           metavar="S"),
    Option("soft_timeout", _positive_seconds("soft_timeout"), None, OPTIONS_DICT,
           "worker pool (soft_timeout_of): SoftTimeLimitExceeded is raised inside the task",
           "raise SoftTimeLimitExceeded inside the task after this many seconds", task_default=True,
           cli_type=float, metavar="S"),
    Option("codec", _codec, "msgpack", RECORD, "client and worker: how arguments and result are encoded",
           "encode arguments with msgpack (default) or pickle", cli_type=str, metavar="CODEC"),
    Option("task_id", _non_empty_string("task_id"), None, RECORD,
           "master: the task's id (a second submit with the same id is the same task)",
           "the task's id (submitting an id again submits nothing)", cli_type=str, metavar="ID"),
    Option("key", _non_empty_string("key"), None, CLIENT, "client: the record's id is derived from it",
           "idempotency key: one task per key", cli_type=str, metavar="KEY"),
    Option("after", _after, (), RECORD,
           "master: the task waits for these; with pass_results also in options (results_of)",
           "run after task ID succeeded (repeatable)", cli_action="append", metavar="ID"),
    Option("pass_results", _flag("pass_results"), False, OPTIONS_DICT,
           "master job control (passes_results): the dependencies' results are the first argument",
           "pass the results of the --after tasks as the first argument", cli_type=None, cli_action="flag"),
    Option("rate_limit", _rate_limit, None, OPTIONS_DICT,
           "master job control (rate_limit_of): leases beyond the rate are deferred",
           "at most N per unit, e.g. 100/m (per task name)", task_default=True, metavar="N/UNIT"),
    Option("retries", _retries, 0, OPTIONS_DICT, "worker (retry_policy_of): how often a failure runs again",
           "how many times a failed attempt runs again", task_default=True, cli_type=int, metavar="N"),
    Option("retry_backoff", _non_negative_seconds("retry_backoff"), 1.0, OPTIONS_DICT,
           "worker (retry_policy_of): the first retry's delay, doubled each retry",
           "first retry delay in seconds, doubled each retry (default 1)", task_default=True,
           cli_type=float, metavar="S"),
    Option("retry_backoff_max", _non_negative_seconds("retry_backoff_max"), 300.0, OPTIONS_DICT,
           "worker (retry_policy_of): the cap on a retry's delay",
           "cap on the retry delay in seconds (default 300)", task_default=True, cli_type=float, metavar="S"),
    Option("retry_jitter", _flag("retry_jitter"), True, OPTIONS_DICT,
           "worker (retry_policy_of): scale each delay by a random factor in [0.5, 1]",
           "randomise retry delays (default on)", task_default=True, cli_type=None, cli_action="bool"),
    Option("retry_on", _retry_on, None, OPTIONS_DICT,
           "worker (retry_policy_of): only these exception types (or subclasses) retry",
           "retry only on this exception type name (repeatable)", task_default=True, cli_action="append",
           metavar="TYPE"),
    Option("headers", _headers, None, OPTIONS_DICT,
           "worker (headers_of): conveyor.current_task().headers and middleware; "
           "client middleware may add some (trace context)",
           "a header the task carries (repeatable), e.g. request-id=42", cli_action="append",
           metavar="KEY=VALUE"),
)}

SUBMIT_OPTIONS = frozenset(OPTIONS)
TASK_OPTIONS = frozenset(name for name, o in OPTIONS.items() if o.task_default)


# -- checking and merging -----------------------------------------------------------
def validate(name: str, value: Any) -> Any:
    """``value`` checked by option ``name``'s validator, as it travels."""
    return OPTIONS[name].validate(value)


def check_task_defaults(given: Mapping[str, Any]) -> dict[str, Any]:
    """The defaults of ``@task``/``@periodic``, checked (TypeError for an unknown name,
    ValueError naming a bad value); None values are dropped."""
    unknown = set(given) - TASK_OPTIONS
    if unknown:
        raise TypeError(f"unknown task option(s): {', '.join(sorted(unknown))}; "
                        f"choose from {', '.join(sorted(TASK_OPTIONS))}")
    return {name: validate(name, value) for name, value in given.items() if value is not None}


def resolve(defaults: Mapping[str, Any], given: Mapping[str, Any]) -> dict[str, Any]:
    """A submit's options: the task's ``defaults`` overridden by the options ``given``
    (None or an empty ``after`` means "not given"), each checked once, and checked
    together (TypeError for an unknown name, ValueError naming the option)."""
    unknown = set(given) - SUBMIT_OPTIONS
    if unknown:
        raise TypeError(f"unknown submit option(s): {', '.join(sorted(unknown))}")
    values = dict(defaults)
    values.update((k, v) for k, v in given.items() if v is not None)
    out = {name: validate(name, value) for name, value in values.items()}
    if out.get("countdown") is not None and out.get("eta") is not None:
        raise ValueError("give countdown or eta, not both")
    if out.get("key") is not None and out.get("task_id") is not None:
        raise ValueError("give key or task_id, not both")
    if out.get("pass_results") and not out.get("after"):
        raise ValueError("pass_results needs after=[...] tasks whose results to pass")
    return out


def stored(values: Mapping[str, Any]) -> dict[str, Any]:
    """The options that travel in the task's options dict (``after`` too when results pass)."""
    out = {k: v for k, v in values.items() if OPTIONS[k].travels == OPTIONS_DICT and v is not None}
    if not out.get("pass_results"):
        out.pop("pass_results", None)
    else:
        out["after"] = list(values["after"])
    return out


def headers_of(options: Mapping[str, Any]) -> dict[str, str]:
    """A stored task's headers (empty when it has none)."""
    headers = options.get("headers")
    return dict(headers) if isinstance(headers, Mapping) else {}


def not_before(values: Mapping[str, Any], now: float) -> float:
    """The earliest Unix time the task may run: from ``countdown`` or ``eta``, else 0."""
    if values.get("countdown") is not None:
        return float(now + values["countdown"])
    if values.get("eta") is not None:
        return float(values["eta"].timestamp())
    return 0.0


def key_id(key: str) -> str:
    """The task id for an idempotency key: one key, one task (the store is idempotent by id).
    The one formula is :func:`conveyor.records.task_id_for_key` (stores filter by key with it)."""
    from .records import task_id_for_key

    return task_id_for_key(key)


# -- readers: a stored task's options, tolerant of anything ------------------------
def _positive(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        return None
    return float(value)


def timeout_of(options: Any) -> float | None:
    """The ``timeout`` in seconds, or None when absent or not a positive number (worker pool)."""
    return _positive(options.get("timeout")) if isinstance(options, Mapping) else None


def soft_timeout_of(options: Any) -> float | None:
    """The ``soft_timeout`` in seconds, or None (worker pool)."""
    return _positive(options.get("soft_timeout")) if isinstance(options, Mapping) else None


def priority_of(options: Any) -> int:
    """The ``priority`` carried in options (a schedule's), 0 when absent or not an integer."""
    value = options.get("priority", 0) if isinstance(options, Mapping) else 0
    return 0 if isinstance(value, bool) or not isinstance(value, int) else value


def rate_limit_of(options: Any) -> tuple[float, float] | None:
    """``(count, per_seconds)`` of the ``rate_limit``, or None when absent or invalid (master)."""
    value = options.get("rate_limit") if isinstance(options, Mapping) else None
    if not value:
        return None
    from .ratelimit import parse_rate

    try:
        return parse_rate(value)
    except ValueError:
        return None


def dependencies_of(options: Any) -> list[str]:
    """The ``after`` ids stored with a task that passes results (master job control)."""
    value = options.get("after", []) if isinstance(options, Mapping) else []
    return [x for x in value if isinstance(x, str)] if isinstance(value, list) else []


def passes_results(options: Any) -> bool:
    """True if the dependencies' results are the task's first argument (master job control)."""
    return isinstance(options, Mapping) and options.get("pass_results") is True


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """A task's retry options with their defaults (see conveyor.retries)."""

    retries: int = 0
    backoff: float = 1.0
    backoff_max: float = 300.0
    jitter: bool = True
    retry_on: tuple[str, ...] | None = None
    base: int = 0  # failures before `conveyor retry` sent it back: they do not count


def retry_policy_of(options: Any) -> RetryPolicy:
    """The retry policy stored in a task's options; a bad value reads as its default."""
    if not isinstance(options, Mapping):
        return RetryPolicy()

    def read(name: str, default: Any) -> Any:
        if name not in options:
            return default
        try:
            return validate(name, options[name])
        except ValueError:
            return default

    retry_on = read("retry_on", None)
    base = options.get("retry_base", 0)
    return RetryPolicy(
        retries=read("retries", 0), backoff=read("retry_backoff", 1.0),
        backoff_max=read("retry_backoff_max", 300.0), jitter=read("retry_jitter", True),
        retry_on=None if retry_on is None else tuple(retry_on),
        base=base if isinstance(base, int) and not isinstance(base, bool) else 0,
    )
