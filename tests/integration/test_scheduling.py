"""Job scheduling with real master and worker processes: retries, time limits,
priorities, delays, cancellation, dependencies, idempotency, progress,
inspection and rate limits."""

from __future__ import annotations

import concurrent.futures as cf
import datetime as dt
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import conveyor

from ..waiting import wait_until
from .conftest import ROOT, TASKS
from .test_cli import run_many
from .test_failures import executions


def lines(path: Path) -> list[str]:
    return path.read_text().split("\n")[:-1] if path.exists() else []


def cli(cluster, *args):
    env = cluster.env()
    return subprocess.run([sys.executable, "-m", "conveyor", *args, "--connect", cluster.address],
                          capture_output=True, text=True, timeout=60, env=env, cwd=ROOT)


# -- retries ------------------------------------------------------------------------
def test_task_that_fails_twice_then_succeeds(cluster, tmp_path):
    count = tmp_path / "count"
    with cluster.client() as client:
        fut = client.submit(f"{TASKS}:flaky", str(count), 2, retries=3, retry_backoff=0.05)
        assert fut.result(60) == "ok"
        info = client.inspect(fut.task_id)
    assert len(executions(count)) == 3
    assert info["state"] == "succeeded" and info["attempts"] == 3
    assert [e["message"] for e in info["errors"]] == ["flaky failure 1", "flaky failure 2"]
    assert all("Traceback" in e["traceback"] for e in info["errors"])


def test_retries_exhausted_make_a_dead_task_that_retry_and_purge_handle(cluster, tmp_path):
    count = tmp_path / "count"
    # A queue of its own: the module's other tests make dead tasks too.
    worker = cluster.start_worker("--queues", "exhausted")
    with cluster.client() as client:
        fut = client.submit(f"{TASKS}:flaky", str(count), 100, retries=1, retry_backoff=0.01, queue="exhausted")
        with pytest.raises(conveyor.TaskError, match="flaky failure 2"):
            fut.result(60)
        info = client.inspect(fut.task_id)
        assert info["state"] == "dead" and len(info["errors"]) == 2
        listed = client.tasks(queue="exhausted", state="dead")
        assert [t["id"] for t in listed] == [fut.task_id]
        proc = cli(cluster, "retry", fut.task_id)
        assert proc.returncode == 0 and "requeued" in proc.stdout
        with pytest.raises(conveyor.TaskError, match="flaky failure 4"):
            client.result(fut.task_id, timeout=60)
        assert wait_until(lambda: client.inspect(fut.task_id)["state"] == "dead")
        assert len(executions(count)) == 4  # the budget started again: 2 more attempts
        proc = cli(cluster, "purge", "--queue", "exhausted", "--yes")  # bulk commands ask first; no terminal here
        assert proc.returncode == 0 and "purged 1" in proc.stdout
        with pytest.raises(conveyor.NotFound):
            client.inspect(fut.task_id)
    cluster.stop_worker(worker)


def test_retry_on_chooses_which_exceptions_retry(cluster):
    with cluster.client() as client:
        fut = client.submit(f"{TASKS}:raise_key_error", retries=3, retry_on=(ValueError,))
        with pytest.raises(conveyor.TaskError, match="KeyError"):
            fut.result(60)
        info = client.inspect(fut.task_id)
        assert info["attempts"] == 1 and info["state"] == "failed"
        fut = client.submit(f"{TASKS}:raise_key_error", retries=1, retry_on=(LookupError,), retry_backoff=0)
        with pytest.raises(conveyor.TaskError):
            fut.result(60)
        assert client.inspect(fut.task_id)["attempts"] == 2  # KeyError is a LookupError


def test_task_can_ask_for_a_retry(cluster, tmp_path):
    count = tmp_path / "count"
    with cluster.client() as client:
        assert client.submit(f"{TASKS}:ask_retry", str(count), 0.05).result(60) == 1
    assert len(executions(count)) == 2


def test_invalid_retry_settings_are_refused_at_submit(cluster):
    with cluster.client() as client:
        with pytest.raises(ValueError, match="retries"):
            client.submit(f"{TASKS}:square", 1, retries=-1)
        with pytest.raises(ValueError, match="rate_limit"):
            client.submit(f"{TASKS}:square", 1, rate_limit="fast")
        with pytest.raises(ValueError, match="priority"):
            client.submit(f"{TASKS}:square", 1, priority=1.5)
        with pytest.raises(ValueError, match="countdown"):
            client.submit(f"{TASKS}:square", 1, countdown=-3)
        with pytest.raises(ValueError, match="timezone-aware"):
            client.submit(f"{TASKS}:square", 1, eta=dt.datetime(2030, 1, 1))
    with pytest.raises(ValueError, match="retry_backoff"):
        conveyor.task(retry_backoff="soon")(lambda: None)


