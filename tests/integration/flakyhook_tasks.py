"""A task module whose child-start hook fails while the file named by
``CONVEYOR_TEST_HOOK_FAIL`` exists (a database that went away for a while)."""

from __future__ import annotations

import os

import conveyor


@conveyor.on_child_start
def connect_database() -> None:
    flag = os.environ.get("CONVEYOR_TEST_HOOK_FAIL", "")
    if flag and os.path.exists(flag):
        raise ConnectionError("database is down")


@conveyor.task
def pid() -> int:
    return os.getpid()
