"""The process pool: tasks run in child processes started with ``spawn``, whose pipes
are driven from an asyncio event loop.

A task that crashes its process (``os._exit``, a signal, the OOM killer)
fails with :class:`~conveyor.errors.WorkerCrashed` and a task past its
``timeout`` option is killed and fails with
:class:`~conveyor.errors.TaskTimeout`; either way a fresh child replaces the
lost one and the pool keeps serving. The children run :mod:`.child`.
"""

from __future__ import annotations

import asyncio
import atexit
import multiprocessing
import multiprocessing.connection
import os
import threading
import time
import weakref
from collections.abc import Callable, Set
from typing import Any

from .. import loops, serde
from ..errors import WorkerCrashed
from ..options import headers_of
from .child import (
    _MSG_ERROR,
    _MSG_PROGRESS,
    _MSG_READY,
    _MSG_RESULTS,
    _READ_SIZE,
    _child_main,
    _exit_description,
    _frame,
    _frames_from,
    child_settings,
)
from .core import _TICK, EXIT_TIMEOUT, STARTUP_TIMEOUT, _Core, _Entry, _PoolBase, log
from .execute import CANCELLED_MESSAGE, CancelledTask, _failed, _load_registry, _timeout_error
from .jobs import JobResult, OnResults
from .lifecycle import AUTOSCALE_TICK, Lifecycle, autoscale_target
from .tasklog import log_started

__all__ = ["ProcessPool", "PoolStartError"]


class _StartFailed(Exception):
    pass


class PoolStartError(RuntimeError):
    """The pool's children could not start (a task module or an ``on_child_start`` hook
    failed in the child, or it did not start in time); the message says why."""



_NONE: frozenset[str] = frozenset()


class _Slot:
    """One child process. Its pipe is read and written by the pool's event loop; a helper
    thread starts the child, and reaps and replaces it when it dies."""

    __slots__ = ("index", "proc", "conn", "fd", "sentinel", "attached", "rbuf", "wbuf",
                 "batch", "running", "cancelled", "timed_out", "started", "timer",
                 "first_start", "start_error", "done", "rss", "recycle", "parked")

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
        self.done = 0  # tasks this child answered (its recycling count)
        self.rss: int | None = None  # its resident memory after its last batch, if measured
        self.recycle: str | None = None  # why it is to be replaced once its batch is answered
        self.parked = False  # autoscaling runs no child in this slot now


_LIVE_CORES: set[_ProcessCore] = set()
_LIVE_LOCK = threading.Lock()


