"""What the master adds to attempt records and how inspect shows them (master/attempts.py)."""

from __future__ import annotations

import pickle

import pytest

from conveyor import serde
from conveyor.errors import TaskTimeout, WorkerCrashed
from conveyor.master import attempts
from conveyor.master.session import Session
from conveyor.records import AttemptRecord, Outcome


class _Boom:
    """Unpickling it would raise: describe_args must never try."""

    def __init__(self):
        self.armed = True

    def __setstate__(self, state):
        raise AssertionError("unpickled")


def _session() -> Session:
    s = Session("sid", "peer", writer=None, conn=None)  # type: ignore[arg-type]
    s.role, s.name, s.host, s.pid = "worker", "w1", "h1", 42
    return s


def test_a_failure_names_timeouts_and_crashes_and_nothing_else():
    assert attempts.ended_by(serde.encode_error(TaskTimeout("slow"))) == "timed out"
    assert attempts.ended_by(serde.encode_error(WorkerCrashed("died"))) == "crashed"
    assert attempts.ended_by(serde.encode_error(ValueError("x"))) is None
    assert attempts.ended_by(None) is None and attempts.ended_by(b"junk") is None


def test_an_outcome_gets_its_sessions_identity_start_and_end():
    s = _session()
    s.inflight["t"] = 3
    s.mark_started([("t", 3)], 123.0)
    o = attempts.note_outcome(s, Outcome("t", 3, False, serde.encode_error(TaskTimeout("slow")),
                                         output="out"))
    assert (o.worker, o.started_at, o.ended) == ({"name": "w1", "host": "h1", "pid": 42}, 123.0, "timed out")
    note = attempts.note_failure(o)
    assert (note.worker, note.started_at, note.output, note.outcome) == (o.worker, 123.0, "out", "timed out")
    assert attempts.workers_by_owner([s]) == {"sid": o.worker}


def test_arguments_are_decoded_for_msgpack_and_never_unpickled():
    call = serde.encode_call((1, "<b>"), {"k": [2]})
    assert attempts.describe_args(call, "msgpack") == {"args": [1, "<b>"], "kwargs": {"k": [2]}}
    blob = serde.encode_call((_Boom(),), {}, "pickle")
    with pytest.raises(AssertionError, match="unpickled"):
        pickle.loads(blob)  # (the guard works)
    assert attempts.describe_args(blob, "pickle") == {"args": f"<pickle payload, {len(blob)} bytes>",
                                                      "kwargs": None}
    assert attempts.describe_args(serde.packb({"item": 1}), "msgpack") == {"args": {"item": 1}, "kwargs": None}
    big = serde.encode_call(("x" * (attempts.MAX_ARGS_SHOWN + 1),), {})
    assert attempts.describe_args(big, "msgpack")["args"] == f"<msgpack payload, {len(big)} bytes>"
    assert attempts.describe_args(None, "msgpack") == {}


def test_an_attempt_is_described_with_its_error_decoded():
    err = serde.encode_error(ValueError("bad"))
    a = AttemptRecord(2, "sid", {"name": "w1"}, 1.0, 2.0, 3.0, "retried", err, "printed")
    got = attempts.describe_attempt(a)
    assert got["error"]["type"] == "ValueError" and got["error"]["message"] == "bad"
    assert {k: got[k] for k in ("number", "worker", "leased_at", "started_at", "finished_at", "outcome",
                                "output")} == {"number": 2, "worker": {"name": "w1"}, "leased_at": 1.0,
                                               "started_at": 2.0, "finished_at": 3.0, "outcome": "retried",
                                               "output": "printed"}
