"""wire.py: every record's round trip, and every op's decoder refusing malformed fields."""

from __future__ import annotations

from typing import Any

import pytest

from conveyor import protocol, wire
from conveyor.errors import ProtocolError
from conveyor.records import Lease, NewTask, Outcome, Result, TaskFilter

TID = "t" * 32


# -- records: round trips ---------------------------------------------------------
def test_task_round_trip():
    t = NewTask(TID, "q", "mod:fn", b"\x90", "msgpack", 3, 12.5, {"retries": 2}, ["a", "b"])
    assert wire.task_from_wire(wire.task_to_wire(t)) == t
    bare = NewTask(TID, "q", None, b"", "pickle")
    assert wire.task_from_wire(wire.task_to_wire(bare)) == bare


def test_lease_round_trip_with_and_without_upstream():
    lease = Lease(TID, "q", "mod:fn", b"\x01", "msgpack", 7, {"pass_results": True}, failures=2)
    got = wire.lease_from_wire(wire.lease_to_wire(lease, [[True, b"\x02", "msgpack"]]))
    assert got == wire.PushedTask(TID, 7, "mod:fn", b"\x01", "msgpack", {"pass_results": True}, 2,
                                  [[True, b"\x02", "msgpack"]])
    plain = wire.lease_from_wire(wire.lease_to_wire(Lease(TID, "q", None, b"", "msgpack", 1, {})))
    assert (plain.name, plain.failures, plain.upstream) == (None, 0, None)


@pytest.mark.parametrize("retry", [None, wire.RetryDecision(delay=1.5), wire.RetryDecision(dead=True)])
def test_outcome_round_trip(retry):
    o = Outcome(TID, 4, retry is None, b"\x03", "msgpack")
    assert wire.outcome_from_wire(wire.outcome_to_wire(o, retry)) == (o, retry)


def test_outcome_to_wire_takes_a_retry_decision_as_a_map_too():
    o = Outcome(TID, 1, False, b"", "msgpack")
    assert wire.outcome_to_wire(o, {"delay": 2.0}) == wire.outcome_to_wire(o, wire.RetryDecision(delay=2.0))


def test_result_round_trip():
    r = Result(TID, False, b"\x04", "msgpack", "failed", 0.0)
    assert wire.result_from_wire(wire.result_to_wire(r)) == r


def test_item_to_wire():
    lease = Lease(TID, "q", None, b"x", "msgpack", 9, {})
    assert wire.item_to_wire(lease) == [TID, 9, b"x", "msgpack"]


# -- records: malformed ---------------------------------------------------------------
def _task(**changes: Any) -> list:
    fields = dict(id=TID, queue="q", name="mod:fn", payload=b"", codec="msgpack", priority=0, not_before=0.0,
                  options={}, after=[])
    fields.update(changes)
    return list(fields.values())


@pytest.mark.parametrize("item, message", [
    ("not a list", "list of 9"),
    (_task()[:8], "list of 9"),
    (_task(id=""), "task id"),
    (_task(id=7), "task id"),
    (_task(id="x" * (wire.MAX_ID + 1)), "task id"),
    (_task(queue=None), "queue"),
    (_task(name=3), "task name"),
    (_task(payload="text"), "payload"),
    (_task(codec="yaml"), "codec"),
    (_task(priority=1.5), "priority"),
    (_task(priority=True), "priority"),
    (_task(not_before="soon"), "not_before"),
    (_task(options=[]), "options"),
    (_task(after="x"), "after"),
    (_task(after=[1]), "after"),
])
def test_task_from_wire_refuses(item, message):
    with pytest.raises(ProtocolError, match=message):
        wire.task_from_wire(item)


