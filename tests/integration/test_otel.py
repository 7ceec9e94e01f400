"""conveyor.otel across real processes: the span a task runs in is a child of the span
that submitted it (same trace, parent = the submitter's span), checked on the spans both
sides exported (the submitter's with the SDK's in-memory exporter, the worker's through
a file)."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("opentelemetry.sdk")

from opentelemetry.sdk.trace import TracerProvider  # noqa: E402
from opentelemetry.sdk.trace.export import SimpleSpanProcessor  # noqa: E402
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter  # noqa: E402

import conveyor  # noqa: E402
from conveyor.otel import TracingMiddleware  # noqa: E402

from ..waiting import wait_until  # noqa: E402

OT = "tests.integration.otel_tasks"


def _exported(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_a_task_span_is_a_child_of_the_span_that_submitted_it(make_cluster, tmp_path, monkeypatch):
    spans_file = tmp_path / "worker-spans.jsonl"
    monkeypatch.setenv("CONVEYOR_TEST_SPANS", str(spans_file))
    cluster = make_cluster(workers=1, modules=[OT]).start()
    cluster.wait_for_workers(1)

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("test")
    middleware = conveyor.add_middleware(TracingMiddleware(tracer_provider=provider))
    try:
        with cluster.client() as c:
            with tracer.start_as_current_span("request"):
                ok = c.submit(f"{OT}:traced", 7)
                bad = c.submit(f"{OT}:broken")
            seen = ok.result(timeout=60)
            with pytest.raises(conveyor.TaskError):
                bad.result(timeout=60)
            untraced = c.submit(f"{OT}:traced", 8).result(timeout=60)  # outside any span
    finally:
        conveyor.remove_middleware(middleware)

    (request,) = exporter.get_finished_spans()
    trace_id, span_id = f"{request.context.trace_id:032x}", f"{request.context.span_id:016x}"
    # What the task saw while it ran: its span is the request's child.
    assert (seen["trace_id"], seen["parent_id"]) == (trace_id, span_id)
    # What the worker exported once the spans ended: both tasks' spans, children of the request.
    assert wait_until(lambda: len(_exported(spans_file)) == 3)
    by_name = {}
    for s in _exported(spans_file):
        by_name.setdefault(s["name"], []).append(s)
    ran_ok = next(s for s in by_name[f"run {OT}:traced"] if s["context"]["span_id"] == "0x" + seen["span_id"])
    (ran_bad,) = by_name[f"run {OT}:broken"]
    for s in (ran_ok, ran_bad):
        assert s["context"]["trace_id"] == "0x" + trace_id
        assert s["parent_id"] == "0x" + span_id
        assert s["kind"] == "SpanKind.CONSUMER"
    assert ran_ok["status"]["status_code"] == "OK"
    assert ran_bad["status"]["status_code"] == "ERROR"
    assert ran_bad["events"][0]["name"] == "exception"
    # A task submitted outside any span starts a trace of its own.
    assert untraced["trace_id"] != trace_id and untraced["parent_id"] == ""
