"""Session-wide rules for the whole suite.

The suite leaves nothing in the temporary folder (issue 13). Every temporary file
the suite's processes make goes to one private folder for this session (``TMPDIR``
is set before any test runs, and child processes inherit it); at the end of the
session anything still in that folder is a leftover, and the session fails naming
it. A private folder, rather than a before/after look at the shared ``/tmp``, tells
this session's leftovers apart from those of other suites running at the same time.
pytest's own ``tmp_path`` folders stay where pytest always puts them.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator

import pytest

pytest_plugins = ("pytester",)  # tests/unit/test_tmp_check.py runs whole sessions to test the check

# pytest's own tmp_path base (pytest-of-USER): pytest cleans it up itself.
PYTEST_OWN = ("pytest-of-",)


def snapshot(folder: str | os.PathLike[str]) -> set[str]:
    """The names of the entries in ``folder`` now (empty if it does not exist)."""
    try:
        return set(os.listdir(folder))
    except FileNotFoundError:
        return set()


def leftovers(before: Iterable[str], after: Iterable[str]) -> list[str]:
    """Entries present ``after`` that were not there ``before``, except pytest's own, sorted."""
    seen = set(before)
    return sorted(name for name in after if name not in seen and not name.startswith(PYTEST_OWN))


def pytest_configure(config: pytest.Config) -> None:
    """Point this session's temporary files at a private folder before anything makes one."""
    # The system's folder, also in the processes pytest-xdist starts: they inherit the
    # controller's TMPDIR, and a private folder nested in another makes paths too long
    # for the Unix sockets some programs keep there (chromium's).
    real = os.environ.setdefault(_REAL_TMP, tempfile.gettempdir())
    # Keep pytest's tmp_path where it would be without us (it reads this before TMPDIR).
    os.environ.setdefault("PYTEST_DEBUG_TEMPROOT", real)
    private = tempfile.mkdtemp(prefix="conveyor-tests-", dir=real)
    config.stash[_PRIVATE_TMP] = private
    os.environ["TMPDIR"] = private
    tempfile.tempdir = None  # tempfile caches its folder: make it read TMPDIR again


def pytest_unconfigure(config: pytest.Config) -> None:
    """Remove the private folder, whatever was left in it (the session already failed if anything was)."""
    private = config.stash.get(_PRIVATE_TMP, None)
    if private is not None:
        shutil.rmtree(private, ignore_errors=True)


_PRIVATE_TMP = pytest.StashKey[str]()
_REAL_TMP = "CONVEYOR_TESTS_SYSTEM_TMPDIR"


@pytest.fixture(scope="session", autouse=True)
def nothing_left_in_tmp(request: pytest.FixtureRequest) -> Iterator[None]:
    """Fail the session if the tests left anything in the temporary folder."""
    folder = request.config.stash.get(_PRIVATE_TMP, None) or tempfile.gettempdir()
    before = snapshot(folder)
    yield
    left = leftovers(before, snapshot(folder))
    if left:
        pytest.fail(f"the tests left {len(left)} entr{'y' if len(left) == 1 else 'ies'} in {folder}: "
                    + ", ".join(left[:20]), pytrace=False)

