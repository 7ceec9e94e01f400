"""The synchronous client: submit work, get ``concurrent.futures`` futures back.

The connection is a ThreadedCore (threaded.py): the calling thread sends,
a reader thread resolves futures. The methods here wait where the promise
says they wait: ``submit`` returns only after the master committed the task.
"""

from __future__ import annotations

import concurrent.futures as cf
import itertools
import logging
import os
import ssl
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sized
from concurrent.futures._base import (  # the states a slim future shares with cf.Future
    CANCELLED,
    CANCELLED_AND_NOTIFIED,
    FINISHED,
    PENDING,
    RUNNING,
)
from typing import Any, Literal, overload

from .. import protocol, serde
from ..auth import ENV_AUTHKEY, as_key
from ..errors import ConnectionLost, NotFound, task_error
from ..link import Address, AddressesLike, parse_addresses
from ..records import DELAYED, READY, WAITING, NewTask, Result, TaskCount
from .listing import BULK_TIMEOUT, TaskListing, filter_fields, page_fields
from .options import make_task, split_options
from .queues import NetworkQueue, ack_auto_items
from .schedules import ScheduleMixin
from .threaded import ThreadedCore

ENV_ADDRESS = "CONVEYOR_ADDRESS"
DEFAULT_ADDRESS = "127.0.0.1:7700"
_NOT_STARTED = frozenset({READY, DELAYED, WAITING})  # what Executor.shutdown(cancel_futures=True) cancels


#: The one Condition every TaskFuture waits on: a Condition per future (what
#: ``concurrent.futures.Future`` makes) is most of its ~1.7 KB, and a client may
#: hold a million futures. Waiters loop on their own future's state, so a
#: wake-up meant for another future only costs a re-check.
_SHARED_CONDITION = threading.Condition()
_PENDING, _RUNNING = PENDING, RUNNING
_CANCELLED, _NOTIFIED, _FINISHED = CANCELLED, CANCELLED_AND_NOTIFIED, FINISHED


