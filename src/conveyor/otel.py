"""OpenTelemetry tracing for conveyor tasks (install the ``conveyor[otel]`` extra).

Register :class:`TracingMiddleware` in the submitting program and in the task
modules::

    import conveyor
    from conveyor.otel import TracingMiddleware

    conveyor.add_middleware(TracingMiddleware())

On submit it injects the current trace context into the task's headers (W3C
``traceparent``/``tracestate``, or whatever propagator is configured globally);
where the task runs it extracts that context and runs the task inside a span
that is a child of the span that submitted it, ended when the task returns or
fails (a failure records the exception and sets the span's status to error).
Spans go to the tracer provider given, or the global one: configure exporters
as in any OpenTelemetry program, in the task module for the worker side.
"""

from __future__ import annotations

from typing import Any

try:
    from opentelemetry import context as otel_context
    from opentelemetry import propagate, trace
    from opentelemetry.trace import SpanKind, Status, StatusCode
except ImportError as exc:  # pragma: no cover - depends on the extra being installed
    raise ImportError("conveyor.otel needs OpenTelemetry: pip install 'conveyor[otel]'") from exc

from .middleware import Middleware, SubmitCall, TaskCall

__all__ = ["TracingMiddleware"]

_STATE = "conveyor.otel"  # this middleware's key in TaskCall.state


class TracingMiddleware(Middleware):
    """Carries trace context from submit to task and runs each task in a span of its own.

    ``tracer_provider``: where task spans go (default: the global provider, read when a
    span starts, so a provider set after this middleware was made is used).
    """

    def __init__(self, tracer_provider: trace.TracerProvider | None = None) -> None:
        self._provider = tracer_provider

    def _tracer(self) -> trace.Tracer:
        return trace.get_tracer("conveyor", tracer_provider=self._provider)

    def before_submit(self, call: SubmitCall) -> None:
        """Put the submitter's trace context in the task's headers."""
        carrier: dict[str, str] = {}
        propagate.inject(carrier)
        call.headers.update(carrier)

    def before_task(self, task: TaskCall) -> None:
        """Start the task's span as a child of the submitter's, and make it current."""
        parent = propagate.extract(task.headers)
        span = self._tracer().start_span(
            f"run {task.name}", context=parent, kind=SpanKind.CONSUMER,
            attributes={"messaging.system": "conveyor", "messaging.message.id": task.id,
                        "conveyor.task.name": task.name, "conveyor.task.attempt": task.attempt})
        token = otel_context.attach(trace.set_span_in_context(span, parent))
        task.state[_STATE] = (span, token)

    def after_task(self, task: TaskCall, value: Any) -> None:
        """End the span as a success."""
        self._end(task, None)

    def on_failure(self, task: TaskCall, exc: BaseException) -> None:
        """End the span as an error, with the exception recorded."""
        self._end(task, exc)

    def _end(self, task: TaskCall, exc: BaseException | None) -> None:
        held = task.state.pop(_STATE, None)
        if held is None:
            return  # before_task failed or never ran
        span, token = held
        try:
            if exc is None:
                span.set_status(Status(StatusCode.OK))
            else:
                span.record_exception(exc)
                span.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"))
        finally:
            span.end()
            otel_context.detach(token)
