"""A real conveyor store with thousands of tasks, and the damage the fault tests do to it."""

from __future__ import annotations

import os
import random
import subprocess
import sys
from pathlib import Path

from conveyor.cluster import LocalCluster
from tests.integration.conftest import ROOT, TASKS
from tests.waiting import wait_until

SQUARE = f"{TASKS}:square"
DONE, LATER = 2000, 1000  # tasks run before the damage, and tasks still waiting in queue "later"


def build_store(base: Path) -> tuple[Path, dict[str, int]]:
    """A stopped master's data directory holding DONE succeeded tasks (with results) and LATER
    ready ones, made by a real master and worker; and every task id with its argument."""
    cluster = LocalCluster(modules=[TASKS], workers=1, concurrency=2, cwd=ROOT, log_dir=base / "logs",
                           data=base / "data")
    tasks: dict[str, int] = {}
    try:
        cluster.start()
        with cluster.client(connect_timeout=30) as client:
            for tid, n in zip(client.submit_many(SQUARE, [[n] for n in range(DONE)], result=False), range(DONE)):
                tasks[tid] = n
            for tid, n in zip(client.submit_many(SQUARE, [[n] for n in range(DONE, DONE + LATER)],
                                                 queue="later", result=False), range(DONE, DONE + LATER)):
                tasks[tid] = n
            assert wait_until(lambda: client.status()["queues"]["default"]["succeeded"] == DONE, timeout=120)
    finally:
        cluster.stop(grace=10)
    return base / "data", tasks


def damage(data: Path, seed: int = 10) -> None:
    """Write 8 KiB of random bytes into the middle of the store file, where they hit pages in use.

    How the pages lie depends on the run that built the store: 8 KiB at exactly the middle
    may land on free pages, which no check can find wrong. The first of a few places near
    the middle where ``PRAGMA integrity_check`` sees the damage is kept.
    """
    from conveyor.store.check import integrity_check

    path = data / "conveyor.db"
    size = path.stat().st_size
    noise = random.Random(seed).randbytes(8192)
    for where in (size // 2, size * 2 // 5, size * 3 // 5, size // 3, size * 2 // 3):
        with open(path, "r+b") as f:
            f.seek(where)
            before = f.read(len(noise))
            f.seek(where)
            f.write(noise)
        if not integrity_check(path).ok:
            return
        with open(path, "r+b") as f:  # free pages there: put them back, try elsewhere
            f.seek(where)
            f.write(before)
    raise AssertionError(f"no damage near the middle of {path} was seen by integrity_check")


def conveyor(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run the ``conveyor`` command; its exit status and output."""
    return subprocess.run([sys.executable, "-m", "conveyor", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT, env={**os.environ, "CONVEYOR_AUTHKEY": "k"})
