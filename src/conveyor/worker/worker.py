"""The worker: takes tasks from the master within the credit it grants, runs
them in a pool, and reports results until the master has them.

Credit (the window) is the number of tasks the worker is willing to hold:
running plus prefetched. By default it is the slots alone until tasks prove
short, then the slots plus about 100 ms of queued work
(:func:`conveyor.timing.credit_window`), so a burst of long tasks is shared
among workers while no-op tasks still flow in large batches. The worker tells
the master which tasks actually started (a batched ``started`` report), so the
master can tell running from prefetched work. Once every slot has been busy
with one attempt for longer than the prefetch target and twice the learned mean
(:func:`conveyor.timing.effective_duration`), the window is the slots alone: the
prefetched tasks beyond it are handed back and the unused credit revoked, so a
worker that learned short tasks does not sit on long ones that an idle worker
could run.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import ssl
import threading
import time
from typing import Any

from .. import loops, middleware, protocol, serde, timing, wire
from ..auth import as_key
from ..errors import (
    AuthenticationError,
    ConnectionLost,
    FrameTooLarge,
    ProtocolError,
    RemoteError,
    SerializationError,
)
from ..hooks import WORKER_START, WORKER_STOP, run_hooks
from ..link import AddressesLike, parse_addresses
from ..link.aio import AsyncLink
from ..options import headers_of
from ..periodic import hello_entries
from ..records import Outcome
from ..retries import decide
from ..serde import MSGPACK, PICKLE
from .lifecycle import Lifecycle
from .pool import Job, JobResult, make_pool
from .tasklog import TaskLog

log = logging.getLogger("conveyor.worker")


class Worker:
    """Runs tasks from ``modules`` for the master at ``address``.

    ``queues`` are served in the order given (the first with work wins).
    ``pool`` is "process" (default: a crashing or hung task cannot take the
    worker down) or "thread". ``prefetch`` fixes the credit window instead
    of adapting it. ``lifecycle`` recycles and autoscales the pool's children
    (see :mod:`conveyor.worker.lifecycle`; not for the thread pool).

    Each task event is logged under ``conveyor.worker.tasks`` (see
    :mod:`conveyor.worker.tasklog`); ``on_worker_start`` hooks run once the pool
    started, ``on_worker_stop`` hooks once it stopped (see :mod:`conveyor.hooks`).
    """

    def __init__(
        self,
        modules: list[str],
        address: AddressesLike,
        authkey: bytes | str | None,
        *,
        queues: list[str] | None = None,
        weights: list[int] | None = None,
        concurrency: int | None = None,
        pool: str = "process",
        prefetch: int | None = None,
        allow_pickle: bool = False,
        ssl_context: ssl.SSLContext | None = None,
        heartbeat: float = timing.HEARTBEAT,
        name: str | None = None,
        lifecycle: Lifecycle | None = None,
    ) -> None:
        if not modules:
            raise ValueError("a worker needs at least one module of tasks")
        self.modules = list(modules)
        self.addresses = parse_addresses(address)
        self.authkey = as_key(authkey)
        self.queues = list(queues or ["default"])
        if weights is not None and (len(weights) != len(self.queues) or any(w < 1 for w in weights)):
            raise ValueError("weights must be positive integers, one per queue")
        self.weights = list(weights) if weights is not None else None
        self.concurrency = concurrency or os.cpu_count() or 1
        if self.concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        if prefetch is not None and prefetch < 1:
            raise ValueError("prefetch must be at least 1")
        self.pool_kind = pool
        self.prefetch = prefetch
        self.allow_pickle = allow_pickle
        self.ssl_context = ssl_context
        self.heartbeat = heartbeat
        self.name = name or f"{socket.gethostname()}-{os.getpid()}"
        self.lifecycle = lifecycle
        if lifecycle is not None and lifecycle.autoscale is not None:
            self.concurrency = lifecycle.autoscale[1]  # credit is sized for the most children
        self._tasklog = TaskLog(allow_pickle)
        self.completed = 0
        self._pool: Any = None
        self._core: AsyncLink | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._outstanding = 0  # credit granted and not yet used up by a finished task
        self._acks: list[list[Any]] = []
        self._held: dict[str, tuple[dict[str, Any], int, str]] = {}  # task id -> (options, earlier failures, name)
        self._cancelled: set[str] = set()  # cancelled by the master: report nothing for them
        self._loop_thread: int | None = None  # ident of the thread running the loop
        self._inbox: list[JobResult] = []  # results from pool threads, for the loop
        self._inbox_lock = threading.Lock()
        self._starts: list[list[Any]] = []  # [id, token] of tasks the pool began, not yet reported
        self._starts_lock = threading.Lock()  # guards _starts and _running_since
        self._running_since: dict[str, float] = {}  # task id -> monotonic time the pool began it
        self._rebalance_timer: asyncio.TimerHandle | None = None
        self._unconfirmed: set[asyncio.Future[Any]] = set()
        self._stopping = False
        self._stopped = asyncio.Event()
        self._signals = 0
        # Leases this worker holds (task id -> token): received and not yet settled with an
        # answered ack, hand-back or cancellation. After a reconnect or a stall they are
        # claimed again (the ``adopt`` op), and no prefetched task starts until the master
        # has answered for the session we are on (``_confirmed``).
        self._leases: dict[str, int] = {}
        self._confirmed: str | None = None
        self._stalls = 0  # stalls seen so far: an adopt answer older than the last one confirms nothing
        self._last_tick = time.monotonic()
        self._ticker: asyncio.TimerHandle | None = None
        self._lost: set[str] = set()  # running tasks whose lease was lost: their results are dropped

    # -- window ------------------------------------------------------------
    def window(self) -> int:
        """How many tasks this worker is willing to hold right now."""
        if self.prefetch is not None:
            return timing.credit_window(self.concurrency, 0.0, self.prefetch)
        avg = self._pool.avg_duration if self._pool is not None else 0.0
        now = time.monotonic()
        with self._starts_lock:
            ages = [now - t for t in self._running_since.values()]
        return timing.credit_window(self.concurrency, timing.effective_duration(avg, ages, self.concurrency))

    def _arm_rebalance(self) -> None:
        """Look again soon whether the pool holds more prefetched tasks than the window allows."""
        if self._rebalance_timer is None and self.prefetch is None and self._loop is not None:
            self._rebalance_timer = self._loop.call_later(timing.REBALANCE_EVERY, self._rebalance)

    def _rebalance(self) -> None:
        """Hand back the prefetched tasks beyond the window (it shrinks while long tasks run)."""
        self._rebalance_timer = None
        if self._stopping or self._pool is None or not self._pool.pending():
            return  # armed again when tasks arrive
        window = self.window()
        surplus = timing.prefetch_surplus(window, self._pool.running(), self._pool.pending())
        if surplus:
            pending = self._pool.discard_pending()
            keep = max(0, len(pending) - surplus)
            if keep:
                self._pool.submit(pending[:keep])
            log.debug("handing back %d prefetched task(s): every slot is busy with long tasks",
                      len(pending) - keep)
            self._hand_back(pending[keep:])
        self._revoke_above(window)
        self._arm_rebalance()

    def _revoke_above(self, window: int) -> None:
        """Take back credit beyond ``window`` that the master has not used yet, so what was
        handed back is not pushed to this worker again (it goes to one with room)."""
        if self._core is None or not self._core.connected or self._pool is None:
            return
        held = self._pool.running() + self._pool.pending()
        unused = self._outstanding - held  # credit at the master, or tasks on their way
        revoke = min(unused, self._outstanding - max(window, held))
        if revoke > 0:
            self._outstanding -= revoke
            self._core.push(protocol.CREDIT, {"n": 0, "revoke": revoke})

    def _top_up(self) -> None:
        if self._stopping or self._core is None or not self._core.connected:
            return
        want = self.window() - self._outstanding
        if want > 0:
            self._outstanding += want
            self._core.push(protocol.CREDIT, {"n": want})

    # -- connection events -------------------------------------------------
    def _on_connect(self) -> None:
        """A new session: claim the leases we still hold (running, prefetched, results not
        yet acknowledged) before the unanswered acks are resent; prefetched tasks wait for
        the answer."""
        assert self._core is not None
        running = self._pool.running() if self._pool is not None else 0
        pending = self._pool.pending() if self._pool is not None else 0
        self._outstanding = running + pending
        if self._leases:
            self._claim(reconnected=True)
        else:
            self._confirmed = self._core.session
        if self._stopping:
            return
        # Credit must follow the resent acks' requests, so defer one loop turn.
        asyncio.get_running_loop().call_soon(self._top_up)

    # -- lease confirmation: after a reconnect or a stall ----------------------
    def _may_start(self) -> bool:
        """The pool's start gate (any thread, under the pool's lock: flags only). A
        prefetched task starts only on a session whose leases the master confirmed, and
        not after a stall long enough for the master to have presumed us gone."""
        core = self._core
        if core is None:
            return True
        if self._confirmed is not None and time.monotonic() - self._last_tick > self._stall_after():
            self._stalled()  # (once: the ticker notices any later stall)
        return core.connected and self._confirmed is not None and self._confirmed == core.session

    def _stall_after(self) -> float:
        """A loop silence this long may have outlived our session at the master: it reaps
        a worker silent for its heartbeat timeout (``timing.worker_stall_after``)."""
        return timing.worker_stall_after(self._core.master_timeout if self._core is not None else None)

    def _stalled(self) -> None:
        """We were stalled (SIGSTOP, a paused VM, a long GC): hold every prefetched task
        until the master says which leases are still ours."""
        self._stalls += 1
        self._confirmed = None
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        try:
            if threading.get_ident() == self._loop_thread:
                loop.call_soon(self._claim, False)
            else:
                loop.call_soon_threadsafe(self._claim, False)
        except RuntimeError:  # the loop is closing
            pass

    def _tick(self) -> None:
        """Note that the loop runs; a late tick is a stall."""
        now = time.monotonic()
        if now - self._last_tick > self._stall_after():
            log.warning("this worker was stalled for %.1fs: holding its prefetched tasks until "
                        "the master confirms their leases", now - self._last_tick)
            self._stalled()
        self._last_tick = now
        if self._loop is not None and not self._stopped.is_set():
            self._ticker = self._loop.call_later(min(0.25, self._stall_after() / 4), self._tick)

    def _claim(self, reconnected: bool) -> None:
        """Ask the master to keep the leases we hold (``adopt``); see :meth:`_claimed`."""
        core = self._core
        if core is None:
            return
        pairs = [[tid, token] for tid, token in self._leases.items()]
        session, stalls = core.session, self._stalls
        if not pairs:
            self._confirm(session, stalls)
            return
        parts = [pairs[i:i + wire.MAX_BATCH] for i in range(0, len(pairs), wire.MAX_BATCH)]
        futures = [core.request_nowait(protocol.ADOPT, {"leases": part}) for part in parts]
        gathered = asyncio.gather(*futures, return_exceptions=True)
        gathered.add_done_callback(
            lambda f: None if f.cancelled() else self._claimed(f.result(), session, stalls, reconnected))

    def _claimed(self, replies: list[Any], session: str | None, stalls: int, reconnected: bool) -> None:
        """The master answered our claim: drop what it says we lost, then start the rest."""
        lost: set[str] = set()
        for reply in replies:
            if isinstance(reply, RemoteError):
                # A master without adopt (an older one): after a reconnect it handed back
                # every lease of the old session, so the prefetched tasks are not ours;
                # after a stall on the same session they still are.
                log.warning("the master cannot confirm leases (%s)", reply)
                if reconnected:
                    with self._starts_lock:
                        running = set(self._running_since)
                    lost.update(set(self._leases) - running)
            elif isinstance(reply, BaseException):
                return  # the connection dropped again: the next connection claims again
            else:
                lost.update(tid for tid in reply.get("lost") or () if isinstance(tid, str))
        if lost:
            self._drop_lost(lost)
        self._confirm(session, stalls)

    def _drop_lost(self, lost: set[str]) -> None:
        """Leases the master gave to someone else: prefetched ones are never started,
        running ones finish but report nothing."""
        dropped = self._pool.discard(lost) if self._pool is not None else []
        for job in dropped:
            self._held.pop(job.id, None)
        self._tasklog.forget([job.id for job in dropped])
        self._outstanding -= len(dropped)
        gone = {job.id for job in dropped}
        with self._starts_lock:
            running = lost & set(self._running_since)
        self._lost.update(running - gone)
        for tid in lost:
            self._leases.pop(tid, None)
        if dropped:
            log.warning("dropped %d prefetched task(s) whose lease this worker lost", len(dropped))

    def _confirm(self, session: str | None, stalls: int) -> None:
        core = self._core
        if core is None or stalls != self._stalls or session != core.session:
            return  # stalled again, or another connection since: that one's claim decides
        self._confirmed = session
        if self._pool is not None:
            self._pool.resume()

    def _on_message(self, msg: protocol.Message) -> None:
        if msg.op == protocol.CANCEL:
            self._cancel(msg.fields.get("ids") or [])
            return
        if msg.op != protocol.TASKS:
            return
        jobs = []
        undecodable: list[JobResult] = []
        for item in msg.fields.get("tasks", ()):
            try:
                task = wire.lease_from_wire(item)
            except (ProtocolError, TypeError, ValueError) as exc:
                log.warning("ignoring a malformed task from the master: %s", exc)
                continue
            self._leases[task.id] = task.token
            payload = task.payload
            if task.upstream is not None:
                try:
                    payload = self._with_upstream(payload, task.codec, task.upstream)
                except Exception as exc:  # a result this worker cannot (or must not) decode
                    # Fail it, with the reason, rather than keep its lease forever.
                    log.warning("task %s: cannot decode its upstream results: %s", task.id, exc)
                    error = SerializationError(f"cannot decode the upstream results of task "
                                               f"{task.id} on this worker: {exc}")
                    undecodable.append(JobResult(task.id, task.token, False, serde.encode_error(error),
                                                 MSGPACK, 0.0))
                    continue
            self._held[task.id] = (task.options, task.failures, task.name or "")
            jobs.append(Job(task.id, task.token, task.name or "", payload, task.codec, task.options))
        if undecodable:
            self._on_results(undecodable)  # final failures: not in _held, so never retried
        if not jobs:
            return
        self._tasklog.received(jobs)
        if self._stopping:
            self._hand_back(jobs)
            return
        self._pool.submit(jobs)
        self._arm_rebalance()

    def _with_upstream(self, payload: bytes, codec: str, upstream: list[Any]) -> bytes:
        """A ``pass_results`` task gets its dependencies' results as its first argument."""
        allow = self.allow_pickle
        values = [serde.decode(p, c, allow_pickle=allow) for ok, p, c in upstream]
        args, kwargs = serde.decode_call(payload, codec, allow_pickle=allow)
        return serde.encode_call((values, *args), kwargs, codec)

    def _cancel(self, ids: list[str]) -> None:
        """The master cancelled tasks we hold: drop them, stopping any that run."""
        wanted = {tid for tid in ids if tid in self._held}
        for tid in wanted:
            self._held.pop(tid, None)
            self._leases.pop(tid, None)
        self._cancelled.update(wanted)
        cancel = getattr(self._pool, "cancel", None)
        for tid in wanted:
            if cancel is not None and cancel(tid):
                log.info("stopped cancelled task %s", tid)

    def _hand_back(self, jobs: list[Job]) -> None:
        for job in jobs:
            self._held.pop(job.id, None)
            self._leases.pop(job.id, None)
        self._tasklog.forget([job.id for job in jobs])
        if not jobs or self._core is None:
            return
        self._outstanding -= len(jobs)
        fut = self._core.request_nowait(protocol.RETURN, {"leases": [[j.id, j.token] for j in jobs]})
        self._track(fut)

    # -- started reports ---------------------------------------------------
    def _started_from_pool(self, jobs: list[Job]) -> None:
        """The pool began these jobs (on the loop or a pool thread): report them in one
        ``started`` push per :data:`~conveyor.timing.STARTED_REPORT_DELAY`, whatever number
        of batches began meanwhile, leaving out the ones that finished by then."""
        now = time.monotonic()
        with self._starts_lock:
            first = not self._starts
            self._starts.extend([j.id, j.token] for j in jobs)
            for j in jobs:
                self._running_since[j.id] = now
        if not first:
            return  # a flush is already scheduled
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        delay = timing.STARTED_REPORT_DELAY
        try:
            if threading.get_ident() == self._loop_thread:
                loop.call_later(delay, self._flush_starts)
            else:
                loop.call_soon_threadsafe(loop.call_later, delay, self._flush_starts)
        except RuntimeError:  # the loop is closing
            pass

    def _flush_starts(self) -> None:
        with self._starts_lock:
            running = self._running_since
            starts = [s for s in self._starts if s[0] in running]  # the rest already finished
            self._starts = []
        # Not resent after a reconnect: the new session starts with no leases of ours.
        if starts and self._core is not None and self._core.connected:
            self._core.push(protocol.STARTED, {"leases": starts})

    # -- results -----------------------------------------------------------
    def _results_from_pool(self, results: list[JobResult]) -> None:
        """Called on the loop (a process pool driven from it) or on pool threads."""
        if threading.get_ident() == self._loop_thread:
            self._on_results(results)
            return
        # From threads: one wake-up of the loop takes everything that arrived meanwhile.
        with self._inbox_lock:
            self._inbox.extend(results)
            if len(self._inbox) > len(results):
                return  # a wake-up is already scheduled
        loop = self._loop
        if loop is not None and not loop.is_closed():
            try:
                loop.call_soon_threadsafe(self._take_inbox)
            except RuntimeError:
                pass

    def _take_inbox(self) -> None:
        with self._inbox_lock:
            results, self._inbox = self._inbox, []
        if results:
            self._on_results(results)

    def _progress_from_pool(self, report: dict[str, Any]) -> None:
        """Called on the loop or on pool threads: pass a task's progress report to the master."""
        if threading.get_ident() == self._loop_thread:
            if self._core is not None:
                self._core.push(protocol.PROGRESS, report)
            return
        loop = self._loop
        if loop is not None and not loop.is_closed() and self._core is not None:
            try:
                loop.call_soon_threadsafe(self._core.push, protocol.PROGRESS, report)
            except RuntimeError:
                pass

    def _on_results(self, results: list[JobResult]) -> None:
        with self._starts_lock:
            for r in results:
                self._running_since.pop(r.id, None)
        done: list[tuple[JobResult, dict[str, Any] | None]] = []  # their log lines, written together
        for r in results:
            if r.id in self._cancelled:
                self._cancelled.discard(r.id)  # the master already finished it as cancelled
                self._tasklog.cancelled(r.id)
                continue
            if r.id in self._lost:
                self._lost.discard(r.id)  # another worker holds its lease now: not ours to settle
                self._held.pop(r.id, None)
                log.info("task %s finished after its lease was lost: result dropped", r.id)
                continue
            held = self._held.pop(r.id, None)
            retry = None
            if not r.ok and held is not None:
                error = serde.decode_error(r.payload)
                retry = decide(held[0], held[1], error)
                if retry is not None and "delay" in retry and middleware.active():
                    middleware.on_retry(middleware.TaskCall(r.id, held[2], r.token, headers_of(held[0])),
                                        error, float(retry["delay"]))
            self._acks.append(wire.outcome_to_wire(Outcome(r.id, r.token, r.ok, r.payload, r.codec, r.output),
                                                   retry))
            done.append((r, retry))
        self._tasklog.finished_many(done)
        self.completed += len(results)
        self._outstanding -= len(results)
        # Written in this same loop turn: results that arrived together came in one call.
        self._flush()
        if self._stopping:
            # The pool counts these results as done only once this callback returns.
            asyncio.get_running_loop().call_soon(self._maybe_finished)

    def _flush(self) -> None:
        if self._acks and self._core is not None:
            batch, self._acks = self._acks, []
            self._send_acks(batch)
        self._top_up()
        self._maybe_finished()

    def _send_acks(self, batch: list[list[Any]]) -> None:
        """Send results. A batch over the master's frame limit goes in halves; a single
        result over it could never be stored, so its task fails with FrameTooLarge
        (sent instead, once) rather than coming back when its lease expires, to run and
        fail the same way again."""
        assert self._core is not None
        try:
            # An ack unanswered when the connection drops is resent after the
            # reconnect: results of finished tasks are kept until the master has them.
            fut = self._core.request_nowait(protocol.ACK, {"results": batch})
        except FrameTooLarge as exc:
            if len(batch) > 1:
                half = len(batch) // 2
                self._send_acks(batch[:half])
                self._send_acks(batch[half:])
                return
            tid, token = batch[0][0], batch[0][1]
            log.error("task %s: its result is too large for the master: %s", tid, exc)
            error = serde.encode_error(FrameTooLarge(f"the task's result is too large to store: {exc}"))
            self._send_acks([[tid, token, False, error, "msgpack", None]])
            return
        settled = [(item[0], item[1]) for item in batch]
        fut.add_done_callback(lambda _f: self._settled(settled))
        self._track(fut)

    def _settled(self, pairs: list[tuple[str, int]]) -> None:
        """The master answered an ack: those leases are no longer ours to claim."""
        for tid, token in pairs:
            if self._leases.get(tid) == token:
                del self._leases[tid]

    def _track(self, fut: asyncio.Future[Any]) -> None:
        self._unconfirmed.add(fut)

        def done(f: asyncio.Future[Any]) -> None:
            self._unconfirmed.discard(f)
            if not f.cancelled() and f.exception() is not None:
                log.warning("master refused a report: %s", f.exception())
            self._maybe_finished()

        fut.add_done_callback(done)

    def _maybe_finished(self) -> None:
        if (self._stopping and not self._unconfirmed and not self._acks
                and self._pool is not None and self._pool.running() == 0 and self._pool.pending() == 0):
            self._stopped.set()

    # -- shutdown ----------------------------------------------------------
    def request_stop(self, cold: bool = False) -> None:
        """Warm stop: finish running tasks, hand back prefetched ones. Cold: stop now."""
        if cold:
            log.warning("cold shutdown: killing running tasks (the master will run them again)")
            if self._pool is not None:
                self._pool.shutdown(wait=False)
            self._stopped.set()
            self._cold = True
            return
        if self._stopping:
            return
        self._stopping = True
        log.info("warm shutdown: finishing %d running task(s); press Ctrl+C again to stop now",
                 self._pool.running() if self._pool else 0)
        if self._pool is not None:
            self._hand_back(self._pool.discard_pending())
        self._maybe_finished()

    def _on_signal(self) -> None:
        self._signals += 1
        self.request_stop(cold=self._signals > 1)

    # -- main --------------------------------------------------------------
    async def main(self, *, install_signals: bool = True) -> None:
        """Connect, serve until stopped, shut down."""
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        self._cold = False
        # A process pool drives its children from this loop: no thread hand-offs per task.
        self._pool = make_pool(self.pool_kind, self.concurrency, self.modules, self._results_from_pool,
                               allow_pickle=self.allow_pickle, loop=self._loop, lifecycle=self.lifecycle)
        self._pool.set_progress_callback(self._progress_from_pool)
        self._pool.set_started_callback(self._started_from_pool)
        self._pool.set_start_gate(self._may_start)
        await self._loop.run_in_executor(None, self._pool.start)
        try:
            await self._loop.run_in_executor(None, lambda: run_hooks(WORKER_START, stop_on_error=True))
        except BaseException:
            self._pool.shutdown(wait=False)
            raise
        if install_signals:
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._loop.add_signal_handler(sig, self._on_signal)
        self._core = AsyncLink(
            self.addresses, self.authkey, role="worker", ssl_context=self.ssl_context,
            heartbeat=self.heartbeat, on_message=self._on_message, on_connect=self._on_connect,
            hello={"name": self.name, "queues": self.queues, "weights": self.weights,
                   "concurrency": self.concurrency, "pool": self.pool_kind, "loop": loops.name(),
                   "codecs": [MSGPACK, PICKLE] if self.allow_pickle else [MSGPACK],
                   "periodic": hello_entries(self.modules)},  # @conveyor.periodic schedules
        )
        self._last_tick = time.monotonic()
        self._tick()
        try:
            await self._connect_first()
            log.info("worker %s serving %s with %d %s slot(s) from %s",
                     self.name, ",".join(self.queues), self.concurrency, self.pool_kind, self._core.address)
            await self._stopped.wait()
        finally:
            if self._rebalance_timer is not None:
                self._rebalance_timer.cancel()
                self._rebalance_timer = None
            if self._ticker is not None:
                self._ticker.cancel()
                self._ticker = None
            if self._cold or not self._stopping:
                self._pool.shutdown(wait=False)
            else:
                await self._loop.run_in_executor(None, self._pool.shutdown, True)
            await self._core.close()
            await self._loop.run_in_executor(None, lambda: run_hooks(WORKER_STOP, stop_on_error=False))
            log.info("worker %s stopped after %d task(s)", self.name, self.completed)

    async def _connect_first(self) -> None:
        """Wait for a master to answer at start-up, saying so while it does not."""
        assert self._core is not None
        delay = timing.FIRST_CONNECT_FIRST
        while True:
            try:
                await self._core.connect()
                return
            except AuthenticationError:
                raise
            except (ConnectionLost, OSError, RemoteError) as exc:
                if self._stopped.is_set() or self._stopping:
                    raise
                log.warning("%s; retrying in %.1fs", exc, delay)
                try:
                    await asyncio.wait_for(self._stopped.wait(), delay)
                    raise ConnectionLost("stopped before the master was reached")
                except TimeoutError:
                    pass
                delay = timing.next_backoff(delay, maximum=timing.FIRST_CONNECT_MAX)

    def run(self) -> None:
        """Run the worker in this thread until a signal stops it."""
        loops.run(self.main())
