"""Every attempt of a task, stored and shown: real master and worker processes on 127.0.0.1.

A task that prints, logs and fails twice before it succeeds shows three attempts (worker,
outcome, error, output) through ``inspect`` in Python, on the command line and on the
dashboard's task page; output is capped at 64 KiB; a worker killed with ``kill -9`` under
a task leaves that attempt marked as a lost lease, and the next attempt succeeds elsewhere.
"""

from __future__ import annotations

import signal

from conveyor.records import MAX_ATTEMPT_OUTPUT

from ..waiting import wait_until
from .conftest import TASKS
from .dashboard_helpers import Dashboard
from .test_cli import run


def _identity(w: dict) -> dict:
    return {"name": w["name"], "host": w["host"], "pid": w["pid"]}


def test_three_attempts_with_worker_outcome_error_and_output(make_cluster, tmp_path):
    cluster = make_cluster(workers=1).start()
    cluster.wait_for_workers(1)
    counter = tmp_path / "runs.txt"
    with cluster.client() as client:
        [worker] = client.status()["workers"]
        fut = client.submit(f"{TASKS}:noisy_flaky", str(counter), 2, retries=2, retry_backoff=0.01)
        assert fut.result(60) == "done"
        doc = client.inspect(fut.task_id)
    log = doc["attempt_log"]
    assert [a["number"] for a in log] == [1, 2, 3]
    assert [a["outcome"] for a in log] == ["retried", "retried", "succeeded"]
    assert all(a["worker"] == _identity(worker) for a in log)
    assert worker["pid"] == cluster.workers[0].pid
    for i, a in enumerate(log, 1):
        assert f"printed by attempt {i} <script>x</script>" in a["output"]
        assert f"stderr of attempt {i}" in a["output"]
        assert f"logged by attempt {i}" in a["output"]
        assert a["leased_at"] <= a["finished_at"]
        # A short task may end before the worker's start report reaches the master.
        assert a["started_at"] is None or a["leased_at"] <= a["started_at"] <= a["finished_at"]
    assert [a["error"]["message"] for a in log[:2]] == ["noisy failure 1", "noisy failure 2"]
    assert all(a["error"]["type"] == "ValueError" and "Traceback" in a["error"]["traceback"]
               for a in log[:2])
    assert log[2]["error"] is None
    assert doc["args"] == [str(counter), 2] and doc["kwargs"] == {}
    assert doc["dependents"] == []

    out = run("inspect", fut.task_id, "-c", cluster.address,
              env={"CONVEYOR_AUTHKEY": cluster.authkey.decode()}).stdout
    by = f"on {worker['name']} host {worker['host']} pid {worker['pid']}"
    assert f"\nattempt 1 failed (retried) {by}: ValueError: noisy failure 1\nTraceback" in out
    assert f"\nattempt 2 failed (retried) {by}: ValueError: noisy failure 2\nTraceback" in out
    assert f"\nattempt 3 succeeded {by}\n" in out
    assert out.count("output:\n") == 3 and "printed by attempt 3 <script>x</script>" in out
    assert f'\nargs      ["{counter}", 2]\n' in out

    d = Dashboard(cluster)
    try:
        page = d.browser().get(f"/tasks/{fut.task_id}")
    finally:
        d.stop()
    assert page.status == 200
    assert page.body.count('<tr class="attempt">') == 3
    assert page.body.count('<details class="output">') == 3
    assert "printed by attempt 2 &lt;script&gt;x&lt;/script&gt;" in page.body
    assert "<script>x</script>" not in page.body
    assert "noisy failure 1" in page.body and "Traceback (most recent call last)" in page.body
    assert f"{worker['name']} on {worker['host']} pid {worker['pid']}" in page.body
    assert str(counter) in page.body  # the arguments


def test_output_is_capped_and_dependents_are_listed(make_cluster):
    cluster = make_cluster(workers=1).start()
    cluster.wait_for_workers(1)
    with cluster.client() as client:
        fut = client.submit(f"{TASKS}:chatty", 3 * MAX_ATTEMPT_OUTPUT)
        child = client.submit(f"{TASKS}:square", 3, after=[fut])
        assert child.result(60) == 9
        doc = client.inspect(fut.task_id)
    [a] = doc["attempt_log"]
    assert a["outcome"] == "succeeded"
    assert len(a["output"].encode()) <= MAX_ATTEMPT_OUTPUT
    assert a["output"].rstrip().endswith("the end")
    assert doc["dependents"] == [child.task_id]

    d = Dashboard(cluster)
    try:
        page = d.browser().get(f"/tasks/{fut.task_id}")
    finally:
        d.stop()
    assert f'<a href="/tasks/{child.task_id}">{child.task_id}</a>' in page.body


def test_a_worker_killed_mid_task_leaves_a_lost_attempt_and_the_next_succeeds_elsewhere(
        make_cluster, tmp_path):
    cluster = make_cluster(workers=2).start()
    cluster.wait_for_workers(2)
    started = tmp_path / "started"
    with cluster.client() as client:
        workers = {w["pid"]: _identity(w) for w in client.status()["workers"]}
        fut = client.submit(f"{TASKS}:hang_first", str(tmp_path / "ran"), str(started))
        assert wait_until(started.exists)
        assert wait_until(lambda: (client.inspect(fut.task_id).get("worker") or {}).get("pid"))
        holder = client.inspect(fut.task_id)["worker"]["pid"]
        [victim] = [p for p in cluster.workers if p.pid == holder]
        victim.send_signal(signal.SIGKILL)
        victim.wait(10)
        assert fut.result(60) == "second"
        log = client.inspect(fut.task_id)["attempt_log"]
    assert [a["outcome"] for a in log] == ["lost lease", "succeeded"]
    assert log[0]["worker"] == workers[holder]
    assert log[1]["worker"]["pid"] != holder and log[1]["worker"] in workers.values()
    assert log[0]["error"] is None and log[0]["finished_at"] <= log[1]["finished_at"]


def test_an_attempt_stopped_by_its_time_limit_is_marked_timed_out(make_cluster):
    cluster = make_cluster(workers=1).start()
    cluster.wait_for_workers(1)
    with cluster.client() as client:
        fut = client.submit(f"{TASKS}:hang", 60, timeout=0.5)
        assert wait_until(lambda: client.inspect(fut.task_id)["state"] == "failed", timeout=60)
        [a] = client.inspect(fut.task_id)["attempt_log"]
    assert a["outcome"] == "timed out"
    assert a["error"]["type"] == "conveyor.errors.TaskTimeout"
