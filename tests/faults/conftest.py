"""The fault suite reuses the integration fixtures: real masters and workers on 127.0.0.1."""

from tests.integration.conftest import make_cluster, pytest_runtest_makereport  # noqa: F401
