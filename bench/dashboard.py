"""What the dashboard costs the master: overview load time at depth, and ten open tabs.

In one run:

- a master holding ``--depth`` tasks (1,000,000 by default) in a queue no
  worker serves, submitted fire-and-forget;
- ``conveyor dashboard`` on it (a separate process, polling every 2 s);
- overview load: the median time of ``GET /`` and of the live partial the
  page refreshes (``/partials/overview``), and of ``client.status()`` itself;
- throughput: 2 workers run ``--tasks`` no-op tasks with no tab open, then
  with ten "tabs" (processes that load the page and its chart history, then
  fetch the live partial every 2 s, as the page does), alternating,
  ``--rounds`` times each;
- the peer: the multiprocessing.managers pattern's throughput on the same
  tasks in the same run (bench/throughput.py's), for scale.

    python bench/dashboard.py                       # 1,000,000 tasks stored
    python bench/dashboard.py --depth 100000 --tasks 10000
"""

from __future__ import annotations

import argparse
import multiprocessing
import re
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from throughput import bench_managers

from conveyor.cluster import LocalCluster

BATCH = 1_000
TABS = 10
POLL = 2.0
_LISTENING = re.compile(r"(http://\S+)")


def _get(url: str) -> float:
    t0 = time.perf_counter()
    with urllib.request.urlopen(url, timeout=30) as reply:
        reply.read()
    return time.perf_counter() - t0


def _median_ms(fn, n: int = 10) -> float:
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1000


def _tab(url: str, stop: Any, fetches: Any) -> None:
    """One browser tab on the overview: loads the page and its history, then polls the partial."""
    _get(url + "/")
    _get(url + "/api/history")
    while not stop.wait(POLL):
        _get(url + "/partials/overview")
        with fetches.get_lock():
            fetches.value += 1


class _Tabs:
    """``n`` tabs, in a process of their own (as browsers are): the client measuring
    throughput shares no interpreter with them."""

    def __init__(self, url: str, n: int) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.stop, self.fetches = ctx.Event(), ctx.Value("i", 0)
        self.procs = [ctx.Process(target=_tab, args=(url, self.stop, self.fetches), daemon=True)
                      for _ in range(n)]

    @property
    def requests(self) -> int:
        return int(self.fetches.value)

    def __enter__(self) -> _Tabs:
        for p in self.procs:
            p.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for p in self.procs:
            p.join(30)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--depth", type=int, default=1_000_000, help="tasks stored (default 1,000,000)")
    parser.add_argument("--tasks", type=int, default=20_000, help="no-op tasks per throughput run")
    parser.add_argument("--rounds", type=int, default=3, help="alternating runs without and with tabs")
    args = parser.parse_args(argv)
    print(f"{args.depth:,} tasks stored; {args.tasks:,} no-op tasks per run; {TABS} tabs polling every "
          f"{POLL:g}s; python {sys.version.split()[0]}", flush=True)
    peer = bench_managers(args.tasks, 10, 2)["tasks_per_s"]

    with tempfile.TemporaryDirectory() as tmp, \
            LocalCluster(workers=2, data=f"{tmp}/data", log_dir=f"{tmp}/logs") as cluster:
        cluster.wait_for_workers(2)
        with cluster.client() as client:
            t0 = time.perf_counter()
            for start in range(0, args.depth, BATCH):
                client.submit_many("conveyor.demo:square", [(i,) for i in range(start, start + BATCH)],
                                   queue="backlog", result=False)
            print(f"  stored {args.depth:,} tasks in {time.perf_counter() - t0:.1f}s", flush=True)
            status_ms = _median_ms(client.status)

            log = Path(tmp) / "dashboard.log"
            with open(log, "wb") as err:
                dash = subprocess.Popen([sys.executable, "-m", "conveyor", "dashboard", "--connect",
                                         cluster.address, "--bind", "127.0.0.1:0", "--interval", str(POLL)],
                                        stdout=subprocess.PIPE, stderr=err, env=cluster.env())
            try:
                line = dash.stdout.readline().decode() if dash.stdout else ""
                match = _LISTENING.search(line)
                if not match:
                    raise RuntimeError(f"dashboard did not start: {line!r} {log.read_text()[-2000:]}")
                url = match.group(1).rstrip("/")
                page_ms = _median_ms(lambda: _get(url + "/"))
                partial_ms = _median_ms(lambda: _get(url + "/partials/overview"))

                def run() -> float:
                    start = time.perf_counter()
                    total = sum(client.map("conveyor.demo:square", range(args.tasks)))
                    assert total == sum(i * i for i in range(args.tasks))
                    return args.tasks / (time.perf_counter() - start)

                run()  # warm-up: workers' pools and credit settle
                alone, tabs = [], []
                for _ in range(args.rounds):
                    alone.append(run())
                    with _Tabs(url, TABS) as t:
                        time.sleep(POLL + 1)  # every tab has started and loaded its page
                        tabs.append(run())
                    print(f"  round: alone {alone[-1]:,.0f}/s, with tabs {tabs[-1]:,.0f}/s "
                          f"({t.requests} partial fetches)", flush=True)
            finally:
                dash.terminate()
                dash.wait(10)

    a, w = statistics.mean(alone), statistics.mean(tabs)
    print(f"\noverview at {args.depth:,} tasks: GET / {page_ms:.1f} ms, live partial {partial_ms:.1f} ms "
          f"(target < 300 ms); client.status() {status_ms:.2f} ms")
    print(f"throughput: alone {a:,.0f} tasks/s, with {TABS} tabs {w:,.0f} tasks/s: "
          f"cost {100 * (1 - w / a):+.1f}% (target < 5%)")
    print(f"managers pattern on the same tasks: {peer:,.0f} tasks/s; conveyor with tabs {w / peer:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
