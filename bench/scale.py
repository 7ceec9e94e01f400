"""Cost as the queue grows: conveyor against the multiprocessing.managers pattern at depth.

For each depth (10k, 100k, 500k, 1M tasks queued by default), in one run:

- submit rate: 10,000 tasks into an empty store, then 10,000 more once
  ``depth`` tasks are queued (``submit_many`` in batches of 1,000, futures held);
- master RSS with ``depth`` tasks queued, and the client's memory per held future;
- ``client.status()`` time (median of 5);
- restart: ``kill -9`` of the master, start again on the same data, time until
  a new client's ``status()`` answers;
- drain rate: 2 workers start; the time from the first result to the 10,000th;
- the same again fire-and-forget (``submit_many(..., result=False)``, row "forget"):
  no futures held, no subscriptions on the master; drain from its completed counter.

The peer is the tutorial's manager: a ``queue.Queue`` served by a
``BaseManager`` (in memory, lost on exit), the same depth put into it, the
same 2-worker drain of 10,000 items, and its ``qsize()`` for ``status()``.

    python bench/scale.py                          # 10k, 100k, 500k, 1M
    python bench/scale.py --depths 10000,100000
"""

from __future__ import annotations

import argparse
import gc
import multiprocessing as mp
import os
import queue
import statistics
import sys
import tempfile
import time
from multiprocessing.managers import BaseManager

from conveyor.cluster import LocalCluster

AUTHKEY = b"bench-scale"
STEP = 10_000
BATCH = 1_000
TASK = "conveyor.demo:square"

_tasks: queue.Queue = queue.Queue()
_results: queue.Queue = queue.Queue()


def _fill(n: int) -> int:
    """Put ``n`` items from inside the server: only the depth matters, not how it got there."""
    for i in range(n):
        _tasks.put(i)
    return _tasks.qsize()


class _Server(BaseManager):
    pass


class _Peer(BaseManager):
    pass


def _get_tasks() -> queue.Queue:
    return _tasks


def _get_results() -> queue.Queue:
    return _results


_Server.register("tasks", callable=_get_tasks)
_Server.register("results", callable=_get_results)
_Server.register("fill", callable=_fill)
_Server.register("pid", callable=os.getpid)
for _name in ("tasks", "results", "fill", "pid"):
    _Peer.register(_name)


def _peer_worker(address: tuple[str, int]) -> None:
    m = _Peer(address=address, authkey=AUTHKEY)
    m.connect()
    tasks, results = m.tasks(), m.results()
    while True:
        n = tasks.get()
        results.put(n * n)


def _rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _median_ms(fn, n: int = 5) -> float:
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1000


def bench_managers(depth: int) -> dict[str, float]:
    ctx = mp.get_context("spawn")
    server = _Server(address=("127.0.0.1", 0), authkey=AUTHKEY, ctx=ctx)
    server.start()
    procs = []
    try:
        peer = _Peer(address=server.address, authkey=AUTHKEY)
        peer.connect()
        tasks, results = peer.tasks(), peer.results()
        t0 = time.perf_counter()
        for i in range(STEP):
            tasks.put(i)
        empty_rate = STEP / (time.perf_counter() - t0)
        peer.fill(max(0, depth - STEP))
        t0 = time.perf_counter()
        for i in range(STEP):
            tasks.put(i)
        deep_rate = STEP / (time.perf_counter() - t0)
        rss = _rss_mb(peer.pid()._getvalue())
        status_ms = _median_ms(tasks.qsize)
        procs = [ctx.Process(target=_peer_worker, args=(server.address,), daemon=True) for _ in range(2)]
        for p in procs:
            p.start()
        results.get(timeout=120)
        t0 = time.perf_counter()
        for _ in range(STEP - 1):
            results.get(timeout=120)
        drain = (STEP - 1) / (time.perf_counter() - t0)
    finally:
        for p in procs:
            p.kill()
            p.join(5)
        server.shutdown()
    return {"rss": rss, "status_ms": status_ms, "submit_empty": empty_rate, "submit_deep": deep_rate,
            "drain": drain, "restart_s": float("nan"), "client_b": float("nan")}


def _completed(client) -> int:
    return int(client.status()["counters"].get("completed", 0))


