"""Throughput and latency of conveyor against the multiprocessing.managers tutorial pattern.

Both run in this one process's run, on the same machine, on the same work:

- throughput: N no-op tasks (``n -> n*n``) end to end with 2 worker processes;
- latency: one task at a time, submit to result, p50 and p99.

The managers peer is the tutorial: a BaseManager serving a task queue and a
result queue (``queue.Queue``), 2 worker processes looping on get/put. It
keeps nothing on disk; conveyor keeps everything in its SQLite store.

    python bench/throughput.py                 # default settings and --sync full
    python bench/throughput.py --tasks 5000 --sync normal
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import queue
import statistics
import sys
import tempfile
import time
from multiprocessing.managers import BaseManager

from conveyor.cluster import LocalCluster

AUTHKEY = b"bench"


# -- the managers tutorial pattern --------------------------------------------
_task_queue: queue.Queue = queue.Queue()
_result_queue: queue.Queue = queue.Queue()


def _get_task_queue() -> queue.Queue:
    return _task_queue


def _get_result_queue() -> queue.Queue:
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
    tasks, results = m.get_task_queue(), m.get_result_queue()
    while True:
        n = tasks.get()
        if n is None:
            return
        results.put(n * n)


def bench_managers(n_tasks: int, samples: int, workers: int) -> dict[str, float]:
    ctx = mp.get_context("spawn")
    manager = _MasterManager(address=("127.0.0.1", 0), authkey=AUTHKEY, ctx=ctx)
    manager.start()
    try:
        tasks, results = manager.get_task_queue(), manager.get_result_queue()
        procs = [ctx.Process(target=_managers_worker, args=(manager.address,)) for _ in range(workers)]
        for p in procs:
            p.start()
        # warm-up: both workers connected and running
        for i in range(20):
            tasks.put(i)
        for _ in range(20):
            results.get(timeout=60)
        start = time.perf_counter()
        for i in range(n_tasks):
            tasks.put(i)
        total = 0
        for _ in range(n_tasks):
            total += results.get(timeout=120)
        elapsed = time.perf_counter() - start
        assert total == sum(i * i for i in range(n_tasks))
        lat = []
        for i in range(samples):
            t0 = time.perf_counter()
            tasks.put(i)
            results.get(timeout=60)
            lat.append(time.perf_counter() - t0)
        for _ in procs:
            tasks.put(None)
        for p in procs:
            p.join(30)
            if p.is_alive():
                p.kill()
    finally:
        manager.shutdown()
    return _summary(n_tasks, elapsed, lat)


# -- conveyor -------------------------------------------------------------------
def bench_conveyor(n_tasks: int, samples: int, workers: int, sync: str) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp, \
            LocalCluster(workers=workers, data=f"{tmp}/data", sync=sync) as cluster:
        cluster.wait_for_workers(workers)
        with cluster.client() as client:
            assert list(client.map("conveyor.demo:square", range(200))) == [i * i for i in range(200)]
            start = time.perf_counter()
            total = sum(client.map("conveyor.demo:square", range(n_tasks)))
            elapsed = time.perf_counter() - start
            assert total == sum(i * i for i in range(n_tasks))
            lat = []
            for i in range(samples):
                t0 = time.perf_counter()
                client.submit("conveyor.demo:square", i).result(60)
                lat.append(time.perf_counter() - t0)
    return _summary(n_tasks, elapsed, lat)


def _summary(n: int, elapsed: float, lat: list[float]) -> dict[str, float]:
    lat.sort()
    return {
        "tasks_per_s": n / elapsed,
        "p50_ms": statistics.median(lat) * 1000,
        "p99_ms": lat[min(len(lat) - 1, int(len(lat) * 0.99))] * 1000,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, default=20_000)
    parser.add_argument("--samples", type=int, default=500, help="latency samples")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--sync", choices=["normal", "full", "both"], default="both")
    args = parser.parse_args(argv)

    print(f"{args.tasks} no-op tasks, {args.workers} workers, {args.samples} latency samples; "
          f"python {sys.version.split()[0]}", flush=True)
    peer = bench_managers(args.tasks, args.samples, args.workers)
    rows = [("multiprocessing.managers", peer)]
    modes = ["normal", "full"] if args.sync == "both" else [args.sync]
    for mode in modes:
        rows.append((f"conveyor (sqlite, sync {mode})", bench_conveyor(args.tasks, args.samples, args.workers, mode)))

    print(f"\n{'':32}{'tasks/s':>10}{'p50 ms':>9}{'p99 ms':>9}{'thru x':>9}{'p50 x':>8}")
    for name, r in rows:
        print(f"{name:32}{r['tasks_per_s']:>10,.0f}{r['p50_ms']:>9.3f}{r['p99_ms']:>9.3f}"
              f"{r['tasks_per_s'] / peer['tasks_per_s']:>9.2f}{r['p50_ms'] / peer['p50_ms']:>8.2f}")
    print("\nthru x: throughput / managers' (higher is better); p50 x: latency / managers' (lower is better)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
