"""The web dashboard and ``/metrics``: a separate process over the public client API.

``conveyor dashboard --connect HOST:PORT`` runs :func:`conveyor.http.app.serve`.
It reads the master only through :class:`conveyor.Client` (status, tasks,
inspect, retry, cancel, purge, schedules), polls ``status`` once per interval
for every browser tab and Prometheus scrape, and keeps an hour of samples
itself, so the master pays the same whether one tab is open or ten.
"""
