"""The task log's direct path (:func:`conveyor.logs.log_lines`): the very lines logging
would write, text and JSON, and logging's own path whenever anything else would see them."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from conveyor import logs, serde
from conveyor.context import CurrentTask, set_current
from conveyor.errors import TaskTimeout
from conveyor.worker.jobs import Job, JobResult
from conveyor.worker.tasklog import TaskLog, log_started

TEXT_TIME = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} ")
JSON_TIME = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+00:00$")
LOGGER = logging.getLogger("conveyor.worker.tasks")


_set_aside: list[logging.Handler] = []


@pytest.fixture
def logged(tmp_path: Path) -> Iterator[Path]:
    """A log file for :func:`setup`; logging as it was afterwards."""
    root = logging.getLogger()
    level = root.level
    try:
        yield tmp_path / "worker.log"
    finally:
        for h in list(logs._installed):
            root.removeHandler(h)
            h.close()
        logs._installed.clear()
        for h in _set_aside:
            root.addHandler(h)
        _set_aside.clear()
        root.setLevel(level)


def setup(path: Path, fmt: str = "text", level: str = "INFO") -> logging.Handler:
    """Log as the worker's CLI sets it up, with pytest's capture handlers set aside
    (the direct path is for a root logger with the worker's handler alone)."""
    logs.setup_logging(level, fmt, str(path))
    root = logging.getLogger()
    for h in list(root.handlers):
        if h not in logs._installed:
            root.removeHandler(h)
            _set_aside.append(h)
    return logs._installed[0]


def job(task_id: str, name: str = "tasks.add") -> Job:
    return Job(task_id, 1, name, b"", "msgpack", {})


def events(log: TaskLog) -> None:
    """One of each line kind: started, succeeded, retry, failed, timed out, received."""
    jobs = [job("t-ok"), job("t-retry", "tasks.flaky"), job("t-dead"), job("t-slow", "tasks.slow")]
    log.received(jobs)
    log_started(jobs)
    boom = serde.encode_error(ValueError("boom %s 100%"))
    late = serde.encode_error(TaskTimeout("task tasks.slow exceeded its time limit of 1s"))
    log.finished_many([
        (JobResult("t-ok", 1, True, serde.encode({"n": [1, 2]}, "msgpack"), "msgpack", 0.0012), None),
        (JobResult("t-retry", 1, False, boom, "msgpack", 0.002), {"delay": 5}),
        (JobResult("t-dead", 1, False, boom, "msgpack", 0.003), {"dead": True}),
        (JobResult("t-slow", 1, False, late, "msgpack", 1.0004), None),
    ])


def write_both_ways(path: Path, fmt: str, level: str = "DEBUG") -> tuple[list[str], list[str]]:
    """The lines of :func:`events` through the direct path, then through logging's own."""
    handler = setup(path, fmt, level)
    assert logs._direct_handler(LOGGER) is handler
    events(TaskLog())
    direct = path.read_text().splitlines()
    path.write_text("")
    keep = logging.Filter()  # passes everything, but a filter means logging's own path
    LOGGER.addFilter(keep)
    try:
        assert logs._direct_handler(LOGGER) is None
        events(TaskLog())
    finally:
        LOGGER.removeFilter(keep)
    handler.flush()
    return direct, path.read_text().splitlines()


def test_direct_text_lines_are_logging_s_lines(logged):
    direct, slow = write_both_ways(logged, "text")
    assert len(direct) == len(slow) == 12  # 4 received, 4 started, 4 outcomes
    for mine, theirs in zip(direct, slow):
        assert TEXT_TIME.match(mine) and TEXT_TIME.match(theirs)
        assert TEXT_TIME.sub("", mine) == TEXT_TIME.sub("", theirs)
    body = [TEXT_TIME.sub("", line) for line in direct]
    assert body[0] == "DEBUG conveyor.worker.tasks: Task tasks.add[t-ok] received"
    assert body[4] == "INFO conveyor.worker.tasks: Task tasks.add[t-ok] started"
    assert body[8] == "INFO conveyor.worker.tasks: Task tasks.add[t-ok] succeeded in 0.001s: {'n': [1, 2]}"
    assert body[9] == ("INFO conveyor.worker.tasks: Task tasks.flaky[t-retry] retry in 5s (failed in 0.002s): "
                       "ValueError: boom %s 100%")
    assert body[10] == ("WARNING conveyor.worker.tasks: Task tasks.add[t-dead] failed in 0.003s (no retries "
                        "left): ValueError: boom %s 100%")
    assert body[11] == ("WARNING conveyor.worker.tasks: Task tasks.slow[t-slow] timed out after 1.000s: "
                        "task tasks.slow exceeded its time limit of 1s")


def test_direct_json_lines_are_logging_s_lines(logged):
    direct, slow = write_both_ways(logged, "json")
    assert len(direct) == len(slow) == 12
    for mine, theirs in zip(direct, slow):
        a, b = json.loads(mine), json.loads(theirs)
        assert JSON_TIME.match(a.pop("time")) and JSON_TIME.match(b.pop("time"))
        assert a == b
    first = json.loads(direct[8])
    assert first["task_id"] == "t-ok" and first["task_name"] == "tasks.add" and first["level"] == "INFO"
    assert first["logger"] == "conveyor.worker.tasks" and first["message"].endswith("succeeded in 0.001s: {'n': [1, 2]}")


def test_levels_below_the_configured_one_are_left_out(logged):
    setup(logged, level="WARNING")
    events(TaskLog())
    lines = logged.read_text().splitlines()
    assert [TEXT_TIME.sub("", line).split(":")[0] for line in lines] == ["WARNING conveyor.worker.tasks"] * 2


class Keep(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def test_anything_else_watching_takes_logging_s_own_path(logged):
    setup(logged)
    assert logs._direct_handler(LOGGER) is not None
    # Another handler on the root (an error reporter, pytest's capture): it gets every record.
    keep = Keep()
    logging.getLogger().addHandler(keep)
    try:
        assert logs._direct_handler(LOGGER) is None
        log_started([job("t-1")])
    finally:
        logging.getLogger().removeHandler(keep)
    assert [(r.getMessage(), r.task_id, r.task_name) for r in keep.records] == [  # type: ignore[attr-defined]
        ("Task tasks.add[t-1] started", "t-1", "tasks.add")]
    assert logged.read_text().endswith("INFO conveyor.worker.tasks: Task tasks.add[t-1] started\n")
    # A handler on the way (here on "conveyor") also turns the direct path off.
    logging.getLogger("conveyor").addHandler(keep)
    try:
        assert logs._direct_handler(LOGGER) is None
    finally:
        logging.getLogger("conveyor").removeHandler(keep)
    assert logs._direct_handler(LOGGER) is not None


def test_inside_a_task_records_are_made_so_its_output_keeps_them(logged):
    setup(logged)
    set_current(CurrentTask("t-9", "tasks.x", 1))
    try:
        assert logs._direct_handler(LOGGER) is None
    finally:
        set_current(None)
    assert logs._direct_handler(LOGGER) is not None
