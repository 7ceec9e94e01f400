"""conveyor.managers: the tutorial scripts run unchanged, and the API behaves like the stdlib's.

The example scripts in examples/managers run as real processes on free
ports, each with its own data directory; every process is killed by PID at
the end. The same scenario also runs on ``multiprocessing.managers`` itself
and must give the same results.
"""

from __future__ import annotations

import errno
import multiprocessing
import multiprocessing.managers as std_managers
import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass

import pytest

import conveyor
from conveyor import managers
from conveyor.managers import BaseManager, ConnectionRefused, SyncManager, UnknownTypeid

from .conftest import ROOT

EXAMPLES = ROOT / "examples" / "managers"


# -- helpers ---------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Script:
    """A running example script; its stdout is collected line by line in the background."""

    def __init__(self, proc: subprocess.Popen) -> None:
        self.proc = proc
        self.lines: list[str] = []
        self._changed = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            with self._changed:
                self.lines.append(line.rstrip("\n"))
                self._changed.notify_all()
        with self._changed:
            self._changed.notify_all()

    def wait_for(self, pattern: str, timeout: float = 30.0) -> re.Match:
        """The first output line matching ``pattern``, waiting at most ``timeout`` seconds."""
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                for line in self.lines:
                    m = rx.search(line)
                    if m:
                        return m
                left = deadline - time.monotonic()
                if left <= 0 or (self.proc.poll() is not None and not self._reader.is_alive()):
                    raise AssertionError(f"no line matching {pattern!r} from pid {self.proc.pid} "
                                         f"(exit {self.proc.poll()}); output:\n" + "\n".join(self.lines))
                self._changed.wait(min(left, 0.1))

    def finish(self, timeout: float = 60.0) -> str:
        """Wait for the script to exit 0; its whole output."""
        code = self.proc.wait(timeout)
        self._reader.join(10)
        out = "\n".join(self.lines)
        assert code == 0, f"pid {self.proc.pid} exited {code}; output:\n{out}"
        return out

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)