# -- time limits --------------------------------------------------------------------
def test_hung_task_is_stopped_at_its_timeout_and_worker_serves_the_next(cluster):
    with cluster.client() as client:
        fut = client.submit(f"{TASKS}:hang", 60, timeout=0.5)
        with pytest.raises(conveyor.TaskError) as info:
            fut.result(60)
        assert info.value.type_name == "conveyor.errors.TaskTimeout"
        assert client.submit(f"{TASKS}:square", 6).result(30) == 36
        assert len(client.status()["workers"]) == len(cluster.workers)
    assert all(w.poll() is None for w in cluster.workers)


def test_timeout_follows_retry_rules(cluster):
    with cluster.client() as client:
        fut = client.submit(f"{TASKS}:hang", 60, timeout=0.3, retries=1, retry_backoff=0)
        with pytest.raises(conveyor.TaskError, match="time limit"):
            fut.result(60)
        info = client.inspect(fut.task_id)
    assert info["state"] == "dead" and info["attempts"] == 2


def test_soft_time_limit_raises_inside_the_task(cluster):
    with cluster.client() as client:
        assert client.submit(f"{TASKS}:soft_limited", 30, soft_timeout=0.3, timeout=20).result(60) == "cleaned up"


# -- priorities and delays ----------------------------------------------------------
def test_higher_priority_first_and_fifo_within_a_priority(cluster, tmp_path):
    log = tmp_path / "order"
    with cluster.client() as client:
        # A queue no worker serves yet: every task is queued before the first is leased.
        futures = [client.submit(f"{TASKS}:record", str(log), label, priority=prio, queue="by-priority")
                   for label, prio in [(1, 0), (2, 0), (3, 5), (4, 9), (5, 5), (6, 0)]]
        worker = cluster.start_worker("--queues", "by-priority", "--concurrency", "1", "--prefetch", "1")
        for f in futures:
            f.result(60)
    cluster.stop_worker(worker)
    assert executions(log) == [4, 3, 5, 1, 2, 6]


def test_countdown_delays_and_eta_schedules(cluster, tmp_path):
    log = tmp_path / "stamps"
    with cluster.client() as client:
        submitted = time.time()
        fut = client.submit(f"{TASKS}:stamp", str(log), "late", countdown=1.0)
        assert client.inspect(fut.task_id)["state"] == "delayed"
        eta = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=0.5)
        fut2 = client.submit(f"{TASKS}:stamp", str(log), "eta", eta=eta)
        assert fut.result(30) == "late" and fut2.result(30) == "eta"
    ran = {label: float(t) for label, t in (line.split() for line in lines(log))}
    assert ran["late"] >= submitted + 1.0
    assert ran["eta"] >= eta.timestamp()


def test_delayed_task_survives_master_kill_and_runs_once(make_cluster, tmp_path):
    cluster = make_cluster(workers=1).start()
    cluster.wait_for_workers(1)
    log = tmp_path / "runs"
    with cluster.client() as client:
        when = time.time() + 2.0
        fut = client.submit(f"{TASKS}:stamp", str(log), "delayed", countdown=2.0)
        cluster.kill_master(signal.SIGKILL)
        cluster.start_master()
        assert fut.result(60) == "delayed"
        # One lease: a second execution needs a second lease, and a succeeded task gets none.
        assert client.inspect(fut.task_id)["attempts"] == 1
    runs = lines(log)
    assert len(runs) == 1 and float(runs[0].split()[1]) >= when


