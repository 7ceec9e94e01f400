"""The worker's execution pools: results, failures, crashes, time limits, shutdown."""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from conveyor import serde
from conveyor.worker.child import _frame, _frames_from
from conveyor.worker.pool import (
    BATCH_BELOW,
    AsyncioPool,
    Job,
    JobResult,
    ProcessPool,
    ThreadPool,
    make_pool,
)

MOD = "tests.unit.pool_tasks"
KINDS = ["process", "thread", "asyncio"]
WAIT = 60.0  # upper bound of every wait; none of them is a timing assertion


class Collector:
    """An ``on_results`` callback that keeps results by job id."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.results: dict[str, JobResult] = {}
        self.calls = 0

    def __call__(self, results: list[JobResult]) -> None:
        with self.cond:
            self.calls += 1
            for result in results:
                assert result.id not in self.results, f"{result.id} reported twice"
                self.results[result.id] = result
            self.cond.notify_all()

    def wait_for(self, n: int, timeout: float = WAIT) -> dict[str, JobResult]:
        with self.cond:
            ok = self.cond.wait_for(lambda: len(self.results) >= n, timeout)
            assert ok, f"only {len(self.results)} of {n} results arrived within {timeout}s"
            return dict(self.results)

    def wait_id(self, job_id: str, timeout: float = WAIT) -> JobResult:
        with self.cond:
            ok = self.cond.wait_for(lambda: job_id in self.results, timeout)
            assert ok, f"no result for {job_id} within {timeout}s"
            return self.results[job_id]


def job(job_id: str, fn: str, *args, timeout: float | None = None, codec: str = "msgpack",
        name: str | None = None, **kwargs) -> Job:
    options = {"timeout": timeout} if timeout is not None else {}
    return Job(job_id, 7, name or f"{MOD}:{fn}", serde.encode_call(args, kwargs, codec), codec, options)


def value(result: JobResult):
    assert result.ok, serde.decode_error(result.payload)
    return serde.decode(result.payload, result.codec, allow_pickle=True)


def error(result: JobResult) -> dict:
    assert not result.ok
    assert result.codec == "msgpack"
    return serde.decode_error(result.payload)


def wait_until(predicate: Callable[[], bool], timeout: float = WAIT) -> None:
    deadline = time.monotonic() + timeout
    tick = threading.Event()
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        tick.wait(0.01)


@pytest.fixture
def make() -> Iterator[Callable[..., tuple[ProcessPool | ThreadPool, Collector]]]:
    """Start pools; every one still running is killed at teardown."""
    pools: list[ProcessPool | ThreadPool] = []

    def factory(kind: str, concurrency: int = 2, *, allow_pickle: bool = False,
                modules: list[str] | None = None) -> tuple[ProcessPool | ThreadPool, Collector]:
        collector = Collector()
        pool = make_pool(kind, concurrency, modules or [MOD], collector, allow_pickle=allow_pickle)
        pools.append(pool)
        pool.start()
        return pool, collector

    yield factory
    for pool in pools:
        pool.shutdown(wait=False)


def run_squares(pool, collector: Collector, n: int, prefix: str, chunk: int = 100) -> None:
    before = len(collector.results)
    for start in range(0, n, chunk):
        pool.submit([job(f"{prefix}{i}", "square", i) for i in range(start, min(n, start + chunk))])
    results = collector.wait_for(before + n)
    for i in range(n):
        assert value(results[f"{prefix}{i}"]) == i * i


# -- results --------------------------------------------------------------------------

@pytest.mark.parametrize("kind", KINDS)
def test_many_squares_all_correct(make, kind):
    pool, collector = make(kind)
    run_squares(pool, collector, 2000, "sq")
    assert pool.pending() == 0
    wait_until(lambda: pool.running() == 0)
    assert pool.avg_duration > 0
    assert all(r.token == 7 and r.codec == "msgpack" for r in collector.results.values())


@pytest.mark.parametrize("kind", KINDS)
def test_failure_reports_type_message_traceback(make, kind):
    pool, collector = make(kind)
    pool.submit([job("f", "fail")])
    err = error(collector.wait_id("f"))
    assert err["type"] == "ValueError"
    assert err["message"] == "boom"
    assert "Traceback" in err["traceback"] and "fail" in err["traceback"]


@pytest.mark.parametrize("kind", KINDS)
def test_unknown_task_is_refused_never_imported(make, kind, tmp_path):
    pool, collector = make(kind)
    marker = tmp_path / "ran"
    pool.submit([job("u", "", f"touch {marker}", name="os:system")])
    err = error(collector.wait_id("u"))
    assert err["type"] == "conveyor.errors.UnknownTask"
    assert "os:system" in err["message"]
    assert not marker.exists()


@pytest.mark.parametrize("kind", KINDS)
def test_unencodable_return_is_a_serialization_error(make, kind):
    pool, collector = make(kind)
    pool.submit([job("o", "returns_object"), job("after", "square", 3)])
    err = error(collector.wait_id("o"))
    assert err["type"] == "conveyor.errors.SerializationError"
    assert value(collector.wait_id("after")) == 9


@pytest.mark.parametrize("kind", KINDS)
def test_kwargs_reach_the_function(make, kind):
    pool, collector = make(kind)
    pool.submit([job("k", "echo_kwargs", 1, "two", x=[3], y={"z": None})])
    assert value(collector.wait_id("k")) == {"args": [1, "two"], "kwargs": {"x": [3], "y": {"z": None}}}


@pytest.mark.parametrize("kind", KINDS)
def test_pickle_refused_unless_allowed(make, kind):
    pool, collector = make(kind)
    pool.submit([job("p", "square", 3, codec="pickle")])
    err = error(collector.wait_id("p"))
    assert err["type"] == "conveyor.errors.SerializationError"
    assert "unpickle" in err["message"]

    pool2, collector2 = make(kind, allow_pickle=True)
    pool2.submit([job("p", "square", 3, codec="pickle")])
    result = collector2.wait_id("p")
    assert result.ok and result.codec == "pickle"
    assert serde.decode(result.payload, "pickle", allow_pickle=True) == 9


def test_unknown_codec_fails_the_job(make):
    pool, collector = make("process", 1)
    pool.submit([Job("c", 1, f"{MOD}:square", serde.encode_call((2,), {}), "json", {})])
    assert error(collector.wait_id("c"))["type"] == "conveyor.errors.SerializationError"


# -- crashes and time limits ----------------------------------------------------------

@pytest.mark.parametrize(("fn", "expect"), [("crash", "code 3"), ("segv", "SIGKILL")])
def test_crash_fails_the_job_and_the_pool_keeps_serving(make, fn, expect):
    pool, collector = make("process", 2)
    pool.submit([job("c", fn)])
    err = error(collector.wait_id("c"))
    assert err["type"] == "conveyor.errors.WorkerCrashed"
    assert expect in err["message"] and f"{MOD}:{fn}" in err["message"]
    run_squares(pool, collector, 20, "after")
    wait_until(lambda: pool.running() == 0 and len(pool._processes()) == 2)  # replaced


def test_crash_in_a_batch_fails_only_the_culprit(make, caplog):
    pool, collector = make("process", 2)
    run_squares(pool, collector, 500, "warm")  # short tasks: batching switches on
    batched = pool.avg_duration < BATCH_BELOW
    jobs = [job(f"a{i}", "square", i) for i in range(60)] + [job("boom", "crash")]
    jobs += [job(f"b{i}", "square", i) for i in range(60)]
    with caplog.at_level(logging.WARNING, logger="conveyor.worker.pool"):
        pool.submit(jobs)
        results = collector.wait_for(500 + len(jobs))
    failed = [r.id for r in results.values() if not r.ok]
    assert failed == ["boom"]
    assert error(results["boom"])["type"] == "conveyor.errors.WorkerCrashed"
    for i in range(60):
        assert value(results[f"a{i}"]) == value(results[f"b{i}"]) == i * i
    if batched:  # the crash hit a batch, which was then rerun job by job
        assert any("one at a time" in rec.getMessage() for rec in caplog.records)
    else:
        print(f"note: tasks averaged {pool.avg_duration:.6f}s here, the batch path was not taken")


@pytest.mark.parametrize("kind", KINDS)
def test_timeout_fails_the_job_and_the_pool_continues(make, kind):
    pool, collector = make(kind, 2)
    pool.submit([job("slow", "sleep", 2.0, timeout=0.2)])
    err = error(collector.wait_id("slow"))
    assert err["type"] == "conveyor.errors.TaskTimeout"
    assert err["message"] == f"task {MOD}:sleep exceeded its time limit of 0.2s"
    run_squares(pool, collector, 20, "after")
    pool.submit([job("quick", "sleep", 0.01, timeout=30)])
    assert value(collector.wait_id("quick")) == 0.01


def test_sigint_does_not_reach_tasks(make):
    pool, collector = make("process", 2)
    procs = pool._processes()
    for proc in procs:
        os.kill(proc.pid, signal.SIGINT)
    run_squares(pool, collector, 50, "s")
    assert pool._processes() == procs and all(p.is_alive() for p in procs)


# -- pending, shutdown ----------------------------------------------------------------

@pytest.mark.parametrize("kind", KINDS)
def test_discard_pending_returns_unstarted_jobs(make, kind):
    pool, collector = make(kind, 1)
    pool.submit([job("s", "sleep", 0.5)])
    wait_until(lambda: pool.running() == 1)
    waiting = [job(f"w{i}", "square", i) for i in range(5)]
    pool.submit(waiting)
    assert pool.pending() == 5
    assert pool.discard_pending() == waiting
    assert pool.pending() == 0
    assert value(collector.wait_id("s")) == 0.5
    pool.shutdown(wait=True)
    assert set(collector.results) == {"s"}


@pytest.mark.parametrize("kind", KINDS)
def test_shutdown_wait_finishes_the_running_job(make, kind):
    pool, collector = make(kind, 1)
    procs = pool._processes() if kind != "thread" else []
    pool.submit([job("s", "sleep", 0.5)])
    wait_until(lambda: pool.running() == 1)
    pool.shutdown(wait=True)
    assert value(collector.results["s"]) == 0.5
    assert pool.running() == 0
    for proc in procs:
        assert proc.exitcode == 0  # asked to exit, not killed
        with pytest.raises(ProcessLookupError):
            os.kill(proc.pid, 0)  # reaped: not even a zombie
    with pytest.raises(RuntimeError):
        pool.submit([job("late", "square", 1)])


def test_process_shutdown_nowait_kills_every_child(make):
    pool, collector = make("process", 2)
    pool.submit([job("s1", "sleep", 30), job("s2", "sleep", 30)])
    wait_until(lambda: pool.running() == 2)
    procs = pool._processes()
    assert len(procs) == 2
    pool.shutdown(wait=False)
    for proc in procs:
        assert not proc.is_alive()
        assert proc.exitcode == -signal.SIGKILL
        with pytest.raises(ProcessLookupError):
            os.kill(proc.pid, 0)
    threading.Event().wait(0.3)
    assert collector.results == {}
    assert pool._processes() == []


def test_thread_shutdown_nowait_never_reports_running_jobs(make):
    pool, collector = make("thread", 1)
    pool.submit([job("s", "sleep", 0.3)])
    wait_until(lambda: pool.running() == 1)
    pool.shutdown(wait=False)
    threading.Event().wait(0.6)
    assert collector.results == {}


def test_collected_pool_reaps_its_children():
    pool = ProcessPool(2, [MOD], Collector())
    pool.start()
    procs = pool._processes()
    del pool
    gc.collect()
    for proc in procs:
        proc.join(WAIT)
        assert proc.exitcode is not None
        with pytest.raises(ProcessLookupError):
            os.kill(proc.pid, 0)


# -- construction ---------------------------------------------------------------------

@pytest.mark.parametrize("kind", KINDS)
def test_unimportable_module_fails_start_with_its_name(kind):
    pool = make_pool(kind, 2, ["tests.unit.no_such_tasks"], Collector())
    with pytest.raises(ImportError, match="tests.unit.no_such_tasks"):
        pool.start()
    pool.shutdown(wait=False)


def test_make_pool_kinds():
    assert type(make_pool("process", 1, [MOD], Collector())) is ProcessPool
    assert isinstance(make_pool("thread", 1, [MOD], Collector()), ThreadPool)
    assert isinstance(make_pool("asyncio", 1, [MOD], Collector()), AsyncioPool)
    with pytest.raises(ValueError, match="process.*thread.*asyncio"):
        make_pool("fiber", 1, [MOD], Collector())
    with pytest.raises(ValueError):
        make_pool("process", 0, [MOD], Collector())


# -- the process pool's pipes ----------------------------------------------------------

def test_frames_match_multiprocessing_connection():
    """The loop reads what Connection.send_bytes writes, in any chunking, and the
    child's recv_bytes reads what the loop writes."""
    import multiprocessing

    a, b = multiprocessing.Pipe(duplex=True)
    bodies = [b"", b"x", os.urandom(16384), os.urandom(16385), os.urandom(300_000)]
    got: list[bytes] = []
    sender = threading.Thread(target=lambda: [a.send_bytes(body) for body in bodies])
    sender.start()
    buf, size, step = bytearray(), sum(4 + len(body) for body in bodies), 1
    while size:
        chunk = os.read(b.fileno(), min(step, size))
        size -= len(chunk)
        got += _frames_from(buf, chunk)
        step = step * 3 + 1  # 1, 4, 13, 40, ... bytes: frames split at every kind of place
    sender.join()
    assert got == bodies and not buf
    for body in bodies:
        writer = threading.Thread(target=os.write, args=(b.fileno(), _frame(body)))
        writer.start()
        assert a.recv_bytes() == body
        writer.join()
    a.close()
    b.close()


