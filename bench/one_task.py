"""One task at a time: submit + result round trip, conveyor against multiprocessing.managers.

Issue #9 item 6's first target, in one run on this machine: the p50 (and p99)
of one no-op task (``n -> n*n``) submitted and waited for, with nothing else
running, against the ``multiprocessing.managers`` tutorial pattern (a task
queue and a result queue served by a ``BaseManager``, one worker process
looping on get/put). Conveyor runs with its default settings (SQLite store,
process pool, one worker) under ``--sync normal`` and ``--sync full``.

    python bench/one_task.py                    # both sync modes
    python bench/one_task.py --samples 2000 --sync normal
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import statistics
import sys
import tempfile
import time

# The managers tutorial pattern, as bench/throughput.py runs it (this script's folder is on sys.path).
from throughput import AUTHKEY, _managers_worker, _MasterManager

from conveyor.cluster import LocalCluster


def _summary(lat: list[float]) -> dict[str, float]:
    lat.sort()
    return {"p50_ms": statistics.median(lat) * 1000, "p99_ms": lat[min(len(lat) - 1, int(len(lat) * 0.99))] * 1000}


def bench_managers(samples: int) -> dict[str, float]:
    ctx = mp.get_context("spawn")
    manager = _MasterManager(address=("127.0.0.1", 0), authkey=AUTHKEY, ctx=ctx)
    manager.start()
    try:
        tasks, results = manager.get_task_queue(), manager.get_result_queue()
        worker = ctx.Process(target=_managers_worker, args=(manager.address,))
        worker.start()
        for i in range(50):  # warm-up
            tasks.put(i)
            results.get(timeout=60)
        lat = []
        for i in range(samples):
            t0 = time.perf_counter()
            tasks.put(i)
            results.get(timeout=60)
            lat.append(time.perf_counter() - t0)
        tasks.put(None)
        worker.join(30)
        if worker.is_alive():
            worker.kill()
    finally:
        manager.shutdown()
    return _summary(lat)


def bench_conveyor(samples: int, sync: str) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp, \
            LocalCluster(workers=1, data=f"{tmp}/data", sync=sync) as cluster:
        cluster.wait_for_workers(1)
        with cluster.client() as client:
            for i in range(50):  # warm-up: the pool child started, the store's pages cached
                assert client.submit("conveyor.demo:square", i).result(60) == i * i
            lat = []
            for i in range(samples):
                t0 = time.perf_counter()
                client.submit("conveyor.demo:square", i).result(60)
                lat.append(time.perf_counter() - t0)
    return _summary(lat)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=1000)
    parser.add_argument("--sync", choices=["normal", "full", "both"], default="both")
    args = parser.parse_args(argv)
    print(f"one task at a time, {args.samples} samples; python {sys.version.split()[0]}", flush=True)
    peer = bench_managers(args.samples)
    rows = [("multiprocessing.managers", peer, None)]
    for mode, target in (("normal", 2.0), ("full", 3.0)):
        if args.sync in (mode, "both"):
            rows.append((f"conveyor (sqlite, sync {mode})", bench_conveyor(args.samples, mode), target))
    print(f"\n{'':32}{'p50 ms':>9}{'p99 ms':>9}{'p50 x':>8}{'target':>8}")
    for name, r, target in rows:
        print(f"{name:32}{r['p50_ms']:>9.3f}{r['p99_ms']:>9.3f}{r['p50_ms'] / peer['p50_ms']:>8.2f}"
              f"{'' if target is None else f'<= {target:g}':>8}")
    print("\np50 x: one task's submit+result p50 / the managers pattern's, same run (lower is better)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