class _ProcessCore(_Core):
    """Children driven from one event loop: the worker's own (results then reach it with no
    thread hand-off) or, without one, a private loop on a pool thread. Only starting,
    reaping and replacing children happens on helper threads, as they block."""

    def __init__(self, concurrency: int, modules: list[str], on_results: OnResults,
                 allow_pickle: bool, loop: asyncio.AbstractEventLoop | None,
                 lifecycle: Lifecycle | None = None) -> None:
        self.lifecycle = lifecycle or Lifecycle()
        if self.lifecycle.autoscale is not None:
            concurrency = self.lifecycle.autoscale[1]  # slots for MAX children, MIN of them started
        super().__init__(concurrency, modules, on_results, allow_pickle)
        self.ctx = multiprocessing.get_context("spawn")
        self.slots = [_Slot(i) for i in range(concurrency)]
        if self.lifecycle.autoscale is not None:
            for slot in self.slots[self.lifecycle.autoscale[0]:]:
                slot.parked = True
        self.settings = child_settings(measure_memory=self.lifecycle.max_memory_per_child is not None)
        self.idle_since: float | None = None  # autoscaling: since when some child is idle
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
        first = [slot for slot in self.slots if not slot.parked]
        for slot in first:
            self._helper(self._first_start, slot)
        errors = []
        for slot in first:
            slot.first_start.wait(STARTUP_TIMEOUT + 10)
            if slot.start_error:
                errors.append(slot.start_error)
            elif not slot.first_start.is_set():
                errors.append("a worker process did not start in time")
        if errors:
            self.kill_all()
            raise PoolStartError(f"pool worker process could not start: {errors[0]}")
        if self.lifecycle.autoscale is not None:
            self._call_soon(self._autoscale_tick)

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
        if self.lifecycle.autoscale is not None:
            self._autoscale()

    def _attach(self, slot: _Slot) -> None:
        """A started child: watch its pipe and its sentinel, and give it work."""
        with self.cond:
            if self.closing or slot.proc is None or slot.conn is None:
                return  # shutdown retires it
            slot.fd, slot.sentinel = slot.conn.fileno(), slot.proc.sentinel
        os.set_blocking(slot.fd, False)
        slot.rbuf.clear()
        slot.wbuf.clear()
        slot.done, slot.rss, slot.recycle = 0, None, None
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
            if not slot.attached or slot.batch is not None or slot.recycle:
                continue
            with self.cond:
                batch = self.take_batch_locked(self.lifecycle.tasks_left(slot.done))
                if batch is None:
                    return
                slot.batch = batch
                slot.running = {entry.job.id for entry in batch}
                slot.timed_out = False
            slot.started = time.monotonic()
            log_started([entry.job for entry in batch])
            timeout = batch[0].timeout if len(batch) == 1 else None
            if timeout is not None:
                assert self.loop is not None
                slot.timer = self.loop.call_later(timeout, self._expire, slot, batch)
            self._write(slot, serde.packb([[e.job.id, e.job.token, e.job.name, e.job.payload,
                                            e.job.codec, e.soft, headers_of(e.job.options) or None]
                                           for e in batch]))

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
                kind, detail, *more = serde.unpackb(body)
            except (ValueError, TypeError):
                log.error("pool process %d sent a malformed message; replacing it", slot.proc.pid)
                _kill(slot.proc)
                eof = True
                break
            if kind == _MSG_PROGRESS:
                self.progress(detail)
            else:
                if kind == _MSG_RESULTS and more and isinstance(more[0], int):
                    slot.rss = more[0]  # measured by the child after this batch
                self._answered(slot, detail, entries, results)
        if eof and slot.attached:
            self._lost(slot)
        elif slot.recycle and slot.attached and self._slot_idle(slot):
            self._recycle(slot)

    def _slot_idle(self, slot: _Slot) -> bool:
        """The slot's child runs nothing now."""
        return slot.batch is None

    # -- recycling and autoscaling (loop thread) ------------------------------------------
    def _count_done(self, slot: _Slot, n: int) -> None:
        """``n`` more tasks answered by the slot's child: mark it for recycling if it is due."""
        slot.done += n
        if self.lifecycle.active:
            slot.recycle = self.lifecycle.should_recycle(slot.done, slot.rss)

    def _recycle(self, slot: _Slot) -> None:
        """Ask the slot's child to exit (its exit hooks run) and start a new one in its place."""
        reason, slot.recycle = slot.recycle, None
        proc = slot.proc
        log.info("replacing pool process %s: %s", proc.pid if proc is not None else "?", reason)
        self._detach(slot)
        self._helper(self._renew, slot)

    def _renew(self, slot: _Slot) -> None:
        try:
            self._retire(slot, graceful=True)
            if not slot.parked:
                self._replace(slot)
        except Exception:
            log.exception("pool slot %d failed", slot.index)

    def _autoscale_tick(self) -> None:
        if self.closing or self.loop is None:
            return
        self._autoscale()
        self.loop.call_later(AUTOSCALE_TICK, self._autoscale_tick)

    def _autoscale(self) -> None:
        """Apply :func:`~.lifecycle.autoscale_target`: start parked slots or park an idle one."""
        bounds = self.lifecycle.autoscale
        if bounds is None or self.closing:
            return
        now = time.monotonic()
        live = [slot for slot in self.slots if not slot.parked]
        busy = sum(1 for slot in live if slot.batch is not None)
        free = [slot for slot in live if slot.attached and slot.batch is None and not slot.recycle]
        waiting = len(self.pending_jobs)
        if not free or waiting:
            self.idle_since = None
        elif self.idle_since is None:
            self.idle_since = now
        target = autoscale_target(now, children=len(live), busy=busy, waiting=waiting,
                                  idle_since=self.idle_since, minimum=bounds[0], maximum=bounds[1],
                                  idle_after=self.lifecycle.autoscale_idle)
        if target > len(live):
            # A parked slot whose child is still being asked to exit waits for the next turn.
            grow = [slot for slot in self.slots if slot.parked and slot.proc is None][:target - len(live)]
            if not grow:
                return
            log.info("autoscale: starting %d more pool process(es) for %d waiting task(s) (%d -> %d)",
                     len(grow), waiting, len(live), len(live) + len(grow))
            for slot in grow:
                slot.parked = False
                self._helper(self._replace, slot)
        elif target < len(live) and free:
            slot = free[-1]
            slot.parked = True
            self.idle_since = now  # the next one goes after another idle period
            log.info("autoscale: stopping idle pool process %s (%d -> %d)",
                     slot.proc.pid if slot.proc is not None else "?", len(live), len(live) - 1)
            self._detach(slot)
            self._helper(self._renew, slot)

    def children(self) -> int:
        """Child processes running now (started, not parked or being replaced)."""
        with self.cond:
            return sum(1 for slot in self.slots if slot.proc is not None and not slot.parked)

    def _answered(self, slot: _Slot, detail: Any, entries: list[_Entry], results: list[JobResult]) -> None:
        """The child answered its batch: add the batch and its results to ``entries`` and
        ``results``."""
        if slot.batch is None:
            return
        batch = self._finish(slot)
        try:
            results += [JobResult(e.job.id, e.job.token, bool(ok), payload, codec, float(duration),
                                  output if isinstance(output, str) else None)
                        for e, (ok, payload, codec, duration, output) in zip(batch, detail, strict=True)]
        except (ValueError, TypeError) as exc:
            results += [_failed(e.job, exc) for e in batch]
        entries += batch
        self._count_done(slot, len(batch))

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
            if not slot.parked:
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
        target, args = self._child_target()
        proc = self.ctx.Process(target=target, args=(child_conn, *args), name=f"conveyor-pool-{slot.index}")
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

    def _child_target(self) -> tuple[Callable[..., None], tuple[Any, ...]]:
        """The function a child runs and its arguments after the pipe."""
        return _child_main, (self.modules, self.allow_pickle, self.settings)

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
            code: int | None = proc.exitcode
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


def _finalize(core: _ProcessCore) -> None:
    """The pool object was collected (or the interpreter exits) without a shutdown."""
    core.kill_all()


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

    _core: _ProcessCore

    def __init__(self, concurrency: int, modules: list[str], on_results: OnResults, *,
                 allow_pickle: bool = False, loop: asyncio.AbstractEventLoop | None = None,
                 lifecycle: Lifecycle | None = None) -> None:
        self._core = _ProcessCore(concurrency, modules, on_results, allow_pickle, loop, lifecycle)
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

    def children(self) -> int:
        """How many child processes run now (with ``autoscale``, between MIN and MAX)."""
        return self._core.children()

    def _processes(self) -> list[Any]:
        """The current child process objects (for tests)."""
        return self._core.processes()

