"""Fair dispatch with real processes: a burst of long tasks is split across idle slots,
and a prefetched task is told apart from a running one in status and inspect."""

from __future__ import annotations

from collections import Counter

from ..waiting import wait_until

FAIR = "tests.integration.fair_tasks"


def _all_leased_and_reported(c, n: int) -> bool:
    """``n`` tasks are leased in all, and every started report has arrived."""
    status = c.status()
    return sum(w["inflight"] for w in status["workers"]) == n and _leases_settled(status)


def _leases_settled(status: dict) -> bool:
    """Every worker's started reports caught up with its leases: as many run as its slots allow."""
    return all(w["running"] == min(w["concurrency"], w["inflight"]) for w in status["workers"])


def test_a_burst_of_long_tasks_is_split_evenly_between_two_idle_workers(make_cluster, tmp_path):
    gate = tmp_path / "gate"
    cluster = make_cluster(workers=2, concurrency=4, modules=[FAIR]).start()
    cluster.wait_for_workers(2)
    pids = {w.pid for w in cluster.workers}
    with cluster.client() as c:
        futures = c.submit_many(f"{FAIR}:gated_ppid", [(str(gate),)] * 8)
        assert wait_until(lambda: _all_leased_and_reported(c, 8))
        workers = c.status()["workers"]
        assert sorted((w["running"], w["prefetched"]) for w in workers) == [(4, 0), (4, 0)]
        assert all(c.inspect(f.task_id)["started_at"] is not None for f in futures)
        gate.touch()
        ran_on = Counter(f.result(timeout=60) for f in futures)
    assert set(ran_on) == pids
    assert sorted(ran_on.values()) == [4, 4]


def test_a_prefetched_task_is_not_shown_as_started(make_cluster, tmp_path):
    gate = tmp_path / "gate"
    cluster = make_cluster(workers=1, concurrency=1, modules=[FAIR], worker_args=["--prefetch", "3"]).start()
    cluster.wait_for_workers(1)
    with cluster.client() as c:
        futures = c.submit_many(f"{FAIR}:gated_ppid", [(str(gate),)] * 3)
        assert wait_until(lambda: _all_leased_and_reported(c, 3))
        (worker,) = c.status()["workers"]
        assert (worker["running"], worker["prefetched"]) == (1, 2)
        shown = [c.inspect(f.task_id) for f in futures]
        assert sorted(t["started_at"] is None for t in shown) == [False, True, True]
        assert all(t["state"] == "leased" for t in shown)
        gate.touch()
        assert [f.result(timeout=60) for f in futures] == [cluster.workers[0].pid] * 3
        # Once it ran, the task shows when it started again.
        assert all(c.inspect(f.task_id)["started_at"] is not None for f in futures)
