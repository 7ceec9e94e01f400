"""The execution pools a worker runs its tasks in.

Two kinds share one interface (``start``, ``submit``, ``discard_pending``,
``pending``, ``running``, ``avg_duration``, ``shutdown``):

- :class:`ProcessPool` (the default): ``concurrency`` child processes started
  with the ``spawn`` method. A task that crashes its process (``os._exit``, a
  signal, the OOM killer) fails with :class:`~conveyor.errors.WorkerCrashed`
  and a task past its ``timeout`` option is killed and fails with
  :class:`~conveyor.errors.TaskTimeout`; either way a fresh child replaces the
  lost one and the pool keeps serving.
- :class:`ThreadPool`: ``concurrency`` threads in the worker's own process.
  Cheaper, but it contains nothing: a task that crashes the process takes the
  whole worker down, and a thread cannot be stopped, so a task past its time
  limit keeps running and is only reported as timed out when it returns.

Either pool finds a task's function only through a
:class:`~conveyor.tasks.Registry` built from the worker's modules; nothing
named in a task message is ever imported. Jobs and results cross the
parent/child pipe as msgpack, never pickle; task payloads are decoded with
pickle only when the pool was created with ``allow_pickle=True``.

Results are handed to ``on_results(list_of_results)`` from the pool's own
threads (a thread pool's slots; a process pool's event loop, see
:class:`ProcessPool`); the callback must be thread-safe and quick.
"""

from __future__ import annotations

import asyncio
import atexit
import collections
import importlib
import logging
import multiprocessing
import multiprocessing.connection
import os
import signal
import struct
import sys
import threading
import time
import weakref
from collections.abc import Callable, Set
from dataclasses import dataclass, field
from typing import Any

from .. import loops, serde
from ..context import CurrentTask, set_current
from ..errors import SerializationError, SoftTimeLimitExceeded, TaskTimeout, WorkerCrashed
from ..tasks import Registry

__all__ = ["Job", "JobResult", "ProcessPool", "ThreadPool", "make_pool", "POOL_KINDS"]

log = logging.getLogger("conveyor.worker.pool")

POOL_KINDS = ("process", "thread")

#: Most jobs a slot takes as one batch while tasks are very short.
MAX_BATCH = 64
#: Below this mean run time (seconds) jobs are batched.
BATCH_BELOW = 0.001
#: Weight of the newest run time in :attr:`avg_duration`.
EWMA_ALPHA = 0.1
#: How long a new child may take to import the task modules.
STARTUP_TIMEOUT = 60.0
#: How long a child may take to exit after it was asked to.
EXIT_TIMEOUT = 5.0
#: How often a waiting slot thread looks at its flags.
_TICK = 0.5

OnResults = Callable[[list["JobResult"]], None]
OnProgress = Callable[[dict[str, Any]], None]
CANCELLED_MESSAGE = "task was cancelled"


@dataclass(slots=True)
class Job:
    """One leased task to run."""

    id: str
    token: int
    name: str
    payload: bytes
    codec: str
    options: dict = field(default_factory=dict)


@dataclass(slots=True)
class JobResult:
    """What to report to the master about one job.

    ``ok``: ``payload`` is the return value encoded with the job's codec.
    Not ok: ``payload`` is :func:`conveyor.serde.encode_error` (msgpack) and
    ``codec`` is ``"msgpack"``. ``duration`` is how long the function ran in
    seconds (0 if it never started).
    """

    id: str
    token: int
    ok: bool
    payload: bytes
    codec: str
    duration: float = 0.0


# -- running one call (in a child process or a pool thread) ---------------------------

def _encode_error(exc: BaseException) -> bytes:
    try:
        return serde.encode_error(exc)
    except Exception:  # a __str__ that raises, say
        return serde.packb({"type": type(exc).__name__, "message": "(unprintable error)",
                            "traceback": ""})


def _execute(registry: Registry, name: str, payload: bytes, codec: str,
             allow_pickle: bool, current: CurrentTask | None = None,
             soft_timeout: float | None = None) -> tuple[bool, bytes, str, float]:
    """Run one task: ``(ok, payload, codec, duration)``. Never raises.

    ``current`` is what ``conveyor.current_task()`` returns meanwhile. A
    ``soft_timeout`` (process pools only: it needs the main thread's signals)
    raises SoftTimeLimitExceeded inside the task when it passes.
    """
    duration = 0.0
    set_current(current)
    try:
        if codec not in serde.CODECS:
            raise SerializationError(f"unknown codec {codec!r}: this worker knows {', '.join(serde.CODECS)}")
        fn = registry.resolve(name)
        args, kwargs = serde.decode_call(payload, codec, allow_pickle=allow_pickle)
        start = time.perf_counter()
        if soft_timeout:
            signal.setitimer(signal.ITIMER_REAL, soft_timeout)
        try:
            value = fn(*args, **kwargs)
        finally:
            if soft_timeout:
                signal.setitimer(signal.ITIMER_REAL, 0)
            duration = time.perf_counter() - start
        return True, serde.encode(value, codec), codec, duration
    except BaseException as exc:  # SystemExit from a task is its failure, not ours
        return False, _encode_error(exc), serde.MSGPACK, duration
    finally:
        set_current(None)


def _soft_limit(signum: int, frame: Any) -> None:
    raise SoftTimeLimitExceeded("the task's soft time limit passed")


def _failed(job: Job, exc: BaseException, duration: float = 0.0) -> JobResult:
    return JobResult(job.id, job.token, False, _encode_error(exc), serde.MSGPACK, duration)