@pytest.mark.parametrize("item", [
    [TID, 1, True, b"", "msgpack"],  # 5 fields
    [TID, "1", True, b"", "msgpack", None],
    [TID, True, True, b"", "msgpack", None],
    [TID, 1, 1, b"", "msgpack", None],
    [TID, 1, True, "text", "msgpack", None],
    [TID, 1, True, b"", "yaml", None],
    [7, 1, True, b"", "msgpack", None],
    [TID, 1, True, b"", "msgpack", {"delay": 1}],  # a retry for a success
    [TID, 1, False, b"", "msgpack", {"delay": -1}],
    [TID, 1, False, b"", "msgpack", {"delay": "1"}],
    [TID, 1, False, b"", "msgpack", "again"],
])
def test_outcome_from_wire_refuses(item):
    with pytest.raises(ProtocolError):
        wire.outcome_from_wire(item)


@pytest.mark.parametrize("item", [
    [TID, 1, None, b"", "msgpack", {}],  # 6 fields
    [TID, "1", None, b"", "msgpack", {}, {}],
    [TID, 1, None, "text", "msgpack", {}, {}],
    [TID, 1, None, b"", "yaml", {}, {}],
    [TID, 1, None, b"", "msgpack", [], {}],
    [TID, 1, None, b"", "msgpack", {}, {"failures": -1}],
    [TID, 1, None, b"", "msgpack", {}, {"upstream": "x"}],
    [None, 1, None, b"", "msgpack", {}, {}],
])
def test_lease_from_wire_refuses(item):
    with pytest.raises(ProtocolError):
        wire.lease_from_wire(item)


@pytest.mark.parametrize("item", [[TID, True, b"", "msgpack"], [TID, True, b"", "msgpack", "running"],
                                  [TID, True, "x", "msgpack", "succeeded"], [1, True, b"", "msgpack", "failed"]])
def test_result_from_wire_refuses(item):
    with pytest.raises(ProtocolError):
        wire.result_from_wire(item)


# -- requests: every op's decoder --------------------------------------------------
def test_every_inbound_op_has_a_decoder_and_nothing_else_does():
    assert set(wire.DECODERS) == protocol.INBOUND_OPS
    assert protocol.REQUEST_OPS.isdisjoint(protocol.PEER_PUSH_OPS)


def test_unknown_op_is_a_protocol_error():
    with pytest.raises(ProtocolError, match="unknown op"):
        wire.decode("launch", {})


ITEM = [TID, b"x", "msgpack"]
GOOD: dict[str, dict[str, Any]] = {
    protocol.HELLO: {"role": "worker", "name": "w", "host": "h", "pid": 12, "queues": ["a", "b"],
                     "weights": [1, 3], "concurrency": 4, "periodic": [], "pool": "thread", "loop": "uvloop"},
    protocol.SUBMIT: {"tasks": [_task()]},
    protocol.SUBSCRIBE: {"ids": [TID]},
    protocol.FETCH: {"ids": [TID]},
    protocol.STATUS: {},
    protocol.ACK: {"results": [[TID, 1, True, b"", "msgpack", None]], "credit": 2},
    protocol.RETURN: {"leases": [[TID, 1]]},
    protocol.ADOPT: {"leases": [[TID, 1]]},
    protocol.STARTED: {"leases": [[TID, 1]]},
    protocol.PING: {},
    protocol.CREDIT: {"n": 3},
    protocol.PROGRESS: {"id": TID, "token": 1, "done": 1, "total": 2.5, "message": "half"},
    protocol.QPUT: {"queue": "q", "items": [ITEM], "maxsize": 5, "timeout": 1},
    protocol.QGET: {"queue": "q", "max": 2, "timeout": None, "ack": True},
    protocol.QACK: {"items": [[TID, 1]]},
    protocol.QJOIN: {"queue": "q", "timeout": 0.5},
    protocol.QSIZE: {"queue": "q"},
    protocol.QINFO: {"queue": "q"},
    protocol.QLIST: {},
    protocol.CANCEL: {"ids": [TID]},
    protocol.RETRY: {"ids": [TID], "states": ["failed"]},
    protocol.PURGE: {"queue": "q", "states": "dead"},
    protocol.INSPECT: {"id": TID},
    protocol.TASKLIST: {"queue": "q", "state": "ready", "limit": 10, "offset": 0},
    protocol.COUNT: {"states": ["ready", "dead"], "queue": "q", "name": "m:f", "id_prefix": "01",
                     "key": "k", "created_from": 1.0, "created_to": 2, "cap": 500},
    protocol.RETRY_MATCHING: {"states": ["dead"], "queue": "q"},
    protocol.CANCEL_MATCHING: {"name": "m:f", "created_to": 5.5},
    protocol.SCHED_ADD: {"schedule": {"name": "s"}, "replace": True},
    protocol.SCHED_LIST: {},
    protocol.SCHED_DEL: {"name": "s"},
    protocol.SCHED_RUN: {"name": "s"},
}


