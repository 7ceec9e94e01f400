"""Every example script runs, from a foreign directory, and prints what it promises.

Each example starts its own LocalCluster (a real master and workers on
127.0.0.1) and stops it. ``examples/managers/`` and ``examples/periodic.py``
are tested elsewhere (test_managers.py, test_periodic.py).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest

from .conftest import ROOT

EXAMPLES = ROOT / "examples"
NOT_HERE = {"periodic.py", "example_tasks.py", "middleware_tasks.py", "lifecycle_tasks.py"}  # tested elsewhere / not a script

# script -> lines (substrings, or compiled patterns) its stdout must contain
EXPECTED: dict[str, list] = {
    "quickstart.py": ["square(7) = 49", "map(square, range(10)) = [0, 1, 4, 9",
                      "executor.map = [1, 4, 9]", "as_completed yielded results",
                      "divide(1, 0) failed: ZeroDivisionError: division by zero"],
    "retries.py": ["fetch: state succeeded, 3 attempts",
                   "attempt 2 failed: ConnectionError: service unavailable (attempt 2)",
                   "parse: ValueError after 1 attempt, state failed",
                   "poll_report: report ready on attempt 2",
                   "dead tasks: [('example_tasks:import_file', 2)]",
                   "import_file after retry: imported 3 rows",
                   "client.purge() deleted 1 dead task(s)", "inspect after purge: NotFound"],
    "time_limits.py": [re.compile(r"hang\(60\) with timeout=1\.0: conveyor\.errors\.TaskTimeout after \d+\.\ds"),
                       "square(6) = 36", "soft limit: saved", "ValueError: timeout must be"],
    "priorities_and_delays.py": ["ran in this order: d c e a b f",
                                 re.compile(r"high:3,low:1, first 20 tasks: \d+ from high, \d+ from low"),
                                 "state right after submit is 'delayed'",
                                 re.compile(r"countdown=1\.0: started (1\.\d\d|[2-9]\.\d\d)s after submit"),
                                 "naive eta -> ValueError: eta must be timezone-aware"],
    "cancellation.py": ["queued.cancel() -> True, state cancelled", "delayed.cancelled() -> True",
                        "queued.result() raised CancelledError", "running.cancel() -> True",
                        "running task stopped: CancelledError", "square(9) = 81",
                        "cancel a finished task -> False"],
    "dependencies.py": ["chain: published 32 to #stats", "gather(group) = [1, 4, 9, 16]",
                        "chord: total(squares, extra=100) = 130",
                        "middle: ValueError: middle step broke",
                        "last: conveyor.errors.DependencyFailed: dependency",
                        "ValueError: unknown dependency"],
    "idempotency.py": ["same task id: True", "submitted again after it finished: 'charged order-42 19.99'",
                       "ledger lines: ['order-42 19.99', 'order-43 5.0']",
                       "key and task_id -> ValueError"],
    "progress.py": ["progress: 1/5 image 1/5", "resize_images(5): 5 images",
                    "future.progress = {'done': 5, 'total': 5, 'message': 'image 5/5'}",
                    "inspect()['progress'] = {'done': 5", "map with progress=True: 40 results"],
    "rate_limits.py": [re.compile(r"observed: 15 tasks in [\d.]+s = a burst of 5, then (?P<rate>[\d.]+) tasks/s"),
                       re.compile(r"tasks run by each of the [12] workers"),
                       "rate_limit='fast' -> ValueError"],
    "queues.py": ["got again by the next consumer: 'first'", "put_many: 20 items",
                  "join() -> True: every item acknowledged", "consumed 20 items",
                  "get_many(10) with ack='get': [{'event': 0}", "events left: 0, join() -> True",
                  "third put_nowait raised queue.Full"],
    "async_tasks.py": [re.compile(r"100 fetches of 1 s each on one worker: 100 results, sum 4950, in [\d.]+s"),
                       "fetch(60 s) with timeout=0.5: conveyor.errors.TaskTimeout",
                       re.compile(r"crawl\(100\) with soft_timeout=1\.0: stopped at the soft limit after \d+ of 100"),
                       "plain def checksum('conveyor') = 885"],
    "asyncio_client.py": ["await submit(square, 7) -> 49", "gather of 8 slow squares: [0, 1, 4",
                          "async map: [0, 1, 4, 9", "with countdown=0.5: 9",
                          "TaskError: ZeroDivisionError", "status: 2 workers"],
    "error_reporting.py": ["charged order-1", "order-2 failed: ValueError: cannot charge -5 for order-2",
                           "fetched on attempt 2",
                           "middleware_tasks:charge failed: ValueError: cannot charge -5 for order-2",
                           "middleware_tasks:flaky failed: ConnectionError: service unavailable (attempt 1)",
                           "middleware_tasks:flaky will retry after ConnectionError"],
    "logging_context.py": ["req-7f3a: charged order-1", "no request: charged order-3",
                           re.compile(r"INFO \[request req-7f3a task \w{8}\] charging order-1: 10\.00"),
                           re.compile(r"INFO \[request req-91bc task \w{8}\] charging order-2: 10\.00"),
                           re.compile(r"INFO \[request - task \w{8}\] charging order-3: 1\.00")],
    "task_logs.py": ["resize('cat.png') = 'cat.png.thumb.png'",
                     "broken('notes.txt') failed: ValueError: notes.txt is not an image",
                     "INFO    conveyor.worker.tasks  Task lifecycle_tasks:resize[ID] started",
                     "INFO    lifecycle_tasks        resizing cat.png",
                     re.compile(r"Task lifecycle_tasks:resize\[ID\] succeeded in \d+\.\d{3}s: 'cat\.png\.thumb\.png'"),
                     "WARNING lifecycle_tasks        cannot read notes.txt",
                     re.compile(r"Task lifecycle_tasks:broken\[ID\] failed in \d+\.\d{3}s: ValueError: notes\.txt")],
    "lifecycle.py": [re.compile(r"--max-tasks-per-child 3: 12 tasks ran in \d+ children, at most 3 each"),
                     "each child opened its connection once (on_child_start): True",
                     "the child that took 200 MB finished its task (True) and was replaced (True)",
                     re.compile(r"--autoscale 1,4: 8 one-second tasks ran in [2-4] children"),
                     "back to one child once idle: True"],
    "dashboard.py": ["metrics: succeeded = 20 failed = 1 workers = 2",
                     "task page shows the error message as text: True"],
}


def run_example(name: str, tmp_path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONVEYOR_")}
    # From a foreign directory: the scripts must find their tasks by themselves.
    return subprocess.run([sys.executable, str(EXAMPLES / name)], capture_output=True, text=True,
                          timeout=100, cwd=tmp_path, env=env)


@pytest.fixture(scope="module")
def example_runs(tmp_path_factory):
    """Every example script started at module start, a few at a time (each waits on its tasks
    much of the time, so runs overlap well), each in its own folder: name -> its run (a future)."""
    with ThreadPoolExecutor(max_workers=3) as pool:
        runs = {name: pool.submit(run_example, name, tmp_path_factory.mktemp(name.removesuffix(".py")))
                for name in sorted(EXPECTED)}
        yield runs
        for run in runs.values():  # every script ends (or times out) before the module does
            run.exception()


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_example_runs(name, example_runs):
    proc = example_runs[name].result()
    report = f"--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr[-4000:]}"
    assert proc.returncode == 0, report
    for want in EXPECTED[name]:
        if isinstance(want, re.Pattern):
            match = want.search(proc.stdout)
            assert match, f"no line matching {want.pattern!r}\n{report}"
            if "rate" in want.groupindex:  # the observed rate stays within the limit
                assert float(match["rate"]) <= 5.5, report
        else:
            assert want in proc.stdout, f"missing {want!r}\n{report}"


def test_every_example_is_tested_and_listed():
    scripts = {p.name for p in EXAMPLES.glob("*.py")} - NOT_HERE
    assert scripts == set(EXPECTED)
    index = (EXAMPLES / "README.md").read_text()
    for name in scripts:
        assert f"python examples/{name}" in index, name
