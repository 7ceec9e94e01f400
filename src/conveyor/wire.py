"""Every op's records on the wire, and their validation, in one place.

Kept apart from protocol.py (which knows frames, not tasks) so that the
master, the client and the worker share one spelling of each record. Each
op a peer may send the master has a decoder here (:data:`DECODERS`) that
turns the frame's fields into a typed request record or raises
:class:`~conveyor.errors.ProtocolError` naming the bad field; the master
decodes before it calls a handler, so handlers only see validated records.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from . import protocol
from .errors import ProtocolError
from .records import (
    CANCELLED,
    DEAD,
    FAILED,
    FINISHED,
    STATES,
    Lease,
    NewTask,
    Outcome,
    Result,
    TaskFilter,
)
from .serde import CODECS

MAX_ID = 128
MAX_NAME = 512
#: Most characters of an attempt's captured output a result may carry (64 KiB of text).
MAX_OUTPUT = 64 * 1024
#: Longest list one request may carry (ids, tasks, results, items).
MAX_BATCH = 1_000_000
#: Most items one queue get may ask for.
MAX_GET = 10_000
#: Largest page of a task listing.
MAX_PAGE = 1000
MAX_PEER_NAME = 200
MAX_PROGRESS_MESSAGE = 500
#: States ``retry`` takes tasks from when it names ids and no states.
RETRYABLE_STATES = (DEAD, FAILED, CANCELLED)

Fields = dict[str, Any]


# -- field checks ------------------------------------------------------------------
def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


#: Lease tokens are 64 random bits: a uint64 in msgpack.
MAX_TOKEN = (1 << 64) - 1


def _is_token(value: Any) -> bool:
    """True for a lease token: an integer from 0 to 2**64 - 1."""
    return _is_int(value) and 0 <= value <= MAX_TOKEN


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _str(value: Any, what: str, limit: int) -> str:
    if not isinstance(value, str) or not value or len(value) > limit:
        raise ProtocolError(f"{what} must be a non-empty string of at most {limit} characters")
    return value


def _opt_str(value: Any, what: str, limit: int) -> str | None:
    return None if value is None else _str(value, what, limit)


def _list(value: Any, what: str, *, empty: bool = True) -> list[Any]:
    if not isinstance(value, list) or (not empty and not value):
        raise ProtocolError(f"{what} must be a{'' if empty else ' non-empty'} list")
    if len(value) > MAX_BATCH:
        raise ProtocolError(f"{what}: at most {MAX_BATCH} per request")
    return value


def _count(value: Any, what: str, low: int, high: int | None = None) -> int:
    if not _is_int(value) or value < low or (high is not None and value > high):
        bound = f"from {low} to {high}" if high is not None else f">= {low}"
        raise ProtocolError(f"{what} must be an integer {bound}")
    return int(value)


def _timeout(value: Any) -> float | None:
    if value is None:
        return None
    if not _is_number(value) or value < 0:
        raise ProtocolError("timeout must be a non-negative number or None")
    return float(value)


def _codec(value: Any) -> str:
    if value not in CODECS:
        raise ProtocolError(f"unknown codec {value!r}")
    return str(value)


def id_list(value: Any, what: str = "ids") -> list[str]:
    """Validate a list of task ids."""
    if not isinstance(value, list) or len(value) > MAX_BATCH or not all(
            isinstance(v, str) and 0 < len(v) <= MAX_ID for v in value):
        raise ProtocolError(f"{what} must be a list of task ids")
    return value


def lease_pairs(value: Any, what: str) -> list[tuple[str, int]]:
    """Validate a list of [task id, lease token] pairs (acks and hand-backs)."""
    if not isinstance(value, list) or len(value) > MAX_BATCH or not all(
        isinstance(i, list) and len(i) == 2 and isinstance(i[0], str) and 0 < len(i[0]) <= MAX_ID
        and _is_token(i[1]) for i in value
    ):
        raise ProtocolError(f"{what} must be a list of [id, token]")
    return [(i[0], i[1]) for i in value]


def _states(value: Any, default: tuple[str, ...]) -> list[str]:
    if value is None:
        return list(default)
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(v in FINISHED for v in value):
        raise ProtocolError(f"states must be finished states: {', '.join(FINISHED)}")
    return value


# -- tasks, leases, outcomes, results -----------------------------------------------
def task_to_wire(t: NewTask) -> list[Any]:
    """A submit's task: [id, queue, name, payload, codec, priority, not_before, options, after]."""
    return [t.id, t.queue, t.name, t.payload, t.codec, t.priority, t.not_before, t.options, t.after]