def test_every_op_decodes_good_fields_to_its_record():
    assert set(GOOD) == protocol.INBOUND_OPS
    got = {op: wire.decode(op, fields) for op, fields in GOOD.items()}
    assert got[protocol.HELLO] == wire.Hello("worker", "w", "h", 12, ["a", "b"], [1, 3], 4, [],
                                               "thread", "uvloop")
    assert got[protocol.SUBMIT] == wire.Submit([wire.task_from_wire(_task())])
    assert got[protocol.SUBSCRIBE] == got[protocol.FETCH] == got[protocol.CANCEL] == wire.Ids([TID])
    assert (got[protocol.STATUS] == got[protocol.PING] == got[protocol.SCHED_LIST] == got[protocol.QLIST]
            == wire.NoFields())
    assert got[protocol.ACK] == wire.Ack([(Outcome(TID, 1, True, b"", "msgpack"), None)], 2)
    assert got[protocol.RETURN] == got[protocol.QACK] == got[protocol.STARTED] == got[protocol.ADOPT] \
        == wire.LeasePairs([(TID, 1)])
    assert got[protocol.CREDIT] == wire.Credit(3)
    assert wire.decode(protocol.CREDIT, {"n": 0, "revoke": 2}) == wire.Credit(0, 2)
    assert got[protocol.PROGRESS].report() == {"done": 1, "total": 2.5, "message": "half"}
    assert got[protocol.QPUT] == wire.QPut("q", [NewTask(TID, "q", None, b"x", "msgpack")], 5, 1.0)
    assert got[protocol.QGET] == wire.QGet("q", 2, None, True)
    assert got[protocol.QJOIN] == wire.QueueWait("q", 0.5)
    assert got[protocol.QSIZE] == got[protocol.QINFO] == wire.QueueName("q")
    assert got[protocol.RETRY] == wire.Retry([TID], None, ["failed"])
    assert got[protocol.PURGE] == wire.Purge("q", ["dead"])
    assert got[protocol.INSPECT] == wire.TaskId(TID)
    assert got[protocol.TASKLIST] == wire.TaskList(TaskFilter(states=("ready",), queue="q"), 10, 0)
    assert got[protocol.COUNT] == wire.CountTasks(
        TaskFilter(("ready", "dead"), "q", "m:f", "01", "k", 1.0, 2), 500)
    assert got[protocol.RETRY_MATCHING] == wire.Matching(TaskFilter(states=("dead",), queue="q"))
    assert got[protocol.CANCEL_MATCHING] == wire.Matching(TaskFilter(name="m:f", created_to=5.5))
    assert got[protocol.SCHED_ADD] == wire.SchedAdd({"name": "s"}, True)
    assert got[protocol.SCHED_DEL] == got[protocol.SCHED_RUN] == wire.Name("s")