class TaskFuture(cf.Future[Any]):
    """A ``concurrent.futures.Future`` for one task; ``task_id`` names it on the master.

    ``cancel()`` cancels the task on the master (a queued or delayed task never
    runs; a running one is stopped). ``progress`` is the task's latest progress
    report (``{"done", "total", "message"}``) or None.

    Slim: every TaskFuture shares one Condition (see ``_SHARED_CONDITION``), so a
    held future costs a few hundred bytes, not ~1.7 KB; ``result``/``exception``
    wait in a loop on their own state. It is still a ``concurrent.futures.Future``:
    ``concurrent.futures.wait``, ``as_completed`` and ``add_done_callback`` work as usual.
    """

    def __init__(self, task_id: str, client: Client | None = None) -> None:
        # Not Future.__init__: the same fields, with the shared Condition.
        self._condition = _SHARED_CONDITION
        self._state = _PENDING
        self._result: Any = None
        self._exception: BaseException | None = None
        self._waiters: list[Any] = []
        self._done_callbacks: list[Callable[[cf.Future[Any]], object]] = []
        self.task_id = task_id
        self.progress: dict[str, Any] | None = None
        self._client = client
        self._progress_callbacks: list[Callable[[TaskFuture], Any]] | None = None

    def __repr__(self) -> str:
        return f"<TaskFuture {self.task_id} {self._state.lower()}>"

    def _wait(self, timeout: float | None) -> None:
        """Wait (holding the shared Condition) until this future is done or cancelled;
        TimeoutError when ``timeout`` passes first."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while self._state not in (_FINISHED, _CANCELLED, _NOTIFIED):
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                raise TimeoutError()
            self._condition.wait(remaining)

    def _read_until_done(self, timeout: float | None) -> float | None:
        """Read the connection on this thread until this future is done, if no other
        thread reads it (no hand-off from the reader thread); the timeout left."""
        if self._state not in (_PENDING, _RUNNING) or self._client is None:
            return timeout
        deadline = None if timeout is None else time.monotonic() + timeout
        self._client.wait_until(self.done, timeout)
        return None if deadline is None else max(0.0, deadline - time.monotonic())

    def result(self, timeout: float | None = None) -> Any:
        """The task's value; its exception raised; CancelledError; TimeoutError after ``timeout``."""
        timeout = self._read_until_done(timeout)
        with self._condition:
            self._wait(timeout)
            if self._state != _FINISHED:
                raise cf.CancelledError()
            if self._exception is not None:
                try:
                    raise self._exception
                finally:
                    self = None  # type: ignore[assignment]  # no reference cycle through the traceback
            return self._result

    def exception(self, timeout: float | None = None) -> BaseException | None:
        """The task's exception (None if it succeeded); CancelledError; TimeoutError after ``timeout``."""
        timeout = self._read_until_done(timeout)
        with self._condition:
            self._wait(timeout)
            if self._state != _FINISHED:
                raise cf.CancelledError()
            return self._exception

    def __call__(self, result: Result) -> None:
        """Resolve from the task's stored result (the client's result callback: the
        future is its own, so a held future needs no closure besides it)."""
        if self.done():
            return
        if result.state == "cancelled":
            self.mark_cancelled()
            return
        ok, value = decode_result(result, allow_pickle=self._client is not None and self._client.allow_pickle)
        try:
            if ok:
                self.set_result(value)
            else:
                self.set_exception(value)
        except cf.InvalidStateError:
            pass  # resolved meanwhile by another thread

    def cancel(self) -> bool:
        """Cancel the task on the master; True if it is cancelled (now or already)."""
        if self.cancelled():
            return True
        if self.done() or self._client is None:
            return False
        outcome = self._client.cancel(self.task_id)
        if self.task_id in outcome["cancelled"]:
            self.mark_cancelled()
            return True
        return self.cancelled()

    def mark_cancelled(self) -> None:
        """The master cancelled the task: the future raises CancelledError (the stdlib's
        ``cancel()`` cannot say so for a future already running)."""
        with self._condition:
            if self._state in (_FINISHED, _NOTIFIED):
                return
            self._state = _NOTIFIED
            for waiter in self._waiters:
                waiter.add_cancelled(self)
            self._condition.notify_all()
        self._invoke_callbacks()  # type: ignore[attr-defined]  # the stdlib Future's own

    def add_progress_callback(self, fn: Callable[[TaskFuture], Any]) -> None:
        """Call ``fn(future)`` on every progress report (from the client's I/O thread)."""
        if self._progress_callbacks is None:
            self._progress_callbacks = []
        self._progress_callbacks.append(fn)

    def record_progress(self, report: dict[str, Any]) -> None:
        """A progress report from the master: kept on ``progress``, then the callbacks run."""
        self.progress = report
        for fn in list(self._progress_callbacks or ()):
            try:
                fn(self)
            except Exception:
                logging.getLogger("conveyor.client").exception("progress callback failed")


def decode_result(result: Result, *, allow_pickle: bool) -> tuple[bool, Any]:
    """(True, value) for a success, (False, exception) for a failure: a TaskError, or
    its subclass for a failure conveyor names (TaskTimeout, WorkerCrashed, ...)."""
    if result.ok:
        try:
            return True, serde.decode(result.payload, result.codec, allow_pickle=allow_pickle)
        except Exception as exc:
            return False, exc
    err = serde.decode_error(result.payload)
    return False, task_error(err["type"], err["message"], err["traceback"])


def resolve_addresses(address: AddressesLike | None) -> tuple[Address, ...]:
    """The master addresses to use: the argument (one address, a list of them, or a
    comma-separated string), else ``CONVEYOR_ADDRESS`` (the same), else 127.0.0.1:7700."""
    return parse_addresses(address or os.environ.get(ENV_ADDRESS) or DEFAULT_ADDRESS)


def resolve_address(address: AddressesLike | None) -> Address:
    """The first of :func:`resolve_addresses`."""
    return resolve_addresses(address)[0]


def resolve_authkey(authkey: bytes | str | None) -> bytes:
    """The authkey to use: the argument, else ``CONVEYOR_AUTHKEY``, else empty."""
    if authkey is None:
        authkey = os.environ.get(ENV_AUTHKEY, "")
    return as_key(authkey)


