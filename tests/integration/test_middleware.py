"""Middleware with real processes: hooks run in the order registered, around the task
where it runs and on the client before submit; a hook that raises is logged and changes
nothing else."""

from __future__ import annotations

from pathlib import Path

import pytest

import conveyor
from conveyor.cluster import LocalCluster

from ..waiting import wait_until
from .conftest import ROOT

MW = "tests.integration.mw_tasks"


def _lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


@pytest.fixture(scope="module")
def mw_cluster(tmp_path_factory):
    """One master, one worker (concurrency 1) serving the middleware tasks, for the module."""
    tmp = tmp_path_factory.mktemp("mw")
    with LocalCluster(workers=1, concurrency=1, modules=[MW], cwd=ROOT, log_dir=tmp / "logs",
                      data=tmp / "data") as cluster:
        cluster.wait_for_workers(1)
        yield cluster


@pytest.fixture
def client_middleware():
    """The test process registers the task module's middleware too (the client side)."""
    before = conveyor.middleware.middlewares()

    def restore() -> None:
        for m in conveyor.middleware.middlewares():
            if not any(m is b for b in before):
                conveyor.remove_middleware(m)

    from tests.integration import mw_tasks  # its first import registers a set of its own

    restore()
    for m in (mw_tasks.Recorder("A"), mw_tasks.Broken(), mw_tasks.Recorder("B")):
        conveyor.add_middleware(m)
    yield
    restore()


def test_worker_hooks_run_in_order_around_a_task_and_a_failing_hook_changes_nothing(mw_cluster, tmp_path):
    log = tmp_path / "hooks.log"
    with mw_cluster.client() as c:
        assert c.submit(f"{MW}:add", 2, 3, headers={"mw-log": str(log)}).result(timeout=60) == 5
    assert wait_until(lambda: len(_lines(log)) == 4)
    attempt = _lines(log)[0].split()[-1]
    assert _lines(log) == [f"A before {MW}:add {attempt}", f"B before {MW}:add {attempt}",
                           f"A after {MW}:add 5 same-process=True", f"B after {MW}:add 5 same-process=True"]
    logs = mw_cluster.logs()
    assert "middleware Broken.before_task failed (ignored)" in logs
    assert "RuntimeError: broken before_task" in logs
    assert "middleware Broken.after_task failed (ignored)" in logs


def test_a_failure_runs_on_failure_then_on_retry_in_order_and_the_retry_runs_the_hooks_again(mw_cluster, tmp_path):
    log = tmp_path / "hooks.log"
    with mw_cluster.client() as c:
        fut = c.submit(f"{MW}:fail", "nope", headers={"mw-log": str(log)}, retries=1, retry_backoff=0.01)
        with pytest.raises(conveyor.TaskError, match="nope"):
            fut.result(timeout=60)
    assert wait_until(lambda: len(_lines(log)) == 10)
    got = [" ".join(line.split()[:2]) for line in _lines(log)]
    assert got == ["A before", "B before", "A failure", "B failure", "A retry", "B retry",
                   "A before", "B before", "A failure", "B failure"]
    assert f"A failure {MW}:fail ValueError: nope" in _lines(log)
    assert f"A retry {MW}:fail ValueError delay>=0=True" in _lines(log)
    assert "middleware Broken.on_retry failed (ignored)" in mw_cluster.logs()


def test_client_hooks_add_headers_before_submit_and_a_failing_one_does_not_stop_it(
        mw_cluster, client_middleware, caplog):
    with mw_cluster.client() as c:
        got = c.submit(f"{MW}:headers", headers={"request-id": "42"}).result(timeout=60)
    assert got == {"request-id": "42", "seen-by-A": f"{MW}:headers", "seen-by-B": f"{MW}:headers"}
    assert "middleware Broken.before_submit failed (ignored)" in caplog.text


def test_headers_are_checked_at_submit(mw_cluster):
    with mw_cluster.client() as c, pytest.raises(ValueError, match="headers"):
        c.submit(f"{MW}:add", 1, 2, headers={"n": 1})
