"""Refusals are counted every time and logged at most once per interval (no log storm)."""

from __future__ import annotations

import logging
from collections import defaultdict

from conveyor import serde
from conveyor.master.refusals import LOG_EVERY, Refusals, codec_refused
from conveyor.records import Outcome


def test_refusals_are_counted_and_logged_rate_limited(caplog):
    now = [100.0]
    counters: defaultdict[str, int] = defaultdict(int)
    refusals = Refusals(counters, lambda: now[0])
    with caplog.at_level(logging.WARNING, logger="conveyor.master"):
        for _ in range(1000):
            refusals.refuse("ack(s) from a client session", 2, "peer:1", "clients never settle tasks")
        refusals.refuse("progress report", 1, "peer:2", "not the holder")
        now[0] += LOG_EVERY
        refusals.refuse("ack(s) from a client session", 1, "peer:1", "clients never settle tasks")
        refusals.refuse("progress report", 0, "peer:2", "nothing")  # nothing refused: nothing said
    assert counters["refused"] == 2000 + 1 + 1
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 3, lines
    assert lines[0].startswith("refused 2 ack(s) from a client session from peer:1")
    assert lines[1].startswith("refused 1 progress report from peer:2")
    assert "(1998 more refused since the last line)" in lines[2]


def test_only_a_pickled_result_on_a_master_without_pickle_is_replaced():
    plain = Outcome("t", 5, True, serde.packb(1), "msgpack")
    pickled = Outcome("t", 5, True, serde.encode(1, "pickle"), "pickle", output="out")
    assert codec_refused(plain, allow_pickle=False) is None
    assert codec_refused(pickled, allow_pickle=True) is None
    got = codec_refused(pickled, allow_pickle=False)
    assert got is not None
    assert (got.id, got.token, got.ok, got.codec, got.output) == ("t", 5, False, "msgpack", "out")
    error = serde.decode_error(got.payload)
    assert error["type"] == "conveyor.errors.SerializationError" and "pickle" in error["message"]