def task_from_wire(item: Any) -> NewTask:
    """Validate and convert a submitted task; ProtocolError names what is wrong."""
    if not isinstance(item, list) or len(item) != 9:
        raise ProtocolError("a task must be a list of 9 fields")
    tid, queue, name, payload, codec, priority, not_before, options, after = item
    if not isinstance(payload, bytes):
        raise ProtocolError("task payload must be bytes")
    if not _is_int(priority):
        raise ProtocolError("priority must be an integer")
    if not _is_number(not_before):
        raise ProtocolError("not_before must be a number")
    if not isinstance(options, dict):
        raise ProtocolError("options must be a map")
    return NewTask(
        _str(tid, "task id", MAX_ID), _str(queue, "queue", MAX_NAME),
        _opt_str(name, "task name", MAX_NAME), payload, _codec(codec),
        priority, float(not_before), options, id_list(after, "after"),
    )


@dataclass(frozen=True, slots=True)
class PushedTask:
    """A task the master pushed to a worker, as the worker reads it."""

    id: str
    token: int
    name: str | None
    payload: bytes
    codec: str
    options: dict[str, Any]
    failures: int = 0  # earlier failed attempts, for the retry budget
    upstream: list[Any] | None = None  # pass_results: [[ok, payload, codec]...] in ``after`` order


def lease_to_wire(lease: Lease, upstream: list[Any] | None = None) -> list[Any]:
    """A pushed task: [id, token, name, payload, codec, options, extra].

    ``extra`` carries ``failures`` (earlier failed attempts, for the retry
    budget) and, for ``pass_results`` tasks, ``upstream``: the results of the
    tasks it waited for, as [[ok, payload, codec]...] in ``after`` order.
    """
    extra: dict[str, Any] = {"failures": lease.failures}
    if upstream is not None:
        extra["upstream"] = upstream
    return [lease.id, lease.token, lease.name, lease.payload, lease.codec, lease.options, extra]


def lease_from_wire(item: Any) -> PushedTask:
    """Validate a pushed task (the worker's side of :func:`lease_to_wire`)."""
    if not isinstance(item, list) or len(item) != 7:
        raise ProtocolError("a pushed task must be a list of 7 fields")
    tid, token, name, payload, codec, options, extra = item
    if not _is_token(token) or not isinstance(payload, bytes):
        raise ProtocolError("malformed pushed task")
    options = {} if options is None else options
    extra = {} if extra is None else extra
    if not isinstance(options, dict) or not isinstance(extra, dict):
        raise ProtocolError("a pushed task's options and extra must be maps")
    failures = extra.get("failures") or 0
    upstream = extra.get("upstream")
    if not _is_int(failures) or failures < 0:
        raise ProtocolError("failures must be a non-negative integer")
    if upstream is not None and not isinstance(upstream, list):
        raise ProtocolError("upstream must be a list")
    return PushedTask(_str(tid, "task id", MAX_ID), token, _opt_str(name, "task name", MAX_NAME),
                      payload, _codec(codec), options, failures, upstream)


@dataclass(frozen=True, slots=True)
class RetryDecision:
    """A worker's decision for a failed attempt: run again after ``delay`` seconds, or ``dead``."""

    delay: float = 0.0
    dead: bool = False

    def to_wire(self) -> dict[str, Any]:
        return {"dead": True} if self.dead else {"delay": self.delay}


def _retry_from_wire(retry: Any, ok: Any) -> RetryDecision | None:
    if retry is None:
        return None
    if not isinstance(retry, dict) or ok:
        raise ProtocolError("malformed retry decision")
    if retry.get("dead"):
        return RetryDecision(dead=True)
    delay: Any = retry.get("delay")
    if not _is_number(delay) or delay < 0:
        raise ProtocolError("malformed retry decision")
    return RetryDecision(delay=float(delay))