# -- cancellation -------------------------------------------------------------------
def test_cancel_queued_and_delayed_tasks(cluster, tmp_path):
    log = tmp_path / "runs"
    q = "cancel-here"  # no worker serves it until the cancels are done
    with cluster.client() as client:
        queued = client.submit(f"{TASKS}:record", str(log), 1, queue=q)
        delayed = client.submit(f"{TASKS}:record", str(log), 2, countdown=0.5, queue=q)
        kept = client.submit(f"{TASKS}:record", str(log), 3, queue=q)
        assert queued.cancel() and delayed.cancel()
        assert queued.cancelled() and delayed.cancelled()
        with pytest.raises(cf.CancelledError):
            queued.result(5)
        assert client.inspect(queued.task_id)["state"] == "cancelled"
        # A fence due after the cancelled delayed task: one slot runs the queue in order,
        # so had the delayed task been promoted it would have run before the fence.
        fence = client.submit(f"{TASKS}:record", str(log), 4, countdown=0.5, queue=q)
        worker = cluster.start_worker("--queues", q, "--concurrency", "1", "--prefetch", "1")
        assert kept.result(60) == 3
        assert fence.result(60) == 4
        assert client.inspect(delayed.task_id)["state"] == "cancelled"
    cluster.stop_worker(worker)
    assert executions(log) == [3, 4]


def test_cancel_running_task_stops_it_and_worker_goes_on(cluster, tmp_path):
    started = tmp_path / "started"
    with cluster.client() as client:
        fut = client.submit(f"{TASKS}:hang", 60, str(started))
        assert wait_until(started.exists)  # running in a pool child, not only leased
        proc = cli(cluster, "cancel", fut.task_id)
        assert proc.returncode == 0 and "cancelled" in proc.stdout
        with pytest.raises(cf.CancelledError):
            fut.result(30)
        assert client.submit(f"{TASKS}:square", 7).result(30) == 49
        assert all(w.poll() is None for w in cluster.workers)
        assert client.inspect(fut.task_id)["state"] == "cancelled"


def test_unknown_task_id_is_one_line_and_exit_1(cluster):
    commands = ("inspect", "cancel", "retry")
    procs = run_many(*([cmd, "f" * 32, "--connect", cluster.address] for cmd in commands), env=cluster.env())
    for cmd, proc in zip(commands, procs):
        assert proc.returncode == 1, (cmd, proc.stdout, proc.stderr)
        assert proc.stderr.strip() == f"conveyor {cmd}: error: no task {'f' * 32}"


# -- dependencies -------------------------------------------------------------------
def test_dependency_chain_with_failing_middle(cluster):
    with cluster.client() as client:
        a = client.submit(f"{TASKS}:square", 3)
        b = client.submit(f"{TASKS}:fail", "middle broke", after=[a])
        c = client.submit(f"{TASKS}:square", 4, after=[b])
        assert a.result(60) == 9
        with pytest.raises(conveyor.TaskError, match="middle broke"):
            b.result(60)
        with pytest.raises(conveyor.TaskError) as info:
            c.result(60)
        assert info.value.type_name == "conveyor.errors.DependencyFailed"
        assert b.task_id in info.value.message
        assert client.inspect(c.task_id)["after"] == [b.task_id]
        # c alone would fail again at once: the answer says so, and names what to retry.
        proc = cli(cluster, "retry", c.task_id, a.task_id)
        assert proc.returncode == 1
        assert f"{c.task_id} not retried: a task it depends on did not succeed: retry that one first" in proc.stdout
        assert f"{a.task_id} not retried: it is succeeded, not dead, failed or cancelled" in proc.stdout


def test_chord_passes_upstream_results_and_gather(cluster):
    with cluster.client() as client:
        group = [client.submit(f"{TASKS}:slow_square", n, 0.05) for n in range(1, 5)]
        total = client.submit(f"{TASKS}:total", extra=100, after=group, pass_results=True)
        assert client.gather(group, timeout=60) == [1, 4, 9, 16]
        assert total.result(60) == 130


def test_dependency_on_unknown_task_is_refused_at_submit(cluster):
    with cluster.client() as client:
        with pytest.raises(ValueError, match="unknown dependency"):
            client.submit(f"{TASKS}:square", 1, after=["0" * 32])


def test_waiting_task_survives_master_restart(make_cluster):
    cluster = make_cluster(workers=0).start()
    with cluster.client() as client:
        first = client.submit(f"{TASKS}:square", 5)
        second = client.submit(f"{TASKS}:add", 1, after=[first])
        cluster.kill_master(signal.SIGKILL)
        cluster.start_master()
        cluster.start_worker()
        assert first.result(60) == 25 and second.result(60) == 1


# -- idempotency, progress, rate limits -----------------------------------------------
def test_same_key_submits_one_task(cluster, tmp_path):
    log = tmp_path / "runs"
    with cluster.client() as client:
        f1 = client.submit(f"{TASKS}:record", str(log), 42, key="order-42")
        f2 = client.submit(f"{TASKS}:record", str(log), 42, key="order-42")
        assert f1.task_id == f2.task_id
        assert f1.result(30) == 42 and f2.result(30) == 42
        f3 = client.submit(f"{TASKS}:record", str(log), 42, key="order-42")
        assert f3.result(30) == 42
    assert executions(log) == [42]


