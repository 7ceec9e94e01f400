"""The thread pool: tasks run on threads of the worker's own process.

Cheaper than the process pool, but it contains nothing: a task that crashes
the process takes the whole worker down, and a thread cannot be stopped, so a
task past its time limit keeps running and is only reported as timed out
when it returns.
"""

from __future__ import annotations

import threading
import weakref

from ..context import CurrentTask
from ..hooks import CHILD_EXIT, CHILD_START, run_hooks
from ..logs import capture_output
from ..options import headers_of
from ..tasks import Registry
from .core import _Core, _PoolBase
from .execute import _execute, _failed, _load_registry, _timeout_error
from .jobs import JobResult, OnResults
from .tasklog import log_started

__all__ = ["ThreadPool"]


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
        # Tasks share this process's stdout with the worker: only their logging is captured.
        capture_output(streams=False)
        # No children here: the child hooks run once, in this process.
        run_hooks(CHILD_START, stop_on_error=True)
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
            log_started([entry.job for entry in batch])
            results = []
            for entry in batch:
                job = entry.job
                ok, payload, codec, duration, output = _execute(
                    registry, job.name, job.payload, job.codec, self.allow_pickle,
                    CurrentTask(job.id, job.name, job.token, self.progress,
                                headers=headers_of(job.options)), entry.soft,
                    signals=False,  # SIGALRM reaches the main thread only: async tasks only
                    capture=True)
                if entry.timeout is not None and duration > entry.timeout:
                    result = _failed(job, _timeout_error(job.name, entry.timeout), duration)
                    result.output = output
                    results.append(result)
                else:
                    results.append(JobResult(job.id, job.token, ok, payload, codec, duration, output))
            self.report(batch, results)

    def shutdown(self, wait: bool) -> None:
        with self.cond:
            self.closing = True
            if not wait:
                self.killed = True
            self.cond.notify_all()
        if wait:
            self.join_threads(None)
            run_hooks(CHILD_EXIT, stop_on_error=False)


def _finalize(core: _Core) -> None:
    """The pool object was collected (or the interpreter exits) without a shutdown:
    the threads stop taking work and no result is reported any more."""
    with core.cond:
        core.closing = core.killed = True
        core.cond.notify_all()


class ThreadPool(_PoolBase):
    """Runs tasks on ``concurrency`` threads of this process.

    Same interface and result rules as :class:`ProcessPool`, without its
    protection: a task that crashes the process (``os._exit``, a segfault)
    takes the whole worker down, and a thread cannot be stopped, so a job past
    its ``timeout`` keeps running and is reported as failed with TaskTimeout
    only when it finally returns (its slot stays busy meanwhile). Tasks share
    the GIL; use it for I/O-bound tasks or code that releases the GIL.
    """

    _core: _ThreadCore

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

