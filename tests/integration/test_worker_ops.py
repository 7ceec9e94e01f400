"""Task logs and the worker lifecycle with real masters and workers: one log line per task
event (text and JSON, on stderr or in a file), recycling children by task count and memory,
autoscaling up and down, and lifecycle hooks."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

import conveyor

from .conftest import ROOT

LT = "tests.integration.ltasks"
WAIT = 60.0  # upper bound of every wait; none of them is a timing assertion
TEXT_EVENT = re.compile(r"^\S+ \S+ (INFO|WARNING) conveyor\.worker\.tasks: Task (\S+)\[(\w+)\] (.*)$")


def wait_until(predicate: Callable[[], object], timeout: float = WAIT) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


def worker_log(cluster) -> Path:
    (path,) = sorted(cluster.log_dir.glob("*-worker.log"))
    return path


def text_events(path: Path) -> dict[str, list[str]]:
    """The task event lines of a text log: task id -> the events after its name, in order."""
    events: dict[str, list[str]] = {}
    for line in path.read_text(errors="replace").splitlines():
        match = TEXT_EVENT.match(line)
        if match:
            events.setdefault(match.group(3), []).append(f"{match.group(1)} {match.group(4)}")
    return events


@pytest.fixture
def lt_cluster(make_cluster):
    """A master with no worker yet; tests start the worker they need."""
    def start(*worker_args: str, **kwargs):
        cluster = make_cluster(workers=0, modules=[LT], **kwargs).start()
        cluster.start_worker(*worker_args)
        cluster.wait_for_workers(1)
        return cluster
    return start


def test_every_task_event_is_one_text_line_with_the_task_id_and_name(lt_cluster, tmp_path):
    cluster = lt_cluster("--concurrency", "1")
    with cluster.client() as client:
        ok = client.submit(f"{LT}:add", 2, 40)
        assert ok.result(WAIT) == 42
        failed = client.submit(f"{LT}:fail", "nope")
        with pytest.raises(conveyor.TaskError):
            failed.result(WAIT)
        retried = client.submit(f"{LT}:fail", "again", retries=1, retry_backoff=0, retry_jitter=False)
        with pytest.raises(conveyor.TaskError):
            retried.result(WAIT)
        timed_out = client.submit(f"{LT}:hold", str(tmp_path), timeout=0.5)
        with pytest.raises(conveyor.TaskTimeout):
            timed_out.result(WAIT)
        crashed = client.submit(f"{LT}:crash")
        with pytest.raises(conveyor.WorkerCrashed):
            crashed.result(WAIT)
        (tmp_path / "c").mkdir()
        cancelled = client.submit(f"{LT}:hold", str(tmp_path / "c"))
        wait_until(lambda: list((tmp_path / "c").glob("started-*")))
        client.cancel(cancelled.task_id)
    path = worker_log(cluster)
    wait_until(lambda: any(e[-1] == "INFO cancelled" for e in text_events(path).values()))
    events = text_events(path)
    assert events[ok.task_id] == ["INFO started", "INFO succeeded in " +
                             events[ok.task_id][1].split(" in ")[1]]
    assert re.fullmatch(r"INFO succeeded in \d+\.\d{3}s: 42", events[ok.task_id][1])
    assert re.fullmatch(r"WARNING failed in \d+\.\d{3}s: ValueError: nope", events[failed.task_id][-1])
    assert re.fullmatch(r"INFO retry in 0s \(failed in \d+\.\d{3}s\): ValueError: again", events[retried.task_id][1])
    assert re.fullmatch(r"WARNING failed in \d+\.\d{3}s \(no retries left\): ValueError: again",
                        events[retried.task_id][-1])
    assert re.fullmatch(rf"WARNING timed out after \d+\.\d{{3}}s: task {LT}:hold exceeded its time limit of 0.5s",
                        events[timed_out.task_id][-1])
    assert re.fullmatch(rf"WARNING crashed after \d+\.\d{{3}}s: worker process exited with code 3 "
                        rf"while running task {LT}:crash", events[crashed.task_id][-1])
    assert events[cancelled.task_id] == ["INFO started", "INFO cancelled"]
    text = path.read_text()
    assert f"Task {LT}:add[{ok.task_id}] succeeded in " in text  # the name and id as Celery shows them


def test_json_log_files_on_master_and_worker_with_task_context(make_cluster, tmp_path):
    master_log, worker_file = tmp_path / "master.jsonl", tmp_path / "worker.jsonl"
    cluster = make_cluster(workers=0, modules=[LT],
                           master_args=["--log-format", "json", "--log-file", str(master_log)]).start()
    cluster.start_worker("--log-format", "json", "--log-file", str(worker_file), "--log-level", "DEBUG")
    cluster.wait_for_workers(1)
    with cluster.client() as client:
        fut = client.submit(f"{LT}:chatty", 7)
        assert fut.result(WAIT) == 7

    def worker_docs() -> list[dict]:
        return [json.loads(line) for line in worker_file.read_text().splitlines()]

    wait_until(lambda: any("succeeded" in d["message"] for d in worker_docs()))
    docs = worker_docs()  # every line is one JSON object
    assert all({"time", "level", "logger", "message"} <= set(d) for d in docs)
    mine = [d for d in docs if d.get("task_id") == fut.task_id]
    assert all(d["task_name"] == f"{LT}:chatty" for d in mine)
    assert [d["message"].split("] ")[1] for d in mine if d["logger"] == "conveyor.worker.tasks"][:2] == \
        ["received", "started"]
    (own,) = [d for d in mine if d["logger"] == "ltasks"]  # logged by the task, in the child
    assert own["message"] == "hello from chatty 7" and own["level"] == "WARNING"
    assert any(d["logger"] == "conveyor.worker.tasks" and d["message"].endswith("succeeded in " +
               d["message"].split("succeeded in ")[-1]) for d in mine)
    cluster.stop()
    master_docs = [json.loads(line) for line in master_log.read_text().splitlines()]
    assert master_docs and all({"time", "level", "logger", "message"} <= set(d) for d in master_docs)
    assert any("connected" in d["message"] for d in master_docs)


def test_a_child_is_replaced_after_max_tasks(lt_cluster):
    cluster = lt_cluster("--concurrency", "1", "--max-tasks-per-child", "2")
    with cluster.client() as client:
        pids = [client.submit(f"{LT}:pid").result(WAIT) for _ in range(6)]
    assert pids[0] == pids[1] != pids[2] == pids[3] != pids[4] == pids[5]
    assert "it ran 2 task(s) (--max-tasks-per-child 2)" in worker_log(cluster).read_text()


def test_a_child_is_replaced_after_the_task_that_crossed_its_memory_limit(lt_cluster):
    cluster = lt_cluster("--concurrency", "1", "--max-memory-per-child", "150")
    with cluster.client() as client:
        first, second = (client.submit(f"{LT}:pid").result(WAIT) for _ in range(2))
        grown = client.submit(f"{LT}:allocate", 200).result(WAIT)
        after = client.submit(f"{LT}:pid").result(WAIT)
    assert first == second == grown != after
    assert "(--max-memory-per-child 150)" in worker_log(cluster).read_text()


def test_autoscaling_adds_children_while_work_waits_and_removes_them_when_idle(lt_cluster, tmp_path):
    cluster = lt_cluster("--autoscale", "1,3", "--autoscale-idle", "0.3")
    with cluster.client() as client:
        futures = [client.submit(f"{LT}:hold", str(tmp_path)) for _ in range(3)]
        # Three tasks hold at once only in three children: the pool grew from one.
        wait_until(lambda: len(list(tmp_path.glob("started-*"))) == 3)
        (tmp_path / "release").touch()
        assert len({f.result(WAIT) for f in futures}) == 3
    path = worker_log(cluster)
    wait_until(lambda: "(2 -> 1)" in path.read_text())  # idle children stopped, one at a time
    text = path.read_text()
    assert "autoscale: starting" in text and "autoscale: stopping idle pool process" in text


def test_hooks_run_once_per_child_and_once_per_worker(make_cluster, tmp_path, monkeypatch):
    hook_log = tmp_path / "hooks.log"
    monkeypatch.setenv("CONVEYOR_TEST_HOOK_LOG", str(hook_log))  # the cluster passes it on
    cluster = make_cluster(workers=1, modules=[LT], concurrency=3).start()
    cluster.wait_for_workers(1)

    def lines(kind: str) -> list[int]:
        text = hook_log.read_text() if hook_log.exists() else ""
        return [int(line.split()[1]) for line in text.splitlines() if line.split()[0] == kind]

    with cluster.client() as client:
        pids = {client.submit(f"{LT}:pid").result(WAIT) for _ in range(12)}
    worker_pid = cluster.workers[0].pid
    assert lines("worker-start") == [worker_pid]
    assert len(lines("child-start")) == 3 and pids <= set(lines("child-start"))
    cluster.stop()
    assert sorted(lines("child-exit")) == sorted(lines("child-start"))
    assert lines("worker-stop") == [worker_pid]


def test_a_failing_child_start_hook_stops_the_worker_with_one_line(master):
    # A master to reach: the worker checks it can before it starts its pool.
    proc = subprocess.run([sys.executable, "-m", "conveyor", "worker", "tests.integration.badhook_tasks",
                           "--concurrency", "1", "--connect", master.address],
                          capture_output=True, text=True, timeout=WAIT, cwd=ROOT, env=master.env())
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1] == (
        "conveyor worker: error: pool worker process could not start: child-start hook "
        "tests.integration.badhook_tasks.connect_database failed: RuntimeError: no database at db.invalid:5432")
    assert "Traceback" not in proc.stderr


def test_lifecycle_flags_are_checked_in_one_line():
    for args, message in (
        (["--pool", "thread", "--max-tasks-per-child", "2"], "need child processes: use --pool process"),
        (["--pool", "asyncio", "--autoscale", "1,2"], "--autoscale applies to --pool process"),
        (["--autoscale", "3,1"], "--autoscale needs 1 <= MIN <= MAX, not '3,1'"),
        (["--max-tasks-per-child", "0"], "--max-tasks-per-child must be a positive integer, not 0"),
        (["--log-format", "text", "--log-file", "/nonexistent/dir/w.log"], "cannot open log file /nonexistent/dir/w.log"),
    ):
        proc = subprocess.run([sys.executable, "-m", "conveyor", "worker", LT, *args],
                              capture_output=True, text=True, timeout=WAIT, cwd=ROOT)
        assert proc.returncode == 1, args
        assert proc.stderr.count("\n") == 1 and message in proc.stderr, proc.stderr
