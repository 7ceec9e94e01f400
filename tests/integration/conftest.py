"""Fixtures that start real masters and workers on 127.0.0.1 and always stop them."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
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


@contextmanager
def running_cluster(base: Path, request: pytest.FixtureRequest, **kwargs) -> Iterator[LocalCluster]:
    """A started LocalCluster running tests.integration.itasks under ``base``, stopped on exit.

    Its logs are printed if any test failed while it ran.
    """
    kwargs.setdefault("modules", [TASKS])
    kwargs.setdefault("concurrency", 2)
    c = LocalCluster(cwd=ROOT, log_dir=base / "logs", data=base / "data", **kwargs)
    failed_before = request.session.testsfailed
    try:
        yield c.start()
    finally:
        c.stop(grace=5)
        if request.session.testsfailed > failed_before:
            print(c.logs())


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, request):
    """A master and two workers (concurrency 2 each), started once and shared by a module's tests.

    For tests that stop, kill or reconfigure no process: each isolates itself by its own
    task ids, keys, files and (where it counts tasks) queue names or counts before and
    after, so the tests of a module cannot see each other's work. A test that needs a
    fresh master or other flags uses ``make_cluster``.
    """
    with running_cluster(tmp_path_factory.mktemp("cluster"), request, workers=2) as c:
        c.wait_for_workers(2)
        yield c


@pytest.fixture(scope="module")
def master(tmp_path_factory, request):
    """A master with no workers, shared by a module's tests (each uses its own queue names);
    a test that kills or reconfigures the master starts its own with ``make_cluster``."""
    with running_cluster(tmp_path_factory.mktemp("master"), request, workers=0) as c:
        yield c


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    setattr(item, "rep_" + rep.when, rep)
