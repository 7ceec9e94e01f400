"""The web dashboard and /metrics, started next to a local cluster.

Run it from anywhere::

    python examples/dashboard.py          # a short tour, printed, then everything stops
    python examples/dashboard.py --serve  # keep it running: open the printed URL, Ctrl+C to stop

It starts a local master and two workers (real processes on 127.0.0.1),
submits some squares and one failing task, then starts ``conveyor dashboard``
as its own process on a free loopback port. Against your own master::

    CONVEYOR_AUTHKEY=... conveyor dashboard --connect 127.0.0.1:7700 --bind 127.0.0.1:7780
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import example_tasks as tasks

import conveyor
from conveyor.cluster import LocalCluster

HERE = Path(__file__).resolve().parent


def get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as resp:
        return resp.read().decode()


def metric(text: str, name: str, **labels: str) -> float | None:
    """One sample's value from a Prometheus text page (None if absent)."""
    from prometheus_client.parser import text_string_to_metric_families

    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return s.value
    return None


def main(serve: bool) -> None:
    with LocalCluster(workers=2, concurrency=2, modules=["example_tasks"], cwd=HERE) as cluster:
        cluster.wait_for_workers()
        with cluster.client() as client:
            print("squares:", client.gather(client.submit_many(tasks.square, [(i,) for i in range(20)])))
            bad = client.submit(tasks.fail, "<b>not bold</b>")
            try:
                bad.result(30)
            except conveyor.TaskError as exc:
                print(f"failing task {bad.task_id}: {exc.type_name}")
        # The dashboard is a separate process: it reads the master over the client protocol.
        cmd = [sys.executable, "-m", "conveyor", "dashboard", "--connect", cluster.address,
               "--bind", "127.0.0.1:0", "--interval", "0.5"]
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, env=cluster.env())
        try:
            line = proc.stdout.readline().decode() if proc.stdout else ""
            url = re.search(r"(http://\S+)", line).group(1)
            print(f"dashboard at {url}")
            deadline = time.monotonic() + 30
            page = get(url + "/metrics")
            while metric(page, "conveyor_queue_tasks", queue="default", state="succeeded") != 20:
                if time.monotonic() > deadline:
                    raise SystemExit("the dashboard did not catch up")
                time.sleep(0.2)
                page = get(url + "/metrics")
            print("metrics: succeeded =", int(metric(page, "conveyor_queue_tasks", queue="default",
                                                     state="succeeded")),
                  "failed =", int(metric(page, "conveyor_queue_tasks", queue="default", state="failed")),
                  "workers =", int(metric(page, "conveyor_workers")))
            detail = get(f"{url}/tasks/{bad.task_id}")
            print("task page shows the error message as text:", "&lt;b&gt;not bold&lt;/b&gt;" in detail)
            if serve:
                print("serving; press Ctrl+C to stop")
                try:
                    proc.wait()
                except KeyboardInterrupt:
                    pass
        finally:
            proc.terminate()
            proc.wait(10)


if __name__ == "__main__":
    main(serve="--serve" in sys.argv[1:])