def bench_conveyor(depth: int, forget: bool = False) -> dict[str, float]:
    """``forget``: fire-and-forget submits (``result=False``): no futures, no subscriptions."""
    with tempfile.TemporaryDirectory() as tmp, \
            LocalCluster(workers=0, data=f"{tmp}/data", log_dir=f"{tmp}/logs") as cluster:
        with cluster.client() as client:
            gc.collect()
            base_rss = _rss_mb(os.getpid())
            futures: list = []

            def submit(n: int) -> float:
                t0 = time.perf_counter()
                for start in range(0, n, BATCH):
                    futures.extend(client.submit_many(TASK, [(i,) for i in range(start, start + BATCH)],
                                                      result=not forget))
                return n / (time.perf_counter() - t0)

            empty_rate = submit(STEP)
            submit(max(0, depth - STEP))
            deep_rate = submit(STEP)
            gc.collect()
            client_b = (_rss_mb(os.getpid()) - base_rss) * 1024 * 1024 / len(futures)
            assert cluster.master is not None
            rss = _rss_mb(cluster.master.pid)
            status_ms = _median_ms(client.status)

            cluster.kill_master()
            t0 = time.perf_counter()
            cluster.start_master()
            with cluster.client() as probe:
                probe.status()
            restart_s = time.perf_counter() - t0

            for _ in range(2):
                cluster.start_worker()
            if forget:  # no futures: the master's completed counter, polled
                with cluster.client() as probe:
                    while _completed(probe) == 0:
                        time.sleep(0.01)
                    t0 = time.perf_counter()
                    first = _completed(probe)
                    while (done := _completed(probe)) < first + STEP - 1:
                        time.sleep(0.01)
                    drain = (done - first) / (time.perf_counter() - t0)
            else:
                futures[0].result(timeout=600)  # timed from the first result: worker start-up is not drain
                t0 = time.perf_counter()
                for f in futures[1:STEP]:
                    f.result(timeout=600)
                drain = (STEP - 1) / (time.perf_counter() - t0)
            for w in cluster.workers:  # a cold stop: nobody waits for a million tasks
                cluster._kill(w)
    return {"rss": rss, "status_ms": status_ms, "submit_empty": empty_rate, "submit_deep": deep_rate,
            "drain": drain, "restart_s": restart_s, "client_b": client_b}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--depths", default="10000,100000,500000,1000000",
                        help="comma-separated numbers of queued tasks")
    args = parser.parse_args(argv)
    depths = [int(d) for d in args.depths.split(",")]
    print(f"depths {', '.join(f'{d:,}' for d in depths)}; batches of {BATCH}; python {sys.version.split()[0]}",
          flush=True)
    rows = []
    for depth in depths:
        for name, fn in (("managers", bench_managers), ("conveyor", bench_conveyor),
                         ("forget", lambda d: bench_conveyor(d, forget=True))):
            r = fn(depth)
            rows.append((depth, name, r))
            print(f"  measured {name} at {depth:,}", flush=True)

    print(f"\n{'depth':>10} {'':9}{'RSS MB':>8}{'status ms':>10}{'submit/s':>10}{'at depth':>10}"
          f"{'ratio':>7}{'drain/s':>9}{'restart s':>10}{'B/future':>9}")
    drain_10k = {name: r["drain"] for d, name, r in rows if d == depths[0]}
    for depth, name, r in rows:
        print(f"{depth:>10,} {name:9}{r['rss']:>8.0f}{r['status_ms']:>10.2f}{r['submit_empty']:>10,.0f}"
              f"{r['submit_deep']:>10,.0f}{r['submit_deep'] / r['submit_empty']:>7.2f}{r['drain']:>9,.0f}"
              f"{r['restart_s']:>10.2f}{r['client_b']:>9.0f}")
    print(f"\ndrain at depth / drain at {depths[0]:,}:")
    for depth, name, r in rows:
        print(f"  {name:9}{depth:>10,}: {r['drain'] / drain_10k[name]:.2f}")
    conveyor_deep = [r for d, n, r in rows if n == "conveyor" and d == depths[-1]][0]
    peer_deep = [r for d, n, r in rows if n == "managers" and d == depths[-1]][0]
    print(f"\nat {depths[-1]:,}: conveyor/managers RSS {conveyor_deep['rss'] / peer_deep['rss']:.2f}x, "
          f"status {conveyor_deep['status_ms'] / peer_deep['status_ms']:.1f}x, "
          f"drain {conveyor_deep['drain'] / peer_deep['drain']:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
