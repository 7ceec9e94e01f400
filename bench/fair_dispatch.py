"""Fair dispatch: the makespan of a mix of long and short tasks, against the ideal and
against the multiprocessing.managers pattern, in the same run.

The work: short tasks (a few ms), then a burst of long ones, then short ones again;
the worst case for a prefetching queue, since the short tasks teach the workers a
large prefetch window just before the long tasks arrive. The work sleeps, so it
measures dispatch, not CPU.

- ideal: total work / slots, or the longest task if that is longer;
- managers: the tutorial pattern, one process per slot pulling one task at a time
  from a managers queue (greedy, nothing prefetched: the best a pull queue does);
- conveyor: ``--workers`` workers with ``--concurrency`` process slots each.

    python bench/fair_dispatch.py
    python bench/fair_dispatch.py --long 8 --long-seconds 3 --short 0   # the burst alone
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import queue
import sys
import tempfile
import time
from multiprocessing.managers import BaseManager
from pathlib import Path

AUTHKEY = b"bench"
HERE = Path(__file__).resolve().parent


def work(seconds: float) -> float:
    """The task: sleep ``seconds`` (what conveyor's workers import from this module)."""
    time.sleep(seconds)
    return seconds


def workload(short: int, long: int, short_s: float, long_s: float) -> list[float]:
    """Half the short tasks, the long burst, the other half of the short tasks."""
    half = short // 2
    return [short_s] * half + [long_s] * long + [short_s] * (short - half)


# -- the managers tutorial pattern --------------------------------------------
_task_queue: queue.Queue[float | None] = queue.Queue()
_result_queue: queue.Queue[float] = queue.Queue()


def _get_task_queue() -> queue.Queue[float | None]:
    return _task_queue


def _get_result_queue() -> queue.Queue[float]:
    return _result_queue


class _MasterManager(BaseManager):
    pass


class _WorkerManager(BaseManager):
    pass


_MasterManager.register("get_task_queue", callable=_get_task_queue)
_MasterManager.register("get_result_queue", callable=_get_result_queue)
_WorkerManager.register("get_task_queue")
_WorkerManager.register("get_result_queue")


def _managers_worker(address: tuple[str, int]) -> None:
    m = _WorkerManager(address=address, authkey=AUTHKEY)
    m.connect()
    tasks, results = m.get_task_queue(), m.get_result_queue()  # type: ignore[attr-defined]
    while True:
        seconds = tasks.get()
        if seconds is None:
            return
        results.put(work(seconds))


def bench_managers(jobs: list[float], slots: int, warm_seconds: float) -> float:
    """Makespan of ``jobs`` on ``slots`` processes pulling one task at a time."""
    ctx = mp.get_context("spawn")
    manager = _MasterManager(address=("127.0.0.1", 0), authkey=AUTHKEY, ctx=ctx)
    manager.start()
    try:
        # Registered proxies: attributes a type checker cannot see.
        tasks, results = manager.get_task_queue(), manager.get_result_queue()  # type: ignore[attr-defined]
        procs = [ctx.Process(target=_managers_worker, args=(manager.address,)) for _ in range(slots)]
        for p in procs:
            p.start()
        for _ in range(slots * 4):  # warm-up: every process connected
            tasks.put(warm_seconds)
        for _ in range(slots * 4):
            results.get(timeout=60)
        start = time.perf_counter()
        for seconds in jobs:
            tasks.put(seconds)
        total = sum(results.get(timeout=600) for _ in jobs)
        elapsed = time.perf_counter() - start
        assert abs(total - sum(jobs)) < 1e-6
        for _ in procs:
            tasks.put(None)
        for p in procs:
            p.join(30)
            if p.is_alive():
                p.kill()
    finally:
        manager.shutdown()
    return elapsed


# -- conveyor -------------------------------------------------------------------
def bench_conveyor(jobs: list[float], workers: int, concurrency: int, warm_seconds: float) -> float:
    """Makespan of ``jobs`` submitted at once to ``workers`` conveyor workers.

    The warm-up runs short tasks of ``warm_seconds`` (the short tasks' duration): a warm-up of
    no-op tasks would teach the process pool to batch (below 1 ms it hands a child up
    to 64 tasks at once), a different regime from the one measured here.
    """
    from conveyor.cluster import LocalCluster

    with tempfile.TemporaryDirectory() as tmp, \
            LocalCluster(workers=workers, concurrency=concurrency, modules=["fair_dispatch"], cwd=HERE,
                         data=f"{tmp}/data", log_dir=f"{tmp}/logs") as cluster:
        cluster.wait_for_workers(workers)
        with cluster.client() as client:
            # Warm-up: every slot has run a short task of the workload.
            client.gather(client.submit_many("fair_dispatch:work",
                                             [(warm_seconds,)] * (4 * workers * concurrency)))
            start = time.perf_counter()
            futures = client.submit_many("fair_dispatch:work", [(s,) for s in jobs])
            total = sum(client.gather(futures, timeout=600))
            elapsed = time.perf_counter() - start
            assert abs(total - sum(jobs)) < 1e-6
    return elapsed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--short", type=int, default=200, help="how many short tasks")
    parser.add_argument("--short-seconds", type=float, default=0.002)
    parser.add_argument("--long", type=int, default=8, help="how many long tasks")
    parser.add_argument("--long-seconds", type=float, default=1.0)
    args = parser.parse_args(argv)

    jobs = workload(args.short, args.long, args.short_seconds, args.long_seconds)
    slots = args.workers * args.concurrency
    ideal = max(sum(jobs) / slots, max(jobs))
    print(f"{args.short} tasks of {args.short_seconds * 1000:g} ms around {args.long} of "
          f"{args.long_seconds:g} s; {args.workers} workers x {args.concurrency} slots; "
          f"python {sys.version.split()[0]}", flush=True)
    peer = bench_managers(jobs, slots, args.short_seconds)
    ours = bench_conveyor(jobs, args.workers, args.concurrency, args.short_seconds)
    print(f"\n{'':28}{'makespan s':>11}{'/ ideal':>9}")
    for name, value in (("ideal", ideal), ("multiprocessing.managers", peer), ("conveyor", ours)):
        print(f"{name:28}{value:>11.3f}{value / ideal:>9.2f}")
    print(f"\nconveyor / managers: {ours / peer:.2f} (lower is better; 1.00 matches one-at-a-time pulling)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
