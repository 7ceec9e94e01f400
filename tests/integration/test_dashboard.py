"""The dashboard over HTTP: real master, workers and dashboard processes on 127.0.0.1.

Every page and action, ``/metrics`` checked against tasks really run, CSRF
refusal, escaping, 404, the login wall, refusals at start, master down and back.
"""

from __future__ import annotations

import html
import re
import time
import urllib.parse

import pytest
from prometheus_client.parser import text_string_to_metric_families

import conveyor

from .conftest import TASKS
from .dashboard_helpers import Dashboard, run_dashboard_cli, wait_until


@pytest.fixture
def dashboards():
    made: list[Dashboard] = []

    def make(cluster, *args, **kwargs) -> Dashboard:
        d = Dashboard(cluster, *args, **kwargs)
        made.append(d)
        return d

    yield make
    for d in made:
        d.stop()


@pytest.fixture
def own_cluster(make_cluster):
    """A master and two workers for one test: for tests that count every task the master has
    (the module's other tests share ``cluster``)."""
    c = make_cluster(workers=2).start()
    c.wait_for_workers(2)
    return c


def samples(text: str) -> dict[tuple, float]:
    """Metric samples as {(name, sorted label pairs without master): value}."""
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            labels = tuple(sorted((k, v) for k, v in s.labels.items() if k != "master"))
            out[(s.name, labels)] = s.value
    return out


def test_pages_metrics_and_escaping(own_cluster, dashboards):
    d = dashboards(own_cluster)
    b = d.browser()
    with own_cluster.client() as c:
        done = [c.submit(f"{TASKS}:square", i) for i in range(7)]
        bad = c.submit(f"{TASKS}:fail", "<script>alert(1)</script>")
        assert [f.result(30) for f in done] == [i * i for i in range(7)]
        with pytest.raises(conveyor.TaskError):
            bad.result(30)

    def metrics_caught_up():
        m = samples(b.get("/metrics").body)
        return m.get(("conveyor_queue_tasks", (("queue", "default"), ("state", "succeeded")))) == 7

    assert wait_until(metrics_caught_up)
    m = samples(b.get("/metrics").body)
    assert m[("conveyor_up", ())] == 1
    assert m[("conveyor_queue_tasks", (("queue", "default"), ("state", "failed")))] == 1
    square, fail = (("queue", "default"), ("task", f"{TASKS}:square")), (("queue", "default"), ("task", f"{TASKS}:fail"))
    assert m[("conveyor_tasks_total", (("outcome", "submitted"), *square))] == 7
    assert m[("conveyor_tasks_total", (("outcome", "succeeded"), *square))] == 7
    assert m[("conveyor_tasks_total", (("outcome", "submitted"), *fail))] == 1
    assert m[("conveyor_tasks_total", (("outcome", "failed"), *fail))] == 1
    # The store's own counters: tasks now by state, and outcomes ever (persisted).
    assert m[("conveyor_stored_tasks", (square[0], ("state", "succeeded"), square[1]))] == 7
    assert m[("conveyor_task_outcomes_total", (("outcome", "succeeded"), *square))] == 7
    assert m[("conveyor_task_outcomes_total", (("outcome", "failed"), *fail))] == 1
    assert not any(name == "conveyor_tasks_total" and dict(labels)["outcome"] in ("retried", "dead", "cancelled")
                   for name, labels in m)
    # Eight attempts ran, each timed from its push to its result; each waited in the queue first.
    assert m[("conveyor_task_run_seconds_count", ())] == 8
    assert m[("conveyor_task_run_seconds_bucket", (("le", "+Inf"),))] == 8
    assert m[("conveyor_task_wait_seconds_count", ())] == 8
    assert m[("conveyor_store_commit_seconds_count", ())] >= 1
    assert m[("conveyor_duplicate_results_total", ())] == 0 and m[("conveyor_lease_expiries_total", ())] == 0
    assert m[("conveyor_workers", ())] == 2
    assert m[("conveyor_worker_slots", ())] == 4
    assert m[("conveyor_inflight_tasks", ())] == 0
    assert m[("conveyor_dashboard_status_poll_seconds_count", ())] >= 1

    overview = b.get("/")
    assert overview.status == 200
    assert 'id="workers-count">2<' in overview.body
    assert "/static/htmx.min.js" in overview.body and "https://" not in overview.body  # no CDN
    live = b.get("/partials/overview")
    assert live.status == 200 and "default" in live.body
    hist = b.get("/api/history")
    assert hist.status == 200 and '"completed_per_s"' in hist.body
    assert b.get("/static/uPlot.iife.min.js").status == 200

    queues = b.get("/queues")
    assert queues.status == 200 and 'data-queue="default"' in queues.body and "Retry dead (0)" in queues.body
    workers = b.get("/workers")
    assert workers.status == 200 and workers.body.count("<td>" + TASKS) == 0
    assert len(re.findall(r"<tr><td>[^<]+</td><td>[^<]+</td><td class=\"num\">\d+</td>", workers.body)) == 2
    assert workers.body.count('<td class="pool">process</td>') == 2
    # The master's tally per worker: seven done and one failed, over the two.
    done = [int(n) for n in re.findall(r'<td class="num done">(\d+)</td>', workers.body)]
    failed = [int(n) for n in re.findall(r'<td class="num failed">(\d+)</td>', workers.body)]
    assert sum(done) == 7 and sum(failed) == 1

    page = b.get(f"/tasks/{bad.task_id}")
    assert page.status == 200
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page.body
    assert "<script>alert(1)" not in page.body
    assert "Traceback (most recent call last)" in page.body and 'id="task-state" class="state-failed"' in page.body

    assert b.get("/tasks/0123456789abcdef-unknown").status == 404
    assert "Nothing here" in b.get("/tasks/0123456789abcdef-unknown").body
    assert b.get("/no/such/page").status == 404
    assert own_cluster.authkey.decode() not in d.log.read_text()


