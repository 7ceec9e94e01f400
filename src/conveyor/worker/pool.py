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
threads (one per slot); the callback must be thread-safe and quick.
"""

from __future__ import annotations

import atexit
import collections
import importlib
import logging
import multiprocessing
import multiprocessing.connection
import os
import signal
import sys
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .. import serde
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
    alone: bool = False  # requeued after a crash in a batch: run it by itself


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
        entries = [_Entry(job, _timeout_of(job.options), _soft_timeout_of(job.options) is not None)
                   for job in jobs]
        with self.cond:
            if self.closing:
                raise RuntimeError("the pool is shut down")
            self.pending_jobs.extend(entries)
            self.cond.notify(len(entries))

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
            if self.closing:
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
            self.cond.notify(len(batch))

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

    def join_threads(self, timeout: float | None) -> None:
        me = threading.current_thread()
        for thread in self.threads:
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
        """Call ``fn(report)`` (from pool threads) when a task reports progress."""
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
    while True:
        try:
            data = conn.recv_bytes()
        except (EOFError, OSError):
            return  # the parent is gone
        if not data:
            return  # asked to stop
        batch = serde.unpackb(data)

        def send_progress(report: dict) -> None:
            try:
                conn.send_bytes(serde.packb([_MSG_PROGRESS, report]))
            except OSError:
                pass

        results = [list(_execute(registry, name, payload, codec, allow_pickle,
                                 CurrentTask(tid, name, token, send_progress), soft))
                   for tid, token, name, payload, codec, soft in batch]
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


class _Slot:
    """One child process and the parent thread that manages it."""

    __slots__ = ("index", "proc", "conn", "first_start", "start_error", "running", "cancelled")

    def __init__(self, index: int) -> None:
        self.index = index
        self.running: set[str] = set()  # ids of the batch it runs now
        self.cancelled: set[str] = set()  # ids of that batch the master cancelled
        self.proc: Any = None
        self.conn: multiprocessing.connection.Connection | None = None
        self.first_start = threading.Event()
        self.start_error: str | None = None


_LIVE_CORES: set[_ProcessCore] = set()
_LIVE_LOCK = threading.Lock()


class _ProcessCore(_Core):
    def __init__(self, concurrency: int, modules: list[str], on_results: OnResults,
                 allow_pickle: bool) -> None:
        super().__init__(concurrency, modules, on_results, allow_pickle)
        self.ctx = multiprocessing.get_context("spawn")
        self.slots = [_Slot(i) for i in range(concurrency)]

    # -- lifecycle --------------------------------------------------------------------
    def start(self) -> None:
        with self.cond:
            if self.started:
                raise RuntimeError("the pool was already started")
            self.started = True
        _load_registry(self.modules)  # one clear error here rather than one per child
        with _LIVE_LOCK:
            _LIVE_CORES.add(self)
        for slot in self.slots:
            thread = threading.Thread(target=self._slot_main, args=(slot,), daemon=True,
                                      name=f"conveyor-pool-{slot.index}")
            self.threads.append(thread)
            thread.start()
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

    def shutdown(self, wait: bool) -> None:
        if not wait:
            self.kill_all()
            return
        with self.cond:
            self.closing = True
            self.cond.notify_all()
        self.join_threads(None)  # each finishes its running batch, then stops its child
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
        for proc in procs:
            _reap(proc, EXIT_TIMEOUT)
        with _LIVE_LOCK:
            _LIVE_CORES.discard(self)

    def cancel_running(self, task_id: str) -> bool:
        """Stop the child running ``task_id`` (its slot reports it cancelled)."""
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

    # -- one slot ---------------------------------------------------------------------
    def _slot_main(self, slot: _Slot) -> None:
        backoff = 0.1
        try:
            while True:
                if slot.proc is None:
                    if self.closing:
                        return
                    try:
                        if not self._spawn(slot):
                            return
                        backoff = 0.1
                    except _StartFailed as exc:
                        if not slot.first_start.is_set():
                            slot.start_error = str(exc)
                            return
                        log.error("could not start a replacement pool process: %s", exc)
                        with self.cond:
                            if not self.closing:
                                self.cond.wait(backoff)
                        backoff = min(backoff * 2, 10.0)
                        continue
                    finally:
                        slot.first_start.set()
                batch = self.take_batch()
                if batch is None:
                    return
                self._run_batch(slot, batch)
        except Exception:
            log.exception("pool slot %d failed", slot.index)
        finally:
            slot.first_start.set()
            self._retire(slot, graceful=not self.killed)

    def _spawn(self, slot: _Slot) -> bool:
        """Start a child and wait until it has imported the modules; False if killed meanwhile."""
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
            if self.killed:
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

    def _run_batch(self, slot: _Slot, batch: list[_Entry]) -> None:
        conn, proc = slot.conn, slot.proc
        assert conn is not None and proc is not None
        jobs = [entry.job for entry in batch]
        timeout = batch[0].timeout if len(batch) == 1 else None
        started = time.monotonic()
        deadline = started + timeout if timeout is not None else None
        data: bytes | None = None
        with self.cond:
            slot.running = {job.id for job in jobs}
            slot.cancelled = set()
        try:
            conn.send_bytes(serde.packb([[job.id, job.token, job.name, job.payload, job.codec,
                                          _soft_timeout_of(job.options)] for job in jobs]))
            while True:
                wait = _TICK if deadline is None else max(0.0, min(_TICK, deadline - time.monotonic()))
                ready = multiprocessing.connection.wait([conn, proc.sentinel], wait)
                if conn in ready or conn.poll(0):
                    kind, body = serde.unpackb(conn.recv_bytes())
                    if kind == _MSG_PROGRESS:
                        self.progress(body)
                        continue
                    data = body
                    break
                if proc.sentinel in ready or self.killed:
                    break
                if deadline is not None and time.monotonic() >= deadline:
                    break
        except (EOFError, OSError, ValueError, TypeError):
            data = None
        finally:
            with self.cond:
                slot.running = set()
                cancelled, slot.cancelled = slot.cancelled, set()
        elapsed = time.monotonic() - started
        if data is not None:
            try:
                rows = data
                results = [JobResult(job.id, job.token, bool(ok), payload, codec, float(duration))
                           for job, (ok, payload, codec, duration) in zip(jobs, rows, strict=True)]
            except (ValueError, TypeError) as exc:
                results = [_failed(job, exc) for job in jobs]
            self.report(batch, results)
            return
        if self.killed:
            self.report(batch, [])  # nothing is reported once killed
            return
        if deadline is not None and _reap(proc, 0) is None:
            # Past its time limit: kill the child and start another.
            _kill(proc)
            self._retire(slot, graceful=False)
            job = jobs[0]
            self.report(batch, [_failed(job, _timeout_error(job.name, timeout or 0.0), elapsed)])
            return
        # The child died under the batch (or was stopped to cancel a task of it).
        code = _reap(proc, 1.0)
        self._retire(slot, graceful=False)
        if self.killed:
            self.report(batch, [])
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
        job = jobs[0]
        message = f"{_exit_description(code)} while running task {job.name}"
        log.warning("%s", message)
        self.report(batch, [_failed(job, WorkerCrashed(message), elapsed)])


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
    TaskTimeout. Lost children are replaced by their own slot's thread.
    ``on_results`` is called from those threads.

    Children are non-daemonic (tasks may start processes of their own); they
    are killed and reaped by ``shutdown``, when the pool object is collected,
    and at interpreter exit, and they exit by themselves when the parent dies.
    """

    def __init__(self, concurrency: int, modules: list[str], on_results: OnResults, *,
                 allow_pickle: bool = False) -> None:
        self._core = _ProcessCore(concurrency, modules, on_results, allow_pickle)
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
              allow_pickle: bool = False) -> ProcessPool | ThreadPool:
    """A pool of ``kind`` "process" or "thread"; ValueError for anything else."""
    if kind == "process":
        return ProcessPool(concurrency, modules, on_results, allow_pickle=allow_pickle)
    if kind == "thread":
        return ThreadPool(concurrency, modules, on_results, allow_pickle=allow_pickle)
    raise ValueError(f"unknown pool kind {kind!r}: choose one of {', '.join(POOL_KINDS)}")
