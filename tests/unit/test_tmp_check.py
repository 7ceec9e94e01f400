"""The session-wide check that the suite leaves nothing in the temporary folder (tests/conftest.py)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

import tests.conftest
from conveyor.cluster import LocalCluster
from tests.conftest import leftovers, snapshot


def test_a_new_entry_is_a_leftover_and_older_ones_are_not(tmp_path: Path) -> None:
    (tmp_path / "older").mkdir()
    before = snapshot(tmp_path)
    (tmp_path / "conveyor-cluster-abc").mkdir()
    (tmp_path / "conveyor.sock").write_text("")
    assert leftovers(before, snapshot(tmp_path)) == ["conveyor-cluster-abc", "conveyor.sock"]


def test_pytest_own_tmp_path_base_is_not_a_leftover(tmp_path: Path) -> None:
    before = snapshot(tmp_path)
    (tmp_path / "pytest-of-someone").mkdir()
    assert leftovers(before, snapshot(tmp_path)) == []


def test_snapshot_of_a_missing_folder_is_empty(tmp_path: Path) -> None:
    assert snapshot(tmp_path / "missing") == set()


def test_this_session_writes_its_temporary_files_to_a_private_folder() -> None:
    # Child processes inherit TMPDIR, so what they leave is checked too.
    assert Path(tempfile.gettempdir()).name.startswith("conveyor-tests-")
    assert os.environ["TMPDIR"] == tempfile.gettempdir()


def test_local_cluster_removes_the_temporary_folder_it_made() -> None:
    folder = tempfile.gettempdir()
    before = snapshot(folder)
    cluster = LocalCluster(workers=0)  # no data or log_dir given: it makes its own
    assert leftovers(before, snapshot(folder))  # the check sees it while it exists
    cluster.__exit__(None, None, None)  # never started: stopping stops nothing
    assert leftovers(before, snapshot(folder)) == []


LEAVES_A_FILE = """
import os, tempfile

def test_leaves_a_file():
    fd, _ = tempfile.mkstemp(prefix="conveyor-left-")
    os.close(fd)
"""

CLEANS_UP = """
import tempfile

def test_cleans_up():
    with tempfile.TemporaryDirectory(prefix="conveyor-kept-"):
        pass
"""


@pytest.mark.parametrize(("body", "errors"), [(LEAVES_A_FILE, 1), (CLEANS_UP, 0)])
def test_a_session_that_leaves_a_temporary_file_fails_naming_it(pytester: pytest.Pytester, body: str,
                                                                errors: int) -> None:
    pytester.makeconftest(Path(tests.conftest.__file__).read_text())
    pytester.makepyfile(test_session=body)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1, errors=errors)
    if errors:
        result.stdout.fnmatch_lines(["*the tests left 1 entry in *conveyor-tests-*: conveyor-left-*"])