def outcome_to_wire(o: Outcome, retry: RetryDecision | dict[str, Any] | None = None) -> list[Any]:
    """A worker's result: [id, token, ok, payload, codec, retry], and ``output`` when captured."""
    if isinstance(retry, RetryDecision):
        retry = retry.to_wire()
    item = [o.id, o.token, o.ok, o.payload, o.codec, retry]
    if o.output is not None:
        item.append(o.output)
    return item


def outcome_from_wire(item: Any) -> tuple[Outcome, RetryDecision | None]:
    """Validate a worker's result: [id, token, ok, payload, codec, retry] or
    [id, token, ok, payload, codec, retry, output].

    ``retry`` is None (a final result), ``{"delay": s}`` (run again after s
    seconds) or ``{"dead": True}`` (retries spent). ``output`` is the attempt's
    captured logging and stdout/stderr (a str of at most :data:`MAX_OUTPUT` characters).
    """
    if not isinstance(item, list) or len(item) not in (6, 7):
        raise ProtocolError("a result must be a list of 6 fields (7 with its output)")
    tid, token, ok, payload, codec, retry = item[:6]
    output = item[6] if len(item) == 7 else None
    decision = _retry_from_wire(retry, ok)
    if not _is_token(token) or not isinstance(ok, bool) or not isinstance(payload, bytes):
        raise ProtocolError("malformed result")
    if output is not None and (not isinstance(output, str) or len(output) > MAX_OUTPUT):
        raise ProtocolError(f"a result's output must be a string of at most {MAX_OUTPUT} characters")
    return Outcome(_str(tid, "task id", MAX_ID), token, ok, payload, _codec(codec), output), decision


def result_to_wire(r: Result) -> list[Any]:
    """A pushed or fetched result: [id, ok, payload, codec, state]."""
    return [r.id, r.ok, r.payload, r.codec, r.state]


def result_from_wire(item: Any) -> Result:
    """Validate a result pushed by the master."""
    if not isinstance(item, list) or len(item) != 5:
        raise ProtocolError("malformed result")
    tid, ok, payload, codec, state = item
    if state not in FINISHED or not isinstance(payload, bytes) or not isinstance(tid, str):
        raise ProtocolError("malformed result")
    return Result(tid, bool(ok), payload, codec, state, 0.0)


def item_to_wire(lease: Lease) -> list[Any]:
    """A queue item handed to a ``qget``: [id, token, payload, codec]."""
    return [lease.id, lease.token, lease.payload, lease.codec]


# -- requests: one record and one decoder per op ----------------------------------
@dataclass(frozen=True, slots=True)
class NoFields:
    """A request whose fields are ignored (ping, status, qlist, sched_list)."""


@dataclass(frozen=True, slots=True)
class Hello:
    """Who a peer is; a worker also names its queues (and their weights)."""

    role: str  # "client" | "worker"
    name: str = ""
    host: str = ""
    pid: int | None = None
    queues: list[str] | None = None  # a worker's, in its order of preference
    weights: list[int] | None = None  # served by weighted choice instead of in order
    concurrency: int = 0
    periodic: Any = None  # a worker's @conveyor.periodic declarations, checked one by one
    pool: str | None = None  # a worker's pool kind, as it names it ("process", "thread", "asyncio")
    loop: str | None = None  # a worker's event loop ("asyncio", "uvloop")


@dataclass(frozen=True, slots=True)
class Submit:
    """Tasks to store; ``subscribe`` False: the sender does not wait for their results
    (fire-and-forget: the master keeps nothing for them after the commit)."""

    tasks: list[NewTask]
    subscribe: bool = True


@dataclass(frozen=True, slots=True)
class Ids:
    """Task ids (subscribe, fetch, cancel)."""

    ids: list[str]


@dataclass(frozen=True, slots=True)
class Ack:
    """A worker's results, and the credit it grants with them."""

    outcomes: list[tuple[Outcome, RetryDecision | None]]
    credit: int = 0


@dataclass(frozen=True, slots=True)
class Credit:
    """Credit a worker grants (``n``) and takes back (``revoke``: unused credit it no longer
    wants, when its window shrank; the master's count may go below zero while tasks that
    used it are on their way)."""

    n: int
    revoke: int = 0


@dataclass(frozen=True, slots=True)
class LeasePairs:
    """[id, token] pairs: leases handed back (return), items acknowledged (qack)."""

    pairs: list[tuple[str, int]]