class Client(ScheduleMixin):  # schedule(), schedules(), unschedule(): client/schedules.py
    """A connection to a master for submitting tasks and reading results.

    Use as a context manager, or call :meth:`close`. Thread-safe: any thread
    may submit. If the master restarts, the client reconnects by itself and
    pending futures still complete.
    """

    def __init__(
        self,
        address: AddressesLike | None = None,
        authkey: bytes | str | None = None,
        *,
        codec: str = serde.MSGPACK,
        ssl_context: ssl.SSLContext | None = None,
        connect_timeout: float = 10.0,
        name: str | None = None,
    ) -> None:
        #: Every master this client may use, in the order it tries them.
        self.addresses = resolve_addresses(address)
        self.codec = serde.check_codec(codec)
        self.allow_pickle = codec == serde.PICKLE
        self._core = ThreadedCore(
            self.addresses, resolve_authkey(authkey), ssl_context=ssl_context,
            connect_timeout=connect_timeout, hello={"name": name or f"client-{os.getpid()}"},
            on_message=self._on_push,
        )
        self._closed = False
        self._core.connect()

    # -- plumbing ----------------------------------------------------------
    def _resolver(self, fut: TaskFuture) -> Callable[[Result], None]:
        """The callback that resolves ``fut`` from its task's result: the future itself."""
        return fut

    def _send(self, tasks: list[NewTask]) -> tuple[list[TaskFuture], cf.Future[Any]]:
        """Send tasks without waiting: their futures, and a future for the commit."""
        if self._closed:
            raise ConnectionLost("client is closed")
        futures = [TaskFuture(t.id, self) for t in tasks]
        for f in futures:
            f.set_running_or_notify_cancel()
        committed = self._core.submit_nowait(tasks, [self._resolver(f) for f in futures])

        def failed(c: cf.Future[Any]) -> None:
            exc = c.exception()
            if exc is not None:
                for f in futures:
                    if not f.done():
                        f.set_exception(exc)

        committed.add_done_callback(failed)
        return futures, committed

    def _send_only(self, tasks: list[NewTask]) -> cf.Future[Any]:
        """Send tasks fire-and-forget (nothing waits for their results); a future for the commit."""
        if self._closed:
            raise ConnectionLost("client is closed")
        from .. import wire

        return self.request(protocol.SUBMIT, {"tasks": [wire.task_to_wire(t) for t in tasks],
                                              "subscribe": False})

    def request(self, op: str, fields: dict[str, Any]) -> cf.Future[Any]:
        """Send a protocol request from any thread, without waiting; a concurrent future of
        its reply fields (queues, schedules and managers speak to the master through it)."""
        if self._closed:
            raise ConnectionLost("client is closed")
        fut: cf.Future[Any] = self._core.request_nowait(op, fields)
        return fut

    def wait(self, fut: cf.Future[Any], timeout: float | None = None) -> Any:
        """``fut.result(timeout)`` for a future of this client's requests; the calling thread
        reads the reply itself when no other thread is reading (no thread hand-off)."""
        return self._core.wait(fut, timeout)

    def wait_until(self, done: Callable[[], bool], timeout: float | None = None) -> None:
        """Read the connection on this thread until ``done()`` or ``timeout``, if no other
        thread reads it; returns early otherwise (then wait on what ``done`` watches)."""
        self._core.wait_reading(done, timeout)

    def requests(self, requests: list[tuple[str, dict[str, Any]]]) -> list[cf.Future[Any]]:
        """Send several protocol requests in one write, in order, without waiting: the
        futures of their replies (the master reads them together: one commit)."""
        if self._closed:
            raise ConnectionLost("client is closed")
        futures: list[cf.Future[Any]] = self._core.requests_nowait(requests)
        return futures

    @property
    def closed(self) -> bool:
        """True once :meth:`close` ran: the client sends nothing more."""
        return self._closed

    @property
    def address(self) -> Address:
        """The master in use (or to be tried next): one of :attr:`addresses`."""
        return self._core.address

    @property
    def connected(self) -> bool:
        """True while the link to the master is up (it reconnects by itself when it drops)."""
        return bool(self._core.connected)

    @property
    def down_for(self) -> float:
        """Seconds since the link to the master was lost and not yet back (0.0 while it is up)."""
        since: float | None = getattr(self._core, "down_since", None)
        return 0.0 if since is None or self._core.connected else max(0.0, time.monotonic() - since)

    def _ask(self, op: str, fields: dict[str, Any], timeout: float = 30.0) -> dict[str, Any]:
        """Send a request and wait (30 s at most, unless told) for its reply fields."""
        reply: dict[str, Any] = self.wait(self.request(op, fields), timeout)
        return reply

    def _task(self, fn: Callable[..., Any] | str, args: tuple[Any, ...], kwargs: dict[str, Any],
              options: dict[str, Any]) -> NewTask:
        options.setdefault("codec", self.codec)
        return make_task(fn, args, kwargs, **options)

    # -- submitting --------------------------------------------------------
    @overload
    def submit(self, fn: Callable[..., Any] | str, /, *args: Any, result: Literal[True] = ...,
               **kwargs: Any) -> TaskFuture: ...

    @overload
    def submit(self, fn: Callable[..., Any] | str, /, *args: Any, result: Literal[False],
               **kwargs: Any) -> str: ...

    def submit(self, fn: Callable[..., Any] | str, /, *args: Any, result: bool = True,
               **kwargs: Any) -> TaskFuture | str:
        """Run ``fn(*args, **kwargs)`` on a worker; returns once the master committed it.

        ``fn`` is a module-level function or a ``"module:function"`` string.
        Keyword arguments named like submit options (``queue``, ``priority``,
        ``countdown``, ``timeout``, ``retries``, ``after``, ``key``... every name
        in ``conveyor.options.OPTIONS``) are options; use :meth:`submit_call` to
        pass such a name (or ``result``) to the task itself. A bad option raises ValueError
        naming it; an argument the codec cannot encode raises TypeError here.

        ``result=False`` is fire-and-forget: it returns the task id (once committed)
        instead of a future, and neither the master nor this client keeps anything
        for the task afterwards (no subscription, no future): what to use for a
        million tasks whose results nobody waits for. :meth:`result` still
        fetches its result by id later.
        """
        call_kwargs, options = split_options(kwargs)
        if not result:
            tid: str = self.submit_call(fn, args, call_kwargs, result=False, **options)
            return tid
        fut: TaskFuture = self.submit_call(fn, args, call_kwargs, **options)
        return fut

    @overload
    def submit_call(self, fn: Callable[..., Any] | str, args: Iterable[Any] = (),
                    kwargs: dict[str, Any] | None = None, *, result: Literal[True] = ...,
                    **options: Any) -> TaskFuture: ...

    @overload
    def submit_call(self, fn: Callable[..., Any] | str, args: Iterable[Any] = (),
                    kwargs: dict[str, Any] | None = None, *, result: Literal[False],
                    **options: Any) -> str: ...

    def submit_call(self, fn: Callable[..., Any] | str, args: Iterable[Any] = (), kwargs: dict[str, Any] | None = None,
                    *, result: bool = True, **options: Any) -> TaskFuture | str:
        """Like :meth:`submit`, with the task's arguments given apart from the options."""
        task = self._task(fn, tuple(args), dict(kwargs or {}), options)
        if not result:
            self.wait(self._send_only([task]))
            return task.id
        futures, committed = self._send([task])
        self.wait(committed)
        return futures[0]

    @overload
    def submit_many(self, fn: Callable[..., Any] | str, arglist: Iterable[Iterable[Any]], *,
                    result: Literal[True] = ..., **options: Any) -> list[TaskFuture]: ...

    @overload
    def submit_many(self, fn: Callable[..., Any] | str, arglist: Iterable[Iterable[Any]], *,
                    result: Literal[False], **options: Any) -> list[str]: ...

    def submit_many(self, fn: Callable[..., Any] | str, arglist: Iterable[Iterable[Any]], *,
                    result: bool = True, **options: Any) -> list[TaskFuture] | list[str]:
        """Submit ``fn(*args)`` for every args in ``arglist`` in batched frames; returns after commit.

        ``result=False``: fire-and-forget (see :meth:`submit`), the task ids instead of futures.
        """
        tasks = [self._task(fn, tuple(args), {}, dict(options)) for args in arglist]
        pending: list[cf.Future[Any]] = []
        if not result:
            for i in range(0, len(tasks), 1000):
                pending.append(self._send_only(tasks[i:i + 1000]))
            for c in pending:
                self.wait(c)
            return [t.id for t in tasks]
        futures: list[TaskFuture] = []
        for i in range(0, len(tasks), 1000):
            fs, committed = self._send(tasks[i:i + 1000])
            futures.extend(fs)
            pending.append(committed)
        for c in pending:
            self.wait(c)
        return futures

    def map(self, fn: Callable[..., Any] | str, *iterables: Iterable[Any], chunksize: int | None = None,
            timeout: float | None = None, window: int | None = None, progress: bool = False,
            **options: Any) -> Iterator[Any]:
        """Yield ``fn(*args)`` for args zipped from ``iterables``, in order, as results arrive.

        Streams: at most ``window`` tasks are outstanding at once (default
        4,000), sent ``chunksize`` to a frame, so mapping over a million
        items holds a bounded number of futures. A task's exception is
        raised when its turn to be yielded comes. ``progress=True`` draws a
        progress bar (tqdm, on stderr) over the whole map.
        """
        batch = max(1, chunksize or 500)
        window = max(batch, window or 4000)
        args_iter = zip(*iterables)
        deadline = None if timeout is None else time.monotonic() + timeout
        queue: deque[TaskFuture] = deque()
        commits: deque[cf.Future[Any]] = deque()

        def fill() -> None:
            while len(queue) < window:
                chunk = list(itertools.islice(args_iter, batch))
                if not chunk:
                    return
                tasks = [self._task(fn, tuple(a), {}, dict(options)) for a in chunk]
                fs, committed = self._send(tasks)
                queue.extend(fs)
                commits.append(committed)

        def gen() -> Iterator[Any]:
            fill()
            while queue:
                f = queue.popleft()
                remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
                value = f.result(remaining)
                while commits and commits[0].done():
                    commits.popleft().result()
                if len(queue) <= window - batch:
                    fill()
                yield value

        if not progress:
            return gen()
        from tqdm import tqdm

        total = min((len(i) for i in iterables if isinstance(i, Sized)), default=None)

        def with_bar() -> Iterator[Any]:
            with tqdm(total=total, unit="task", mininterval=0.2) as bar:
                for value in gen():
                    bar.update(1)
                    yield value

        return with_bar()

    # -- results and status ------------------------------------------------
    def result(self, task_id: str, timeout: float | None = None) -> Any:
        """The result of any task by id: waits for it; NotFound if the master never had it."""
        fut = self.future(task_id)
        return fut.result(timeout)

    def future(self, task_id: str) -> TaskFuture:
        """A future for an existing task by id; NotFound if the master does not know it."""
        fetched = self._core.request(protocol.FETCH, {"ids": [task_id]})
        fut = TaskFuture(task_id, self)
        fut.set_running_or_notify_cancel()
        if fetched["results"]:
            from .. import wire

            self._resolver(fut)(wire.result_from_wire(fetched["results"][0]))
            return fut
        if task_id in fetched["unknown"]:
            raise NotFound(f"no task {task_id!r} on the master (never submitted, or its result expired)")
        self._core.watch(task_id, self._resolver(fut)).result()
        return fut

    def _on_push(self, msg: protocol.Message) -> None:
        if msg.op == protocol.PROGRESS:
            for fut in self._core.waiting(str(msg.fields.get("id"))):  # the futures are the callbacks
                if isinstance(fut, TaskFuture):
                    fut.record_progress({k: msg.fields.get(k) for k in ("done", "total", "message")})

    # -- job control -------------------------------------------------------
    def cancel(self, task_id: str) -> dict[str, list[str]]:
        """Cancel a task by id: ``{"cancelled": [...], "finished": [...], "unknown": [...]}``."""
        return self.cancel_many([task_id])

    def cancel_many(self, task_ids: Iterable[str]) -> dict[str, list[str]]:
        """Cancel many tasks in one request: ``{"cancelled", "finished", "unknown"}`` id lists."""
        return self._ask(protocol.CANCEL, {"ids": list(task_ids)})

    def retry(self, task_ids: Iterable[str] = (), *, queue: str | None = None,
              states: Iterable[str] | None = None) -> dict[str, list[str]]:
        """Send dead (or failed, cancelled) tasks back to their queue: by id, or every dead task of ``queue``.

        Returns ``requeued``, ``skipped`` and ``unknown`` id lists, and ``reasons``:
        why each skipped task was not retried.
        """
        fields: dict[str, Any] = {"ids": list(task_ids), "queue": queue}
        if states is not None:
            fields["states"] = list(states)
        return self._ask(protocol.RETRY, fields)

    def purge(self, *, queue: str | None = None, states: Iterable[str] = ("dead",)) -> int:
        """Delete finished tasks in ``states`` (default dead) of ``queue`` (or every queue)."""
        return int(self._ask(protocol.PURGE, {"queue": queue, "states": list(states)})["n"])

    def inspect(self, task_id: str) -> dict[str, Any]:
        """Everything the master knows about a task: state, attempts, errors, worker, timings,
        progress, dependencies, result. NotFound for an unknown id."""
        task: dict[str, Any] = self._ask(protocol.INSPECT, {"id": task_id})["task"]
        return task

    def tasks(self, *, queue: str | None = None, state: str | None = None, limit: int = 50,
              offset: int = 0, states: Iterable[str] | None = None, name: str | None = None,
              id_prefix: str | None = None, key: str | None = None, created_from: float | None = None,
              created_to: float | None = None, newest_first: bool = False,
              cursor: str | None = None) -> list[dict[str, Any]]:
        """Up to ``limit`` tasks the filter selects, in submit order (``newest_first``: newest first).

        With only ``queue``, ``state`` and ``offset`` it is one page by offset (as
        before). With any other filter field, ``newest_first`` or a ``cursor`` it
        reads keyset pages (:meth:`task_page`) until it has ``limit`` tasks or
        the listing ends; use :meth:`task_page` to keep the cursor.
        """
        flt = filter_fields(states=states, queue=queue, name=name, id_prefix=id_prefix, key=key,
                            created_from=created_from, created_to=created_to)
        if not (set(flt) - {"queue"}) and not newest_first and cursor is None:
            if state is not None:
                flt["state"] = state
            tasks: list[dict[str, Any]] = self._ask(protocol.TASKLIST, {**flt, "limit": limit,
                                                                        "offset": offset})["tasks"]
            return tasks
        if state is not None:
            flt["states"] = [*flt.get("states", []), state]
        if offset:
            raise ValueError("offset pages only by queue and state: use cursor with other filters")
        out: list[dict[str, Any]] = []
        while True:
            page = self._ask(protocol.TASKLIST, page_fields(flt, limit - len(out), cursor, newest_first))
            out.extend(page["tasks"])
            cursor = page["cursor"]
            if cursor is None or len(out) >= limit:
                return out

    def task_page(self, *, states: Iterable[str] | None = None, queue: str | None = None,
                  name: str | None = None, id_prefix: str | None = None, key: str | None = None,
                  created_from: float | None = None, created_to: float | None = None,
                  limit: int = 50, cursor: str | None = None, newest_first: bool = False) -> TaskListing:
        """One keyset page of the tasks the filter selects and the cursor of the next
        (None at the end). A page may be short, even empty, with a cursor: ask again.

        ``states`` (any of them), ``queue``, ``name`` (exact task name), ``id_prefix``,
        ``key`` (the idempotency key given at submit), ``created_from`` <= submit time
        < ``created_to``. A bad argument is an error naming it; each page costs the
        master the same at any depth.
        """
        flt = filter_fields(states=states, queue=queue, name=name, id_prefix=id_prefix, key=key,
                            created_from=created_from, created_to=created_to)
        page = self._ask(protocol.TASKLIST, page_fields(flt, limit, cursor, newest_first))
        return TaskListing(page["tasks"], page["cursor"])

    def count_tasks(self, *, states: Iterable[str] | None = None, queue: str | None = None,
                    name: str | None = None, id_prefix: str | None = None, key: str | None = None,
                    created_from: float | None = None, created_to: float | None = None,
                    cap: int = 10_000) -> TaskCount:
        """How many tasks the filter selects (as :meth:`task_page` takes it): exact when
        ``exact``, else at least ``n`` (counting stopped at ``cap``, or at what one call
        may examine)."""
        flt = filter_fields(states=states, queue=queue, name=name, id_prefix=id_prefix, key=key,
                            created_from=created_from, created_to=created_to)
        reply = self._ask(protocol.COUNT, {**flt, "cap": cap})
        return TaskCount(int(reply["n"]), bool(reply["exact"]))

    def retry_matching(self, *, states: Iterable[str] | None = None, queue: str | None = None,
                       name: str | None = None, id_prefix: str | None = None, key: str | None = None,
                       created_from: float | None = None, created_to: float | None = None) -> dict[str, Any]:
        """Send every finished task the filter selects back to its queue (in batches on
        the master): ``{"n": how many, "ids": the first 1000 of them}``. Tasks whose
        dependency failed are skipped, as in :meth:`retry`."""
        flt = filter_fields(states=states, queue=queue, name=name, id_prefix=id_prefix, key=key,
                            created_from=created_from, created_to=created_to)
        return self._ask(protocol.RETRY_MATCHING, flt, timeout=BULK_TIMEOUT)

    def cancel_matching(self, *, states: Iterable[str] | None = None, queue: str | None = None,
                        name: str | None = None, id_prefix: str | None = None, key: str | None = None,
                        created_from: float | None = None, created_to: float | None = None) -> dict[str, Any]:
        """Cancel every unfinished task the filter selects (in batches on the master;
        running ones are stopped, as :meth:`cancel` does): ``{"n", "ids" (the first 1000)}``."""
        flt = filter_fields(states=states, queue=queue, name=name, id_prefix=id_prefix, key=key,
                            created_from=created_from, created_to=created_to)
        return self._ask(protocol.CANCEL_MATCHING, flt, timeout=BULK_TIMEOUT)

    def gather(self, futures: Iterable[cf.Future[Any]], timeout: float | None = None) -> list[Any]:
        """The results of ``futures`` in order (the first failure raises)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        return [f.result(None if deadline is None else max(0.0, deadline - time.monotonic())) for f in futures]

    def status(self) -> dict[str, Any]:
        """The master's status: queues with counts by state, workers, counters, rates."""
        status: dict[str, Any] = self._core.request(protocol.STATUS, {})
        return status

    def queue(self, name: str, maxsize: int = 0, *, ack: str = "task_done",
              codec: str | None = None, prefetch: int = 1) -> NetworkQueue:
        """A durable network queue with the ``queue.Queue`` interface (see conveyor.client.queues).

        ``ack`` is "task_done" (default: ``task_done()`` acknowledges; an item
        whose consumer dies first is delivered again), "get" (acknowledged
        when handed out) or "auto" (acknowledged when the consumer comes back
        for the next item or exits normally).

        ``prefetch=N`` (with "task_done" or "auto"): one ``get`` leases up to N items,
        the next ``get`` calls take them from memory; items never taken go back to
        the queue on ``release_prefetched()``, close, disconnect or death (see
        conveyor.client.queues). Default 1: nothing prefetched.
        """
        return NetworkQueue(self, name, maxsize, ack=ack, codec=codec, prefetch=prefetch)

    def queues(self) -> list[dict[str, Any]]:
        """Every network queue (declared on the master, or used since it started), by name:
        ``queue``, ``ready``, ``delayed``, ``leased``, ``maxsize`` (0: unbounded),
        ``declared``, and ``consumers`` (connected sessions that got from it)."""
        queues: list[dict[str, Any]] = self._ask(protocol.QLIST, {})["queues"]
        return queues

    def queue_info(self, name: str) -> dict[str, Any]:
        """What the master says of queue ``name``: ``declared`` (it was configured
        with it), its ``maxsize``, and ``queues`` (every declared name)."""
        return self._ask(protocol.QINFO, {"queue": name})

    def executor(self) -> ConveyorExecutor:
        """A ``concurrent.futures.Executor`` that runs calls on the cluster's workers."""
        return ConveyorExecutor(self)

    # -- life cycle --------------------------------------------------------
    def close(self) -> None:
        """Close the connection; futures still pending fail with ConnectionLost.

        Items this client got from ``ack="auto"`` queues and has not
        acknowledged are acknowledged first (closing is a normal end), unless
        it is closed by leaving a ``with`` block with an exception.
        """
        self._close(ack_auto=True)

    def _close(self, ack_auto: bool) -> None:
        if self._closed:
            return
        if ack_auto:
            ack_auto_items(self)
        self._closed = True
        self._core.close()
        lost = ConnectionLost("client closed")
        for fut in self._core.waiting():  # the futures of tasks whose results never came
            if isinstance(fut, TaskFuture) and not fut.done():
                try:
                    fut.set_exception(lost)
                except cf.InvalidStateError:
                    pass

    def __enter__(self) -> Client:
        return self

    def __exit__(self, kind: object, *exc: object) -> None:
        self._close(ack_auto=kind is None)


