"""``/metrics``: the master's numbers in Prometheus form, from the dashboard's latest poll.

A scrape never calls the master: the collector reads the status document the
monitor fetched at most one interval ago. The counters and histograms are the
master's own (``status()["metrics"]``, kept in its memory since it started: a
master restart is a counter reset to Prometheus), and the store's own counters
(``status()["stored"]``: tasks by state now, outcomes ever; persisted, so they
survive restarts, as ``conveyor_stored_tasks`` and ``conveyor_task_outcomes_total``). Labels are bounded: queue
names, task names (the master counts names beyond its 500th as "other"),
outcomes and states, never task ids.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from ..records import STATES
from .monitor import Monitor

#: status()["metrics"] histogram -> (metric name, help)
HISTOGRAMS = {
    "task_run_seconds": ("conveyor_task_run_seconds",
                         "Seconds from a task's push to a worker to its attempt's outcome"),
    "task_wait_seconds": ("conveyor_task_wait_seconds",
                          "Seconds a task waited from when it was due (created, or its delay over) "
                          "to its push to a worker"),
    "store_commit_seconds": ("conveyor_store_commit_seconds",
                             "Seconds of each store transaction, from its start to its commit"),
}


def histogram(name: str, text: str, master: str, snap: dict[str, Any]) -> HistogramMetricFamily:
    """A histogram family from a master histogram snapshot (cumulative buckets, None = +Inf)."""
    h = HistogramMetricFamily(name, text, labels=["master"])
    buckets = [("+Inf" if le is None else repr(float(le)), float(n)) for le, n in snap.get("buckets", [])]
    h.add_metric([master], buckets, float(snap.get("sum", 0.0)))
    return h


class StatusCollector(Collector):
    """Turns the monitor's latest status document into metric families at scrape time."""

    def __init__(self, monitor: Monitor, master: str) -> None:
        self.monitor = monitor
        self.master = master

    def collect(self) -> Iterator[Metric]:
        """The metric families of one scrape."""
        m, label = self.monitor, [self.master]
        up = GaugeMetricFamily("conveyor_up", "1 if the dashboard's latest poll reached the master",
                               labels=["master"])
        up.add_metric(label, 1.0 if m.up else 0.0)
        yield up
        st = m.status
        if st is None or not m.up:
            return
        counters = st.get("counters", {})
        metrics = st.get("metrics") or {}
        tasks = CounterMetricFamily("conveyor_tasks", "Tasks by queue, task name and outcome (submitted, "
                                    "succeeded, failed, retried, dead, cancelled) since the master started",
                                    labels=["master", "queue", "task", "outcome"])
        for queue, task, outcome, n in metrics.get("tasks", []):
            tasks.add_metric([self.master, queue, task, outcome], float(n))
        yield tasks
        for value, name, text in (
            (metrics.get("duplicates", 0), "conveyor_duplicate_results", "Results dropped as duplicates of a stored one"),
            (metrics.get("lease_expiries", 0), "conveyor_lease_expiries", "Leases that expired (their holder went silent)"),
            (counters.get("stale", 0), "conveyor_stale_reports", "Reports carrying an outdated fencing token"),
            (counters.get("rate_limited", 0), "conveyor_rate_limited", "Leases deferred by a task's rate limit"),
        ):
            c = CounterMetricFamily(name, text, labels=["master"])
            c.add_metric(label, float(value))
            yield c
        for key, (name, text) in HISTOGRAMS.items():
            if key in metrics:
                yield histogram(name, text, self.master, metrics[key])
        stored = st.get("stored")
        if stored is not None:
            yield from self._stored(stored)
        depth = GaugeMetricFamily("conveyor_queue_tasks", "Tasks stored, by queue and state",
                                  labels=["master", "queue", "state"])
        for queue, counts in st.get("queues", {}).items():
            for state in STATES:
                depth.add_metric([self.master, queue, state], float(counts.get(state, 0)))
        yield depth
        workers = st.get("workers", [])
        for name, text, value in (
            ("conveyor_workers", "Workers connected", len(workers)),
            ("conveyor_clients", "Clients connected (the dashboard is one)", st.get("clients", 0)),
            ("conveyor_inflight_tasks", "Tasks leased to connected workers",
             sum(int(w.get("inflight", 0)) for w in workers)),
            ("conveyor_worker_slots", "Concurrency of connected workers, summed",
             sum(int(w.get("concurrency") or 0) for w in workers)),
            ("conveyor_master_uptime_seconds", "Seconds since the master started", st.get("uptime", 0)),
            ("conveyor_schedules", "Periodic schedules", len(st.get("schedules") or [])),
        ):
            g = GaugeMetricFamily(name, text, labels=["master"])
            g.add_metric(label, float(value))
            yield g


    def _stored(self, stored: dict[str, Any]) -> Iterator[Metric]:
        """The store's own counters (persisted: they survive a master restart)."""
        now = GaugeMetricFamily("conveyor_stored_tasks", "Tasks stored now, by queue, task name and state "
                                "(from the store's counters)", labels=["master", "queue", "task", "state"])
        for queue, task, state, n in stored.get("tasks", []):
            now.add_metric([self.master, queue, task or "", state], float(n))
        yield now
        ever = CounterMetricFamily("conveyor_task_outcomes", "Task outcomes ever stored (succeeded, failed, "
                                   "dead, cancelled, retried), by queue and task name; kept by the store, so "
                                   "they survive master restarts", labels=["master", "queue", "task", "outcome"])
        for queue, task, outcome, n in stored.get("outcomes", []):
            ever.add_metric([self.master, queue, task or "", outcome], float(n))
        yield ever


def build_registry(monitor: Monitor, master: str) -> tuple[CollectorRegistry, Histogram]:
    """A registry with the status collector and the dashboard's own poll-time histogram."""
    registry = CollectorRegistry(auto_describe=True)
    registry.register(StatusCollector(monitor, master))
    poll = Histogram("conveyor_dashboard_status_poll_seconds",
                     "Round trip of the dashboard's status call to the master",
                     buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5), registry=registry)
    return registry, poll
