"""The asyncio client: the same operations as the sync Client, awaited."""

from __future__ import annotations

import asyncio
import itertools
import ssl
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable
from typing import Any, Literal, overload

from .. import protocol, serde, wire
from ..errors import NotFound
from ..link import Address, AddressesLike
from ..records import NewTask, Result, TaskCount
from .client import decode_result, resolve_addresses, resolve_authkey
from .core import ClientCore
from .listing import TaskListing, filter_fields, page_fields
from .options import make_task, split_options


class AsyncClient:
    """A connection to a master for asyncio code. Create it with :func:`connect`."""

    def __init__(self, address: AddressesLike | None = None,
                 authkey: bytes | str | None = None, *, codec: str = serde.MSGPACK,
                 ssl_context: ssl.SSLContext | None = None, connect_timeout: float = 10.0) -> None:
        #: Every master this client may use, in the order it tries them.
        self.addresses = resolve_addresses(address)
        self.codec = serde.check_codec(codec)
        self.allow_pickle = codec == serde.PICKLE
        self._core = ClientCore(self.addresses, resolve_authkey(authkey), ssl_context=ssl_context,
                                connect_timeout=connect_timeout, hello={"name": "aio-client"})

    @property
    def address(self) -> Address:
        """The master in use (or to be tried next): one of :attr:`addresses`."""
        return self._core.address

    async def connect(self) -> AsyncClient:
        """Connect and authenticate; returns self."""
        await self._core.connect()
        return self

    def _resolver(self, fut: asyncio.Future[Any]) -> Callable[[Result], None]:
        def resolve(result: Result) -> None:
            if fut.done():
                return
            if result.state == "cancelled":
                fut.cancel()  # awaiting it raises CancelledError, as the sync client's future does
                return
            ok, value = decode_result(result, allow_pickle=self.allow_pickle)
            if ok:
                fut.set_result(value)
            else:
                fut.set_exception(value)
        return resolve

    def _send(self, tasks: list[NewTask]) -> tuple[list[asyncio.Future[Any]], asyncio.Future[Any]]:
        loop = asyncio.get_running_loop()
        futures = [loop.create_future() for _ in tasks]
        committed = self._core.submit_nowait(tasks, [self._resolver(f) for f in futures])

        def fail(c: asyncio.Future[Any]) -> None:
            exc = None if c.cancelled() else c.exception()
            if exc is not None:
                for f in futures:
                    if not f.done():
                        f.set_exception(exc)
        committed.add_done_callback(fail)
        for f in futures:  # a failed submit is reported by the awaited commit too
            f.add_done_callback(lambda f: f.cancelled() or f.exception())
        return futures, committed

    def _task(self, fn: Callable[..., Any] | str, args: tuple[Any, ...], kwargs: dict[str, Any],
              options: dict[str, Any]) -> NewTask:
        options.setdefault("codec", self.codec)
        return make_task(fn, args, kwargs, **options)

    @overload
    async def submit(self, fn: Callable[..., Any] | str, /, *args: Any, result: Literal[True] = ...,
                     **kwargs: Any) -> asyncio.Future[Any]: ...

    @overload
    async def submit(self, fn: Callable[..., Any] | str, /, *args: Any, result: Literal[False],
                     **kwargs: Any) -> str: ...

    async def submit(self, fn: Callable[..., Any] | str, /, *args: Any, result: bool = True,
                     **kwargs: Any) -> asyncio.Future[Any] | str:
        """Submit ``fn(*args, **kwargs)``; returns (after commit) a future of its result.

        Submit options (every name in ``conveyor.options.OPTIONS``) are taken
        from the keywords as in :meth:`conveyor.Client.submit`. ``result=False``
        is fire-and-forget, as there: the task id (after commit), nothing kept for it.
        """
        call_kwargs, options = split_options(kwargs)
        task = self._task(fn, args, call_kwargs, options)
        if not result:
            await self._core.request(protocol.SUBMIT, {"tasks": [wire.task_to_wire(task)], "subscribe": False})
            return task.id
        futures, committed = self._send([task])
        await committed
        return futures[0]

    async def map(self, fn: Callable[..., Any] | str, *iterables: Iterable[Any], chunksize: int = 500,
                  window: int = 4000, **options: Any) -> AsyncIterator[Any]:
        """Yield results in order, streaming with at most ``window`` tasks outstanding."""
        args_iter = zip(*iterables)
        queue: deque[asyncio.Future[Any]] = deque()
        commits: list[asyncio.Future[Any]] = []

        def fill() -> None:
            while len(queue) < window:
                chunk = list(itertools.islice(args_iter, chunksize))
                if not chunk:
                    return
                fs, committed = self._send([self._task(fn, tuple(a), {}, dict(options)) for a in chunk])
                queue.extend(fs)
                commits.append(committed)

        fill()
        while queue:
            value = await queue.popleft()
            if len(queue) <= window - chunksize:
                fill()
            yield value
        await asyncio.gather(*commits)

    async def result(self, task_id: str, timeout: float | None = None) -> Any:
        """Wait for the result of any task by id; NotFound if the master never had it."""
        fetched = await self._core.request(protocol.FETCH, {"ids": [task_id]})
        fut = asyncio.get_running_loop().create_future()
        if fetched["results"]:
            self._resolver(fut)(wire.result_from_wire(fetched["results"][0]))
        elif task_id in fetched["unknown"]:
            raise NotFound(f"no task {task_id!r} on the master (never submitted, or its result expired)")
        else:
            await self._core.watch(task_id, self._resolver(fut))
        return await asyncio.wait_for(fut, timeout)

    async def cancel(self, task_id: str) -> dict[str, list[str]]:
        """Cancel a task by id: ``{"cancelled", "finished", "unknown"}`` id lists."""
        return await self.cancel_many([task_id])

    async def cancel_many(self, task_ids: Iterable[str]) -> dict[str, list[str]]:
        """Cancel many tasks in one request: ``{"cancelled", "finished", "unknown"}`` id lists."""
        reply: dict[str, list[str]] = await self._core.request(protocol.CANCEL, {"ids": list(task_ids)})
        return reply

    async def tasks(self, *, queue: str | None = None, state: str | None = None, limit: int = 50,
                    offset: int = 0) -> list[dict[str, Any]]:
        """One page by offset of the tasks of ``queue`` in ``state`` (as :meth:`conveyor.Client.tasks`
        with those arguments); :meth:`task_page` filters by more and pages by cursor."""
        fields: dict[str, Any] = {"queue": queue, "state": state, "limit": limit, "offset": offset}
        tasks: list[dict[str, Any]] = (await self._core.request(protocol.TASKLIST, fields))["tasks"]
        return tasks

    async def task_page(self, *, states: Iterable[str] | None = None, queue: str | None = None,
                        name: str | None = None, id_prefix: str | None = None, key: str | None = None,
                        created_from: float | None = None, created_to: float | None = None,
                        limit: int = 50, cursor: str | None = None, newest_first: bool = False) -> TaskListing:
        """One keyset page of the tasks the filter selects (as :meth:`conveyor.Client.task_page`)."""
        flt = filter_fields(states=states, queue=queue, name=name, id_prefix=id_prefix, key=key,
                            created_from=created_from, created_to=created_to)
        page = await self._core.request(protocol.TASKLIST, page_fields(flt, limit, cursor, newest_first))
        return TaskListing(page["tasks"], page["cursor"])

    async def count_tasks(self, *, states: Iterable[str] | None = None, queue: str | None = None,
                          name: str | None = None, id_prefix: str | None = None, key: str | None = None,
                          created_from: float | None = None, created_to: float | None = None,
                          cap: int = 10_000) -> TaskCount:
        """How many tasks the filter selects (as :meth:`conveyor.Client.count_tasks`)."""
        flt = filter_fields(states=states, queue=queue, name=name, id_prefix=id_prefix, key=key,
                            created_from=created_from, created_to=created_to)
        reply = await self._core.request(protocol.COUNT, {**flt, "cap": cap})
        return TaskCount(int(reply["n"]), bool(reply["exact"]))

    async def retry_matching(self, *, states: Iterable[str] | None = None, queue: str | None = None,
                             name: str | None = None, id_prefix: str | None = None, key: str | None = None,
                             created_from: float | None = None,
                             created_to: float | None = None) -> dict[str, Any]:
        """Requeue every finished task the filter selects (as :meth:`conveyor.Client.retry_matching`)."""
        flt = filter_fields(states=states, queue=queue, name=name, id_prefix=id_prefix, key=key,
                            created_from=created_from, created_to=created_to)
        return await self._core.request(protocol.RETRY_MATCHING, flt)

    async def cancel_matching(self, *, states: Iterable[str] | None = None, queue: str | None = None,
                              name: str | None = None, id_prefix: str | None = None, key: str | None = None,
                              created_from: float | None = None,
                              created_to: float | None = None) -> dict[str, Any]:
        """Cancel every unfinished task the filter selects (as :meth:`conveyor.Client.cancel_matching`)."""
        flt = filter_fields(states=states, queue=queue, name=name, id_prefix=id_prefix, key=key,
                            created_from=created_from, created_to=created_to)
        return await self._core.request(protocol.CANCEL_MATCHING, flt)

    async def queues(self) -> list[dict[str, Any]]:
        """Every network queue with its depth and consumers (as :meth:`conveyor.Client.queues`)."""
        queues: list[dict[str, Any]] = (await self._core.request(protocol.QLIST, {}))["queues"]
        return queues

    async def run_schedule(self, name: str) -> dict[str, Any]:
        """Enqueue schedule ``name``'s task now: ``{"id", "new"}`` (as :meth:`conveyor.Client.run_schedule`)."""
        reply: dict[str, Any] = await self._core.request(protocol.SCHED_RUN, {"name": name})
        return reply

    async def status(self) -> dict[str, Any]:
        """The master's status document."""
        return await self._core.request(protocol.STATUS, {})

    async def close(self) -> None:
        """Close the connection."""
        await self._core.close()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


async def connect(address: AddressesLike | None = None, authkey: bytes | str | None = None,
                  **kwargs: Any) -> AsyncClient:
    """Connect to a master from asyncio code (same arguments as :func:`conveyor.connect`)."""
    return await AsyncClient(address, authkey, **kwargs).connect()
