"""Fixtures of the fault suite: the integration suite's real-process clusters."""

from tests.integration.conftest import make_cluster, pytest_runtest_makereport  # noqa: F401
