"""Logging: text and JSON lines, the task on records logged inside a task, the bounded
output ring, and each pool kind sending an attempt's output with its result."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator

import pytest

from conveyor import serde
from conveyor.context import CurrentTask, OutputRing, set_current
from conveyor.logs import JsonFormatter, TextFormatter, install_task_context, setup_logging
from conveyor.worker.execute import OUTPUT_LIMIT
from conveyor.worker.jobs import JobResult
from conveyor.worker.pool import make_pool
from conveyor.worker.tasklog import RESULT_REPR_LIMIT, TaskLog

from .test_lifecycle import LT, ltask
from .test_pool import Collector, job


def record(message: str, *args, **extra) -> logging.LogRecord:
    return logging.getLogger("app").makeRecord("app", logging.WARNING, __file__, 1, message, args, None,
                                               extra=extra or None)


def test_json_lines_carry_time_level_logger_message_and_the_task():
    install_task_context()
    set_current(CurrentTask("t-1", "tasks.add", 1))
    try:
        inside = record("hello %s", "there")
    finally:
        set_current(None)
    doc = json.loads(JsonFormatter().format(inside))
    assert doc["level"] == "WARNING" and doc["logger"] == "app" and doc["message"] == "hello there"
    assert doc["task_id"] == "t-1" and doc["task_name"] == "tasks.add"
    assert doc["time"].endswith("+00:00") and "T" in doc["time"]
    outside = json.loads(JsonFormatter().format(record("plain")))
    assert "task_id" not in outside and outside["message"] == "plain"


def test_text_lines_name_the_task_only_inside_one():
    install_task_context()
    set_current(CurrentTask("t-2", "tasks.mul", 1))
    try:
        inside = TextFormatter().format(record("working"))
    finally:
        set_current(None)
    assert inside.endswith(" WARNING app [tasks.mul(t-2)]: working")
    assert TextFormatter().format(record("idle")).endswith(" WARNING app: idle")
    # Outside a task, the worker's own lines pass the task as `extra` (for JSON) without a clash,
    # and their text names it already.
    assert TextFormatter().format(record("done", task_id="t-3", task_name="tasks.x")).endswith(" app: done")


def test_setup_logging_refuses_a_bad_format_or_an_unopenable_file(tmp_path):
    with pytest.raises(ValueError, match="unknown log format 'xml'"):
        setup_logging("INFO", "xml")
    with pytest.raises(ValueError, match=f"cannot open log file {tmp_path}/no/such/dir/w.log"):
        setup_logging("INFO", "text", str(tmp_path / "no" / "such" / "dir" / "w.log"))


def test_the_output_ring_keeps_the_last_64_kib_whole_characters():
    ring = OutputRing(OUTPUT_LIMIT)
    for i in range(5000):
        ring.write(f"line {i:05d} é\n")
    text = ring.text()
    assert len(text.encode()) <= OUTPUT_LIMIT
    assert text.endswith("line 04999 é\n") and "line 00000" not in text
    small = OutputRing(10)
    small.write("ééééééé")  # 14 bytes: cut at a character boundary
    assert small.text() == "ééééé"


def test_task_log_lines_bound_a_long_result(caplog):
    log = TaskLog()
    log.received([job("big", "add", name="tasks.big")])
    caplog.set_level(logging.INFO, "conveyor.worker.tasks")
    log.finished(JobResult("big", 7, True, serde.encode("x" * 5000, "msgpack"), "msgpack", 0.0012), None)
    (line,) = [r.getMessage() for r in caplog.records if "succeeded" in r.getMessage()]
    assert line.startswith("Task tasks.big[big] succeeded in 0.001s: 'xxx")
    assert len(line) < RESULT_REPR_LIMIT + 60 and line.endswith("...")


@pytest.fixture
def lpools() -> Iterator[Callable[[str], tuple[object, Collector]]]:
    made: list = []

    def factory(kind: str) -> tuple[object, Collector]:
        collector = Collector()
        pool = make_pool(kind, 2, [LT], collector)
        made.append(pool)
        pool.start()
        return pool, collector

    yield factory
    for pool in made:
        pool.shutdown(wait=False)


@pytest.mark.parametrize("kind", ["process", "asyncio", "thread"])
def test_each_pool_sends_the_attempts_output_with_its_result(lpools, kind):
    handlers = list(logging.getLogger().handlers)
    pool, collector = lpools(kind)
    pool.submit([ltask("ok", "chatty", 5), ltask("bad", "chatty_fail", 6)])
    results = collector.wait_for(2)
    ok, bad = results["ok"], results["bad"]
    assert ok.ok and not bad.ok
    assert f"WARNING ltasks [{LT}:chatty(ok)]: hello from chatty 5" in (ok.output or "")
    assert f"[{LT}:chatty_fail(bad)]: about to fail 6" in (bad.output or "")
    if kind == "thread":  # the worker's own stdout is not the tasks' alone: logging only
        assert "printed 5" not in (ok.output or "")
        # No handler was added: a process that configured none keeps logging's stderr fallback.
        assert logging.getLogger().handlers == handlers
    else:
        assert "printed 5\n" in (ok.output or "") and "to stderr 5\n" in (ok.output or "")


def test_a_result_carries_its_output_on_the_wire_and_bad_output_is_refused():
    from conveyor import wire
    from conveyor.errors import ProtocolError
    from conveyor.records import Outcome

    with_output = Outcome("t1", 3, False, b"\x80", "msgpack", "hello\n")
    item = wire.outcome_to_wire(with_output)
    assert len(item) == 7 and wire.outcome_from_wire(item) == (with_output, None)
    plain = Outcome("t1", 3, True, b"\x80")
    assert len(wire.outcome_to_wire(plain)) == 6 and wire.outcome_from_wire(wire.outcome_to_wire(plain))[0] == plain
    for bad in (b"bytes", 7, "x" * (wire.MAX_OUTPUT + 1)):
        with pytest.raises(ProtocolError, match="output must be a string of at most 65536 characters"):
            wire.outcome_from_wire(["t1", 3, True, b"", "msgpack", None, bad])