@pytest.fixture
def scripts(tmp_path):
    """Start example scripts in tmp_path with their own data directory; kill them all at the end."""
    started: list[Script] = []
    env = dict(os.environ, PYTHONUNBUFFERED="1", CONVEYOR_MANAGERS_DATA=str(tmp_path / "data"))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [env.get("PYTHONPATH"), str(ROOT / "src")]))

    def run(name: str, *args: object) -> Script:
        proc = subprocess.Popen([sys.executable, str(EXAMPLES / name), *map(str, args)], cwd=tmp_path,
                                env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        script = Script(proc)
        started.append(script)
        return script

    yield run
    for s in started:
        s.kill()
        if s.proc.stdout is not None:
            s.proc.stdout.close()


@pytest.fixture
def restore_registry():
    """Undo registrations made on conveyor.managers.BaseManager itself."""
    saved = dict(BaseManager._registry)
    yield
    for typeid in set(BaseManager._registry) - set(saved):
        if typeid in BaseManager.__dict__:
            delattr(BaseManager, typeid)
    BaseManager._registry = saved


@pytest.fixture
def managed(tmp_path):
    """Build managers with their own data directories; every one is shut down at the end."""
    made: list[BaseManager] = []

    def make(cls=BaseManager, **kwargs) -> BaseManager:
        kwargs.setdefault("address", ("127.0.0.1", 0))
        kwargs.setdefault("authkey", b"test-key")
        kwargs.setdefault("data_dir", tmp_path / f"data{len(made)}")
        m = cls(**kwargs)
        made.append(m)
        return m

    yield make
    for m in made:
        m.shutdown()


# Module-level so that a spawned child (the stdlib's server) can import them.
task_queue: queue.Queue = queue.Queue()
bounded_queue: queue.Queue = queue.Queue(3)


def get_task_queue() -> queue.Queue:
    return task_queue


def get_bounded_queue() -> queue.Queue:
    return bounded_queue


@dataclass
class Point:
    x: int
    y: int


class QueueManager(BaseManager):
    pass


QueueManager.register("get_task_queue", callable=get_task_queue)
QueueManager.register("get_bounded_queue", callable=get_bounded_queue)


class RemoteManager(BaseManager):
    pass


RemoteManager.register("get_task_queue")
RemoteManager.register("get_bounded_queue")
RemoteManager.register("get_missing")


class StdQueueManager(std_managers.BaseManager):
    pass


StdQueueManager.register("get_task_queue", callable=get_task_queue)
StdQueueManager.register("get_bounded_queue", callable=get_bounded_queue)


class StdRemoteManager(std_managers.BaseManager):
    pass


StdRemoteManager.register("get_task_queue")
StdRemoteManager.register("get_bounded_queue")
StdRemoteManager.register("get_missing")


# -- the tutorial scripts -----------------------------------------------------------------


def _put_and_results(master_out: str) -> tuple[list[int], dict[int, int]]:
    put = [int(n) for n in re.findall(r"^Put task (\d+)\.\.\.$", master_out, re.M)]
    results = {int(a): int(c) for a, b, c in re.findall(r"^Result: (\d+) \* (\d+) = (\d+)$", master_out, re.M)}
    return put, results


def test_task_master_and_task_worker(scripts):
    port = free_port()
    master = scripts("task_master.py", port)
    master.wait_for(r"^Try get results\.\.\.$")
    worker = scripts("task_worker.py", port, 0.01)
    out = master.finish(60)
    worker_out = worker.finish(30)
    put, results = _put_and_results(out)
    assert len(put) == 10
    assert sorted(results) == sorted(set(put)) and all(results[n] == n * n for n in put)
    assert out.endswith("master exit.")
    assert "worker exit." in worker_out and "Traceback" not in worker_out + out


def test_task_master_waiting_for_a_full_result_queue(scripts):
    port = free_port()
    master = scripts("task_master_full.py", port)
    master.wait_for(r"^Put task 9\.\.\.$")
    worker = scripts("task_worker_full.py", port, 0)
    out = master.finish(60)
    worker.finish(30)
    assert "Manager error" not in out
    finished = re.findall(r"^task (\d+) is finish , runtime:0 s$", out, re.M)
    assert sorted(int(i) for i in finished) == list(range(10))  # the tuples came back as tuples


def test_job_dispatch_master_and_slave(scripts):
    port = free_port()
    master = scripts("master.py", port, 2)
    master.wait_for(r"^Dispatch job: 10$")
    slave = scripts("slave.py", port, 0.01)
    out = master.finish(60)
    finished = {int(a): int(b) for a, b in re.findall(r"^Finished Job: (\d+) \(result (\d+)\)$", out, re.M)}
    assert finished == {k: k * k for k in range(1, 21)}  # Job objects went there and back
    slave.kill()  # it would wait 5 s for more jobs before exiting


def test_worker_killed_between_get_and_put_its_task_goes_to_the_next_worker(scripts):
    port = free_port()
    master = scripts("task_master.py", port)
    master.wait_for(r"^Try get results\.\.\.$")
    slow = scripts("task_worker.py", port, 120)  # gets a task, then sleeps before putting the result
    held = int(slow.wait_for(r"^run task (\d+) \* \d+\.\.\.$").group(1))
    slow.kill()
    fresh = scripts("task_worker.py", port, 0.01)
    out = master.finish(60)
    fresh_out = fresh.finish(30)
    put, results = _put_and_results(out)
    assert held in put
    assert sorted(results) == sorted(set(put))  # every result, the killed worker's task included
    assert f"run task {held} * {held}..." in fresh_out


def test_job_slave_killed_mid_job_another_slave_finishes_it(scripts):
    port = free_port()
    master = scripts("master.py", port, 1)
    master.wait_for(r"^Dispatch job: 10$")
    slow = scripts("slave.py", port, 120)
    held = int(slow.wait_for(r"^Run job: (\d+)").group(1))
    slow.kill()
    scripts("slave.py", port, 0.01)
    out = master.finish(60)
    finished = {int(a) for a in re.findall(r"^Finished Job: (\d+)", out, re.M)}
    assert finished == set(range(1, 11)) and held in finished


def test_master_child_stops_when_its_script_is_killed(scripts):
    port = free_port()
    master = scripts("task_master.py", port)
    master.wait_for(r"^Try get results\.\.\.$")
    master.kill()  # kill -9: no shutdown(), no atexit; the child sees its stdin close
    deadline = time.monotonic() + 15
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
        except ConnectionRefusedError:
            break  # the master child is gone
        assert time.monotonic() < deadline, "the manager's master outlived its script"
        time.sleep(0.1)
    restarted = scripts("task_master.py", port)  # same port, same data: last run's 10 tasks are still there
    restarted.wait_for(r"^Try get results\.\.\.$")
    scripts("task_worker.py", port, 0.01)
    scripts("task_worker.py", port, 0.01)
    out = restarted.finish(60)
    put_now, results = _put_and_results(out)
    assert len(put_now) == 10 and len(results) == 10  # it reads 10 results: some from the first run's tasks
    put_before, _ = _put_and_results("\n".join(master.lines))
    assert set(results) <= set(put_before) | set(put_now)


def test_served_queue_survives_server_kill_and_restart(scripts):
    port = free_port()
    server = scripts("queue_server.py", port)
    server.wait_for(r"^serving on port")
    assert "put 3" in scripts("queue_client.py", port, "put", "hello", "durable", "world").finish(30)
    server.kill()  # kill -9: no chance to flush anything
    restarted = scripts("queue_server.py", port)  # same port, same data directory
    restarted.wait_for(r"^serving on port")
    got = scripts("queue_client.py", port, "get", 3).finish(30)
    assert got.split() == ["hello", "durable", "world"]
    restarted.proc.send_signal(signal.SIGTERM)  # serve_forever returns on SIGTERM
    restarted.finish(15)


# -- the API ------------------------------------------------------------------------------


def test_start_connect_put_get_and_pickled_objects(managed):
    m = managed(QueueManager)
    m.start()
    host, port = m.address
    assert host == "127.0.0.1" and port > 0  # port 0: the chosen port is the address
    task = m.get_task_queue()
    assert isinstance(task, conveyor.client.queues.NetworkQueue)
    assert (task.name, task.ack, task.codec) == ("get_task_queue", "auto", "pickle")
    task.put(Point(1, 2))
    task.put((3, "tuple"))
    remote = managed(RemoteManager, address=m.address)
    remote.connect()
    rtask = remote.get_task_queue()
    assert rtask.get(timeout=5) == Point(1, 2)  # a custom class travels (pickle, after the handshake)
    assert rtask.get(timeout=5) == (3, "tuple")
    bounded = remote.get_bounded_queue()
    assert bounded.maxsize == 3  # read from the callable's queue.Queue(3) at start()


def test_maxsize_of_the_registered_queue_is_enforced(managed):
    m = managed(QueueManager)
    m.start()
    q = m.get_bounded_queue()
    for i in range(3):
        q.put(i)
    assert q.full() and q.qsize() == 3
    with pytest.raises(queue.Full):
        q.put_nowait(3)
    with pytest.raises(queue.Full):
        q.put(3, timeout=0.2)


def test_register_on_base_class_is_inherited_and_copy_on_write(managed, restore_registry):
    BaseManager.register("get_base_q", callable=lambda: queue.Queue())

    class Child(BaseManager):
        pass

    Child.register("get_child_q", callable=lambda: queue.Queue(5))
    assert "get_base_q" in Child._registry and "get_child_q" in Child._registry
    assert "get_child_q" not in BaseManager._registry and not hasattr(BaseManager, "get_child_q")
    assert "get_child_q" not in QueueManager._registry
    m = managed(BaseManager)  # the base class itself serves what was registered on it
    m.start()
    m.get_base_q().put("on the base class")
    assert m.get_base_q().get(timeout=5) == "on the base class"
    child = managed(Child)
    child.start()
    assert child.get_child_q().maxsize == 5 and child.get_base_q().maxsize == 0


def test_str_authkey_is_utf8_and_default_is_the_process_authkey(managed):
    m = managed(QueueManager, authkey="clé secrète")
    m.start()
    remote = managed(RemoteManager, address=m.address, authkey="clé secrète".encode())
    remote.connect()
    remote.get_task_queue().put("ok")
    assert m.get_task_queue().get(timeout=5) == "ok"
    default = managed(QueueManager, authkey=None)
    default.start()
    same_process = managed(RemoteManager, address=default.address, authkey=None)
    same_process.connect()  # both default to multiprocessing.current_process().authkey
    assert same_process.get_bounded_queue().qsize() == 0


@pytest.mark.parametrize("host", ["", "0.0.0.0", "127.0.0.1"])
def test_addresses(managed, host):
    m = managed(QueueManager, address=(host, 0))
    m.start()
    assert m.address[0] == host and m.address[1] > 0
    remote = managed(RemoteManager, address=("127.0.0.1", m.address[1]))
    remote.connect()
    remote.get_task_queue().put(host)
    assert m.get_task_queue().get(timeout=5) == host


def test_a_list_of_masters_connects_to_the_one_that_answers(managed):
    m = managed(QueueManager)
    m.start()
    down = ("127.0.0.1", free_port())  # nothing listens there
    for address in ([down, ("127.0.0.1", m.address[1])], (down, ["localhost", m.address[1]]),
                    f"127.0.0.1:{down[1]}, 127.0.0.1:{m.address[1]}"):
        remote = managed(RemoteManager, address=address)
        assert remote.address == down or remote.address == ("127.0.0.1", down[1])  # the first named
        remote.connect()
        remote.get_task_queue().put(repr(address))
        assert m.get_task_queue().get(timeout=10) == repr(address)
    with pytest.raises(ConnectionRefused):  # none answers
        managed(RemoteManager, address=[down, ("127.0.0.1", free_port())]).connect()


@pytest.mark.parametrize("address, match", [
    ([], "empty list"),
    ([("a", 1), ("b", 0)], "entry 1 .* port cannot be 0"),
    ([("a", 1), ("b", "x")], "entry 1 is \\('b', 'x'\\)"),
    ([("a", 1), "b:2"], "entry 1 is 'b:2'"),
    ([("a", 1), ("b", 2, 3)], "entry 1"),
    ([("a", 1), (None, 2)], "entry 1"),
    ("a:1,,b:2", "'' is not host:port"),
    ("a:1,b", "'b' is not host:port"),
    ("/tmp/manager.sock", "no Unix sockets"),
    ("a:99999", "port must be a number from 1 to 65535"),
    (("a", 70000), "port from 0 to 65535"),
])
def test_malformed_master_lists_are_refused_naming_what_is_wrong(address, match):
    with pytest.raises(ValueError, match=match):
        RemoteManager(address=address, authkey=b"k")


def test_serving_a_list_of_masters_is_refused(managed):
    for address in ([("127.0.0.1", free_port()), ("127.0.0.1", free_port())], f"127.0.0.1:{free_port()}"):
        m = managed(QueueManager, address=address)
        with pytest.raises(ValueError, match="several masters .* pass one \\(host, port\\) to serve"):
            m.start()
        with pytest.raises(ValueError, match="get_server\\(\\) serves one address"):
            m.get_server()
        assert m._process is None


def test_address_none_picks_a_loopback_port(managed):
    m = managed(QueueManager, address=None)
    m.start()
    assert m.address[0] == "127.0.0.1" and m.address[1] > 0


def test_unknown_typeid_raises_key_error_and_remote_error(managed):
    m = managed(QueueManager)
    m.start()
    remote = managed(RemoteManager, address=m.address)
    remote.connect()
    with pytest.raises(UnknownTypeid) as info:
        remote.get_missing()
    assert isinstance(info.value, KeyError) and isinstance(info.value, conveyor.ConveyorError)
    assert isinstance(info.value, std_managers.RemoteError)
    assert "get_missing" in str(info.value) and "get_task_queue" in str(info.value)
    with pytest.raises(AttributeError):
        remote.never_registered()  # as with the stdlib: no method without register()


def test_wrong_authkey_raises_authentication_error(managed):
    m = managed(QueueManager, authkey=b"right")
    m.start()
    with pytest.raises(multiprocessing.AuthenticationError) as info:
        managed(RemoteManager, address=m.address, authkey=b"wrong").connect()
    assert isinstance(info.value, conveyor.AuthenticationError)


def test_connect_before_the_master_is_up_raises_connection_refused(managed):
    port = free_port()
    start = time.monotonic()
    with pytest.raises(ConnectionRefusedError) as info:
        managed(RemoteManager, address=("127.0.0.1", port)).connect()
    assert isinstance(info.value, ConnectionRefused) and isinstance(info.value, conveyor.ConveyorError)
    assert time.monotonic() - start < 10
    with pytest.raises(ValueError, match="start\\(\\) or connect\\(\\)"):
        managed(RemoteManager, address=("127.0.0.1", port)).get_task_queue()


def test_unsupported_register_options_are_refused_at_register_time(restore_registry):
    class M(BaseManager):
        pass

    with pytest.raises(ValueError, match="proxytype"):
        M.register("a", callable=queue.Queue, proxytype=std_managers.AutoProxy)
    with pytest.raises(ValueError, match="exposed"):
        M.register("b", callable=queue.Queue, exposed=("put", "get", "__getitem__"))
    with pytest.raises(ValueError, match="method_to_typeid"):
        M.register("c", callable=queue.Queue, method_to_typeid={"get": "d"})
    with pytest.raises(ValueError, match="create_method"):
        M.register("d", callable=queue.Queue, create_method=False)
    with pytest.raises(ValueError, match="FIFO"):
        M.register("e", callable=queue.LifoQueue)
    with pytest.raises(ValueError, match="FIFO"):
        M.register("f", callable=queue.PriorityQueue)
    with pytest.raises(TypeError, match="not a queue"):
        M.register("g", callable=dict)
    with pytest.raises(TypeError, match="callable"):
        M.register("h", callable=42)
    assert "_registry" not in M.__dict__ and not hasattr(M, "a")  # nothing half-registered
    M.register("ok", callable=queue.Queue, exposed=("put", "get", "task_done"))
    assert "ok" in M._registry
    with pytest.raises(ValueError, match="FIFO"):  # and on BaseManager itself
        BaseManager.register("lifo", callable=queue.LifoQueue)


@pytest.mark.parametrize("make, error, match", [
    (lambda: queue.LifoQueue(), ValueError, "FIFO"),
    (lambda: queue.PriorityQueue(), ValueError, "FIFO"),
    (lambda: {}, TypeError, "not a queue"),
    (lambda: None, TypeError, "not a queue"),
])
def test_non_queue_callables_are_refused_at_start(managed, make, error, match):
    class M(BaseManager):
        pass

    M.register("get_q", callable=make)
    m = managed(M)
    with pytest.raises(error, match=match):
        m.start()
    assert m._process is None  # no master was left running


def test_fifo_subclasses_and_other_fifo_queues_are_accepted(managed):
    class Logged(queue.Queue):
        def put(self, item, block=True, timeout=None):
            super().put(item, block, timeout)

    class NotFifo(queue.Queue):
        def _get(self):
            return self.queue.pop()

    class M(BaseManager):
        pass

    M.register("logged", callable=lambda: Logged(4))
    M.register("simple", callable=queue.SimpleQueue)
    M.register("mp", callable=lambda: multiprocessing.get_context("spawn").Queue(7))
    m = managed(M)
    m.start()
    assert (m.logged().maxsize, m.simple().maxsize, m.mp().maxsize) == (4, 0, 7)

    class Bad(BaseManager):
        pass

    Bad.register("not_fifo", callable=NotFifo)
    with pytest.raises(ValueError, match="_get"):
        managed(Bad).start()


def test_typeid_methods_take_no_arguments(managed):
    m = managed(QueueManager)
    m.start()
    with pytest.raises(TypeError, match="no arguments"):
        m.get_task_queue(5)


def test_sync_manager_queues_and_unsupported_types(managed):
    m = managed(SyncManager)
    m.start()
    q = m.Queue()
    j = m.JoinableQueue(2)
    assert q.name != j.name and q.name.startswith("anon-")
    q.put({"a": (1, 2)})
    assert q.get(timeout=5) == {"a": (1, 2)}
    j.put(1)
    j.put(2)
    assert j.full()
    with pytest.raises(queue.Full):
        j.put_nowait(3)
    j.get()
    j.task_done()
    j.get()
    assert j.join(timeout=0.2) is False
    j.task_done()
    assert j.join(timeout=10) is True
    for name in ("dict", "list", "Lock", "RLock", "Event", "Value", "Array", "Namespace", "Barrier"):
        with pytest.raises(NotImplementedError, match="Queue, JoinableQueue"):
            getattr(m, name)()


def test_context_manager_starts_and_shutdown_stops_the_master(managed):
    m = managed(QueueManager)
    with m as entered:
        assert entered is m
        m.get_task_queue().put("x")
        proc = m._process
        assert proc.poll() is None
    assert proc.wait(10) is not None  # the child is gone
    with pytest.raises(multiprocessing.ProcessError):
        m.start()


def test_port_in_use_raises_os_error(managed):
    first = managed(QueueManager)
    first.start()
    second = managed(QueueManager, address=first.address)
    with pytest.raises(OSError) as info:
        second.start()
    assert info.value.errno == errno.EADDRINUSE and "did not start" in str(info.value)
    assert second._process is None


def test_start_twice_raises_process_error(managed):
    m = managed(QueueManager)
    m.start()
    with pytest.raises(multiprocessing.ProcessError, match="Already started"):
        m.start()


def test_data_dir_argument_env_and_default(managed, tmp_path, monkeypatch):
    explicit = managed(QueueManager, data_dir=tmp_path / "explicit")
    explicit.start()
    assert explicit.data_dir == tmp_path / "explicit"
    monkeypatch.setenv(managers.ENV_DATA, str(tmp_path / "from-env"))
    from_env = managed(QueueManager, data_dir=None)
    from_env.start()
    assert from_env.data_dir == tmp_path / "from-env"
    monkeypatch.delenv(managers.ENV_DATA)
    monkeypatch.chdir(tmp_path)
    default = managed(QueueManager, data_dir=None)
    default.start()
    assert default.data_dir == tmp_path / "conveyor-managers-data" / str(default.address[1])
    assert (default.data_dir).is_dir()


def test_get_server_serve_forever_in_this_process(managed, tmp_path):
    m = managed(QueueManager)
    server = m.get_server()
    assert server.address[1] > 0 and m.address == server.address
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        remote = managed(RemoteManager, address=server.address)
        remote.connect()
        remote.get_task_queue().put("served here")
        assert remote.get_task_queue().get(timeout=5) == "served here"
    finally:
        server.stop()
        thread.join(10)
    assert not thread.is_alive()


def test_master_kill_and_restart_on_the_same_data_dir_keeps_items(managed, tmp_path):
    data = tmp_path / "durable"
    first = managed(QueueManager, data_dir=data)
    first.start()
    task = first.get_task_queue()
    for i in range(5):
        task.put(Point(i, -i))
    got = task.get(timeout=5)  # leased, not yet acknowledged: it must come back too
    assert got == Point(0, 0)
    first._process.send_signal(signal.SIGKILL)
    first._process.wait(10)
    # Restarted where it was, as a real restart is: first's proxy, still holding its item,
    # reconnects there too, so shutting it down at the end does not wait on a dead master.
    second = managed(QueueManager, data_dir=data, address=first.address)
    second.start()
    again = second.get_task_queue()
    assert again.qsize() == 5
    assert [again.get(timeout=5) for _ in range(5)] == [Point(i, -i) for i in range(5)]


def _child_put(q, value) -> None:
    q.put(value)


def test_proxy_passed_to_a_spawned_process(managed):
    m = managed(QueueManager, authkey=b"not the process key")
    m.start()
    q = m.get_task_queue()
    child = multiprocessing.get_context("spawn").Process(target=_child_put, args=(q, Point(7, 8)))
    child.start()
    try:
        assert q.get(timeout=30) == Point(7, 8)
    finally:
        child.join(30)
        if child.is_alive():
            child.kill()
    assert child.exitcode == 0


def _child_square(task, result) -> None:
    n = task.get(timeout=10)
    result.put((n, n * n))


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_proxies_inherited_or_pickled_by_a_process_child(managed, method):
    if method not in multiprocessing.get_all_start_methods():
        pytest.skip(f"no {method} on this platform")
    m = managed(QueueManager, authkey=None)  # the stdlib's default: the process's own authkey
    m.start()
    task, result = m.get_task_queue(), m.get_bounded_queue()
    task.put(12)
    child = multiprocessing.get_context(method).Process(target=_child_square, args=(task, result))
    child.start()
    try:
        assert result.get(timeout=30) == (12, 144)
    finally:
        child.join(30)
        if child.is_alive():
            child.kill()
    assert child.exitcode == 0
    with pytest.raises(queue.Empty):  # the child acknowledged its task as it exited: not delivered again
        task.get(timeout=0.5)


def _child_crash(task) -> None:
    task.get(timeout=10)
    raise RuntimeError("the task killed its process")


def test_process_child_that_raises_hands_its_item_back(managed, capfd):
    if "fork" not in multiprocessing.get_all_start_methods():
        pytest.skip("no fork on this platform")
    m = managed(QueueManager, authkey=None)
    m.start()
    task = m.get_task_queue()
    task.put("fragile")
    child = multiprocessing.get_context("fork").Process(target=_child_crash, args=(task,))
    child.start()
    child.join(30)
    assert child.exitcode == 1
    assert task.get(timeout=10) == "fragile"  # not acknowledged by a child that failed


# -- the same scenario on multiprocessing.managers and on conveyor.managers ------------------


def _scenario(served_cls, remote_cls, **kwargs) -> list:
    out: list = []

    def record(fn, *args, **kw):
        try:
            out.append(("ok", fn(*args, **kw)))
        except Exception as exc:
            out.append(("raised", [c.__name__ for c in (queue.Full, queue.Empty, ConnectionRefusedError,
                                                         multiprocessing.AuthenticationError,
                                                         std_managers.RemoteError)
                                   if isinstance(exc, c)]))

    with served_cls(address=("127.0.0.1", 0), authkey=b"same", **kwargs) as served:
        address = served.address
        bounded = served.get_bounded_queue()
        record(bounded.put, Point(1, 2))
        record(bounded.put, ("b", 2))
        record(bounded.qsize)
        record(bounded.full)
        record(bounded.put, "c")
        record(bounded.full)
        record(bounded.put_nowait, "d")
        record(bounded.put, "d", timeout=0.1)
        remote = remote_cls(address=address, authkey=b"same")
        remote.connect()
        rq = remote.get_bounded_queue()
        record(rq.get, timeout=5)
        record(rq.get_nowait)
        record(rq.get)
        record(rq.empty)
        record(rq.get, timeout=0.1)
        record(rq.get_nowait)
        record(remote.get_missing)
        record(remote_cls(address=address, authkey=b"other").connect)
    record(remote_cls(address=address, authkey=b"same").connect)
    return out


def test_same_results_as_multiprocessing_managers(tmp_path):
    expected = _scenario(StdQueueManager, StdRemoteManager, ctx=multiprocessing.get_context("spawn"))
    ours = _scenario(QueueManager, RemoteManager, data_dir=tmp_path / "compare")
    assert ours == expected
    assert ("ok", Point(1, 2)) in ours and ("raised", ["Full"]) in ours and ("raised", ["Empty"]) in ours
    assert ("raised", ["RemoteError"]) in ours and ("raised", ["AuthenticationError"]) in ours
    assert ("raised", ["ConnectionRefusedError"]) in ours


# -- the drop-in speaks up ---------------------------------------------------------------------


def _calls_after_shutdown(served_cls, remote_cls, **kwargs) -> list[list[str]]:
    """What get/put/qsize on a proxy raise once the manager serving it has shut down."""
    with served_cls(address=("127.0.0.1", 0), authkey=b"gone", **kwargs) as served:
        remote = remote_cls(address=served.address, authkey=b"gone")
        remote.connect()
        proxy = remote.get_task_queue()
        proxy.put("x")
        assert proxy.get(timeout=10) == "x"
    out = []
    for call in (lambda: proxy.get(timeout=1), lambda: proxy.put("y"), proxy.qsize, proxy.get):
        with pytest.raises(Exception) as info:
            call()
        out.append([c.__name__ for c in (queue.Empty, EOFError, ConnectionError) if isinstance(info.value, c)])
    return out


def test_a_proxy_whose_master_shut_down_fails_like_the_stdlib(tmp_path):
    expected = _calls_after_shutdown(StdQueueManager, StdRemoteManager, ctx=multiprocessing.get_context("spawn"))
    ours = _calls_after_shutdown(QueueManager, RemoteManager, data_dir=tmp_path / "gone")
    for std, mine in zip(expected, ours, strict=True):
        assert "Empty" not in std and "Empty" not in mine
        assert set(std) <= set(mine)  # whatever the stdlib raises there, ours is one too
    assert all(mine == ["EOFError", "ConnectionError"] for mine in ours)


def test_start_says_when_queues_hold_items_from_an_earlier_run(managed, tmp_path, caplog):
    data = tmp_path / "rerun"
    first = managed(QueueManager, data_dir=data)
    with caplog.at_level("WARNING", logger="conveyor.managers"):
        first.start()
    assert not caplog.records  # a fresh directory: nothing to say
    first.get_task_queue().put(1)
    first.get_task_queue().put(2)
    first.get_bounded_queue().put(3)
    first.shutdown()
    again = managed(QueueManager, data_dir=data)
    with caplog.at_level("WARNING", logger="conveyor.managers"):
        again.start()
    assert [r.getMessage() for r in caplog.records] == [
        "conveyor.managers: queues already hold items from an earlier run: get_bounded_queue (1 item), "
        f"get_task_queue (2 items), kept in {data}; to start empty, delete that directory first or pass "
        "another data_dir="]
    assert again.get_task_queue().get(timeout=10) == 1  # and they are still served


def test_a_second_master_on_a_port_in_use_says_so_as_the_cli_does(managed, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("CONVEYOR_MANAGERS_DATA", raising=False)
    first = QueueManager(address=("127.0.0.1", 0), authkey=b"k")  # the default data directory
    first.start()
    try:
        port = first.address[1]
        second = QueueManager(address=("127.0.0.1", port), authkey=b"k")  # same port, same directory
        with pytest.raises(OSError) as info:
            second.start()
        assert info.value.errno == errno.EADDRINUSE
        assert str(info.value) == (f"[Errno {errno.EADDRINUSE}] cannot listen on 127.0.0.1:{port}: "
                                   "Address already in use (the manager's master did not start)")
        cli = subprocess.run([sys.executable, "-m", "conveyor", "master", "--bind", f"127.0.0.1:{port}",
                              "--data", str(tmp_path / "cli-data")], capture_output=True, text=True,
                             timeout=60, cwd=ROOT, env={**os.environ, "CONVEYOR_AUTHKEY": "k"})
        assert cli.returncode == 1
        assert cli.stderr.strip() == f"conveyor master: error: cannot listen on 127.0.0.1:{port}: Address already in use"
        # Another manager on another port but the same data directory: the directory is named.
        shared = QueueManager(address=("127.0.0.1", 0), authkey=b"k", data_dir=first.data_dir)
        with pytest.raises(RuntimeError, match=f"^data directory {re.escape(str(first.data_dir))} is in use by "
                                               r"another master \(pid \d+\)"):
            shared.start()
    finally:
        first.shutdown()
