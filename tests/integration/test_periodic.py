"""Periodic schedules with a real master and workers: the CLI, a master killed
with SIGKILL and restarted, and schedules declared in code by workers."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

import conveyor
from conveyor.schedule import slot_task_id

from ..waiting import wait_for, wait_until
from .conftest import ROOT
from .test_cli import run_many

PTASKS = "tests.integration.ptasks"
DECLARING = "tests.integration.ptasks_periodic"

pytestmark = pytest.mark.timeout(60)


def run(*args, cluster, timeout=30):
    env = dict(os.environ)
    env["CONVEYOR_AUTHKEY"] = cluster.authkey.decode()
    return subprocess.run([sys.executable, "-m", "conveyor", *args, "--connect", cluster.address],
                          capture_output=True, text=True, timeout=timeout, env=env, cwd=ROOT)


def lines(path: Path) -> list[tuple[str, float]]:
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        tid, when = line.split()
        out.append((tid, float(when)))
    return out


def test_cli_interval_schedule_runs_each_slot_once(make_cluster, tmp_path):
    c = make_cluster(workers=1, modules=[PTASKS]).start()
    c.wait_for_workers(1)
    out = tmp_path / "ticks"
    proc = run("schedule", "add", "ticker", f"{PTASKS}:log_slot", str(out), "--every", "1", cluster=c)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("schedule ticker: tests.integration.ptasks:log_slot every 1s, next run ")

    runs = wait_for(lambda: (r := lines(out)) and len(r) >= 4 and r, 10, "4 runs of the schedule")
    ids = [tid for tid, _ in runs]
    assert len(set(ids)) == len(ids)
    with c.client() as client:
        slots = [client.inspect(tid)["options"]["slot"] for tid in ids]
    assert all(float(s).is_integer() for s in slots) and len(set(slots)) == len(slots)
    assert ids == [slot_task_id("ticker", s) for s in slots]
    assert all(when >= slot for (_, when), slot in zip(runs, slots))

    proc = run("schedule", "list", cluster=c)
    assert proc.returncode == 0, proc.stderr
    header, row = proc.stdout.splitlines()
    assert header.split()[:3] == ["NAME", "WHEN", "QUEUE"]
    assert row.split()[:6] == ["ticker", "every", "1s", "default", "run_once", "cli"]
    assert row.endswith(f"{PTASKS}:log_slot {json.dumps([str(out)])}")
    proc = run("schedule", "list", "--json", cluster=c)
    (listed,) = json.loads(proc.stdout)
    assert listed["name"] == "ticker" and listed["every"] == 1.0 and listed["last_slot"] >= max(slots)

    proc = run("schedule", "add", "ticker", f"{PTASKS}:log_slot", "--every", "5", cluster=c)
    assert proc.returncode == 1 and proc.stderr.count("\n") == 1
    assert "a schedule named 'ticker' exists already" in proc.stderr

    proc = run("schedule", "remove", "ticker", cluster=c)
    assert proc.returncode == 0 and proc.stdout.strip() == "removed schedule ticker"
    removed_at = time.time()
    # No slot after the removal is enqueued. A fence schedule on the same scheduler shows when
    # it has passed the ticker's next slot: a slot is enqueued under a fixed id by the tick
    # that reaches it, so by then the ticker's would exist had the removal not taken.
    next_slot = math.floor(removed_at) + 1
    fence = tmp_path / "fence"
    with c.client() as client:
        client.schedule("fence", f"{PTASKS}:log_slot", str(fence), every=0.25)
        wait_for(lambda: any(client.inspect(tid)["options"]["slot"] > next_slot for tid, _ in lines(fence)),
                 10, "the fence schedule to pass the ticker's next slot")
        with pytest.raises(conveyor.NotFound):
            client.inspect(slot_task_id("ticker", next_slot))
        late = [tid for tid, _ in lines(out) if client.inspect(tid)["options"]["slot"] > removed_at]
        assert late == [], "the schedule ran after its removal"
        client.unschedule("fence")
    proc = run("schedule", "remove", "ticker", cluster=c)
    assert proc.returncode == 1
    assert proc.stderr == "conveyor schedule: error: no schedule named 'ticker'\n"
    proc = run("schedule", "list", cluster=c)
    assert proc.returncode == 0 and proc.stdout.strip() == "(no schedules)"


def test_bad_schedules_are_one_line_errors(make_cluster):
    c = make_cluster(workers=0, modules=[PTASKS]).start()
    cases = [
        (["--every", "0"], "every: the interval must be a positive number of seconds"),
        (["--cron", "61 * * * *"], "cron: invalid expression '61 * * * *'"),
        (["--cron", "* * * * *", "--tz", "Nowhere/Town"], "tz: unknown time zone 'Nowhere/Town'"),
        (["--cron", "* * * * *", "--every", "5"], "give exactly one of --cron EXPR or --every SECONDS"),
        ([], "give exactly one of --cron EXPR or --every SECONDS"),
        (["--every", "5", "--missed", "sometimes"], "missed: must be 'run_once' or 'skip'"),
    ]
    procs = run_many(*(["schedule", "add", "bad", f"{PTASKS}:log_slot", *flags, "--connect", c.address]
                       for flags, _ in cases), env={"CONVEYOR_AUTHKEY": c.authkey.decode()})
    for (flags, message), proc in zip(cases, procs):
        assert proc.returncode == 1, (flags, proc.stderr)
        assert proc.stderr.count("\n") == 1 and message in proc.stderr, proc.stderr
    proc = run("schedule", "add", "", f"{PTASKS}:log_slot", "--every", "5", cluster=c)
    assert proc.returncode == 1 and "name:" in proc.stderr
    proc = run("schedule", "list", cluster=c)
    assert proc.stdout.strip() == "(no schedules)"


def test_slot_runs_once_across_master_sigkill_and_restart(make_cluster, tmp_path):
    c = make_cluster(workers=1, modules=[PTASKS]).start()
    c.wait_for_workers(1)
    out = tmp_path / "ticks"
    with c.client() as client:
        client.schedule("restart", f"{PTASKS}:log_slot", str(out), every=2)
    before = wait_for(lambda: lines(out), 6, "a first run")
    with c.client() as client:  # its result is committed: the kill hits between slots
        assert wait_until(lambda: client.inspect(before[-1][0])["state"] == "succeeded")
    c.kill_master(signal.SIGKILL)
    # At least one slot (a multiple of 2 s) passes while the master is down.
    missed_slot = (math.floor(time.time() / 2) + 1) * 2
    assert wait_until(lambda: time.time() > missed_slot, timeout=5)
    c.start_master()
    restarted = time.time()  # listening again: the latest slot missed by now is the one it catches up
    runs = wait_for(lambda: (r := lines(out)) and len(r) >= len(before) + 2 and r, 10,
                    "two runs after the restart")
    counts = Counter(tid for tid, _ in runs)
    assert set(counts.values()) == {1}, f"a slot ran twice: {counts}"
    with c.client() as client:
        slots = sorted(client.inspect(tid)["options"]["slot"] for tid in counts)
    assert all(b - a >= 2 for a, b in zip(slots, slots[1:]))
    # The latest slot missed while the master was down ran once, on start-up.
    missed = max(s for s in slots if s <= restarted)
    assert missed > max(when for _, when in before)


def test_code_declared_schedule_reaches_the_master_with_a_worker(make_cluster, tmp_path, monkeypatch):
    out = tmp_path / "ticks"
    monkeypatch.setenv("CONVEYOR_TEST_TICKS", str(out))
    c = make_cluster(workers=0, modules=[DECLARING]).start()
    with c.client() as client:
        assert client.schedules() == []
        c.start_worker()
        c.wait_for_workers(1)
        (s,) = wait_for(client.schedules, 5, "the declared schedule")
        assert (s["name"], s["task"], s["every"], s["source"], s["missed"]) == (
            "ptasks-tick", f"{DECLARING}:tick", 1.0, "code", "skip")
        runs = wait_for(lambda: (r := lines(out)) and len(r) >= 2 and r, 8, "2 runs of the declared schedule")
        assert len({tid for tid, _ in runs}) == len(runs)
        status = client.status()
        assert [x["name"] for x in status["schedules"]] == ["ptasks-tick"]
        # A second worker with the same declaration changes nothing.
        created = s["created_at"]
        c.start_worker()
        c.wait_for_workers(2)
        time.sleep(0.3)
        (again,) = client.schedules()
        assert again["created_at"] == created