def _links(body: str) -> list[str]:
    return re.findall(r'class="task-link" href="/tasks/([^"]+)"', body)


def test_task_list_filters_pages_and_bulk_retry(own_cluster, dashboards, tmp_path):
    d = dashboards(own_cluster)
    b = d.browser()
    with own_cluster.client() as c:
        ok = [c.submit(f"{TASKS}:square", i, queue="default") for i in range(60)]
        later = c.submit(f"{TASKS}:square", 1, countdown=3600, queue="later")
        flaky = [c.submit(f"{TASKS}:flaky", str(tmp_path / f"f{i}"), 1, queue="default") for i in range(3)]
        for f in ok:
            f.result(30)
        for f in flaky:
            with pytest.raises(conveyor.TaskError):
                f.result(30)
        assert wait_until(lambda: c.status()["queues"].get("later", {}).get("delayed") == 1)

    assert wait_until(lambda: samples(b.get("/metrics").body).get(
        ("conveyor_queue_tasks", (("queue", "default"), ("state", "failed")))) == 3)
    # Several states at once, combined with a queue.
    both = b.get("/tasks?state=failed&state=delayed")
    assert both.status == 200 and "4 task(s) match" in both.body and later.task_id in both.body
    only_q = b.get("/tasks?state=failed&state=delayed&queue=default")
    assert "3 task(s) match" in only_q.body and later.task_id not in only_q.body
    by_name = b.get("/tasks?" + urllib.parse.urlencode({"name": f"{TASKS}:flaky"}))  # the exact name
    assert "3 task(s) match" in by_name.body
    prefix = ok[0].task_id[:-1]
    by_prefix = b.get("/tasks?" + urllib.parse.urlencode({"prefix": prefix}))
    assert f'>{ok[0].task_id}<' in by_prefix.body
    future = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(time.time() + 7200))
    assert "0 task(s) match" in b.get(f"/tasks?since={future}").body
    assert "64 task(s) match" in b.get(f"/tasks?until={future}").body
    # Pages of 50 by cursor, newest first by default, oldest first on request.
    first = b.get("/tasks")
    assert "64 task(s) match" in first.body and first.body.count('class="task-link"') == 50
    assert 'rel="prev"' not in first.body
    next_q = html.unescape(re.search(r'href="/tasks\?([^"]*)" rel="next"', first.body).group(1))
    second = b.get("/tasks?" + next_q)
    assert second.body.count('class="task-link"') == 14 and 'rel="next"' not in second.body
    assert ok[0].task_id in second.body and ok[0].task_id not in first.body  # the oldest is on page 2
    prev_q = html.unescape(re.search(r'href="/tasks\?([^"]*)" rel="prev"', second.body).group(1))
    assert _links(b.get("/tasks?" + prev_q).body) == _links(first.body)
    oldest = b.get("/tasks?order=asc")
    assert oldest.body.index(ok[0].task_id) < oldest.body.index(ok[1].task_id)
    assert b.get("/tasks?cursor=nonsense").status == 400
    # Bulk retry of the failed ones: the confirmation says how many, then it retries them.
    confirm = b.get("/tasks/bulk?action=retry&state=failed")
    assert confirm.status == 200 and "Retry 3 task(s)" in confirm.body
    done = b.post("/tasks/bulk", [("action", "retry"), ("state", "failed")])
    assert done.status == 200 and "retried 3 of 3 selected task(s)" in done.body
    with own_cluster.client() as c:
        assert wait_until(lambda: all(c.inspect(f.task_id)["state"] == "succeeded" for f in flaky))
    # Bulk cancel of the delayed one.
    assert "Cancel 1 task(s)" in b.get("/tasks/bulk?action=cancel&state=delayed").body
    assert "cancelled 1 of 1" in b.post("/tasks/bulk", [("action", "cancel"), ("state", "delayed")]).body
    with own_cluster.client() as c:
        assert c.inspect(later.task_id)["state"] == "cancelled"
    assert b.get("/tasks?state=nonsense").status == 400