def test_defaults_where_fields_are_left_out():
    assert wire.decode(protocol.HELLO, {"role": "client"}) == wire.Hello("client")
    # a worker from before pool and loop were sent: both unknown
    older = wire.decode(protocol.HELLO, {**GOOD[protocol.HELLO], "pool": None, "loop": None})
    assert (older.pool, older.loop, older.concurrency) == (None, None, 4)
    assert wire.decode(protocol.HELLO, {"role": "client", "pid": "12", "name": "n" * 999}).pid is None
    assert len(wire.decode(protocol.HELLO, {"role": "client", "name": "n" * 999}).name) == wire.MAX_PEER_NAME
    assert wire.decode(protocol.ACK, {"results": []}).credit == 0
    assert wire.decode(protocol.SUBMIT, GOOD[protocol.SUBMIT]).subscribe is True
    assert wire.decode(protocol.SUBMIT, {**GOOD[protocol.SUBMIT], "subscribe": False}).subscribe is False
    assert wire.decode(protocol.QGET, {"queue": "q"}) == wire.QGet("q", 1, None, False)
    assert wire.decode(protocol.RETRY, {"ids": [TID]}).states == list(wire.RETRYABLE_STATES)
    assert wire.decode(protocol.RETRY, {"queue": "q"}).states == ["dead"]
    assert wire.decode(protocol.PURGE, {}).states == ["dead"]
    assert wire.decode(protocol.TASKLIST, {}) == wire.TaskList(TaskFilter(), 50, 0)
    assert wire.decode(protocol.COUNT, {}) == wire.CountTasks(TaskFilter(), wire.DEFAULT_COUNT_CAP)
    assert wire.decode(protocol.RETRY_MATCHING, {}) == wire.Matching(TaskFilter())


def test_a_cursor_field_asks_for_keyset_paging_with_every_filter():
    got = wire.decode(protocol.TASKLIST, {"states": ["ready", "leased"], "name": "m:f", "id_prefix": "ab",
                                          "key": "k", "created_from": 1, "created_to": 9.5,
                                          "cursor": None, "newest_first": True, "limit": 1000})
    assert got == wire.TaskList(TaskFilter(("ready", "leased"), None, "m:f", "ab", "k", 1, 9.5), 1000, 0,
                                keyset=True, cursor=None, newest_first=True)
    nxt = wire.decode(protocol.TASKLIST, {"cursor": "12345"})
    assert (nxt.keyset, nxt.cursor, nxt.newest_first) == (True, "12345", False)


@pytest.mark.parametrize("fields, named", [
    ({"cursor": "abc"}, "cursor"),
    ({"cursor": 12}, "cursor"),
    ({"cursor": "1", "offset": 5}, "offset"),
    ({"cursor": None, "newest_first": "yes"}, "newest_first"),
    ({"cursor": None, "limit": 1_000_000}, "limit"),
    ({"cursor": None, "limit": 0}, "limit"),
    ({"cursor": None, "limit": -5}, "limit"),
    ({"cursor": None, "states": ["lost"]}, "lost"),
    ({"cursor": None, "states": "ready"}, "states"),
    ({"cursor": None, "state": "ready", "states": ["ready"]}, "state"),
    ({"cursor": None, "name": ""}, "name"),
    ({"cursor": None, "id_prefix": 5}, "id_prefix"),
    ({"cursor": None, "key": "k" * 1000}, "key"),
    ({"cursor": None, "created_from": "yesterday"}, "created_from"),
    ({"cursor": None, "created_from": 5, "created_to": 1}, "created_from"),
    ({"name": "m:f"}, "cursor"),  # offset paging filters by queue and one state only
])
def test_bad_listing_fields_are_refused_naming_the_field(fields, named):
    with pytest.raises(ProtocolError, match=named):
        wire.decode(protocol.TASKLIST, fields)


