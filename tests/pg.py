"""PostgreSQL for tests: a fresh database per test session, dropped at its end.

The server is the machine's own (``CONVEYOR_TEST_POSTGRES``, default
``postgresql://postgres@127.0.0.1:5432``, trust authentication). Where it
cannot be reached, or psycopg is not installed, tests that need it skip with
the reason, except in CI (``CI=true``), where they fail: a PostgreSQL test
that did not run must not look green there.

Use it by importing the fixture into a test module::

    from tests.pg import postgres_dsn  # noqa: F401 (a fixture)
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from typing import TYPE_CHECKING, NoReturn

import pytest

if TYPE_CHECKING:
    import psycopg

SERVER = os.environ.get("CONVEYOR_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432")


def unavailable(reason: str) -> NoReturn:
    """Skip the test with ``reason``; fail it instead in CI."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"PostgreSQL tests cannot run in CI: {reason}")
    pytest.skip(reason)


def _admin(server: str) -> psycopg.Connection[tuple[object, ...]]:
    """An autocommit connection to ``server``'s postgres database (or skip / fail)."""
    try:
        import psycopg
    except ImportError:
        unavailable("psycopg is not installed (pip install 'conveyor[postgres]')")
    try:
        return psycopg.connect(f"{server}/postgres", autocommit=True, connect_timeout=3)
    except psycopg.Error as exc:
        unavailable(f"no PostgreSQL at {server}: {str(exc).strip().splitlines()[0]}")


def create_database(server: str = SERVER) -> str:
    """Create a database with a random name; its connection URL."""
    name = f"conveyor_test_{uuid.uuid4().hex[:12]}"
    with _admin(server) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    return f"{server}/{name}"


def drop_database(dsn: str, server: str = SERVER) -> None:
    """Drop the database of ``dsn``, closing whatever connections are still on it."""
    name = dsn.rsplit("/", 1)[1]
    with _admin(server) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture(scope="session")
def postgres_dsn() -> Iterator[str]:
    """The URL of a fresh database for this test session (dropped afterwards)."""
    dsn = create_database()
    try:
        yield dsn
    finally:
        drop_database(dsn)


@pytest.fixture
def fresh_postgres_dsn() -> Iterator[str]:
    """The URL of a database of this test's own (dropped afterwards): for tests that
    look at a whole database (its schema, or a master's every task)."""
    dsn = create_database()
    try:
        yield dsn
    finally:
        drop_database(dsn)