def _timeout_of(options: Any) -> float | None:
    """The ``timeout`` option in seconds, or None when absent or not a positive number."""
    if not isinstance(options, dict):
        return None
    value = options.get("timeout")
    if value is None or isinstance(value, bool):
        return None
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        return None
    return seconds if seconds > 0 else None


def _soft_timeout_of(options: Any) -> float | None:
    """The ``soft_timeout`` option in seconds, or None."""
    if not isinstance(options, dict):
        return None
    value = options.get("soft_timeout")
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        return None
    return float(value)


class CancelledTask(Exception):
    """Reported for a job the master cancelled (the master already has its final state)."""


def _timeout_error(name: str, seconds: float) -> TaskTimeout:
    return TaskTimeout(f"task {name} exceeded its time limit of {seconds:g}s")


def _load_registry(modules: list[str]) -> Registry:
    """Import the task modules (cwd importable), naming the module that fails."""
    if "" not in sys.path and "." not in sys.path:
        sys.path.insert(0, "")
    for modname in modules:
        try:
            importlib.import_module(modname)
        except Exception as exc:
            raise ImportError(f"cannot import task module {modname!r}: {type(exc).__name__}: {exc}",
                              name=modname) from exc
    return Registry.from_modules(modules)


# -- the shared queue and bookkeeping -------------------------------------------------

@dataclass(slots=True)
class _Entry:
    job: Job
    timeout: float | None
    soft: float | None = None  # the soft_timeout option
    alone: bool = False  # a soft time limit, or requeued after a crash in a batch: run it by itself