def test_progress_reaches_the_client_and_inspect(cluster):
    seen = []
    with cluster.client() as client:
        fut = client.submit(f"{TASKS}:with_progress", 5, 0.1)
        fut.add_progress_callback(lambda f: seen.append(f.progress["done"]))
        assert fut.result(60) == 5
        assert wait_until(lambda: fut.progress is not None and fut.progress["done"] == 5, timeout=10)
        info = client.inspect(fut.task_id)
    assert fut.progress == {"done": 5, "total": 5, "message": "step 5"}
    assert seen and seen == sorted(seen)
    assert info["progress"]["done"] == 5


def test_rate_limit_is_enforced_across_workers(cluster, tmp_path):
    log = tmp_path / "stamps"
    with cluster.client() as client:
        futures = [client.submit(f"{TASKS}:stamp", str(log), i, rate_limit="4/s") for i in range(8)]
        assert sorted(f.result(60) for f in futures) == list(range(8))
    times = sorted(float(line.split()[1]) for line in lines(log))
    # 4 may run at once (a full bucket); the other 4 need a token each, one every 0.25 s.
    assert times[-1] - times[0] >= 0.75


def test_asyncio_future_of_a_cancelled_task_raises_cancelled(cluster):
    import asyncio

    from conveyor import aio

    async def main():
        async with await aio.connect(cluster.address, cluster.authkey) as client:
            # A queue no worker serves: the task waits until it is cancelled.
            fut = await client.submit(f"{TASKS}:square", 2, task_id="t-aio-cancel", queue="parked")
            with cluster.client() as sync:
                assert sync.cancel("t-aio-cancel")["cancelled"] == ["t-aio-cancel"]
            with pytest.raises(asyncio.CancelledError):
                await asyncio.wait_for(fut, 30)

    asyncio.run(main())


def test_changed_rate_limit_takes_effect_at_once(cluster):
    with cluster.client() as client:
        assert client.submit(f"{TASKS}:square", 1, rate_limit="1/m").result(30) == 1
        faster = [client.submit(f"{TASKS}:square", n, rate_limit="100/s") for n in range(3)]
        assert [f.result(20) for f in faster] == [0, 1, 4]


def test_worker_serves_its_queues_in_the_stated_order(cluster, tmp_path):
    log = tmp_path / "order"
    with cluster.client() as client:
        low = [client.submit(f"{TASKS}:record", str(log), 100 + i, queue="order-low") for i in range(3)]
        high = [client.submit(f"{TASKS}:record", str(log), i, queue="order-high") for i in range(3)]
        worker = cluster.start_worker("--queues", "order-high,order-low", "--concurrency", "1", "--prefetch", "1")
        client.gather(low + high, timeout=60)
    cluster.stop_worker(worker)
    assert executions(log) == [0, 1, 2, 100, 101, 102]


def test_weighted_queues_are_both_served(cluster):
    with cluster.client() as client:
        futures = [client.submit(f"{TASKS}:square", i, queue=q) for i in range(20) for q in ("wa", "wb")]
        worker = cluster.start_worker("--queues", "wa:3,wb:1")
        assert sorted(client.gather(futures, timeout=60)) == sorted(i * i for i in range(20) for _ in "ab")
        serving = [w["queues"] for w in client.status()["workers"] if "wa" in w["queues"]]
    cluster.stop_worker(worker)
    assert serving == [["wa", "wb"]]


def test_retry_every_dead_task_of_a_queue(cluster):
    worker = cluster.start_worker("--queues", "batch")
    with cluster.client() as client:
        dead = [client.submit(f"{TASKS}:fail", f"x{i}", retries=1, retry_backoff=0, queue="batch")
                for i in range(3)]
        for f in dead:
            with pytest.raises(conveyor.TaskError):
                f.result(60)
        out = cli(cluster, "retry", "--queue", "batch", "--yes")  # bulk commands ask first
        assert out.returncode == 0 and out.stdout.count("requeued") == 3
        assert wait_until(lambda: all(len(client.inspect(f.task_id)["errors"]) == 4 for f in dead), timeout=60)
        assert len(client.tasks(queue="batch", state="dead")) == 3
    cluster.stop_worker(worker)
