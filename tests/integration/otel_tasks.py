"""A task module traced with conveyor.otel, for test_otel.py.

The worker side of a real deployment: a tracer provider whose exporter writes each
finished span as one JSON line to the file named by CONVEYOR_TEST_SPANS (the test sets
it in the cluster's environment), and the tracing middleware.
"""

from __future__ import annotations

import os

from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import ConsoleSpanExporter, SimpleSpanProcessor

import conveyor
from conveyor.otel import TracingMiddleware

_provider = TracerProvider()
_spans = os.environ.get("CONVEYOR_TEST_SPANS")
if _spans:
    _provider.add_span_processor(SimpleSpanProcessor(ConsoleSpanExporter(
        out=open(_spans, "a", buffering=1), formatter=lambda span: span.to_json(indent=None) + "\n")))
conveyor.add_middleware(TracingMiddleware(tracer_provider=_provider))


def traced(n: int) -> dict[str, str]:
    """The ids of the span this task runs in, as hex (and its parent's)."""
    span = trace.get_current_span()
    parent = getattr(span, "parent", None)
    return {"trace_id": f"{span.get_span_context().trace_id:032x}",
            "span_id": f"{span.get_span_context().span_id:016x}",
            "parent_id": f"{parent.span_id:016x}" if parent is not None else "",
            "n": str(n)}


def broken() -> None:
    raise KeyError("missing")
