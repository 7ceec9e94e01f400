"""Fire-and-forget submits end to end: a real master and worker, the sync and asyncio clients."""

from __future__ import annotations

import asyncio

import pytest

from conveyor import aio
from conveyor.errors import NotFound

SQUARE = "tests.integration.itasks:square"


def test_result_false_returns_ids_after_commit_and_the_results_can_be_fetched_later(make_cluster):
    c = make_cluster(workers=1).start()
    c.wait_for_workers(1)
    with c.client() as client:
        one = client.submit(SQUARE, 7, result=False)
        many = client.submit_many(SQUARE, [(i,) for i in range(20)], result=False)
        assert isinstance(one, str) and len(many) == 20 and all(isinstance(t, str) for t in many)
        assert not client._futures  # nothing held for them on this side either
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
