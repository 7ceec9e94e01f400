"""The asyncio client: ``conveyor.aio``.

Run it from anywhere::

    python examples/asyncio_client.py

``await aio.connect(address, authkey)`` gives an ``AsyncClient``: ``await
client.submit(fn, *args, **options)`` returns (after the master committed the
task) an ``asyncio.Future`` of its result; ``async for`` over
``client.map(...)`` streams results in order; ``await client.result(task_id)``
and ``await client.status()`` as in the sync client. Submit options
(``priority``, ``countdown``, ``retries``, ``after``...) are the same.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import example_tasks as tasks

import conveyor
from conveyor import aio
from conveyor.cluster import LocalCluster

HERE = Path(__file__).resolve().parent


async def run(address: str, authkey: bytes) -> None:
    async with await aio.connect(address, authkey) as client:
        fut = await client.submit(tasks.square, 7)
        print(f"await submit(square, 7) -> {await fut}")

        # Many at once: submit them all, then gather.
        futures = [await client.submit(tasks.slow_square, n, 0.1) for n in range(8)]
        print(f"gather of 8 slow squares: {await asyncio.gather(*futures)}")

        # Streamed map, in order.
        print(f"async map: {[v async for v in client.map(tasks.square, range(10))]}")

        # Options work as in the sync client. The futures are plain asyncio
        # futures: to fetch a result by id later, choose the id (or a key).
        await client.submit(tasks.square, 3, countdown=0.5, retries=2, task_id="square-3")
        print(f"await result('square-3') with countdown=0.5: {await client.result('square-3', timeout=10)}")

        try:
            await (await client.submit(tasks.divide, 1, 0))
        except conveyor.TaskError as exc:
            print(f"a failing task raises TaskError: {exc.type_name}: {exc.message}")

        status = await client.status()
        print(f"status: {len(status['workers'])} workers, queues {sorted(status['queues'])}")


def main() -> None:
    with LocalCluster(workers=2, concurrency=2, modules=["example_tasks"], cwd=HERE) as cluster:
        cluster.wait_for_workers()
        asyncio.run(run(cluster.address, cluster.authkey))


if __name__ == "__main__":
    main()
