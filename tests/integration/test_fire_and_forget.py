"""Fire-and-forget submits end to end: a real master and worker, the sync and asyncio clients."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import pytest

from conveyor import aio
from conveyor.errors import NotFound

SQUARE = "tests.integration.itasks:square"


def wait_until(cond: Callable[[], bool], timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def test_result_false_returns_ids_after_commit_and_the_results_can_be_fetched_later(make_cluster):
    c = make_cluster(workers=1).start()
    c.wait_for_workers(1)
    with c.client() as client:
        one = client.submit(SQUARE, 7, result=False)
        many = client.submit_many(SQUARE, [(i,) for i in range(20)], result=False)
        assert isinstance(one, str) and len(many) == 20 and all(isinstance(t, str) for t in many)
        assert not client._core.waiting()  # nothing held for them on this side either
        assert client.result(one, timeout=30) == 49  # fetched by id, when asked
        assert [client.result(t, timeout=30) for t in many] == [i * i for i in range(20)]
        with pytest.raises(NotFound):
            client.result("0" * 32, timeout=5)


def test_the_asyncio_client_submits_fire_and_forget_too(make_cluster):
    c = make_cluster(workers=1).start()
    c.wait_for_workers(1)

    async def main() -> None:
        async with await aio.connect(c.address, c.authkey) as client:
            tid = await client.submit(SQUARE, 9, result=False)
            assert isinstance(tid, str)
            assert await client.result(tid, timeout=30) == 81

    asyncio.run(main())


def test_held_futures_resolve_after_a_master_restart_by_resubscription(make_cluster):
    # Committed tasks are resubscribed (ids only, in frames of RESUBMIT_BATCH) after the
    # reconnect, not resubmitted: several frames' worth must all still resolve.
    from conveyor.client.core import RESUBMIT_BATCH

    n = 2 * RESUBMIT_BATCH + 7
    c = make_cluster(workers=0).start()
    with c.client() as client:
        futures = client.submit_many(SQUARE, [(i,) for i in range(n)])
        held = client._core._pending
        # Once the commits' callbacks ran, only ids (and callbacks) are kept: no wire task.
        assert len(held) == n
        assert wait_until(lambda: not any(isinstance(entry, tuple) for entry in list(held.values())))
        c.kill_master()
        c.start_master()
        c.start_worker()
        assert [f.result(timeout=120) for f in futures] == [i * i for i in range(n)]
        assert client.status()["queues"]["default"]["succeeded"] == n
