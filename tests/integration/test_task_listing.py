"""Keyset task listings, counts and bulk actions by filter, end to end: a real
master (and a worker where a task must run), the sync and the asyncio client.

Every wait is on a condition with a deadline; nothing asserts a duration.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from concurrent.futures import CancelledError

import pytest

from conveyor import aio
from conveyor.errors import RemoteError
from conveyor.records import TaskCount

SQUARE = "tests.integration.itasks:square"
HANG = "tests.integration.itasks:hang"


def wait_until(cond: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached")
        time.sleep(0.02)


def test_keyset_pages_counts_and_bulk_actions_over_the_wire(make_cluster):
    c = make_cluster(workers=0).start()
    with c.client() as client:
        a = [client.submit(SQUARE, i, queue="a").task_id for i in range(7)]
        b = [client.submit(SQUARE, i, queue="b", key=f"k{i}").task_id for i in range(3)]
        # Pages of 3, oldest first, by cursor: every task of queue a once, in submit order.
        seen, cursor = [], None
        while True:
            page = client.task_page(queue="a", limit=3, cursor=cursor)
            assert len(page.tasks) <= 3
            seen += [t["id"] for t in page.tasks]
            cursor = page.cursor
            if cursor is None:
                break
        assert seen == a
        newest = client.task_page(states=["ready"], limit=2, newest_first=True)
        assert [t["id"] for t in newest.tasks] == [b[2], b[1]] and newest.cursor is not None
        assert [t["id"] for t in client.tasks(queue="b", key="k1")] == [b[1]]  # a key: its one task
        assert [t["id"] for t in client.tasks(id_prefix=a[0], limit=5)] == [a[0]]
        assert client.count_tasks(queue="a") == TaskCount(7, True)
        assert client.count_tasks(states=["ready"], cap=4).n >= 4
        # Bulk cancel by filter: every ready task of queue a; b is untouched.
        got = client.cancel_matching(queue="a", states=["ready"])
        assert got["n"] == 7 and sorted(got["ids"]) == sorted(a)
        assert client.count_tasks(queue="a", states=["cancelled"]) == TaskCount(7, True)
        assert client.count_tasks(queue="b", states=["ready"]) == TaskCount(3, True)
        # ... and bulk retry sends them back.
        again = client.retry_matching(queue="a", states=["cancelled"])
        assert again["n"] == 7
        assert client.count_tasks(queue="a", states=["ready"]) == TaskCount(7, True)
        # Bad input is an error naming the argument, and the connection carries on.
        for kwargs, named in [({"limit": 0}, "limit"), ({"limit": 1_000_000}, "limit"),
                              ({"states": ["lost"]}, "lost"), ({"cursor": "nope"}, "cursor")]:
            with pytest.raises(RemoteError, match=named):
                client.task_page(**kwargs)
        with pytest.raises(RemoteError, match="cap"):
            client.count_tasks(cap=-1)
        assert client.count_tasks(queue="b").n == 3


def test_a_bulk_cancel_stops_the_running_task_and_resolves_its_future(make_cluster):
    c = make_cluster(workers=1).start()
    c.wait_for_workers(1)
    with c.client() as client:
        running = client.submit(HANG, 60, queue="default")
        wait_until(lambda: client.count_tasks(states=["leased"]).n == 1)
        got = client.cancel_matching(name=HANG)
        assert got["ids"] == [running.task_id]
        with pytest.raises(CancelledError):
            running.result(timeout=30)
        # The worker was told to stop it: it takes the next task.
        assert client.submit(SQUARE, 4).result(timeout=30) == 16


def test_the_asyncio_client_lists_counts_and_acts_by_filter(make_cluster):
    c = make_cluster(workers=0).start()

    async def main() -> None:
        async with await aio.connect(c.address, c.authkey) as client:
            futs = [await client.submit(SQUARE, i, queue="x") for i in range(4)]
            page = await client.task_page(queue="x", limit=10)
            assert page.cursor is None and len(page.tasks) == 4
            assert await client.count_tasks(queue="x") == TaskCount(4, True)
            assert (await client.tasks(queue="x", limit=2))[0]["id"] == page.tasks[0]["id"]
            assert (await client.cancel_matching(queue="x"))["n"] == 4
            for fut in futs:  # their subscriptions got the cancellation
                with pytest.raises(asyncio.CancelledError):
                    await asyncio.wait_for(fut, 30)
            assert (await client.retry_matching(queue="x", states=["cancelled"]))["n"] == 4
            with pytest.raises(RemoteError, match="created_from"):
                await client.task_page(created_from=5.0, created_to=1.0)

    asyncio.run(main())