@dataclass(frozen=True, slots=True)
class Progress:
    id: str
    token: int
    done: float | None
    total: float | None
    message: str

    def report(self) -> dict[str, Any]:
        """What is stored and passed on to the task's subscribers."""
        return {"done": self.done, "total": self.total, "message": self.message}


@dataclass(frozen=True, slots=True)
class QPut:
    queue: str
    items: list[NewTask]
    maxsize: int
    timeout: float | None


@dataclass(frozen=True, slots=True)
class QGet:
    queue: str
    max: int
    timeout: float | None
    ack: bool


@dataclass(frozen=True, slots=True)
class QueueWait:
    """A queue, and how long to wait on it (qjoin)."""

    queue: str
    timeout: float | None


@dataclass(frozen=True, slots=True)
class QueueName:
    """A queue (qsize, qinfo)."""

    queue: str


@dataclass(frozen=True, slots=True)
class Retry:
    ids: list[str]
    queue: str | None
    states: list[str]


@dataclass(frozen=True, slots=True)
class Purge:
    queue: str | None
    states: list[str]


@dataclass(frozen=True, slots=True)
class TaskId:
    id: str


@dataclass(frozen=True, slots=True)
class TaskList:
    """A ``tasks`` request: the filter, the page size, and either a keyset ``cursor``
    (``keyset``: the request carried a ``cursor`` field, None for the first page) or
    the older ``offset`` paging (requests without a cursor field, kept for old peers)."""

    flt: TaskFilter
    limit: int
    offset: int
    keyset: bool = False
    cursor: str | None = None
    newest_first: bool = False


@dataclass(frozen=True, slots=True)
class CountTasks:
    """A ``count`` request: a filter and the most to count before saying "at least"."""

    flt: TaskFilter
    cap: int


@dataclass(frozen=True, slots=True)
class Matching:
    """A bulk retry or cancel by filter."""

    flt: TaskFilter


@dataclass(frozen=True, slots=True)
class SchedAdd:
    """A schedule as sent (checked field by field by ``Schedule.from_wire``), and whether to replace."""

    schedule: dict[str, Any]
    replace: bool


@dataclass(frozen=True, slots=True)
class Name:
    name: str


def _queue(f: Fields) -> str:
    return _str(f.get("queue"), "queue", MAX_NAME)


def _opt_queue(f: Fields) -> str | None:
    return _opt_str(f.get("queue"), "queue", MAX_NAME)


def decode_hello(f: Fields) -> Hello:
    role = f.get("role")
    if role not in ("client", "worker"):
        raise ProtocolError("hello: role must be 'client' or 'worker'")
    pid: Any = f.get("pid")
    name, host = str(f.get("name") or "")[:MAX_PEER_NAME], str(f.get("host") or "")[:MAX_PEER_NAME]
    if not _is_int(pid):
        pid = None
    if role == "client":
        return Hello("client", name, host, pid)
    queues = f.get("queues")
    if (not isinstance(queues, list) or not queues or len(queues) > MAX_BATCH
            or not all(isinstance(q, str) and 0 < len(q) <= MAX_NAME for q in queues)):
        raise ProtocolError("hello: a worker must name its queues")
    weights = f.get("weights")
    if weights is not None and (not isinstance(weights, list) or len(weights) != len(queues)
                                or not all(_is_int(w) and w > 0 for w in weights)):
        raise ProtocolError("hello: weights must be positive integers, one per queue")
    concurrency = _count(f.get("concurrency") or 0, "hello: concurrency", 0)
    # pool and loop are shown, never acted on: optional (older workers omit them), but a
    # value sent must be a short name.
    pool = _opt_str(f.get("pool"), "hello: pool", MAX_PEER_NAME)
    loop = _opt_str(f.get("loop"), "hello: loop", MAX_PEER_NAME)
    return Hello("worker", name, host, pid, queues, weights, concurrency, f.get("periodic"), pool, loop)


def decode_submit(f: Fields) -> Submit:
    items = _list(f.get("tasks"), "submit: tasks", empty=False)
    subscribe = f.get("subscribe", True)
    if not isinstance(subscribe, bool):
        raise ProtocolError("submit: subscribe must be true or false")
    return Submit([task_from_wire(item) for item in items], subscribe)


def decode_ids(f: Fields) -> Ids:
    return Ids(id_list(f.get("ids")))