def test_large_jobs_and_results_cross_the_pipe(make):
    """Jobs and results bigger than the pipe's buffer go through in parts."""
    pool, collector = make("process", 2)
    big = "x" * 3_000_000
    pool.submit([job("big1", "echo_kwargs", big), job("small", "square", 4), job("big2", "echo_kwargs", b=big)])
    assert value(collector.wait_id("big1")) == {"args": [big], "kwargs": {}}
    assert value(collector.wait_id("big2")) == {"args": [], "kwargs": {"b": big}}
    assert value(collector.wait_id("small")) == 16


def test_idle_child_that_dies_is_replaced_before_it_gets_work(make):
    pool, collector = make("process", 2)
    procs = pool._processes()
    os.kill(procs[0].pid, signal.SIGKILL)
    wait_until(lambda: procs[0] not in pool._processes() and len(pool._processes()) == 2)
    run_squares(pool, collector, 50, "after")
    assert all(r.ok for r in collector.results.values())  # no job was blamed for that death


def test_cancel_running_job_stops_its_child(make):
    pool, collector = make("process", 1)
    procs = pool._processes()
    pool.submit([job("hang", "sleep", 60)])
    wait_until(lambda: pool.running() == 1)
    assert pool.cancel("hang")
    err = error(collector.wait_id("hang"))
    assert err["message"] == "task was cancelled"
    assert not pool.cancel("hang")  # no longer held
    run_squares(pool, collector, 20, "after")
    assert pool._processes() != procs and not procs[0].is_alive()