class _Core:
    """Pending jobs, counters and the run-time average shared by a pool's slots."""

    def __init__(self, concurrency: int, modules: list[str], on_results: OnResults,
                 allow_pickle: bool) -> None:
        if not isinstance(concurrency, int) or isinstance(concurrency, bool) or concurrency < 1:
            raise ValueError(f"concurrency must be a positive integer, not {concurrency!r}")
        self.on_progress: OnProgress | None = None
        self.concurrency = concurrency
        self.modules = list(modules)
        self.on_results = on_results
        self.allow_pickle = allow_pickle
        self.cond = threading.Condition()
        self.pending_jobs: collections.deque[_Entry] = collections.deque()
        self.in_flight = 0
        self.avg = 0.0
        self.samples = 0
        self.started = False
        self.closing = False  # no new batches are started
        self.killed = False  # results of running batches are dropped
        self.threads: list[threading.Thread] = []

    # called by the pool's user
    def submit(self, jobs: list[Job]) -> None:
        entries = []
        for job in jobs:
            soft = _soft_timeout_of(job.options)
            entries.append(_Entry(job, _timeout_of(job.options), soft, soft is not None))
        with self.cond:
            if self.closing:
                raise RuntimeError("the pool is shut down")
            self.pending_jobs.extend(entries)
            self.cond.notify(len(entries))
        self.kick()

    def kick(self) -> None:
        """Jobs became pending (slot threads waiting on ``cond`` were notified already)."""

    def discard_pending(self) -> list[Job]:
        with self.cond:
            jobs = [entry.job for entry in self.pending_jobs]
            self.pending_jobs.clear()
        return jobs

    def cancel(self, task_id: str) -> bool:
        """Cancel a job: pending ones are reported cancelled at once, running ones stopped
        where the pool can stop them. False if the pool does not hold it or cannot stop it."""
        with self.cond:
            for entry in self.pending_jobs:
                if entry.job.id == task_id:
                    self.pending_jobs.remove(entry)
                    self.in_flight += 1
                    break
            else:
                entry = None
        if entry is not None:
            self.report([entry], [_failed(entry.job, CancelledTask(CANCELLED_MESSAGE))])
            return True
        return self.cancel_running(task_id)

    def cancel_running(self, task_id: str) -> bool:
        return False  # threads cannot be stopped

    def progress(self, report: dict) -> None:
        """A running task reported progress."""
        if self.on_progress is not None and not self.killed:
            try:
                self.on_progress(report)
            except Exception:
                log.exception("the pool's on_progress callback failed")

    def pending(self) -> int:
        return len(self.pending_jobs)

    def running(self) -> int:
        return self.in_flight

    # called by slot threads
    def take_batch(self) -> list[_Entry] | None:
        """Wait for work; None once the pool is closing (pending jobs stay unstarted)."""
        with self.cond:
            while not self.pending_jobs and not self.closing:
                self.cond.wait(_TICK)
            return self.take_batch_locked()

    def take_batch_locked(self) -> list[_Entry] | None:
        """The next batch, or None if nothing is pending or the pool is closing (hold ``cond``)."""
        if self.closing or not self.pending_jobs:
            return None
        first = self.pending_jobs.popleft()
        batch = [first]
        if (not first.alone and first.timeout is None and self.samples
                and self.avg < BATCH_BELOW):
            # Share what is queued among the slots, up to MAX_BATCH each.
            limit = min(MAX_BATCH, max(1, (len(self.pending_jobs) + 1) // self.concurrency))
            while len(batch) < limit and self.pending_jobs:
                nxt = self.pending_jobs[0]
                if nxt.alone or nxt.timeout is not None:
                    break
                batch.append(self.pending_jobs.popleft())
        self.in_flight += len(batch)
        return batch

    def requeue_alone(self, batch: list[_Entry]) -> None:
        """Put a batch back at the front of the queue, each job to run by itself."""
        with self.cond:
            for entry in reversed(batch):
                entry.alone = True
                self.pending_jobs.appendleft(entry)
            self.in_flight -= len(batch)
            self.cond.notify_all()
        self.kick()

    def report(self, batch: list[_Entry], results: list[JobResult]) -> None:
        """Hand results to the callback (unless killed), then count the batch as done."""
        try:
            if not self.killed:
                self.on_results(results)
        except Exception:
            log.exception("the pool's on_results callback failed")
        finally:
            with self.cond:
                self.in_flight -= len(batch)
                for result in results:
                    if result.duration > 0:
                        if self.samples:
                            self.avg += EWMA_ALPHA * (result.duration - self.avg)
                        else:
                            self.avg = result.duration
                        self.samples += 1
                if self.closing:
                    self.cond.notify_all()  # shutdown(wait=True) waits for in_flight to drain

    def join_threads(self, timeout: float | None) -> None:
        me = threading.current_thread()
        with self.cond:
            threads = list(self.threads)
        for thread in threads:
            if thread is not me:
                thread.join(timeout)


class _PoolBase:
    """The public face of a pool; the threads hold only the core, so an
    unreferenced pool is collected and its core shut down."""

    _core: _Core

    def submit(self, jobs: list[Job]) -> None:
        """Queue jobs to run (thread-safe, never blocks)."""
        self._core.submit(list(jobs))

    def discard_pending(self) -> list[Job]:
        """Take back and return the jobs that have not started yet (warm shutdown)."""
        return self._core.discard_pending()

    def pending(self) -> int:
        """Jobs queued and not yet started."""
        return self._core.pending()

    def running(self) -> int:
        """Jobs started (handed to a slot) and not yet reported."""
        return self._core.running()

    def cancel(self, task_id: str) -> bool:
        """Cancel a job: a pending one is reported failed (cancelled) at once; a running one
        is stopped by killing its process (process pools only). False if not held or unstoppable."""
        return self._core.cancel(task_id)

    def set_progress_callback(self, fn: OnProgress | None) -> None:
        """Call ``fn(report)`` (where results are reported) when a task reports progress."""
        self._core.on_progress = fn

    @property
    def avg_duration(self) -> float:
        """Exponentially weighted mean run time of a task in seconds (0 before the first)."""
        return self._core.avg


# -- process pool ---------------------------------------------------------------------

_MSG_READY = "ready"
_MSG_ERROR = "error"
_MSG_PROGRESS = "p"
_MSG_RESULTS = "r"
#: How much of a child's pipe the loop reads at once.
_READ_SIZE = 1 << 18
_HEADER = struct.Struct("!i")  # multiprocessing.Connection's frame header...
_LONG_HEADER = struct.Struct("!Q")  # ...and its size after a -1 header, for frames over 2 GiB


def _child_main(conn: multiprocessing.connection.Connection, modules: list[str],
                allow_pickle: bool) -> None:
    """A pool child: import the modules once, then run batches until told to stop."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when to stop,
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # even when a service manager signals the group
    signal.signal(signal.SIGALRM, _soft_limit)
    parent = multiprocessing.parent_process()
    if parent is not None:  # an orphan stops at once, even in the middle of a task
        threading.Thread(target=_exit_with_parent, args=(parent.sentinel,), daemon=True,
                         name="conveyor-parent-watch").start()
    try:
        if os.getcwd() not in sys.path and "" not in sys.path:
            sys.path.insert(0, "")
        registry = Registry.from_modules(modules)
    except BaseException as exc:
        try:
            conn.send_bytes(serde.packb([_MSG_ERROR, f"{type(exc).__name__}: {exc}"]))
        finally:
            sys.exit(1)
    conn.send_bytes(serde.packb([_MSG_READY, os.getpid()]))

    def send_progress(report: dict) -> None:
        try:
            conn.send_bytes(serde.packb([_MSG_PROGRESS, report]))
        except OSError:
            pass

    # One read per batch (recv_bytes makes two): the parent writes each batch in one frame.
    fd, buf, frames = conn.fileno(), bytearray(), collections.deque[bytes]()
    while True:
        while not frames:
            try:
                chunk = os.read(fd, _READ_SIZE)
            except OSError:
                return  # the parent is gone
            if not chunk:
                return
            frames.extend(_frames_from(buf, chunk))
        data = frames.popleft()
        if not data:
            return  # asked to stop
        results = [_execute(registry, name, payload, codec, allow_pickle,
                            CurrentTask(tid, name, token, send_progress), soft)
                   for tid, token, name, payload, codec, soft in serde.unpackb(data)]
        try:
            conn.send_bytes(serde.packb([_MSG_RESULTS, results]))
        except OSError:
            return


def _exit_with_parent(sentinel: int) -> None:
    multiprocessing.connection.wait([sentinel])
    os._exit(1)


def _exit_description(code: int | None) -> str:
    if code is None:
        return "worker process exited"
    if code < 0:
        try:
            signame = signal.Signals(-code).name
        except ValueError:
            signame = f"signal {-code}"
        return f"worker process exited with code {code} ({signame})"
    return f"worker process exited with code {code}"


class _StartFailed(Exception):
    pass


def _frame(body: bytes) -> bytes:
    """``body`` framed as ``Connection.send_bytes`` frames it (the child reads with ``recv_bytes``)."""
    n = len(body)
    if n > 0x7FFFFFFF:
        return _HEADER.pack(-1) + _LONG_HEADER.pack(n) + body
    return _HEADER.pack(n) + body


def _frames_from(buf: bytearray, chunk: bytes) -> list[bytes]:
    """The complete frames in what ``buf`` held plus ``chunk``; the rest stays in ``buf``."""
    if not buf and len(chunk) >= 4 and _HEADER.unpack_from(chunk)[0] == len(chunk) - 4:
        return [chunk[4:]]  # the usual case: exactly one whole frame
    buf += chunk
    return _split_frames(buf)


def _split_frames(buf: bytearray) -> list[bytes]:
    """Take the complete ``Connection.send_bytes`` frames off the front of ``buf``."""
    bodies = []
    pos, end = 0, len(buf)
    while end - pos >= 4:
        (size,) = _HEADER.unpack_from(buf, pos)
        start = pos + 4
        if size == -1:
            if end - start < 8:
                break
            (size,) = _LONG_HEADER.unpack_from(buf, start)
            start += 8
        if end - start < size:
            break
        bodies.append(bytes(buf[start:start + size]))
        pos = start + size
    del buf[:pos]
    return bodies


_NONE: frozenset[str] = frozenset()


class _Slot:
    """One child process. Its pipe is read and written by the pool's event loop; a helper
    thread starts the child, and reaps and replaces it when it dies."""

    __slots__ = ("index", "proc", "conn", "fd", "sentinel", "attached", "rbuf", "wbuf",
                 "batch", "running", "cancelled", "timed_out", "started", "timer",
                 "first_start", "start_error")

    def __init__(self, index: int) -> None:
        self.index = index
        self.proc: Any = None
        self.conn: multiprocessing.connection.Connection | None = None
        self.fd = -1
        self.sentinel = -1
        self.attached = False  # watched by the loop (loop thread only)
        self.rbuf = bytearray()  # a partly received message
        self.wbuf = bytearray()  # what the child has not taken yet
        self.batch: list[_Entry] | None = None  # the batch it runs now
        self.running: Set[str] = _NONE  # ids of that batch (read by other threads under cond)
        self.cancelled: set[str] = set()  # ids of that batch the master cancelled
        self.timed_out = False  # killed because its job passed its time limit
        self.started = 0.0
        self.timer: asyncio.TimerHandle | None = None
        self.first_start = threading.Event()
        self.start_error: str | None = None


_LIVE_CORES: set[_ProcessCore] = set()
_LIVE_LOCK = threading.Lock()


class _ProcessCore(_Core):
    """Children driven from one event loop: the worker's own (results then reach it with no
    thread hand-off) or, without one, a private loop on a pool thread. Only starting,
    reaping and replacing children happens on helper threads, as they block."""

    def __init__(self, concurrency: int, modules: list[str], on_results: OnResults,
                 allow_pickle: bool, loop: asyncio.AbstractEventLoop | None) -> None:
        super().__init__(concurrency, modules, on_results, allow_pickle)
        self.ctx = multiprocessing.get_context("spawn")
        self.slots = [_Slot(i) for i in range(concurrency)]
        self.loop = loop
        self.loop_thread: threading.Thread | None = None  # the private loop's thread
        self.loop_ident: int | None = None  # the thread running the loop, once seen
        self.kicked = False  # a dispatch is scheduled on the loop

    # -- threads and the loop ---------------------------------------------------------
    def on_loop(self) -> bool:
        """True on the thread running the pool's loop."""
        if self.loop_ident is not None:
            return threading.get_ident() == self.loop_ident
        try:
            here = asyncio.get_running_loop() is self.loop
        except RuntimeError:
            return False
        if here:
            self.loop_ident = threading.get_ident()
        return here

    def _run_private_loop(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop_ident = threading.get_ident()
        try:
            loop.run_forever()
        finally:
            loop.close()

    def _call_soon(self, fn: Callable[..., Any], *args: Any) -> bool:
        """Run ``fn`` on the loop soon (from any thread); False if the loop is gone."""
        loop = self.loop
        if loop is None:
            return False
        try:
            loop.call_soon_threadsafe(fn, *args)
            return True
        except RuntimeError:  # closed
            return False

    def _on_loop_wait(self, fn: Callable[[], None]) -> None:
        """Run ``fn`` on the loop and wait for it; run it here if the loop is not running."""
        loop = self.loop
        if loop is None or self.on_loop() or loop.is_closed() or not loop.is_running():
            fn()
            return
        done = threading.Event()

        def run() -> None:
            try:
                fn()
            finally:
                done.set()

        if not self._call_soon(run):
            fn()
            return
        done.wait(EXIT_TIMEOUT)

    def _helper(self, target: Callable[..., None], *args: Any) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True, name="conveyor-pool-helper")
        with self.cond:
            self.threads = [t for t in self.threads if t.is_alive()]
            self.threads.append(thread)
        thread.start()

    # -- lifecycle --------------------------------------------------------------------
    def start(self) -> None:
        with self.cond:
            if self.started:
                raise RuntimeError("the pool was already started")
            self.started = True
        _load_registry(self.modules)  # one clear error here rather than one per child
        with _LIVE_LOCK:
            _LIVE_CORES.add(self)
        if self.loop is None:
            self.loop = loops.new_event_loop()
            self.loop_thread = threading.Thread(target=self._run_private_loop, args=(self.loop,),
                                                daemon=True, name="conveyor-pool-io")
            self.loop_thread.start()
        for slot in self.slots:
            self._helper(self._first_start, slot)
        errors = []
        for slot in self.slots:
            slot.first_start.wait(STARTUP_TIMEOUT + 10)
            if slot.start_error:
                errors.append(slot.start_error)
            elif not slot.first_start.is_set():
                errors.append("a worker process did not start in time")
        if errors:
            self.kill_all()
            raise RuntimeError(f"pool worker process could not start: {errors[0]}")

    def _first_start(self, slot: _Slot) -> None:
        try:
            if self._spawn(slot):
                self._call_soon(self._attach, slot)
        except _StartFailed as exc:
            slot.start_error = str(exc)
        except Exception as exc:
            log.exception("pool slot %d failed to start", slot.index)
            slot.start_error = f"{type(exc).__name__}: {exc}"
        finally:
            slot.first_start.set()

    def shutdown(self, wait: bool) -> None:
        if not wait:
            self.kill_all()
            return
        if self.on_loop():
            raise RuntimeError("shutdown(wait=True) cannot run on the pool's own event loop")
        with self.cond:
            self.closing = True
            self.cond.notify_all()
            # Running batches finish and are reported (by the loop, or a helper after a crash),
            # unless the loop that reads them has stopped.
            while self.in_flight > 0 and not self.killed and self.loop is not None \
                    and self.loop.is_running():
                self.cond.wait(_TICK)
        self.join_threads(None)  # replacements being started see `closing` and stop
        self._on_loop_wait(self._detach_all)
        for slot in self.slots:
            self._retire(slot, graceful=not self.killed)
        self._stop_private_loop()
        with _LIVE_LOCK:
            _LIVE_CORES.discard(self)

    def kill_all(self) -> None:
        """SIGKILL every child now and reap it; running results are never reported."""
        with self.cond:
            self.closing = True
            self.killed = True
            self.cond.notify_all()
            procs = [slot.proc for slot in self.slots if slot.proc is not None]
        for proc in procs:
            _kill(proc)
        # Stop watching the pipes before they are closed (a reused fd must not stay registered).
        if self.loop_thread is not None and not self.on_loop():
            self._stop_private_loop()
        else:
            self._on_loop_wait(self._detach_all)
        for slot in self.slots:
            self._retire(slot, graceful=False)
        self._stop_private_loop()
        with _LIVE_LOCK:
            _LIVE_CORES.discard(self)

    def _stop_private_loop(self) -> None:
        thread = self.loop_thread
        if thread is None or not self._call_soon(self._stop_loop):
            return
        if thread is not threading.current_thread():
            thread.join(EXIT_TIMEOUT)

    def _stop_loop(self) -> None:
        self._detach_all()
        if self.loop is not None:
            self.loop.stop()

    def cancel_running(self, task_id: str) -> bool:
        """Stop the child running ``task_id`` (its death reports it cancelled)."""
        with self.cond:
            for slot in self.slots:
                if task_id in slot.running and slot.proc is not None:
                    slot.cancelled.add(task_id)
                    proc = slot.proc
                    break
            else:
                return False
        _kill(proc)
        return True

    def processes(self) -> list[Any]:
        with self.cond:
            return [slot.proc for slot in self.slots if slot.proc is not None]

    # -- the loop side: dispatch, results, deaths (loop thread only) -------------------
    def kick(self) -> None:
        if self.on_loop():
            self._dispatch()
            return
        with self.cond:
            if self.kicked:
                return
            self.kicked = True
        self._call_soon(self._kicked)

    def _kicked(self) -> None:
        with self.cond:
            self.kicked = False
        self._dispatch()

    def _attach(self, slot: _Slot) -> None:
        """A started child: watch its pipe and its sentinel, and give it work."""
        with self.cond:
            if self.closing or slot.proc is None or slot.conn is None:
                return  # shutdown retires it
            slot.fd, slot.sentinel = slot.conn.fileno(), slot.proc.sentinel
        os.set_blocking(slot.fd, False)
        slot.rbuf.clear()
        slot.wbuf.clear()
        loop = self.loop
        assert loop is not None
        loop.add_reader(slot.fd, self._readable, slot)
        loop.add_reader(slot.sentinel, self._ended, slot)
        slot.attached = True
        self._dispatch()

    def _detach(self, slot: _Slot) -> None:
        if not slot.attached:
            return
        slot.attached = False
        loop = self.loop
        if loop is not None and not loop.is_closed():
            loop.remove_reader(slot.fd)
            loop.remove_reader(slot.sentinel)
            loop.remove_writer(slot.fd)
        if slot.timer is not None:
            slot.timer.cancel()
            slot.timer = None

    def _detach_all(self) -> None:
        for slot in self.slots:
            self._detach(slot)

    def _dispatch(self) -> None:
        """Start a batch on every idle child while jobs are pending."""
        if not self.pending_jobs:  # only this thread takes jobs; whoever adds some kicks
            return
        for slot in self.slots:
            if not slot.attached or slot.batch is not None:
                continue
            with self.cond:
                batch = self.take_batch_locked()
                if batch is None:
                    return
                slot.batch = batch
                slot.running = {entry.job.id for entry in batch}
                slot.timed_out = False
            slot.started = time.monotonic()
            timeout = batch[0].timeout if len(batch) == 1 else None
            if timeout is not None:
                assert self.loop is not None
                slot.timer = self.loop.call_later(timeout, self._expire, slot, batch)
            self._write(slot, serde.packb([[e.job.id, e.job.token, e.job.name, e.job.payload,
                                            e.job.codec, e.soft] for e in batch]))

    def _write(self, slot: _Slot, body: bytes) -> None:
        data = _frame(body)
        if slot.wbuf:
            slot.wbuf += data
            return
        try:
            n = os.write(slot.fd, data)
        except BlockingIOError:
            n = 0
        except OSError:  # the child is gone; its death reports the batch
            self._lost(slot)
            return
        if n < len(data):  # a large batch: the rest goes as the child reads
            slot.wbuf += memoryview(data)[n:]
            assert self.loop is not None
            self.loop.add_writer(slot.fd, self._writable, slot)

    def _writable(self, slot: _Slot) -> None:
        try:
            n = os.write(slot.fd, slot.wbuf)
        except BlockingIOError:
            return
        except OSError:
            self._lost(slot)
            return
        del slot.wbuf[:n]
        if not slot.wbuf and self.loop is not None:
            self.loop.remove_writer(slot.fd)

    def _readable(self, slot: _Slot) -> None:
        """A child's pipe is readable: take what it sent, and the answers other children have
        ready too, then start their next batches and report them all in one call."""
        entries: list[_Entry] = []
        results: list[JobResult] = []
        self._take(slot, entries, results)
        if entries and self.concurrency > 1:
            for other in self.slots:
                if other is not slot and other.batch is not None:
                    self._take(other, entries, results)
        if entries:
            self._dispatch()  # the children work on their next batches while these are reported
            self.report(entries, results)

    def _ended(self, slot: _Slot) -> None:
        """The child's process ended: take what it sent before, then report its death."""
        self._readable(slot)
        if slot.attached:
            self._lost(slot)

    def _take(self, slot: _Slot, entries: list[_Entry], results: list[JobResult]) -> None:
        """Read what the child sent: progress is passed on, an answered batch is added to
        ``entries`` and ``results``; EOF (or a malformed message) is the child's death."""
        if not slot.attached:
            return
        eof = False
        frames: list[bytes] = []
        try:
            while True:
                chunk = os.read(slot.fd, _READ_SIZE)
                if not chunk:
                    eof = True
                    break
                frames += _frames_from(slot.rbuf, chunk)
                if len(chunk) < _READ_SIZE:
                    break
        except BlockingIOError:
            pass
        except OSError:
            eof = True
        for body in frames:
            try:
                kind, detail = serde.unpackb(body)
            except (ValueError, TypeError):
                log.error("pool process %d sent a malformed message; replacing it", slot.proc.pid)
                _kill(slot.proc)
                eof = True
                break
            if kind == _MSG_PROGRESS:
                self.progress(detail)
            elif slot.batch is not None:
                batch = self._finish(slot)
                try:
                    results += [JobResult(e.job.id, e.job.token, bool(ok), payload, codec, float(duration))
                                for e, (ok, payload, codec, duration) in zip(batch, detail, strict=True)]
                except (ValueError, TypeError) as exc:
                    results += [_failed(e.job, exc) for e in batch]
                entries += batch
        if eof and slot.attached:
            self._lost(slot)

    def _finish(self, slot: _Slot) -> list[_Entry]:
        """The child answered its batch: it is idle again. Returns the batch."""
        batch = slot.batch
        assert batch is not None
        if slot.timer is not None:
            slot.timer.cancel()
            slot.timer = None
        with self.cond:
            slot.batch = None
            slot.running = _NONE
            if slot.cancelled:
                slot.cancelled = set()
        return batch

    def _expire(self, slot: _Slot, batch: list[_Entry]) -> None:
        """A job's time limit passed: kill its child (its death reports TaskTimeout)."""
        slot.timer = None
        if slot.batch is batch and slot.proc is not None:
            slot.timed_out = True
            _kill(slot.proc)

    def _lost(self, slot: _Slot) -> None:
        """The child's pipe closed: a helper thread reaps it, reports its batch, replaces it."""
        self._detach(slot)
        with self.cond:
            batch, slot.batch = slot.batch, None
            cancelled, slot.cancelled = slot.cancelled, set()
            slot.running = _NONE
        elapsed = time.monotonic() - slot.started
        self._helper(self._bury, slot, batch, cancelled, slot.timed_out, elapsed)

    # -- helper threads ---------------------------------------------------------------
    def _bury(self, slot: _Slot, batch: list[_Entry] | None, cancelled: set[str],
              timed_out: bool, elapsed: float) -> None:
        try:
            proc = slot.proc
            code = _reap(proc, 1.0) if proc is not None else None
            self._retire(slot, graceful=False)
            if batch:
                self._report_lost(batch, code, cancelled, timed_out, elapsed)
            self._replace(slot)
        except Exception:
            log.exception("pool slot %d failed", slot.index)

    def _report_lost(self, batch: list[_Entry], code: int | None, cancelled: set[str],
                     timed_out: bool, elapsed: float) -> None:
        if self.killed:
            self.report(batch, [])  # nothing is reported once killed
            return
        if timed_out:
            job = batch[0].job
            timeout = batch[0].timeout or 0.0
            self.report(batch, [_failed(job, _timeout_error(job.name, timeout), elapsed)])
            return
        if cancelled:
            stopped = [e for e in batch if e.job.id in cancelled]
            rest = [e for e in batch if e.job.id not in cancelled]
            if rest:
                self.requeue_alone(rest)
            self.report(stopped, [_failed(e.job, CancelledTask(CANCELLED_MESSAGE)) for e in stopped])
            return
        if len(batch) > 1:
            log.warning("%s while running a batch of %d tasks; running them one at a time",
                        _exit_description(code), len(batch))
            self.requeue_alone(batch)
            return
        job = batch[0].job
        message = f"{_exit_description(code)} while running task {job.name}"
        log.warning("%s", message)
        self.report(batch, [_failed(job, WorkerCrashed(message), elapsed)])

    def _replace(self, slot: _Slot) -> None:
        """Start a new child in a lost one's place, retrying with backoff while it fails."""
        backoff = 0.1
        while not self.closing:
            try:
                if self._spawn(slot) and not self._call_soon(self._attach, slot):
                    self._retire(slot, graceful=False)  # the loop is gone
                return
            except _StartFailed as exc:
                log.error("could not start a replacement pool process: %s", exc)
                with self.cond:
                    if not self.closing:
                        self.cond.wait(backoff)
                backoff = min(backoff * 2, 10.0)

    def _spawn(self, slot: _Slot) -> bool:
        """Start a child and wait until it has imported the modules; False if the pool
        closed meanwhile (the child stays in the slot for shutdown to retire)."""
        parent_conn, child_conn = self.ctx.Pipe(duplex=True)
        proc = self.ctx.Process(target=_child_main, args=(child_conn, self.modules, self.allow_pickle),
                                name=f"conveyor-pool-{slot.index}")
        try:
            proc.start()
        except Exception as exc:
            parent_conn.close()
            raise _StartFailed(f"{type(exc).__name__}: {exc}") from exc
        finally:
            child_conn.close()
        with self.cond:
            if self.killed:
                killed = True
            else:
                killed = False
                slot.proc, slot.conn = proc, parent_conn
        if killed:
            _kill(proc)
            _reap(proc, EXIT_TIMEOUT)
            parent_conn.close()
            return False
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while True:
            ready = multiprocessing.connection.wait([parent_conn, proc.sentinel], _TICK)
            if self.closing:
                return False
            if parent_conn in ready:
                try:
                    kind, detail = serde.unpackb(parent_conn.recv_bytes())
                except (EOFError, OSError, ValueError, TypeError):
                    kind, detail = _MSG_ERROR, None
                if kind == _MSG_READY:
                    return True
                if detail:
                    self._retire(slot, graceful=False)
                    raise _StartFailed(detail)
                ready = [proc.sentinel]  # the pipe closed: the child is exiting
            if proc.sentinel in ready:
                code = _reap(proc, 1.0)
                self._retire(slot, graceful=False)
                raise _StartFailed(
                    f"{_exit_description(code)} while starting (see its output; a script that "
                    "starts a process pool must do so under `if __name__ == '__main__':`)")
            if time.monotonic() > deadline:
                self._retire(slot, graceful=False)
                raise _StartFailed(f"did not start within {STARTUP_TIMEOUT:g}s")

    def _retire(self, slot: _Slot, *, graceful: bool) -> None:
        """Stop and reap the slot's child (asked to exit if ``graceful``, else killed)."""
        with self.cond:
            proc, conn = slot.proc, slot.conn
            slot.proc = slot.conn = None
        if proc is None:
            return
        if graceful and conn is not None and _reap(proc, 0) is None:
            try:
                os.set_blocking(conn.fileno(), True)  # the loop drove it non-blocking
                conn.send_bytes(b"")
            except OSError:
                pass
            _reap(proc, EXIT_TIMEOUT)
        if _reap(proc, 0) is None:
            _kill(proc)
            if _reap(proc, EXIT_TIMEOUT) is None:
                log.error("pool process %d did not exit after SIGKILL", proc.pid)
        if conn is not None:
            conn.close()


def _kill(proc: Any) -> None:
    try:
        proc.kill()
    except (OSError, ValueError, AttributeError):
        pass


# Reaping (waitpid) is done by one thread at a time: Process.join/exitcode are not
# thread-safe, a second thread's waitpid fails with ECHILD and reads "still running".
_REAP_LOCK = threading.Lock()


def _reap(proc: Any, timeout: float | None) -> int | None:
    """Wait up to ``timeout`` for ``proc`` to end and reap it: its exit code, or None if
    it is still running. Safe to call from several threads at once."""
    if not multiprocessing.connection.wait([proc.sentinel], timeout):
        return None
    # The sentinel closes just before the process becomes reapable, and another
    # thread (or multiprocessing's own cleanup in Process.start) may be reaping it
    # right now: retry briefly until the exit code is known.
    deadline = time.monotonic() + 5.0
    while True:
        with _REAP_LOCK:
            proc.join(0)
            code = proc.exitcode
        if code is not None or time.monotonic() > deadline:
            return code
        time.sleep(0.001)


def _kill_live_pools() -> None:
    """At interpreter exit, before multiprocessing joins its children: kill ours."""
    with _LIVE_LOCK:
        cores = list(_LIVE_CORES)
    for core in cores:
        try:
            core.kill_all()
        except Exception:
            pass


# Registered after multiprocessing's own exit hook (imported above), so it runs first.
atexit.register(_kill_live_pools)


def _finalize(core: _Core) -> None:
    """The pool object was collected (or the interpreter exits) without a shutdown."""
    if isinstance(core, _ProcessCore):
        core.kill_all()
    else:
        with core.cond:
            core.closing = core.killed = True
            core.cond.notify_all()


class ProcessPool(_PoolBase):
    """Runs tasks in ``concurrency`` child processes (``spawn``), one batch per child at a time.

    Each child imports ``modules`` once and ignores SIGINT. Very short tasks
    (mean run time under 1 ms) travel in batches of up to 64; others, and
    every job with a ``timeout`` option, one at a time. A child that dies
    under a single job fails it with WorkerCrashed; under a batch, the
    batch is requeued to run job by job so only the culprit fails. A job
    past its ``timeout`` (seconds) gets its child SIGKILLed and fails with
    TaskTimeout. Lost children are replaced.

    The children's pipes are driven from an asyncio event loop: ``loop`` if
    given (it must be running in another thread whenever the pool is used
    from outside it), else one the pool runs on a thread of its own.
    ``on_results`` and the progress callback are called on that loop's thread,
    except the reports for lost children and cancelled pending jobs, which
    come from a helper thread or the thread that called :meth:`cancel`. With
    the worker's own loop a result is written out in the same loop turn it
    is read, with no thread hand-off.

    Children are non-daemonic (tasks may start processes of their own); they
    are killed and reaped by ``shutdown``, when the pool object is collected,
    and at interpreter exit, and they exit by themselves when the parent dies.
    """

    def __init__(self, concurrency: int, modules: list[str], on_results: OnResults, *,
                 allow_pickle: bool = False, loop: asyncio.AbstractEventLoop | None = None) -> None:
        self._core = _ProcessCore(concurrency, modules, on_results, allow_pickle, loop)
        self._finalizer = weakref.finalize(self, _finalize, self._core)

    def start(self) -> None:
        """Import the modules here (ImportError naming the module if one fails), then
        start the children and wait until each has imported them too."""
        self._core.start()

    def shutdown(self, wait: bool = True) -> None:
        """Stop the pool.

        ``wait=True``: running batches finish and are reported (this may take as
        long as they run); pending jobs stay unstarted (take them back with
        :meth:`discard_pending` first); then the children are asked to exit and
        reaped (killed if they take over 5 s). ``wait=False``: SIGKILL the
        children now; results of running jobs are never reported.
        ``wait=True`` must not be called on the pool's loop (it waits for it).
        """
        self._core.shutdown(wait)
        self._finalizer.detach()

    def _processes(self) -> list[Any]:
        """The current child process objects (for tests)."""
        return self._core.processes()


# -- thread pool ----------------------------------------------------------------------

class _ThreadCore(_Core):
    def __init__(self, concurrency: int, modules: list[str], on_results: OnResults,
                 allow_pickle: bool) -> None:
        super().__init__(concurrency, modules, on_results, allow_pickle)
        self.registry: Registry | None = None

    def start(self) -> None:
        with self.cond:
            if self.started:
                raise RuntimeError("the pool was already started")
            self.started = True
        self.registry = _load_registry(self.modules)
        for i in range(self.concurrency):
            thread = threading.Thread(target=self._thread_main, daemon=True,
                                      name=f"conveyor-thread-{i}")
            self.threads.append(thread)
            thread.start()

    def _thread_main(self) -> None:
        registry = self.registry
        assert registry is not None
        while True:
            batch = self.take_batch()
            if batch is None:
                return
            results = []
            for entry in batch:
                job = entry.job
                ok, payload, codec, duration = _execute(
                    registry, job.name, job.payload, job.codec, self.allow_pickle,
                    CurrentTask(job.id, job.name, job.token, self.progress))
                if entry.timeout is not None and duration > entry.timeout:
                    results.append(_failed(job, _timeout_error(job.name, entry.timeout), duration))
                else:
                    results.append(JobResult(job.id, job.token, ok, payload, codec, duration))
            self.report(batch, results)

    def shutdown(self, wait: bool) -> None:
        with self.cond:
            self.closing = True
            if not wait:
                self.killed = True
            self.cond.notify_all()
        if wait:
            self.join_threads(None)


class ThreadPool(_PoolBase):
    """Runs tasks on ``concurrency`` threads of this process.

    Same interface and result rules as :class:`ProcessPool`, without its
    protection: a task that crashes the process (``os._exit``, a segfault)
    takes the whole worker down, and a thread cannot be stopped, so a job past
    its ``timeout`` keeps running and is reported as failed with TaskTimeout
    only when it finally returns (its slot stays busy meanwhile). Tasks share
    the GIL; use it for I/O-bound tasks or code that releases the GIL.
    """

    def __init__(self, concurrency: int, modules: list[str], on_results: OnResults, *,
                 allow_pickle: bool = False) -> None:
        self._core = _ThreadCore(concurrency, modules, on_results, allow_pickle)
        self._finalizer = weakref.finalize(self, _finalize, self._core)

    def start(self) -> None:
        """Import the modules (ImportError naming the module if one fails) and start the threads."""
        self._core.start()

    def shutdown(self, wait: bool = True) -> None:
        """Stop the pool.

        ``wait=True``: running jobs finish and are reported, then the threads
        end; pending jobs stay unstarted. ``wait=False``: return now; running
        jobs go on in their threads but their results are never reported.
        """
        self._core.shutdown(wait)
        self._finalizer.detach()


def make_pool(kind: str, concurrency: int, modules: list[str], on_results: OnResults, *,
              allow_pickle: bool = False,
              loop: asyncio.AbstractEventLoop | None = None) -> ProcessPool | ThreadPool:
    """A pool of ``kind`` "process" or "thread"; ValueError for anything else.

    ``loop`` is the event loop a process pool drives its children from (see
    :class:`ProcessPool`); a thread pool ignores it.
    """
    if kind == "process":
        return ProcessPool(concurrency, modules, on_results, allow_pickle=allow_pickle, loop=loop)
    if kind == "thread":
        return ThreadPool(concurrency, modules, on_results, allow_pickle=allow_pickle)
    raise ValueError(f"unknown pool kind {kind!r}: choose one of {', '.join(POOL_KINDS)}")
