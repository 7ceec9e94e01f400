"""wait_while_reachable: how long closing a client waits for its acknowledgements."""

from __future__ import annotations

import concurrent.futures as cf

from conveyor import timing
from conveyor.client.queues import wait_while_reachable


class _Client:
    def __init__(self, down_for: float) -> None:
        self.down_for = down_for


def test_a_master_gone_past_the_grace_is_not_waited_for():
    never: cf.Future[None] = cf.Future()
    wait_while_reachable([never], _Client(timing.PROXY_MASTER_GRACE), limit=600)  # returns, not in 600 s
    assert not never.done()


def test_acknowledgements_answered_end_the_wait():
    done: cf.Future[None] = cf.Future()
    done.set_result(None)
    wait_while_reachable([done], _Client(0.0), limit=600)
    assert done.done()


def test_a_reachable_master_is_waited_for_up_to_the_limit():
    never: cf.Future[None] = cf.Future()
    wait_while_reachable([never], _Client(timing.PROXY_MASTER_GRACE / 2), limit=0.3)
    assert not never.done()
