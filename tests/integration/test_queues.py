"""Network queues against a real master: queue.Queue conformance, many processes, kill -9.

Consumers and producers that must be separate processes run this module's
``_role_*`` functions in a fresh interpreter (see :func:`spawn`).
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import conveyor
from conveyor import protocol
from conveyor.cluster import LocalCluster

from ..waiting import wait_until
from .conftest import ROOT

# -- roles run in subprocesses -------------------------------------------------


def _client(codec: str = "msgpack") -> conveyor.Client:
    return conveyor.Client(os.environ["CONVEYOR_ADDRESS"], os.environ["CONVEYOR_AUTHKEY"], codec=codec)


def _say(obj) -> None:
    print(json.dumps(obj), flush=True)


def _role_producer(name: str, producer: str, count: str) -> None:
    """Put [producer, i] for i in range(count), 500 per round trip."""
    with _client() as c:
        q = c.queue(name)
        p, n = int(producer), int(count)
        for start in range(0, n, 500):
            assert q.put_many([[p, i] for i in range(start, min(n, start + 500))]) == min(500, n - start)
    _say("done")


def _role_consumer(name: str, out: str, done_flag: str) -> None:
    """Get batches and task_done each item until the queue is empty and the producers are done."""
    got = []
    with _client() as c:
        q = c.queue(name, ack="task_done")
        while True:
            done = Path(done_flag).exists()  # checked before the get: then Empty means drained
            try:
                items = q.get_many(200, timeout=0.3)
            except queue.Empty:
                if done:
                    break
                continue
            got.extend(items)
            for _ in items:
                q.task_done()
        q.flush(30)
    Path(out).write_text(json.dumps(got))
    _say(len(got))


def _role_hold(name: str, ack: str, n: str) -> None:
    """Get ``n`` items, report them, and hold them (never task_done) until killed."""
    c = _client()
    q = c.queue(name, ack=ack)
    got = []
    while len(got) < int(n):
        got.extend(q.get_many(int(n) - len(got), timeout=10))
    _say(got)
    time.sleep(120)


def _role_bounded_producer(name: str, maxsize: str, producer: str, count: str) -> None:
    """put_nowait until queue.Full, report how many went in, wait for "go", then put the rest blocking."""
    with _client() as c:
        q = c.queue(name, maxsize=int(maxsize))
        p, n = int(producer), int(count)
        i = 0
        while True:
            try:
                q.put_nowait([p, i])
            except queue.Full:
                break
            i += 1
        _say({"full_after": i})
        sys.stdin.readline()
        try:  # still full: nobody consumed yet
            q.put_nowait([p, i])
            _say({"second_put_nowait": "accepted"})
        except queue.Full:
            _say({"second_put_nowait": "Full"})
        sys.stdin.readline()
        for j in range(i, n):
            q.put([p, j], timeout=30)
        _say("done")
        sys.stdin.readline()  # stay connected until told: see test_parked_puts_survive_a_session_dropping


def _role_join_consumer(name: str, n: str) -> None:
    """Get ``n`` items and task_done each, then exit."""
    with _client() as c:
        q = c.queue(name, ack="task_done")
        for _ in range(int(n)):
            q.get(timeout=10)
            q.task_done()
        q.flush(30)
    _say("done")


def spawn(cluster: LocalCluster, role: str, *args: object, stdin: bool = False) -> subprocess.Popen:
    """Run ``_role_<role>(*args)`` of this module in a new interpreter connected to ``cluster``."""
    code = f"import sys; from tests.integration.test_queues import _role_{role} as f; f(*sys.argv[1:])"
    return subprocess.Popen([sys.executable, "-c", code, *map(str, args)], cwd=ROOT, env=cluster.env(),
                            stdout=subprocess.PIPE, stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
                            text=True)


def read_json_line(proc: subprocess.Popen, timeout: float = 30.0):
    """The next stdout line of ``proc`` as JSON, waiting at most ``timeout`` seconds."""
    box: list[str] = []
    reader = threading.Thread(target=lambda: box.append(proc.stdout.readline()), daemon=True)
    reader.start()
    reader.join(timeout)
    if not box or not box[0]:
        raise AssertionError(f"no output from pid {proc.pid} within {timeout}s (exit code {proc.poll()})")
    return json.loads(box[0])


@pytest.fixture
def procs():
    """Subprocesses started by a test; every one is killed by PID at the end."""
    started: list[subprocess.Popen] = []
    yield started
    for p in started:
        if p.poll() is None:
            p.kill()
        p.wait(10)
        for stream in (p.stdin, p.stdout):
            if stream is not None:
                stream.close()


@pytest.fixture
def client(master):
    with master.client() as c:
        yield c


# -- queue.Queue behaviours --------------------------------------------------------


def test_fifo_order_and_nowait_variants(client):
    q = client.queue("fifo")
    for i in range(50):
        q.put(i)
    q.put_nowait("last")
    assert [q.get() for _ in range(25)] == list(range(25))
    assert [q.get_nowait() for _ in range(25)] == list(range(25, 50))
    assert q.get(timeout=1) == "last"
    with pytest.raises(queue.Empty):
        q.get_nowait()
    with pytest.raises(queue.Empty):
        q.get(block=False)


def test_values_round_trip(client):
    q = client.queue("values")
    values = [None, True, 0, -1, 2**40, 1.5, "héllo", b"\x00\xff", [1, [2, 3]], {"a": {"b": [None]}}]
    q.put_many(values)
    assert q.get_many(len(values), timeout=5) == values


def test_get_timeout_raises_empty_after_about_the_timeout(client):
    q = client.queue("empty-wait")
    start = time.monotonic()
    with pytest.raises(queue.Empty):
        q.get(timeout=0.5)
    elapsed = time.monotonic() - start
    assert elapsed >= 0.45  # it waited...
    assert elapsed < 0.5 + 5  # ...and it returned (not how fast: this is a loaded CI box)


def test_full_with_block_false_and_with_timeout(client):
    q = client.queue("bounded", maxsize=3)
    for i in range(3):
        q.put(i)
    with pytest.raises(queue.Full):
        q.put_nowait(3)
    with pytest.raises(queue.Full):
        q.put(3, block=False)
    start = time.monotonic()
    with pytest.raises(queue.Full):
        q.put(3, timeout=0.4)
    elapsed = time.monotonic() - start
    assert 0.35 <= elapsed < 0.4 + 5
    assert q.qsize() == 3
    assert q.get() == 0
    q.put(3, timeout=1)  # room again
    assert q.get_many(10, timeout=1) == [1, 2, 3]


def test_blocked_put_proceeds_when_a_consumer_makes_room(client, master):
    q = client.queue("bounded-wait", maxsize=1)
    q.put("a")
    with master.client() as other:
        taker = threading.Timer(0.3, lambda: other.queue("bounded-wait", ack="get").get(timeout=5))
        taker.start()
        q.put("b", timeout=10)  # blocks until the other client takes "a"
        taker.join(10)  # its reply is in before its client closes
    assert q.get(timeout=5) == "b"


def test_qsize_empty_full(client):
    q = client.queue("sizes", maxsize=2)
    assert (q.qsize(), q.empty(), q.full()) == (0, True, False)
    q.put("x")
    assert (q.qsize(), q.empty(), q.full()) == (1, False, False)
    q.put("y")
    assert (q.qsize(), q.empty(), q.full()) == (2, False, True)
    q.get()
    assert (q.qsize(), q.empty(), q.full()) == (1, False, False)  # a leased item is not waiting
    unbounded = client.queue("sizes-unbounded")
    unbounded.put_many(range(100))
    assert (unbounded.qsize(), unbounded.full()) == (100, False)


def test_task_done_too_many_times_raises_value_error(client):
    q = client.queue("td")
    with pytest.raises(ValueError):
        q.task_done()
    q.put(1)
    q.put(2)
    q.get()
    q.get()
    q.task_done()
    q.task_done()
    with pytest.raises(ValueError, match="too many times"):
        q.task_done()


def test_join_true_after_all_task_done_false_on_timeout(client):
    q = client.queue("join")
    assert q.join(timeout=1) is True  # nothing was ever put
    q.put_many(["a", "b", "c"])
    assert q.join(timeout=0.2) is False  # nothing got
    q.get_many(3, timeout=5)
    q.task_done()
    q.task_done()
    start = time.monotonic()
    assert q.join(timeout=0.3) is False  # one still unacknowledged
    assert time.monotonic() - start >= 0.25
    q.task_done()
    assert q.join(timeout=10) is True


def test_negative_timeouts_raise_value_error_like_queue_queue(client):
    stdlib = queue.Queue(maxsize=2)
    q = client.queue("negative", maxsize=2)
    for target in (stdlib, q):
        with pytest.raises(ValueError):
            target.get(timeout=-1)
        with pytest.raises(ValueError):
            target.put(1, timeout=-0.5)  # queue.Queue checks it on a bounded queue
    with pytest.raises(ValueError):
        q.get_many(5, timeout=-1)
    with pytest.raises(ValueError):
        q.put_many([1], timeout=-1)
    with pytest.raises(ValueError):
        q.join(timeout=-1)
    assert q.qsize() == 0  # nothing went in


def test_put_many_get_many(client):
    q = client.queue("many")
    assert q.put_many(range(100)) == 100
    assert q.put_many([]) == 0
    assert q.get_many(30) == list(range(30))
    assert q.get_many(1000, timeout=1) == list(range(30, 100))  # what there is, not 1000
    with pytest.raises(queue.Empty):
        q.get_many(10, timeout=0.2)
    with pytest.raises(ValueError):
        q.get_many(0)
    bounded = client.queue("many-bounded", maxsize=5)
    assert bounded.put_many(range(8), block=False) == 5  # partial: the rest did not fit
    assert bounded.put_many(range(3), timeout=0.2) == 0
    assert bounded.get_many(10, timeout=1) == [0, 1, 2, 3, 4]


def test_same_observable_results_as_queue_queue(client):
    """The h11 way: one scripted sequence on the reference and on ours, compared step by step."""

    def script(q, join):
        out = []

        def step(fn, *args, **kwargs):
            try:
                out.append(("ok", fn(*args, **kwargs)))
            except Exception as exc:  # the observable result is the exception's type
                out.append(("raised", type(exc).__name__))

        step(q.empty)
        step(q.put, 1)
        step(q.put, "two")
        step(q.put_nowait, {"three": [3]})
        step(q.qsize)
        step(q.full)
        step(q.put_nowait, 4)
        step(q.put, 4, timeout=0.1)
        step(q.put, 4, True, -1)
        step(q.get)
        step(q.full)
        step(q.put, None)
        step(q.get_nowait)
        step(q.get, timeout=0.5)
        step(q.get, True, -1)
        step(q.qsize)
        step(q.get, block=False)
        step(q.empty)
        step(q.get_nowait)
        step(q.get, timeout=0.1)
        step(q.get, False, -1)  # a non-blocking get ignores its timeout
        for _ in range(4):
            step(q.task_done)
        step(join)
        step(q.task_done)
        step(q.qsize)
        step(q.empty)
        return out

    reference = queue.Queue(maxsize=3)
    ours = client.queue("compare", maxsize=3)
    expected = script(reference, lambda: reference.join() or True)
    assert script(ours, lambda: ours.join(timeout=10)) == expected
    assert ("raised", "Full") in expected and ("raised", "Empty") in expected
    assert ("raised", "ValueError") in expected


# -- many processes ------------------------------------------------------------------


def test_two_producers_two_consumers_each_item_once(master, procs, tmp_path):
    n_per_producer = 2_000  # enough to interleave both producers at both consumers, many times over
    done_flag = tmp_path / "producers-done"
    outs = [tmp_path / "c0.json", tmp_path / "c1.json"]
    consumers = [spawn(master, "consumer", "mpmc", out, done_flag) for out in outs]
    producers = [spawn(master, "producer", "mpmc", p, n_per_producer) for p in (0, 1)]
    procs.extend(consumers + producers)
    for p in producers:
        assert read_json_line(p, 60) == "done"
        assert p.wait(30) == 0
    done_flag.touch()
    counts = [read_json_line(c, 60) for c in consumers]
    for c in consumers:
        assert c.wait(30) == 0
    got = [tuple(x) for out in outs for x in json.loads(out.read_text())]
    assert sum(counts) == len(got) == 2 * n_per_producer
    assert set(got) == {(p, i) for p in (0, 1) for i in range(n_per_producer)}  # each exactly once
    for out in outs:  # each producer's items arrive in the order it put them (FIFO per consumer)
        mine = [tuple(x) for x in json.loads(out.read_text())]
        for p in (0, 1):
            seq = [i for q, i in mine if q == p]
            assert seq == sorted(seq)
    with master.client() as c:
        q = c.queue("mpmc")
        assert q.qsize() == 0
        assert q.join(timeout=10) is True


def test_killed_consumer_items_are_delivered_again(master, procs, client):
    q = client.queue("redeliver")
    q.put_many([f"job-{i}" for i in range(5)])
    holder = spawn(master, "hold", "redeliver", "task_done", 5)
    procs.append(holder)
    held = read_json_line(holder)
    assert sorted(held) == [f"job-{i}" for i in range(5)]
    assert q.qsize() == 0  # all five are leased to the holder
    holder.send_signal(signal.SIGKILL)
    holder.wait(10)
    again = []
    while len(again) < 5:
        again.extend(q.get_many(5, timeout=10))
    assert sorted(again) == sorted(held)
    for _ in again:
        q.task_done()
    assert q.join(timeout=10) is True


def test_ack_on_get_items_are_not_delivered_again(master, procs, client):
    q = client.queue("no-redeliver")
    q.put_many(list(range(10)))
    holder = spawn(master, "hold", "no-redeliver", "get", 5)
    procs.append(holder)
    assert read_json_line(holder) == [0, 1, 2, 3, 4]
    holder.send_signal(signal.SIGKILL)
    holder.wait(10)
    assert q.get_many(10, timeout=5) == [5, 6, 7, 8, 9]
    with pytest.raises(queue.Empty):
        q.get(timeout=1)  # the dead consumer's five are gone, as with queue.Queue


def test_items_survive_master_kill_and_restart(make_cluster):
    master = make_cluster(workers=0).start()  # its own: this test kills it
    with master.client() as client:
        q = client.queue("durable", ack="task_done")
        q.put_many(list(range(100)))
        leased = q.get_many(10)  # got but never acknowledged: they come back too
        assert leased == list(range(10))
        master.kill_master(signal.SIGKILL)
        master.start_master()  # same data directory, same port
        with master.client() as fresh:
            fq = fresh.queue("durable")
            assert fq.qsize() == 100
        # The old client reconnects by itself and sees the same queue.
        assert q.get_many(100, timeout=20) == list(range(100))


def test_maxsize_enforced_across_two_producer_processes(master, procs, client):
    maxsize, per_producer = 20, 60
    producers = [spawn(master, "bounded_producer", "shared-bound", maxsize, p, per_producer, stdin=True)
                 for p in (0, 1)]
    procs.extend(producers)
    filled = [read_json_line(p)["full_after"] for p in producers]
    assert sum(filled) == maxsize  # together, never more than maxsize
    q = client.queue("shared-bound", maxsize=maxsize)
    assert q.qsize() == maxsize and q.full()
    for p in producers:  # a put_nowait from either producer now raises queue.Full
        p.stdin.write("check\n")
        p.stdin.flush()
    assert [read_json_line(p) for p in producers] == [{"second_put_nowait": "Full"}] * 2
    for p in producers:
        p.stdin.write("go\n")
        p.stdin.flush()
    got, peak = [], 0
    while len(got) < 2 * per_producer:
        got.append(tuple(q.get(timeout=30)))
        q.task_done()
        if len(got) % 5 == 0:
            peak = max(peak, q.qsize())
            assert peak <= maxsize
    assert sorted(got) == sorted((p, i) for p in (0, 1) for i in range(per_producer))
    for p in producers:
        assert read_json_line(p) == "done"
    for p in producers:
        p.stdin.write("exit\n")
        p.stdin.flush()
        assert p.wait(30) == 0


def test_parked_puts_survive_a_session_dropping(master, client):
    maxsize, parked = 50, 40
    q = client.queue("drop-while-retrying", maxsize=maxsize)
    q.put_many(range(maxsize))
    producers = [master.client() for _ in range(parked)]
    try:
        puts = [p.request(protocol.QPUT, {"queue": q.name, "items": [q._encode(i)],
                                                  "maxsize": maxsize, "timeout": 3})
                for i, p in enumerate(producers)]
        # Requests on one connection are handled in order: a ping answered after a put
        # means the master has handled that put, and it is parked on the full queue.
        for p in producers:
            p.request(protocol.PING, {}).result(15)
        assert not any(f.done() for f in puts)
        bystander = master.client()
        assert len(client.queue(q.name, ack="get").get_many(maxsize)) == maxsize  # room for all
        bystander.close()  # a session drops while the master retries the parked puts
        assert sum(f.result(15)["accepted"] for f in puts) == parked
    finally:
        for p in producers:
            p.close()


def test_join_across_processes(master, procs, client):
    q = client.queue("join-x")
    q.put_many(list(range(20)))
    assert q.join(timeout=0.2) is False
    consumer = spawn(master, "join_consumer", "join-x", 20)
    procs.append(consumer)
    assert q.join(timeout=30) is True  # returns once the other process task_done'd all 20
    assert read_json_line(consumer) == "done"
    assert consumer.wait(30) == 0
    assert q.qsize() == 0


# -- consumers that hold items for a while -------------------------------------------------


# The master extending a live consumer's item leases past their length and past an
# expiry sweep is tested with injected time in tests/unit/test_master_timers.py.


def _silent_holder(cluster: LocalCluster, name: str) -> socket.socket:
    """A raw connection that takes one item from ``name`` and then never sends a byte again."""
    sock = socket.create_connection(("127.0.0.1", cluster.port), timeout=15)
    conn = protocol.Connection("client", cluster.authkey)

    def until(done) -> list:
        seen: list = []
        while not done(seen):
            data = sock.recv(65536)
            assert data, "the master closed the connection"
            seen += conn.receive_data(data)
            out = conn.data_to_send()
            if out:
                sock.sendall(out)
        return seen

    sock.sendall(conn.initiate())
    until(lambda seen: protocol.HandshakeDone() in seen)
    for rid, op, fields in ((1, protocol.HELLO, {"role": "client"}),
                            (2, protocol.QGET, {"queue": name, "max": 1, "timeout": 10, "ack": False})):
        sock.sendall(protocol.encode_frame(op, rid, fields))
        (reply,) = until(lambda seen: any(isinstance(e, protocol.Message) for e in seen))
        assert reply.op == protocol.OK, reply
    return sock


def test_idle_consumer_stays_connected_and_keeps_its_item(make_cluster):
    """An idle consumer's keepalive pings are answered, so it keeps its connection and its items,
    while a consumer that went silent for as long loses its item."""
    cluster = make_cluster(workers=0, master_args=["--heartbeat-timeout", "0.6"]).start()
    with cluster.client() as a, cluster.client() as b:
        qa = a.queue("idle")
        qa.put("work")
        assert qa.get(timeout=5) == "work"
        qa.put("canary")
        with contextlib.closing(_silent_holder(cluster, "idle")):
            # Wait until the silent one was presumed dead and its item went back: a, idle as
            # long (and longer), is still connected and still holds its item.
            assert wait_until(lambda: b.queue("idle").qsize() == 1)
            assert b.queue("idle", ack="get").get(timeout=5) == "canary"
            with pytest.raises(queue.Empty):
                b.queue("idle").get(timeout=0.2)
        qa.task_done()  # on the same connection: acknowledged, nothing left to join
        assert qa.join(timeout=5) is True


# -- ack="auto": acknowledged at a normal exit, handed back after a crash --------------


def _auto_child(address: str, authkey: str, name: str, crash: bool, use_with: bool) -> None:
    c = conveyor.Client(address, authkey)
    with c if use_with else contextlib.nullcontext():  # without: the client is open until exit
        q = c.queue(name, ack="auto")
        assert q.get(timeout=10) == "job"
        if crash:
            raise RuntimeError("the child's work failed")


@pytest.mark.parametrize("use_with", [False, True], ids=["open-until-exit", "with-block"])
@pytest.mark.parametrize("crash", [False, True], ids=["returns", "raises"])
def test_auto_ack_in_a_spawned_child_follows_how_it_ended(master, crash, use_with):
    """multiprocessing catches a child's exception itself (no excepthook), then exits through
    atexit: the item must still go back when run() raised, and be acknowledged when it returned."""
    import multiprocessing as mp

    cluster = master  # each case has its own queue
    name = f"auto-{crash}-{use_with}"
    with cluster.client() as c:
        q = c.queue(name)
        q.put("job")
        child = mp.get_context("spawn").Process(
            target=_auto_child, args=(cluster.address, cluster.authkey.decode(), name, crash, use_with))
        child.start()
        child.join(30)
        assert child.exitcode == (1 if crash else 0)
        if crash:
            assert q.get(timeout=10) == "job"  # handed back when the child's connection closed
        else:
            with pytest.raises(queue.Empty):
                q.get(timeout=1)
            assert q.join(timeout=5)
