"""``/metrics``: the master's numbers in Prometheus form, from the dashboard's latest poll.

A scrape never calls the master: the collector reads the status document the
monitor fetched at most one interval ago. Labels are bounded: queue names and
task states, never task ids. What the master's status does not carry yet
(per-queue and per-task-name outcome counters, run-time / queue-wait / commit
-time histograms, lease expiries) is not invented here; see the README.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from ..records import STATES
from .monitor import Monitor

# master counter -> outcome label of conveyor_tasks_total
OUTCOMES = {"submitted": "submitted", "completed": "completed", "retried": "retried",
            "dead": "dead", "cancelled": "cancelled"}


class StatusCollector(Collector):
    """Turns the monitor's latest status document into metric families at scrape time."""

    def __init__(self, monitor: Monitor, master: str) -> None:
        self.monitor = monitor
        self.master = master

    def collect(self) -> Iterator:
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
        tasks = CounterMetricFamily("conveyor_tasks", "Tasks by outcome since the master started, "
                                    "over every queue", labels=["master", "outcome"])
        for key, outcome in OUTCOMES.items():
            tasks.add_metric([self.master, outcome], float(counters.get(key, 0)))
        yield tasks
        for key, name, text in (
            ("duplicates", "conveyor_duplicate_results", "Results dropped as duplicates of a stored one"),
            ("stale", "conveyor_stale_reports", "Reports carrying an outdated fencing token"),
            ("rate_limited", "conveyor_rate_limited", "Leases deferred by a task's rate limit"),
        ):
            c = CounterMetricFamily(name, text, labels=["master"])
            c.add_metric(label, float(counters.get(key, 0)))
            yield c
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


def build_registry(monitor: Monitor, master: str) -> tuple[CollectorRegistry, Histogram]:
    """A registry with the status collector and the dashboard's own poll-time histogram."""
    registry = CollectorRegistry(auto_describe=True)
    registry.register(StatusCollector(monitor, master))
    poll = Histogram("conveyor_dashboard_status_poll_seconds",
                     "Round trip of the dashboard's status call to the master",
                     buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5), registry=registry)
    return registry, poll
