"""Tasks and middleware for examples/error_reporting.py and examples/logging_context.py.

The middleware is registered when this module is imported: by the worker (in its
own process and in every pool child, which import the task modules) and by the
example scripts (the client side). Where the reports and log lines go is set by
the scripts in the environment, which the workers inherit.
"""

from __future__ import annotations

import contextvars
import json
import logging
import os
from typing import Any

import conveyor

# -- error reporting: every failure, with what an error tracker wants to know --------


class ErrorReporter(conveyor.Middleware):
    """Records each failed attempt (and each retry decision) as one JSON line, where a
    real deployment would call its error tracker (Sentry's capture_exception, say)."""

    def on_failure(self, task: conveyor.TaskCall, exc: BaseException) -> None:
        self._report({"task": task.name, "id": task.id, "attempt": task.attempt,
                      "type": type(exc).__name__, "message": str(exc)})

    def on_retry(self, task: conveyor.TaskCall, error: dict[str, Any], delay: float) -> None:
        self._report({"task": task.name, "id": task.id, "retry_in": round(delay, 2),
                      "type": error["type"]})

    @staticmethod
    def _report(record: dict[str, Any]) -> None:
        path = os.environ.get("EXAMPLE_ERROR_REPORTS")
        if path:
            with open(path, "a") as f:  # one short line per write: whole lines across processes
                f.write(json.dumps(record) + "\n")


# -- logging context: the submitter's request id in the task's log lines ------------

#: The request the client is serving (a web framework would set this per request).
current_request: contextvars.ContextVar[str | None] = contextvars.ContextVar("current_request", default=None)


class RequestContext(conveyor.Middleware):
    """Carries the client's request id to the task as a header, and puts it (with the task
    id) on every log record the task writes."""

    def before_submit(self, call: conveyor.SubmitCall) -> None:
        request = current_request.get()
        if request is not None:
            call.headers["request-id"] = request

    def before_task(self, task: conveyor.TaskCall) -> None:
        task.state["token"] = current_request.set(task.headers.get("request-id", "-"))

    def after_task(self, task: conveyor.TaskCall, value: Any) -> None:
        current_request.reset(task.state["token"])

    def on_failure(self, task: conveyor.TaskCall, exc: BaseException) -> None:
        if "token" in task.state:
            current_request.reset(task.state["token"])


class _RequestFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = current_request.get() or "-"
        try:
            record.task_id = conveyor.current_task().id[-8:]
        except RuntimeError:  # not inside a task
            record.task_id = "-"
        return True


log = logging.getLogger("shop")
if os.environ.get("EXAMPLE_TASK_LOG"):
    _handler = logging.FileHandler(os.environ["EXAMPLE_TASK_LOG"])
    _handler.addFilter(_RequestFilter())
    _handler.setFormatter(logging.Formatter("%(levelname)s [request %(request_id)s task %(task_id)s] %(message)s"))
    log.addHandler(_handler)
    log.setLevel(logging.INFO)

conveyor.add_middleware(ErrorReporter())
conveyor.add_middleware(RequestContext())


# -- the tasks ----------------------------------------------------------------------


def charge(order: str, amount: float) -> str:
    log.info("charging %s: %.2f", order, amount)
    if amount <= 0:
        raise ValueError(f"cannot charge {amount} for {order}")
    return f"charged {order}"


def flaky(path: str, failures: int) -> str:
    """Fails ``failures`` times (counted in a file), then succeeds."""
    n = int(open(path).read()) if os.path.exists(path) else 0
    with open(path, "w") as f:
        f.write(str(n + 1))
    if n < failures:
        raise ConnectionError(f"service unavailable (attempt {n + 1})")
    return f"fetched on attempt {n + 1}"
