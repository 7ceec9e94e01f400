"""Tasks and lifecycle hooks for the task-log and worker-lifecycle tests.

The hooks append one line each to the file named by ``CONVEYOR_TEST_HOOK_LOG``
(when set): ``child-start PID``, ``child-exit PID``, ``worker-start PID``,
``worker-stop PID``.
"""

from __future__ import annotations

import logging
import os
import sys
import time

import conveyor

log = logging.getLogger("ltasks")
_kept: list[bytearray] = []  # memory a task allocated, held by its child


def _note(event: str) -> None:
    path = os.environ.get("CONVEYOR_TEST_HOOK_LOG")
    if path:
        with open(path, "a") as f:
            f.write(f"{event} {os.getpid()}\n")


@conveyor.on_child_start
def child_started() -> None:
    _note("child-start")


@conveyor.on_child_exit
def child_exiting() -> None:
    _note("child-exit")


@conveyor.on_worker_start
def worker_started() -> None:
    _note("worker-start")


@conveyor.on_worker_stop
def worker_stopping() -> None:
    _note("worker-stop")


@conveyor.task
def pid() -> int:
    return os.getpid()


@conveyor.task
def allocate(mb: int) -> int:
    """Hold ``mb`` MB of written (resident) memory in this child; return its pid."""
    _kept.append(bytearray(b"\x01") * (mb * 1024 * 1024))
    return os.getpid()


@conveyor.task
def chatty(x: int) -> int:
    log.warning("hello from chatty %s", x)
    print(f"printed {x}")
    print(f"to stderr {x}", file=sys.stderr)
    return x


@conveyor.task
def chatty_fail(x: int) -> None:
    log.warning("about to fail %s", x)
    raise ValueError(f"bad {x}")


@conveyor.task
def hold(folder: str) -> int:
    """Say it started (a file named after this child's pid in ``folder``), then wait until
    ``folder/release`` exists; return the pid."""
    me = os.getpid()
    open(os.path.join(folder, f"started-{me}"), "w").close()
    release = os.path.join(folder, "release")
    deadline = time.monotonic() + 60  # a bound, not a timing assertion
    while not os.path.exists(release) and time.monotonic() < deadline:
        time.sleep(0.01)
    return me


@conveyor.task
def add(a: int, b: int) -> int:
    return a + b


@conveyor.task
def fail(message: str) -> None:
    raise ValueError(message)


@conveyor.task
def crash() -> None:
    """Take the child down with it."""
    os._exit(3)
