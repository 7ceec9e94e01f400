"""Tasks whose module registers middleware, for test_middleware.py.

Each recording hook appends one line to the file named by the task's ``mw-log``
header (O_APPEND: whole lines, whichever process writes them). ``Broken`` raises in
every hook, between the two recorders, to show a failing hook changes nothing.
"""

from __future__ import annotations

import os
from typing import Any

import conveyor


def _write(path: str | None, line: str) -> None:
    if not path:
        return
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (line + "\n").encode())
    finally:
        os.close(fd)


class Recorder(conveyor.Middleware):
    def __init__(self, tag: str) -> None:
        self.tag = tag

    def before_submit(self, call: conveyor.SubmitCall) -> None:
        call.headers[f"seen-by-{self.tag}"] = call.name

    def before_task(self, task: conveyor.TaskCall) -> None:
        task.state[self.tag] = os.getpid()
        _write(task.headers.get("mw-log"), f"{self.tag} before {task.name} {task.attempt}")

    def after_task(self, task: conveyor.TaskCall, value: Any) -> None:
        same = task.state.get(self.tag) == os.getpid()
        _write(task.headers.get("mw-log"), f"{self.tag} after {task.name} {value!r} same-process={same}")

    def on_failure(self, task: conveyor.TaskCall, exc: BaseException) -> None:
        _write(task.headers.get("mw-log"), f"{self.tag} failure {task.name} {type(exc).__name__}: {exc}")

    def on_retry(self, task: conveyor.TaskCall, error: dict, delay: float) -> None:
        _write(task.headers.get("mw-log"), f"{self.tag} retry {task.name} {error['type']} delay>=0={delay >= 0}")


class Broken(conveyor.Middleware):
    def before_submit(self, call: conveyor.SubmitCall) -> None:
        raise RuntimeError("broken before_submit")

    def before_task(self, task: conveyor.TaskCall) -> None:
        raise RuntimeError("broken before_task")

    def after_task(self, task: conveyor.TaskCall, value: Any) -> None:
        raise RuntimeError("broken after_task")

    def on_failure(self, task: conveyor.TaskCall, exc: BaseException) -> None:
        raise RuntimeError("broken on_failure")

    def on_retry(self, task: conveyor.TaskCall, error: dict, delay: float) -> None:
        raise RuntimeError("broken on_retry")


conveyor.add_middleware(Recorder("A"))
conveyor.add_middleware(Broken())
conveyor.add_middleware(Recorder("B"))


def add(a: int, b: int) -> int:
    return a + b


def headers() -> dict[str, str]:
    """The headers this task was submitted with."""
    return conveyor.current_task().headers


def fail(message: str) -> None:
    raise ValueError(message)
