"""The middleware registry and its call sites, in process: order, failing hooks, headers."""

from __future__ import annotations

import logging
from typing import Any

import pytest

import conveyor
from conveyor import middleware, serde
from conveyor.client.options import make_task
from conveyor.context import CurrentTask
from conveyor.tasks import Registry
from conveyor.worker.execute import _execute


class Log(conveyor.Middleware):
    def __init__(self, tag: str, seen: list[str]) -> None:
        self.tag, self.seen = tag, seen

    def before_submit(self, call: conveyor.SubmitCall) -> None:
        self.seen.append(f"{self.tag} submit")
        call.headers[self.tag] = "1"

    def before_task(self, task: conveyor.TaskCall) -> None:
        self.seen.append(f"{self.tag} before {task.headers}")

    def after_task(self, task: conveyor.TaskCall, value: Any) -> None:
        self.seen.append(f"{self.tag} after {value!r}")

    def on_failure(self, task: conveyor.TaskCall, exc: BaseException) -> None:
        self.seen.append(f"{self.tag} failure {type(exc).__name__}")


class Raises(conveyor.Middleware):
    def before_submit(self, call: conveyor.SubmitCall) -> None:
        raise RuntimeError("no")

    def before_task(self, task: conveyor.TaskCall) -> None:
        raise RuntimeError("no")

    def after_task(self, task: conveyor.TaskCall, value: Any) -> None:
        raise RuntimeError("no")


@pytest.fixture
def seen():
    out: list[str] = []
    yield out
    for m in middleware.middlewares():
        conveyor.remove_middleware(m)


def _run(name: str, *args: Any, headers: dict[str, str] | None = None) -> tuple[bool, Any]:
    registry = Registry.from_modules(["tests.unit.pool_tasks"])
    payload = serde.encode_call(args, {}, "msgpack")
    ok, out, codec, _, _ = _execute(registry, name, payload, "msgpack", False,
                                 CurrentTask("t1", name, 3, headers=headers or {}))
    return ok, serde.decode(out, codec) if ok else serde.decode_error(out)


def test_hooks_run_in_the_order_registered_and_a_raising_hook_is_logged_and_skipped(seen, caplog):
    conveyor.add_middleware(Log("A", seen))
    conveyor.add_middleware(Raises())
    conveyor.add_middleware(Log("B", seen))
    with caplog.at_level(logging.ERROR, "conveyor.middleware"):
        assert _run("tests.unit.pool_tasks:square", 4, headers={"h": "v"}) == (True, 16)
    assert seen == ["A before {'h': 'v'}", "B before {'h': 'v'}", "A after 16", "B after 16"]
    assert [r.getMessage() for r in caplog.records] == [
        "middleware Raises.before_task failed (ignored)", "middleware Raises.after_task failed (ignored)"]


def test_on_failure_sees_a_task_that_could_not_even_be_called(seen):
    conveyor.add_middleware(Log("A", seen))
    ok, error = _run("tests.unit.pool_tasks:no_such_task")
    assert not ok and error["type"] == "conveyor.errors.UnknownTask"
    assert seen == ["A before {}", "A failure UnknownTask"]


def test_before_submit_headers_travel_in_the_task_options_and_a_raising_hook_leaves_the_submit(seen, caplog):
    conveyor.add_middleware(Log("A", seen))
    conveyor.add_middleware(Raises())
    task = make_task("m:f", (1,), {}, headers=["request-id=7"])
    assert task.options["headers"] == {"request-id": "7", "A": "1"}
    assert seen == ["A submit"]
    assert "middleware Raises.before_submit failed (ignored)" in caplog.text


def test_without_middleware_a_task_carries_only_the_headers_given():
    assert "headers" not in make_task("m:f", (), {}).options
    assert make_task("m:f", (), {}, headers={"a": "b"}).options["headers"] == {"a": "b"}


def test_registering_twice_is_one_registration_and_only_middleware_registers(seen):
    m = conveyor.add_middleware(Log("A", seen))
    conveyor.add_middleware(m)
    assert middleware.middlewares() == [m]
    with pytest.raises(TypeError, match="Middleware instance"):
        conveyor.add_middleware(object())  # type: ignore[arg-type]


def test_otel_middleware_ends_a_span_as_an_error_with_the_exception():
    pytest.importorskip("opentelemetry.sdk")
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    from opentelemetry.trace import StatusCode

    from conveyor.otel import TracingMiddleware

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    m = conveyor.add_middleware(TracingMiddleware(tracer_provider=provider))
    try:
        with provider.get_tracer("t").start_as_current_span("parent") as parent:
            headers = make_task("m:f", (), {}).options["headers"]
        assert "traceparent" in headers
        assert _run("tests.unit.pool_tasks:fail", headers=headers)[0] is False
    finally:
        conveyor.remove_middleware(m)
    child = next(s for s in exporter.get_finished_spans() if s.name == "run tests.unit.pool_tasks:fail")
    assert child.parent is not None and child.parent.span_id == parent.get_span_context().span_id
    assert child.status.status_code is StatusCode.ERROR
    assert child.events[0].name == "exception"