def test_task_and_queue_actions_and_csrf(own_cluster, dashboards, tmp_path):
    d = dashboards(own_cluster)
    b = d.browser()
    with own_cluster.client() as c:
        f = c.submit(f"{TASKS}:flaky", str(tmp_path / "f"), 1)
        with pytest.raises(conveyor.TaskError):
            f.result(30)
        dead = c.submit(f"{TASKS}:fail", "boom", retries=1, retry_backoff=0)
        with pytest.raises(conveyor.TaskError):
            dead.result(30)
        assert c.inspect(dead.task_id)["state"] == "dead"
        slow = c.submit(f"{TASKS}:square", 3, countdown=3600)

        # A forged POST: no token, or a wrong one, is refused and changes nothing.
        forged = b.post(f"/tasks/{f.task_id}/retry", {}, csrf=False)
        assert forged.status == 403 and "CSRF" in forged.body
        b.get("/")  # now the browser has a CSRF cookie, but the form token is forged
        wrong = b.post(f"/tasks/{f.task_id}/retry", {"csrf_token": "0" * 64}, csrf=False)
        assert wrong.status == 403
        assert b.post("/queues/purge", {"queue": "default"}, csrf=False).status == 403
        assert c.inspect(f.task_id)["state"] == "failed"

        retried = b.post(f"/tasks/{f.task_id}/retry", {})
        assert retried.status == 200 and "requeued" in retried.body
        assert wait_until(lambda: c.inspect(f.task_id)["state"] == "succeeded")
        again = b.post(f"/tasks/{f.task_id}/retry", {})
        assert "not retried: it is succeeded" in again.body

        assert "cancelled" in b.post(f"/tasks/{slow.task_id}/cancel", {}).body
        assert c.inspect(slow.task_id)["state"] == "cancelled"

        assert wait_until(lambda: "Retry dead (1)" in b.get("/queues").body)
        out = b.post("/queues/retry-dead", {"queue": "default"})
        assert "requeued 1 dead task(s) of default" in out.body
        assert wait_until(lambda: c.inspect(dead.task_id)["state"] == "dead"
                          and c.inspect(dead.task_id)["attempts"] == 4)
        purged = b.post("/queues/purge", [("queue", "default"), ("state", "dead")])
        assert "purged 1 finished task(s) (dead) of default" in purged.body
        assert b.get(f"/tasks/{dead.task_id}").status == 404


def test_schedules_add_run_remove(cluster, dashboards):
    d = dashboards(cluster)
    b = d.browser()
    added = b.post("/schedules/add", {"name": "sq", "task": f"{TASKS}:square", "every": "3600",
                                      "args": "[9]", "tz": "UTC"})
    assert added.status == 200 and "schedule sq added" in added.body
    assert 'data-schedule="sq"' in b.get("/schedules").body
    bad = b.post("/schedules/add", {"name": "x", "task": f"{TASKS}:square", "cron": "not a cron"})
    assert "not added" in bad.body
    ran = b.post("/schedules/sq/run", {})
    assert ran.status == 200 and "schedule sq submitted now" in ran.body
    tid = re.search(r'id="task-id">([^<]+)<', ran.body).group(1)
    with cluster.client() as c:
        assert c.result(tid, 30) == 81
        (sched,) = c.schedules()
        assert sched["last_run_now"]["id"] == tid  # recorded by the master's sched_run
        assert f'href="/tasks/{tid}"' in b.get("/schedules").body
        assert c.inspect(tid)["options"]["manual"] is True
        removed = b.post("/schedules/sq/remove", {})
        assert "schedule sq removed" in removed.body
        assert c.schedules() == []


