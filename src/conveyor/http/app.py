"""The dashboard's web app (aiohttp): pages, actions, ``/metrics``, and the server's life cycle.

Pages are rendered on the server with autoescaping Jinja2 templates, so the
lists work with JavaScript disabled and every payload shows as text; htmx
refreshes the live parts every poll interval and uPlot draws the charts.
Every action is a POST checked for its CSRF token before it touches the master.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote, urlencode

import jinja2
from aiohttp import web
from aiohttp.typedefs import Handler
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from ..errors import NotFound, RemoteError
from ..records import FINISHED, STATES
from .gateway import Gateway, MasterDown
from .metrics import build_registry
from .monitor import POLL_INTERVAL, Monitor
from .security import CSRF_COOKIE, CSRF_FIELD, SESSION_COOKIE, Guard
from .tasklist import TaskFilter, apply, count_for, select

log = logging.getLogger("conveyor.dashboard")
BULK_TIMEOUT = 3600.0  # a bulk action runs in batches on the master; the page waits this long
OPEN_PATHS = ("/login", "/static/")

MONITOR = web.AppKey("monitor", Monitor)
GATEWAY = web.AppKey("gateway", Gateway)
GUARD = web.AppKey("guard", Guard)
TEMPLATES = web.AppKey("templates", jinja2.Environment)


def _when(ts: Any) -> str:
    """A Unix time as UTC text, '-' for none."""
    if not ts:
        return "-"
    return datetime.fromtimestamp(float(ts), UTC).strftime("%Y-%m-%d %H:%M:%S")


def _ago(ts: Any) -> str:
    if not ts:
        return "-"
    return f"{max(0.0, time.time() - float(ts)):.0f}s ago"


def make_templates() -> jinja2.Environment:
    """The template environment: autoescaping on for every template, undefined names fail."""
    env = jinja2.Environment(loader=jinja2.PackageLoader("conveyor.http", "templates"),
                             autoescape=True, undefined=jinja2.StrictUndefined)
    env.filters["when"] = _when
    env.filters["ago"] = _ago
    env.filters["tojson_pretty"] = lambda v: json.dumps(v, indent=2, default=repr, ensure_ascii=False)
    env.globals["STATES"] = STATES
    env.globals["FINISHED"] = FINISHED
    return env


def render(request: web.Request, template: str, status: int = 200, **context: Any) -> web.Response:
    """A page: the template with the common context (CSRF token, master state, login)."""
    app = request.app
    monitor, guard = app[MONITOR], app[GUARD]
    context.setdefault("down", app[GATEWAY].down_reason or (None if monitor.status else
                                                           "waiting for the first answer from the master"))
    context.setdefault("message", request.query.get("msg"))
    html = app[TEMPLATES].get_template(template).render(
        csrf=guard.csrf_token(request["csrf_cookie"]), csrf_field=CSRF_FIELD,
        login_required=guard.login_required, master=app[GATEWAY].address,
        interval=monitor.interval, path=request.path, **context)
    return web.Response(text=html, content_type="text/html", status=status)


def back(location: str, msg: str) -> web.HTTPSeeOther:
    """Redirect after a POST, carrying a one-line message."""
    sep = "&" if "?" in location else "?"
    return web.HTTPSeeOther(f"{location}{sep}msg={quote(msg)}")


# -- middlewares --------------------------------------------------------------
@web.middleware
async def csrf_cookie(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Give every browser a CSRF cookie, and refuse a POST whose token does not match it."""
    cookie = request.cookies.get(CSRF_COOKIE)
    fresh = cookie is None
    request["csrf_cookie"] = cookie or Guard.new_csrf_cookie()
    if request.method == "POST":
        form = await request.post()
        if fresh or not request.app[GUARD].csrf_ok(cookie, str(form.get(CSRF_FIELD) or "")):
            log.warning("refused a POST to %s without a valid CSRF token", request.path)
            return web.Response(status=403, text="refused: missing or wrong CSRF token; nothing was changed")
    try:
        response = await handler(request)
    except web.HTTPException as exc:
        response = exc
    if fresh:
        response.set_cookie(CSRF_COOKIE, request["csrf_cookie"], httponly=True, samesite="Strict", path="/")
    if isinstance(response, web.HTTPException) and response.status >= 300:
        raise response
    return response


