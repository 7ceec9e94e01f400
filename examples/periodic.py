"""Periodic schedules: one declared in code, two added at run time.

Run it (from anywhere; it needs nothing but conveyor installed)::

    python examples/periodic.py

It starts a local master and one worker serving this file's tasks (the
worker imports it as the module ``periodic``), then:

- ``heartbeat`` carries ``@conveyor.periodic(every=2)``: the worker declares
  the schedule to the master when it connects, and it runs every 2 seconds;
- ``tick`` is scheduled at run time, every second, with arguments:
  ``client.schedule("tick", tick, "hello", every=1)``;
- ``report`` is scheduled on a cron expression in a time zone,
  ``client.schedule("report", report, cron="0 9 * * mon-fri", tz="Europe/Paris")``,
  so it only shows up in the list with its next run.

After about six seconds it prints what ran and the schedule table that
``conveyor schedule list`` prints, then stops everything. Against your own
master, the same from the shell::

    conveyor schedule add tick periodic:tick hello --every 1
    conveyor schedule add report periodic:report --cron "0 9 * * mon-fri" --tz Europe/Paris
    conveyor schedule list
    conveyor schedule remove tick

Every slot runs at most once, even if the master is killed and restarted:
each slot's task has a deterministic id and the last slot is stored. A slot
missed while the master was down runs once when it is back
(``missed="run_once"``, the default) or not at all (``missed="skip"``).
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import conveyor

LOG_ENV = "PERIODIC_EXAMPLE_LOG"


def _log(line: str) -> None:
    path = os.environ.get(LOG_ENV)
    if path:
        with open(path, "a") as f:
            now = time.time()
            f.write(f"{time.strftime('%H:%M:%S', time.localtime(now))}.{int(now % 1 * 1000):03d} {line} "
                    f"(task {conveyor.current_task().id[:8]})\n")


@conveyor.periodic(every=2)
def heartbeat():
    _log("heartbeat")


def tick(word):
    _log(f"tick {word}")


def report():
    _log("report")


def main() -> None:
    from conveyor.cli.schedule import format_schedules
    from conveyor.cluster import LocalCluster

    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp) / "runs.log"
        os.environ[LOG_ENV] = str(log)  # the worker inherits it
        with LocalCluster(workers=1, modules=["periodic"], cwd=Path(__file__).resolve().parent,
                          concurrency=2) as cluster:
            cluster.wait_for_workers(1)
            with cluster.client() as client:
                client.schedule("tick", tick, "hello", every=1)
                client.schedule("report", report, cron="0 9 * * mon-fri", tz="Europe/Paris")
                print("running for 6 seconds...")
                time.sleep(6)
                print(log.read_text() if log.exists() else "(nothing ran)")
                print(format_schedules(client.schedules()))
                client.unschedule("tick")


if __name__ == "__main__":
    main()
