"""Retries: backoff, retry_on, conveyor.Retry, dead tasks, retry and purge.

Run it from anywhere::

    python examples/retries.py

- ``retries=N`` runs a failed task up to N more times, after
  ``retry_backoff`` seconds doubled each time (capped at
  ``retry_backoff_max``, each delay scaled by a random factor in [0.5, 1]
  unless ``retry_jitter=False``);
- ``retry_on=(ConnectionError,)`` retries only those exceptions (and their
  subclasses); anything else fails at once;
- a task that raises ``conveyor.Retry(delay=...)`` asks for another attempt;
- a task whose retries are spent is *dead*: ``client.retry`` (or
  ``conveyor retry TASK_ID``) sends it back to its queue with a fresh budget,
  ``client.purge`` (``conveyor purge``) deletes dead tasks;
- ``client.inspect`` (``conveyor inspect TASK_ID``) shows every attempt's error.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import example_tasks as tasks

import conveyor
from conveyor.cluster import LocalCluster

HERE = Path(__file__).resolve().parent


def main() -> None:
    with (tempfile.TemporaryDirectory() as tmpdir,
          LocalCluster(workers=2, concurrency=2, modules=["example_tasks"], cwd=HERE) as cluster):
        tmp = Path(tmpdir)  # the tasks count their attempts in files here
        cluster.wait_for_workers()
        with cluster.client() as client:
            # 1. A flaky call: fails twice with ConnectionError, then succeeds.
            fut = client.submit(tasks.fetch, str(tmp / "fetch"), 2,
                                retries=3, retry_backoff=0.1, retry_on=(ConnectionError,))
            print(f"fetch: {fut.result(timeout=60)}")
            info = client.inspect(fut.task_id)
            print(f"fetch: state {info['state']}, {info['attempts']} attempts")
            for i, err in enumerate(info["errors"], 1):
                print(f"  attempt {i} failed: {err['type']}: {err['message']}")

            # 2. retry_on: a ValueError is not a ConnectionError, so no retry.
            fut = client.submit(tasks.parse, "abc", retries=3, retry_on=(ConnectionError,))
            try:
                fut.result(timeout=60)
            except conveyor.TaskError as exc:
                info = client.inspect(fut.task_id)
                print(f"parse: {exc.type_name} after {info['attempts']} attempt, state {info['state']}")

            # 3. The task itself asks for another attempt (3 at most unless retries= says).
            fut = client.submit(tasks.poll_report, str(tmp / "poll"))
            print(f"poll_report: {fut.result(timeout=60)}")

            # 4. Retries spent: the task is dead. Fix the cause, then retry it.
            data = tmp / "rows.csv"
            fut = client.submit(tasks.import_file, str(data), retries=1, retry_backoff=0.1)
            try:
                fut.result(timeout=60)
            except conveyor.TaskError as exc:
                print(f"import_file: {exc.type_name}: {exc.message}")
            dead = client.tasks(state="dead")  # conveyor tasks --state dead
            print(f"dead tasks: {[(t['name'], t['attempts']) for t in dead]}")

            data.write_text("1\n2\n3\n")  # the fix
            print(f"client.retry: {client.retry([fut.task_id])}")  # conveyor retry TASK_ID
            print(f"import_file after retry: {client.result(fut.task_id, timeout=60)}")

            # 5. A dead task nobody will fix: purge deletes it (and its record).
            fut = client.submit(tasks.parse, "xyz", retries=1, retry_backoff=0.05)
            try:
                fut.result(timeout=60)
            except conveyor.TaskError:
                pass
            print(f"state of parse('xyz'): {client.inspect(fut.task_id)['state']}")
            print(f"client.purge() deleted {client.purge()} dead task(s)")  # conveyor purge
            try:
                client.inspect(fut.task_id)
            except conveyor.NotFound:
                print("inspect after purge: NotFound")


if __name__ == "__main__":
    main()