@web.middleware
async def login_wall(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Pages and actions need a login when one is configured; ``/metrics`` unless made public."""
    guard = request.app[GUARD]
    path = request.path
    if not guard.login_required or path.startswith(OPEN_PATHS):
        return await handler(request)
    if path == "/metrics" and guard.metrics_public:
        return await handler(request)
    if guard.is_logged_in(request.cookies.get(SESSION_COOKIE), request.headers.get("Authorization")):
        return await handler(request)
    if path == "/metrics" or path.startswith("/api/"):
        return web.Response(status=401, text="login required", headers={"WWW-Authenticate": "Bearer"})
    if request.method == "POST":
        return web.Response(status=401, text="login required; nothing was changed")
    raise web.HTTPSeeOther("/login?" + urlencode({"next": request.path_qs}))


@web.middleware
async def master_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Master down: the page says so (503) and the dashboard keeps running."""
    try:
        return await handler(request)
    except MasterDown as exc:
        return render(request, "down.html", status=503, down=str(exc))


# -- pages ----------------------------------------------------------------
async def overview(request: web.Request) -> web.Response:
    return render(request, "overview.html", **_overview_context(request))


async def overview_partial(request: web.Request) -> web.Response:
    return render(request, "_overview_live.html", **_overview_context(request))


def _overview_context(request: web.Request) -> dict[str, Any]:
    m = request.app[MONITOR]
    st = m.status or {}
    return {"st": st, "sample": m.latest(), "rates": m.queue_rates, "polled_at": m.status_at}


async def history(request: web.Request) -> web.Response:
    m = request.app[MONITOR]
    return web.json_response({"up": m.up, "interval": m.interval, "series": m.series()})


async def queues(request: web.Request) -> web.Response:
    m = request.app[MONITOR]
    st = m.status or {}
    names = sorted(st.get("queues", {}))
    # Network queues (declared, or used since the master started): one qlist request.
    network = await request.app[GATEWAY].call(lambda c: c.queues()) if m.up else []
    return render(request, "queues.html", st=st, names=names, rates=m.queue_rates, network=network)


async def purge_queue(request: web.Request) -> web.Response:
    form = await request.post()
    queue = str(form.get("queue") or "") or None
    states = [s for s in form.getall("state", []) if s in FINISHED] or ["succeeded", "failed", "dead",
                                                                         "cancelled"]
    n = await request.app[GATEWAY].call(lambda c: c.purge(queue=queue, states=states))
    await request.app[MONITOR].poll_once()
    raise back("/queues", f"purged {n} finished task(s) ({', '.join(states)}) of {queue or 'every queue'}")


async def retry_dead(request: web.Request) -> web.Response:
    form = await request.post()
    queue = str(form.get("queue") or "")
    if not queue:
        raise back("/queues", "retry dead: no queue given")
    out = await request.app[GATEWAY].call(lambda c: c.retry(queue=queue))
    await request.app[MONITOR].poll_once()
    raise back("/queues", f"requeued {len(out['requeued'])} dead task(s) of {queue}")


async def workers(request: web.Request) -> web.Response:
    st = request.app[MONITOR].status or {}
    return render(request, "workers.html", workers=st.get("workers", []), gone=st.get("gone_workers", []),
                  loop=st.get("loop"))


def _filter(request: web.Request, source: Any = None) -> TaskFilter:
    src = source if source is not None else request.query
    try:
        return TaskFilter.from_query(src, src.getall)
    except ValueError as exc:
        raise web.HTTPBadRequest(text=f"bad filter: {exc}") from None


async def tasks(request: web.Request) -> web.Response:
    flt = _filter(request)
    status = request.app[MONITOR].status
    sel = await _gateway_call(request, lambda c: select(c, flt), timeout=30)
    return render(request, "tasks.html", flt=flt, sel=sel,
                  queue_names=sorted((status or {}).get("queues", {})),
                  prev_q=urlencode(flt.previous_page().query()) if flt.cursor else None,
                  next_q=urlencode(flt.next_page(sel.cursor).query()) if sel.cursor else None,
                  this_q=urlencode(flt.query(paging=False)))


async def _gateway_call(request: web.Request, fn: Any, timeout: float) -> Any:
    """A gateway call whose refusal by the master (a bad filter) is a 400 naming the field."""
    try:
        return await request.app[GATEWAY].call(fn, timeout=timeout)
    except RemoteError as exc:
        if exc.kind == "ProtocolError":
            raise web.HTTPBadRequest(text=f"bad filter: {exc}") from None
        raise


def _action(value: Any) -> str:
    if value not in ("retry", "cancel"):
        raise web.HTTPBadRequest(text="action must be retry or cancel")
    return str(value)


async def bulk_confirm(request: web.Request) -> web.Response:
    flt = _filter(request).first_page()
    action = _action(request.query.get("action"))
    count = await _gateway_call(request, lambda c: count_for(c, flt, action), timeout=60)
    matched = str(count.n) if count.exact else f"at least {count.n}"
    return render(request, "bulk.html", flt=flt, matched=matched, action=action, pairs=flt.query())


async def bulk_apply(request: web.Request) -> web.Response:
    form = await request.post()
    flt = _filter(request, form).first_page()
    action = _action(form.get("action"))
    count = await _gateway_call(request, lambda c: count_for(c, flt, action), timeout=60)
    done = await _gateway_call(request, lambda c: apply(c, flt, action), timeout=BULK_TIMEOUT)
    selected = str(count.n) if count.exact else f"at least {count.n}"
    msg = f"{'retried' if action == 'retry' else 'cancelled'} {done} of {selected} selected task(s)"
    await request.app[MONITOR].poll_once()
    raise back("/tasks?" + urlencode(flt.query()), msg)


async def _inspect(request: web.Request, tid: str) -> dict[str, Any]:
    try:
        return await request.app[GATEWAY].call(lambda c: c.inspect(tid))
    except (NotFound, RemoteError) as exc:
        if isinstance(exc, NotFound) or exc.kind == "NotFound":
            raise web.HTTPNotFound() from None
        raise


async def task_detail(request: web.Request) -> web.Response:
    tid = request.match_info["id"]
    task = await _inspect(request, tid)
    return render(request, "task.html", t=task)


async def task_progress(request: web.Request) -> web.Response:
    task = await _inspect(request, request.match_info["id"])
    return render(request, "_task_live.html", t=task)


async def task_retry(request: web.Request) -> web.Response:
    tid = request.match_info["id"]
    out: dict[str, Any] = await request.app[GATEWAY].call(lambda c: c.retry([tid]))  # reasons: a dict
    if tid in out["requeued"]:
        raise back(f"/tasks/{quote(tid)}", "requeued")
    reason = out.get("reasons", {}).get(tid) or "unknown task"
    raise back(f"/tasks/{quote(tid)}", f"not retried: {reason}")


async def task_cancel(request: web.Request) -> web.Response:
    tid = request.match_info["id"]
    out = await request.app[GATEWAY].call(lambda c: c.cancel(tid))
    msg = "cancelled" if tid in out["cancelled"] else ("already finished" if tid in out["finished"] else "unknown task")
    raise back(f"/tasks/{quote(tid)}", msg)


async def schedules(request: web.Request) -> web.Response:
    rows = await request.app[GATEWAY].call(lambda c: c.schedules())
    return render(request, "schedules.html", schedules=rows)


async def schedule_add(request: web.Request) -> web.Response:
    form = await request.post()
    name, task = str(form.get("name") or "").strip(), str(form.get("task") or "").strip()
    cron = str(form.get("cron") or "").strip() or None
    every_text = str(form.get("every") or "").strip()
    try:
        every = float(every_text) if every_text else None
        args = json.loads(str(form.get("args") or "[]") or "[]")
        if not isinstance(args, list):
            raise ValueError("args: must be a JSON list")
    except ValueError as exc:
        raise back("/schedules", f"not added: {exc}") from None
    tz = str(form.get("tz") or "UTC").strip() or "UTC"
    queue = str(form.get("queue") or "").strip() or None
    try:
        await request.app[GATEWAY].call(lambda c: c.schedule(name, task, *args, cron=cron, every=every,
                                                              tz=tz, queue=queue))
    except (ValueError, TypeError, RemoteError) as exc:
        raise back("/schedules", f"not added: {exc}") from None
    raise back("/schedules", f"schedule {name} added")


async def schedule_remove(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    try:
        await request.app[GATEWAY].call(lambda c: c.unschedule(name))
    except (NotFound, RemoteError) as exc:
        raise back("/schedules", f"not removed: {exc}") from None
    raise back("/schedules", f"schedule {name} removed")


async def schedule_run(request: web.Request) -> web.Response:
    """Run a schedule now: the master enqueues its task (one per schedule and second)."""
    name = request.match_info["name"]
    try:
        out = await request.app[GATEWAY].call(lambda c: c.run_schedule(name))
    except (NotFound, RemoteError) as exc:
        raise back("/schedules", f"not run: {exc}") from None
    raise back(f"/tasks/{quote(out['id'])}", f"schedule {name} submitted now")


async def metrics(request: web.Request) -> web.Response:
    body = generate_latest(request.app["registry"])
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def login_page(request: web.Request) -> web.Response:
    return render(request, "login.html", next=request.query.get("next", "/"), error=None)


async def login_post(request: web.Request) -> web.Response:
    form = await request.post()
    guard = request.app[GUARD]
    target = str(form.get("next") or "/")
    if not target.startswith("/") or target.startswith("//"):
        target = "/"  # never an open redirect
    if not guard.login_required:
        raise web.HTTPSeeOther(target)
    if not guard.check_secret(str(form.get("secret") or "")):
        return render(request, "login.html", status=401, next=target, error="wrong password or token")
    response = web.HTTPSeeOther(target)
    response.set_cookie(SESSION_COOKIE, guard.new_session(), httponly=True, samesite="Strict", path="/")
    raise response


async def logout(request: web.Request) -> web.Response:
    request.app[GUARD].end_session(request.cookies.get(SESSION_COOKIE))
    response = web.HTTPSeeOther("/login")
    response.del_cookie(SESSION_COOKIE, path="/")
    raise response


async def not_found_page(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except web.HTTPNotFound:
        return render(request, "404.html", status=404)


# -- the app ----------------------------------------------------------------
def build_app(gateway: Gateway, guard: Guard, *, interval: float = POLL_INTERVAL) -> web.Application:
    """The web app over ``gateway``; polling starts and stops with the app."""
    app = web.Application(middlewares=[web.middleware(not_found_page), login_wall, csrf_cookie, master_errors])
    monitor = Monitor(gateway, interval=interval)
    registry, poll_hist = build_registry(monitor, gateway.address)
    monitor.on_poll = poll_hist.observe
    app[MONITOR], app[GATEWAY], app[GUARD] = monitor, gateway, guard
    app[TEMPLATES] = make_templates()
    app["registry"] = registry
    r = app.router
    r.add_get("/", overview)
    r.add_get("/partials/overview", overview_partial)
    r.add_get("/api/history", history)
    r.add_get("/queues", queues)
    r.add_post("/queues/purge", purge_queue)
    r.add_post("/queues/retry-dead", retry_dead)
    r.add_get("/workers", workers)
    r.add_get("/tasks", tasks)
    r.add_get("/tasks/bulk", bulk_confirm)
    r.add_post("/tasks/bulk", bulk_apply)
    r.add_get("/tasks/{id}", task_detail)
    r.add_get("/tasks/{id}/live", task_progress)
    r.add_post("/tasks/{id}/retry", task_retry)
    r.add_post("/tasks/{id}/cancel", task_cancel)
    r.add_get("/schedules", schedules)
    r.add_post("/schedules/add", schedule_add)
    r.add_post("/schedules/{name}/remove", schedule_remove)
    r.add_post("/schedules/{name}/run", schedule_run)
    r.add_get("/metrics", metrics)
    r.add_get("/login", login_page)
    r.add_post("/login", login_post)
    r.add_post("/logout", logout)
    from importlib.resources import files
    r.add_static("/static/", str(files("conveyor.http") / "static"))

    async def polling(app: web.Application) -> AsyncIterator[None]:
        task = asyncio.create_task(monitor.run())
        yield
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            pass
        gateway.close()

    app.cleanup_ctx.append(polling)
    return app
