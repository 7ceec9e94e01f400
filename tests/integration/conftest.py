"""Fixtures that start real masters and workers on 127.0.0.1 and always stop them."""

from __future__ import annotations

from pathlib import Path

import pytest

from conveyor.cluster import LocalCluster

ROOT = Path(__file__).resolve().parents[2]
TASKS = "tests.integration.itasks"


@pytest.fixture
def make_cluster(tmp_path, request):
    """Build LocalClusters running tests.integration.itasks; all are stopped after the test."""
    made: list[LocalCluster] = []

    def make(**kwargs) -> LocalCluster:
        kwargs.setdefault("modules", [TASKS])
        kwargs.setdefault("concurrency", 2)
        kwargs.setdefault("cwd", ROOT)
        kwargs.setdefault("log_dir", tmp_path / f"logs{len(made)}")
        kwargs.setdefault("data", tmp_path / f"data{len(made)}")
        cluster = LocalCluster(**kwargs)
        made.append(cluster)
        return cluster

    yield make
    failed = getattr(request.node, "rep_call", None) is not None and request.node.rep_call.failed
    for cluster in made:
        cluster.stop(grace=5)
        if failed:
            print(cluster.logs())


@pytest.fixture
def cluster(make_cluster):
    """A master and two workers (concurrency 2 each), started and connected."""
    c = make_cluster(workers=2).start()
    c.wait_for_workers(2)
    return c


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    setattr(item, "rep_" + rep.when, rep)