def test_network_queues_and_gone_workers(make_cluster, dashboards):
    cluster = make_cluster(workers=2).start()
    cluster.wait_for_workers(2)
    d = dashboards(cluster)
    b = d.browser()
    with cluster.client() as producer, cluster.client() as consumer:
        producer.queue("jobs").put_many([1, 2, 3])
        q = consumer.queue("jobs")
        assert q.get(timeout=10) == 1  # held, not yet task_done: leased to this consumer
        page = b.get("/queues")
        row = re.search(r'<tr data-network-queue="jobs">(.*?)</tr>', page.body, re.S)
        assert row is not None, page.body
        cells = re.findall(r'<td class="num">([^<]+)</td>', row.group(1))
        assert cells == ["unbounded", "2", "0", "1", "1"]  # maxsize, ready, delayed, leased, consumers
        q.task_done()
    victim = cluster.workers[0]
    victim.kill()
    victim.wait(10)
    assert wait_until(lambda: f'<td class="num">{victim.pid}</td>' in
                      b.get("/workers").body.split('id="gone"')[-1])
    with cluster.client() as c:
        (gone,) = c.status()["gone_workers"]
        assert gone["pid"] == victim.pid and gone["gone_at"] > 0


def test_login_wall(cluster, dashboards, tmp_path):
    secret_file = tmp_path / "login"
    secret_file.write_text("s3cret-token\n")
    d = dashboards(cluster, "--login-required", "--login-file", str(secret_file))
    b = d.browser()
    page = b.get("/tasks")
    assert page.status == 200 and page.url.startswith(d.url + "/login") and 'id="login"' in page.body
    assert b.get("/metrics").status == 401
    assert b.post("/tasks/x/retry", {}).status == 401
    wrong = b.post("/login", {"secret": "nope", "next": "/tasks"})
    assert wrong.status == 401 and "wrong password or token" in wrong.body
    ok = b.post("/login", {"secret": "s3cret-token", "next": "/tasks"})
    assert ok.status == 200 and ok.url == d.url + "/tasks" and 'id="filter"' in ok.body
    assert b.get("/metrics").status == 200
    other = d.browser()
    assert other.get("/metrics", headers={"Authorization": "Bearer s3cret-token"}).status == 200
    assert other.get("/metrics", headers={"Authorization": "Bearer wrong"}).status == 401
    assert b.post("/logout", {}).url.startswith(d.url + "/login")
    assert b.get("/queues").url.startswith(d.url + "/login")
    assert "s3cret-token" not in d.log.read_text()

    public = dashboards(cluster, "--login-required", "--metrics-public",
                        env={"CONVEYOR_DASHBOARD_TOKEN": "tok"})
    p = public.browser()
    assert p.get("/metrics").status == 200
    assert p.get("/").url.startswith(public.url + "/login")


def test_refusals_at_start(cluster):
    env = {"CONVEYOR_AUTHKEY": cluster.authkey.decode(), "CONVEYOR_DASHBOARD_TOKEN": ""}
    wide = run_dashboard_cli("--connect", cluster.address, "--bind", "0.0.0.0:0", env=env)
    assert wide.returncode == 1
    assert wide.stderr.strip().count("\n") == 0 and "without a login" in wide.stderr
    wrong = run_dashboard_cli("--connect", cluster.address, "--bind", "127.0.0.1:0",
                              env={**env, "CONVEYOR_AUTHKEY": "not-the-key"})
    assert wrong.returncode == 1
    assert wrong.stderr.strip().splitlines()[-1].startswith("conveyor dashboard: error: the master at")
    assert "refused the authkey" in wrong.stderr and "not-the-key" not in wrong.stderr
    forced = run_dashboard_cli("--connect", cluster.address, "--login-required", env=env)
    assert forced.returncode == 1 and "--login-required needs a login" in forced.stderr


def test_master_down_then_back(make_cluster, dashboards):
    cluster = make_cluster(workers=1).start()
    cluster.wait_for_workers(1)
    d = dashboards(cluster)
    b = d.browser()
    assert wait_until(lambda: 'id="workers-count">1<' in b.get("/").body)
    with cluster.client() as c:
        assert c.submit(f"{TASKS}:square", 4).result(30) == 16
    square = (("outcome", "succeeded"), ("queue", "default"), ("task", f"{TASKS}:square"))
    assert wait_until(lambda: samples(b.get("/metrics").body).get(("conveyor_task_outcomes_total", square)) == 1)
    cluster.kill_master()
    assert wait_until(lambda: "Master unreachable" in b.get("/").body)
    assert "Master unreachable" in b.get("/tasks").body
    assert samples(b.get("/metrics").body)[("conveyor_up", ())] == 0
    cluster.start_master()
    with cluster.client() as c:
        assert c.submit(f"{TASKS}:square", 5).result(30) == 25
    assert wait_until(lambda: "Master unreachable" not in b.get("/").body, timeout=60)
    assert b.get("/tasks").status == 200
    assert wait_until(lambda: samples(b.get("/metrics").body)[("conveyor_up", ())] == 1)
    # The store's outcome counters survived the restart (the master's in-memory ones did not).
    assert wait_until(lambda: samples(b.get("/metrics").body).get(("conveyor_task_outcomes_total", square)) == 2)