def decode_ack(f: Fields) -> Ack:
    items = _list(f.get("results"), "ack: results")
    return Ack([outcome_from_wire(item) for item in items], _count(f.get("credit", 0), "ack: credit", 0))


def decode_credit(f: Fields) -> Credit:
    return Credit(_count(f.get("n"), "credit: n", 0), _count(f.get("revoke", 0), "credit: revoke", 0))


def decode_return(f: Fields) -> LeasePairs:
    return LeasePairs(lease_pairs(f.get("leases"), "return: leases"))


def decode_adopt(f: Fields) -> LeasePairs:
    return LeasePairs(lease_pairs(f.get("leases"), "adopt: leases"))


def decode_started(f: Fields) -> LeasePairs:
    return LeasePairs(lease_pairs(f.get("leases"), "started: leases"))


def decode_qack(f: Fields) -> LeasePairs:
    return LeasePairs(lease_pairs(f.get("items"), "qack: items"))


def decode_progress(f: Fields) -> Progress:
    tid: Any = f.get("id")
    token: Any = f.get("token")
    done, total = f.get("done"), f.get("total")
    if not isinstance(tid, str) or not 0 < len(tid) <= MAX_ID or not _is_token(token):
        raise ProtocolError("progress: id and token required")
    if not all(v is None or _is_number(v) for v in (done, total)):
        raise ProtocolError("progress: done and total must be numbers")
    return Progress(tid, token, done, total, str(f.get("message") or "")[:MAX_PROGRESS_MESSAGE])


def decode_qput(f: Fields) -> QPut:
    queue, timeout = _queue(f), _timeout(f.get("timeout"))
    maxsize = f.get("maxsize", 0)
    if not _is_int(maxsize):
        raise ProtocolError("maxsize must be an integer")
    items = _list(f.get("items"), "qput: items", empty=False)
    tasks = []
    for item in items:
        if not (isinstance(item, list) and len(item) == 3 and isinstance(item[1], bytes) and item[2] in CODECS):
            raise ProtocolError("qput: an item must be [id, payload, codec]")
        tasks.append(NewTask(_str(item[0], "item id", MAX_ID), queue, None, item[1], item[2]))
    return QPut(queue, tasks, maxsize, timeout)


def decode_qget(f: Fields) -> QGet:
    queue, timeout = _queue(f), _timeout(f.get("timeout"))
    return QGet(queue, _count(f.get("max", 1), "qget: max", 1, MAX_GET), timeout, bool(f.get("ack", False)))


def decode_queue_wait(f: Fields) -> QueueWait:
    return QueueWait(_queue(f), _timeout(f.get("timeout")))


def decode_queue_name(f: Fields) -> QueueName:
    return QueueName(_queue(f))


def decode_retry(f: Fields) -> Retry:
    ids = id_list(f.get("ids") or [])
    queue = _opt_queue(f)
    if not ids and not queue:
        raise ProtocolError("retry: give task ids or a queue")
    return Retry(ids, queue, _states(f.get("states"), RETRYABLE_STATES if ids else (DEAD,)))


def decode_purge(f: Fields) -> Purge:
    return Purge(_opt_queue(f), _states(f.get("states"), (DEAD,)))


def decode_task_id(f: Fields) -> TaskId:
    return TaskId(id_list([f.get("id")], "id")[0])


#: The fields of a task filter on the wire (``state``, one state, is the older spelling).
FILTER_FIELDS = ("states", "state", "queue", "name", "id_prefix", "key", "created_from", "created_to")
#: A ``count``'s cap when the request names none (at most the stores' MAX_COUNT_CAP).
DEFAULT_COUNT_CAP = 10_000


def task_filter(f: Fields) -> TaskFilter:
    """The :class:`TaskFilter` in a request's fields; ProtocolError naming the bad field.

    Checked by the stores' own validator (the same rules and messages), here, before
    any store call: bad input never reaches (or scans) the store.
    """
    from .store import validate  # the master's side only: a client loads no store code

    states = f.get("states")
    state = f.get("state")
    if states is None:
        states = [] if state is None else [state]
    elif state is not None:
        raise ProtocolError("give states or state, not both")
    if not isinstance(states, list) or len(states) > len(STATES):
        raise ProtocolError(f"states must be a list of at most {len(STATES)} state names")
    try:
        return validate.check_filter(TaskFilter(
            states=tuple(states), queue=f.get("queue"), name=f.get("name"), id_prefix=f.get("id_prefix"),
            key=f.get("key"), created_from=f.get("created_from"), created_to=f.get("created_to")))
    except ValueError as exc:
        raise ProtocolError(str(exc)) from None