@pytest.mark.parametrize("op, fields, named", [
    (protocol.COUNT, {"cap": 0}, "cap"),
    (protocol.COUNT, {"cap": 10**9}, "cap"),
    (protocol.COUNT, {"cap": True}, "cap"),
    (protocol.COUNT, {"states": ["nope"]}, "nope"),
    (protocol.RETRY_MATCHING, {"queue": ""}, "queue"),
    (protocol.CANCEL_MATCHING, {"created_to": float("nan")}, "created_to"),
])
def test_bad_count_and_bulk_fields_are_refused_naming_the_field(op, fields, named):
    with pytest.raises(ProtocolError, match=named):
        wire.decode(op, fields)
    assert wire.decode(protocol.PROGRESS, {"id": TID, "token": 1, "message": "m" * 999}).message == "m" * 500


def _with(op: str, **changes: Any) -> tuple[str, dict[str, Any]]:
    fields = {**GOOD[op], **changes}
    return op, {k: v for k, v in fields.items() if v is not _MISSING}


_MISSING = object()
TOO_MANY = wire.MAX_BATCH + 1

BAD = [
    # hello
    _with(protocol.HELLO, role="admin"),
    _with(protocol.HELLO, role=_MISSING),
    _with(protocol.HELLO, queues=_MISSING),
    _with(protocol.HELLO, queues=[]),
    _with(protocol.HELLO, queues=["a", 3]),
    _with(protocol.HELLO, queues="a"),
    _with(protocol.HELLO, weights=[1]),
    _with(protocol.HELLO, weights=[0, 1]),
    _with(protocol.HELLO, weights=[1, "2"]),
    _with(protocol.HELLO, concurrency=-1),
    _with(protocol.HELLO, concurrency="4"),
    _with(protocol.HELLO, pool=3),
    _with(protocol.HELLO, pool=""),
    _with(protocol.HELLO, loop=["asyncio"]),
    _with(protocol.HELLO, loop="l" * (wire.MAX_PEER_NAME + 1)),
    # submit
    _with(protocol.SUBMIT, tasks=[]),
    _with(protocol.SUBMIT, tasks="nope"),
    _with(protocol.SUBMIT, tasks=_MISSING),
    _with(protocol.SUBMIT, tasks=[_task(codec="yaml")]),
    _with(protocol.SUBMIT, tasks=[_task()] * TOO_MANY),
    _with(protocol.SUBMIT, subscribe="no"),
    _with(protocol.SUBMIT, subscribe=None),
    # ids
    _with(protocol.SUBSCRIBE, ids=TID),
    _with(protocol.SUBSCRIBE, ids=[1]),
    _with(protocol.FETCH, ids=_MISSING),
    _with(protocol.FETCH, ids=[""]),
    _with(protocol.CANCEL, ids=[TID] * TOO_MANY),
    _with(protocol.CANCEL, ids=[None]),
    # ack
    _with(protocol.ACK, results=_MISSING),
    _with(protocol.ACK, results={}),
    _with(protocol.ACK, results=[[TID, 1, True]]),
    _with(protocol.ACK, credit=-1),
    _with(protocol.ACK, credit="2"),
    _with(protocol.ACK, results=[[TID, 1, True, b"", "msgpack", None]] * TOO_MANY),
    # return, qack
    _with(protocol.RETURN, leases=[[TID]]),
    _with(protocol.RETURN, leases=[[TID, "1"]]),
    _with(protocol.RETURN, leases=[[1, 1]]),
    _with(protocol.RETURN, leases=_MISSING),
    _with(protocol.ADOPT, leases=[[TID, -1]]),  # tokens are uint64
    _with(protocol.ADOPT, leases=[[TID, 2 ** 64]]),
    _with(protocol.ADOPT, leases=_MISSING),
    _with(protocol.STARTED, leases=[[TID, "1"]]),
    _with(protocol.STARTED, leases=_MISSING),
    _with(protocol.QACK, items=[[TID, True]]),
    _with(protocol.QACK, items=[[TID, 1]] * TOO_MANY),
    # credit
    _with(protocol.CREDIT, n=-1),
    _with(protocol.CREDIT, revoke=-1),
    _with(protocol.CREDIT, n=_MISSING),
    _with(protocol.CREDIT, n=1.5),
    # progress
    _with(protocol.PROGRESS, id=_MISSING),
    _with(protocol.PROGRESS, id=5),
    _with(protocol.PROGRESS, token="1"),
    _with(protocol.PROGRESS, done="half"),
    _with(protocol.PROGRESS, total=True),
    # qput
    _with(protocol.QPUT, queue=""),
    _with(protocol.QPUT, queue=_MISSING),
    _with(protocol.QPUT, queue="q" * (wire.MAX_NAME + 1)),
    _with(protocol.QPUT, items=[]),
    _with(protocol.QPUT, items=[[TID, "x", "msgpack"]]),
    _with(protocol.QPUT, items=[[TID, b"x", "yaml"]]),
    _with(protocol.QPUT, items=[[3, b"x", "msgpack"]]),
    _with(protocol.QPUT, items=[ITEM] * TOO_MANY),
    _with(protocol.QPUT, maxsize="5"),
    _with(protocol.QPUT, maxsize=True),
    _with(protocol.QPUT, timeout=-1),
    _with(protocol.QPUT, timeout="1"),
    # qget
    _with(protocol.QGET, max=0),
    _with(protocol.QGET, max=wire.MAX_GET + 1),
    _with(protocol.QGET, max="2"),
    _with(protocol.QGET, queue=7),
    _with(protocol.QGET, timeout=-0.1),
    # qjoin, qsize, qinfo
    _with(protocol.QJOIN, timeout=True),
    _with(protocol.QJOIN, queue=_MISSING),
    _with(protocol.QSIZE, queue=None),
    _with(protocol.QINFO, queue=["q"]),
    # job control
    _with(protocol.RETRY, ids=[], queue=_MISSING),
    _with(protocol.RETRY, ids=[1]),
    _with(protocol.RETRY, queue=5),
    _with(protocol.RETRY, states=["ready"]),
    _with(protocol.PURGE, queue=5),
    _with(protocol.PURGE, states=[1]),
    _with(protocol.INSPECT, id=_MISSING),
    _with(protocol.INSPECT, id=12),
    _with(protocol.TASKLIST, state="lost"),
    _with(protocol.TASKLIST, limit=0),
    _with(protocol.TASKLIST, limit=wire.MAX_PAGE + 1),
    _with(protocol.TASKLIST, offset=-1),
    _with(protocol.TASKLIST, offset="0"),
    _with(protocol.TASKLIST, queue=3),
    _with(protocol.TASKLIST, cursor="x"),
    _with(protocol.COUNT, cap=-1),
    _with(protocol.COUNT, id_prefix=""),
    _with(protocol.RETRY_MATCHING, states=["ready", 3]),
    _with(protocol.CANCEL_MATCHING, created_to="soon"),
    # schedules
    _with(protocol.SCHED_ADD, schedule=_MISSING),
    _with(protocol.SCHED_ADD, schedule=["s"]),
    _with(protocol.SCHED_DEL, name=""),
    _with(protocol.SCHED_DEL, name=_MISSING),
    _with(protocol.SCHED_DEL, name=3),
    _with(protocol.SCHED_RUN, name=""),
    _with(protocol.SCHED_RUN, name=_MISSING),
    _with(protocol.SCHED_RUN, name=["s"]),
    _with(protocol.SCHED_RUN, name="s" * (wire.MAX_NAME + 1)),
]


def test_every_op_with_fields_has_malformed_cases():
    ops_with_fields = {op for op, fields in GOOD.items() if fields}
    assert ops_with_fields <= {op for op, _ in BAD}


@pytest.mark.parametrize("op, fields", BAD, ids=[f"{op}-{i}" for i, (op, _) in enumerate(BAD)])
def test_malformed_fields_are_a_protocol_error(op, fields):
    with pytest.raises(ProtocolError):
        wire.decode(op, fields)
