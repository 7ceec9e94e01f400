"""master/notify.py's handling of other masters' announcements, without a database."""

from __future__ import annotations

import json

from conveyor.master.context import Context, Limits
from conveyor.master.notify import Notices
from conveyor.store import MemoryStore
from conveyor.store.base import WORK_CHANNEL


def _notices() -> tuple[Notices, Context]:
    ctx = Context(MemoryStore(), Limits(60.0, 15.0, 3600.0, False))
    ctx.wake.held = True  # as while a read is handled: the pass is noted, not scheduled
    return Notices(ctx, "me"), ctx


def test_work_announced_by_another_master_makes_its_queue_worth_a_look() -> None:
    notices, ctx = _notices()
    mark = ctx.queues.mark("q")
    ctx.queues.empty("q", mark)
    assert ctx.queues.is_empty("q")
    notices.handle(WORK_CHANNEL, json.dumps(["me", ["q"]]))  # its own: acted on already
    assert ctx.queues.is_empty("q") and notices.heard == 0
    notices.handle(WORK_CHANNEL, json.dumps(["other", ["q"]]))
    assert not ctx.queues.is_empty("q") and notices.heard == 1
    assert ctx.wake.due


def test_too_many_queues_and_a_listener_restart_mean_every_queue() -> None:
    for channel, payload in ((WORK_CHANNEL, json.dumps(["other", None])), (None, "")):
        notices, ctx = _notices()
        ctx.queues.empty("a", ctx.queues.mark("a"))
        ctx.queues.empty("b", ctx.queues.mark("b"))
        notices.handle(channel, payload)
        assert not ctx.queues.is_empty("a") and not ctx.queues.is_empty("b")


def test_a_malformed_announcement_is_ignored() -> None:
    notices, ctx = _notices()
    notices.handle(WORK_CHANNEL, "not json")
    notices.handle(WORK_CHANNEL, json.dumps({"no": "list"}))
    assert notices.heard == 0


def test_own_announcements_never_reach_the_loop() -> None:
    """The listening thread drops this master's own announcements (both the JSON the store
    writes and PostgreSQL's json_build_array spelling) and posts the others' to the loop."""
    notices, _ = _notices()

    class Loop:
        def __init__(self) -> None:
            self.posted: list[tuple[str | None, str]] = []

        def is_closed(self) -> bool:
            return False

        def call_soon_threadsafe(self, fn, channel, payload) -> None:  # type: ignore[no-untyped-def]
            self.posted.append((channel, payload))

    loop = Loop()
    notices._loop = loop  # type: ignore[assignment]
    notices._post(WORK_CHANNEL, json.dumps(["me", ["q"]]))
    notices._post(WORK_CHANNEL, '["me", ["q"]]')
    notices._post(WORK_CHANNEL, json.dumps(["mex", ["q"]]))  # another master whose id starts alike
    notices._post(None, "")  # a listener restart always reaches the loop
    assert loop.posted == [(WORK_CHANNEL, json.dumps(["mex", ["q"]])), (None, "")]