def decode_task_list(f: Fields) -> TaskList:
    from .store import validate

    flt = task_filter(f)
    limit = f.get("limit", 50)
    try:
        validate.check_int("limit", limit, 1, MAX_PAGE)
        if "cursor" in f:  # keyset paging
            if "offset" in f and f["offset"]:
                raise ValueError("give cursor or offset, not both")
            newest_first = f.get("newest_first", False)
            if not isinstance(newest_first, bool):
                raise ValueError(f"newest_first must be true or false, not {newest_first!r}")
            validate.check_cursor(f["cursor"])
            return TaskList(flt, limit, 0, True, f["cursor"], newest_first)
        offset = validate.check_int("offset", f.get("offset", 0), 0, None)
    except ValueError as exc:
        raise ProtocolError(str(exc)) from None
    if len(flt.states) > 1 or flt.name or flt.id_prefix or flt.key or flt.created_from is not None \
            or flt.created_to is not None:
        raise ProtocolError("offset paging filters by queue and one state only: send a cursor "
                            "(None for the first page) to filter by more")
    return TaskList(flt, limit, offset)


def decode_count(f: Fields) -> CountTasks:
    from .store import validate

    cap = f.get("cap", DEFAULT_COUNT_CAP)
    try:
        validate.check_int("cap", cap, 1, validate.MAX_COUNT_CAP)
    except ValueError as exc:
        raise ProtocolError(str(exc)) from None
    return CountTasks(task_filter(f), cap)


def decode_matching(f: Fields) -> Matching:
    return Matching(task_filter(f))


def decode_sched_add(f: Fields) -> SchedAdd:
    schedule = f.get("schedule")
    if not isinstance(schedule, dict):
        raise ProtocolError("sched_add: schedule must be a map")
    return SchedAdd(schedule, bool(f.get("replace")))


def decode_name(f: Fields) -> Name:
    return Name(_str(f.get("name"), "name", MAX_NAME))


def decode_nothing(f: Fields) -> NoFields:
    return NoFields()


#: The decoder of every op a peer may send the master (requests, and the pushes credit and progress).
DECODERS: dict[str, Callable[[Fields], Any]] = {
    protocol.HELLO: decode_hello,
    protocol.SUBMIT: decode_submit,
    protocol.SUBSCRIBE: decode_ids,
    protocol.FETCH: decode_ids,
    protocol.STATUS: decode_nothing,
    protocol.ACK: decode_ack,
    protocol.RETURN: decode_return,
    protocol.ADOPT: decode_adopt,
    protocol.PING: decode_nothing,
    protocol.CREDIT: decode_credit,
    protocol.PROGRESS: decode_progress,
    protocol.STARTED: decode_started,
    protocol.QPUT: decode_qput,
    protocol.QGET: decode_qget,
    protocol.QACK: decode_qack,
    protocol.QJOIN: decode_queue_wait,
    protocol.QSIZE: decode_queue_name,
    protocol.QINFO: decode_queue_name,
    protocol.QLIST: decode_nothing,
    protocol.CANCEL: decode_ids,
    protocol.RETRY: decode_retry,
    protocol.PURGE: decode_purge,
    protocol.INSPECT: decode_task_id,
    protocol.TASKLIST: decode_task_list,
    protocol.COUNT: decode_count,
    protocol.RETRY_MATCHING: decode_matching,
    protocol.CANCEL_MATCHING: decode_matching,
    protocol.SCHED_ADD: decode_sched_add,
    protocol.SCHED_LIST: decode_nothing,
    protocol.SCHED_DEL: decode_name,
    protocol.SCHED_RUN: decode_name,
}


def decode(op: str, fields: Fields) -> Any:
    """The request record of ``op`` from its fields; ProtocolError for an unknown op or a bad field."""
    decoder = DECODERS.get(op)
    if decoder is None:
        raise ProtocolError(f"unknown op {op!r}")
    return decoder(fields)