class ConveyorExecutor(cf.Executor):
    """``concurrent.futures.Executor`` over a Client: code written for
    ``ProcessPoolExecutor`` runs across machines unchanged."""

    def __init__(self, client: Client) -> None:
        self._client = client
        self._futures: set[TaskFuture] = set()
        self._shutdown = False
        self._lock = threading.Lock()

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> cf.Future[Any]:
        """Schedule ``fn(*args, **kwargs)``; every keyword goes to ``fn``."""
        with self._lock:
            if self._shutdown:
                raise RuntimeError("cannot schedule new futures after shutdown")
        fut = self._client.submit_call(fn, args, kwargs)
        with self._lock:
            self._futures.add(fut)
        fut.add_done_callback(self._discard)
        return fut

    def _discard(self, fut: cf.Future[Any]) -> None:
        with self._lock:
            self._futures.discard(fut)

    def map(self, fn: Callable[..., Any], *iterables: Iterable[Any], timeout: float | None = None,
            chunksize: int = 1) -> Iterator[Any]:
        """Like ``Executor.map``, streamed in batches through :meth:`Client.map`."""
        if self._shutdown:
            raise RuntimeError("cannot schedule new futures after shutdown")
        return self._client.map(fn, *iterables, timeout=timeout, chunksize=max(chunksize, 500))

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Refuse new work; with ``cancel_futures``, cancel the submitted tasks that have
        not started (their futures raise CancelledError); with ``wait``, block until the
        rest are done."""
        with self._lock:
            self._shutdown = True
            pending = list(self._futures)
        if cancel_futures:
            self._cancel_not_started(pending)
        if wait:
            cf.wait(pending)

    def _cancel_not_started(self, futures: list[TaskFuture]) -> None:
        """Cancel on the master the tasks of ``futures`` still waiting to run (ready, delayed
        or waiting on dependencies); a task a worker already holds keeps running, as in
        ``concurrent.futures``. States are asked for all at once, then one cancel request."""
        asks = [(f, self._client.request(protocol.INSPECT, {"id": f.task_id}))
                for f in futures if not f.done()]
        ids = []
        for fut, ask in asks:
            try:
                state = ask.result(30)["task"]["state"]
            except Exception:  # its result expired, or the link dropped: nothing left to cancel
                continue
            if state in _NOT_STARTED:
                ids.append(fut.task_id)
        if not ids:
            return
        outcome = self._client.request(protocol.CANCEL, {"ids": ids}).result(30)
        cancelled = set(outcome["cancelled"])
        for fut, _ in asks:
            if fut.task_id in cancelled:
                fut.mark_cancelled()


def connect(address: AddressesLike | None = None, authkey: bytes | str | None = None,
            **kwargs: Any) -> Client:
    """Connect to a master; ``address`` is ``host:port``, ``tcp://host:port`` or ``tls://host:port``,
    or several masters of one cluster: a list of them or a comma-separated string
    (``["a:7700", "b:7700"]``, ``"a:7700,b:7700"``).

    With several, the first that answers is used, and when it fails (closed, or
    silent for about 3 s) the client moves to the next; pending futures still
    complete. ``authkey`` defaults to ``CONVEYOR_AUTHKEY``; ``address`` to
    ``CONVEYOR_ADDRESS`` or 127.0.0.1:7700. Raises ConnectionLost if no master
    can be reached and AuthenticationError if the keys differ.
    """
    return Client(address, authkey, **kwargs)


def as_completed(futures: Iterable[cf.Future[Any]], timeout: float | None = None) -> Iterator[cf.Future[Any]]:
    """Yield futures as they finish (``concurrent.futures.as_completed``, for conveyor futures)."""
    return cf.as_completed(futures, timeout)
