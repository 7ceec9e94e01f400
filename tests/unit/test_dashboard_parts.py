"""The dashboard's pure parts: the monitor's rates, the metrics export, filters, CSRF and login checks."""

from __future__ import annotations

import pytest

from conveyor.http.monitor import Monitor, next_delay
from conveyor.http.security import Guard, load_login_secret
from conveyor.http.tasklist import TaskFilter


def status(succeeded: int, failed: int = 0, dead: int = 0, workers=(("w1", "h", 1),), clients: int = 1):
    return {"queues": {"default": {"succeeded": succeeded, "failed": failed, "dead": dead, "ready": 3}},
            "workers": [{"name": n, "host": h, "pid": p, "inflight": 2, "concurrency": 4} for n, h, p in workers],
            "clients": clients, "counters": {}}


def test_monitor_rates_from_count_deltas():
    m = Monitor(gateway=None, interval=2.0)  # record() needs no gateway
    m.record(status(10), now=100.0)
    assert m.latest().completed_per_s == 0  # no previous poll: no rate yet
    m.record(status(30, failed=2, dead=2, workers=(("w1", "h", 1), ("w2", "h", 2))), now=102.0)
    s = m.latest()
    assert (s.completed_per_s, s.failed_per_s) == (10.0, 2.0)
    assert m.queue_rates == {"default": 12.0}
    assert (s.workers, s.inflight, s.depth["ready"]) == (2, 4, 3)
    m.record(status(0, workers=(("w2", "h", 2),)), now=104.0)  # a purge: counts drop
    assert m.latest().completed_per_s == 0 and m.latest().failed_per_s == 0
    assert m.latest().workers == 1
    assert m.series()["t"] == [100.0, 102.0, 104.0]


def test_monitor_history_is_a_ring_of_one_hour():
    m = Monitor(gateway=None, interval=600.0)
    for i in range(10):
        m.record(status(i), now=float(i * 600))
    assert len(m.history) == 6 and m.history[0].at == 2400.0


class Query(dict):
    """A query string as aiohttp gives it: get() the first value, getall() every one."""

    def get(self, key, default=None):
        value = super().get(key, default)
        return value[0] if isinstance(value, list) and key != "state" else value

    def getall(self, key, default=()):
        value = self.get(key)
        return default if value is None else (value if isinstance(value, list) else [value])


def test_filter_parses_round_trips_and_pages_by_cursor():
    q = Query(state=["failed", "dead"], queue="q", name="m:imp", prefix="01ab", key="k1",
              since="2026-01-02T03:04:05", order="asc", cursor="120", back="-,60")
    f = TaskFilter.from_query(q, q.getall)
    assert f.states == ("failed", "dead") and not f.newest_first and f.cursor == "120"
    assert f.since == 1767323045.0 and f.back == ("-", "60")
    assert f.fields() == {"states": ["failed", "dead"], "queue": "q", "name": "m:imp", "id_prefix": "01ab",
                          "key": "k1", "created_from": 1767323045.0, "created_to": None}
    again = Query()
    for k, v in f.query():
        again.setdefault(k, []).append(v)
    assert TaskFilter.from_query(again, again.getall) == f
    # next remembers where this page started; previous goes back to it, then to the first page
    nxt = f.next_page("180")
    assert (nxt.cursor, nxt.back) == ("180", ("-", "60", "120"))
    assert nxt.previous_page() == f
    assert f.previous_page().previous_page().cursor is None
    assert TaskFilter().next_page("50").back == ("-",)
    # bulk actions touch only the states they can: retry never requeues succeeded tasks
    assert TaskFilter().action_states("retry") == ("failed", "dead", "cancelled")
    assert f.action_states("cancel") == () and f.action_states("retry") == ("failed", "dead")
    for bad, named in [(Query(state="bogus"), "state"), (Query(since="yesterday"), "since"),
                       (Query(cursor="abc"), "cursor"), (Query(back="x,1"), "back")]:
        with pytest.raises(ValueError, match=named):
            TaskFilter.from_query(bad, bad.getall)


def test_csrf_token_is_bound_to_its_cookie():
    g = Guard(secret=None)
    cookie = g.new_csrf_cookie()
    token = g.csrf_token(cookie)
    assert g.csrf_ok(cookie, token)
    assert not g.csrf_ok(g.new_csrf_cookie(), token)
    assert not g.csrf_ok(cookie, None) and not g.csrf_ok(None, token)
    assert not Guard(secret=None).csrf_ok(cookie, token)  # another process's key


def test_login_sessions_and_bearer(tmp_path, monkeypatch):
    g = Guard(secret="pw")
    assert not g.is_logged_in(None) and not g.is_logged_in("made-up")
    sid = g.new_session()
    assert g.is_logged_in(sid) and g.is_logged_in(None, "Bearer pw") and not g.is_logged_in(None, "Bearer x")
    g.end_session(sid)
    assert not g.is_logged_in(sid)
    assert Guard(secret=None).is_logged_in(None)
    f = tmp_path / "secret"
    f.write_text("from-file\nignored\n")
    assert load_login_secret(str(f)) == "from-file"
    f.write_text("\n")
    with pytest.raises(ValueError, match="empty"):
        load_login_secret(str(f))
    monkeypatch.setenv("CONVEYOR_DASHBOARD_TOKEN", "from-env")
    assert load_login_secret(None) == "from-env"
    monkeypatch.setenv("CONVEYOR_DASHBOARD_TOKEN", "")
    assert load_login_secret(None) is None


def test_poll_delay_stretches_with_the_cost_of_status():
    assert next_delay(2.0, None) == 2.0
    assert next_delay(2.0, 0.01) == 2.0
    assert next_delay(2.0, 0.8) == 16.0  # a 0.8 s status (1M tasks today) is polled every 16 s: 5 %