class LoopThread:
    """An event loop running in a thread of its own, as the worker's loop runs."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def call(self, fn: Callable, *args):
        """Run ``fn(*args)`` on the loop and return (or raise) what it did."""
        async def run():
            return fn(*args)
        return asyncio.run_coroutine_threadsafe(run(), self.loop).result(WAIT)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(WAIT)
        self.loop.close()


class ThreadRecorder(Collector):
    """A Collector that also notes which thread each call came from."""

    def __init__(self) -> None:
        super().__init__()
        self.threads: set[int] = set()

    def __call__(self, results: list[JobResult]) -> None:
        self.threads.add(threading.get_ident())
        super().__call__(results)


def test_process_pool_on_a_given_loop_reports_on_that_loop():
    """With the caller's event loop the children's pipes are driven from it: results and
    progress arrive on the loop's thread, whoever submitted, and crashes still fail only
    the culprit."""
    lt = LoopThread()
    collector = ThreadRecorder()
    progress: list[tuple[int, dict]] = []
    pool = ProcessPool(2, [MOD], collector, loop=lt.loop)
    pool.set_progress_callback(lambda report: progress.append((threading.get_ident(), report)))
    try:
        pool.start()
        loop_ident = lt.call(threading.get_ident)
        pool.submit([job(f"t{i}", "square", i) for i in range(50)])  # from this thread
        lt.call(pool.submit, [job(f"l{i}", "square", i) for i in range(50)])  # from the loop
        lt.call(pool.submit, [job("c", "crash"), job("n", "count_up", 3)])
        results = collector.wait_for(102)
        assert all(value(results[f"{p}{i}"]) == i * i for p in "tl" for i in range(50))
        assert error(results["c"])["type"] == "conveyor.errors.WorkerCrashed"
        assert value(results["n"]) == 3
        assert (loop_ident, {"id": "n", "token": 7, "done": 3, "total": 3, "message": ""}) in progress
        wait_until(lambda: pool.running() == 0 and len(pool._processes()) == 2)  # replaced
        # Crash reports come from the helper thread that reaps the child; the rest from the loop.
        assert loop_ident in collector.threads and threading.get_ident() not in collector.threads
        with pytest.raises(RuntimeError, match="event loop"):
            lt.call(pool.shutdown, True)  # it would wait for the loop it blocks
        procs = pool._processes()
        pool.submit([job("s", "sleep", 0.3)])
        wait_until(lambda: pool.running() == 1)
        pool.shutdown(wait=True)
        assert value(collector.results["s"]) == 0.3
        assert all(proc.exitcode == 0 for proc in procs)  # asked to exit, not killed
    finally:
        pool.shutdown(wait=False)
        lt.close()


# -- throughput (printed, not asserted) -----------------------------------------------

def test_process_pool_throughput(make):
    pool, collector = make("process", 2)
    n, chunk = 20_000, 500
    started = time.perf_counter()
    for start in range(0, n, chunk):
        pool.submit([job(str(i), "square", i) for i in range(start, start + chunk)])
    results = collector.wait_for(n)
    elapsed = time.perf_counter() - started
    assert all(r.ok for r in results.values())
    print(f"\nProcessPool(2): {n} square jobs in {elapsed:.3f}s = {n / elapsed:,.0f} jobs/s "
          f"({collector.calls} on_results calls, avg_duration {pool.avg_duration * 1e6:.1f} us)")
