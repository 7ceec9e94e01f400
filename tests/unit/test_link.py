"""The link to a master: the opening sequence byte for byte, reconnect and liveness rules,
and both I/O edges against a scripted master on 127.0.0.1."""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
from collections.abc import Callable

import pytest

from conveyor import auth, protocol, timing
from conveyor.errors import AuthenticationError, ConnectionLost, ProtocolError, RemoteError
from conveyor.link import Address, parse_addresses
from conveyor.link.aio import AsyncLink
from conveyor.link.blocking import BlockingLink
from conveyor.link.opening import Opening, Welcome
from conveyor.link.policy import Failure, Liveness, Reconnect, failure_kind

KEY = b"secret"
CLIENT_NONCE = bytes(range(32))
SERVER_NONCE = bytes(range(100, 132))
ADDR = Address("127.0.0.1", 7700)
HELLO = {"role": "client", "host": "h", "pid": 1}


def opening(key: bytes = KEY, rid: int = 7) -> Opening:
    return Opening(ADDR, key, HELLO, rid, heartbeat=5.0, nonce=CLIENT_NONCE)


def challenge(key: bytes = KEY) -> bytes:
    """The master's answer to the client's first bytes, as protocol.py specifies it."""
    return protocol.MAGIC + b"\x00\x01" + SERVER_NONCE + auth.server_mac(key, CLIENT_NONCE, SERVER_NONCE)


# -- the opening sequence, byte for byte ------------------------------------------

def test_good_opening_byte_for_byte():
    o = opening()
    assert o.start() == b"CNVY\x01" + CLIENT_NONCE
    o.receive_data(challenge())
    assert o.data_to_send() == auth.client_mac(KEY, CLIENT_NONCE, SERVER_NONCE)
    assert o.state == "handshake" and not o.done
    o.receive_data(b"\x01")
    assert o.data_to_send() == protocol.encode_frame("hello", 7, HELLO)
    assert o.state == "hello"
    push = protocol.encode_frame(protocol.RESULTS, 0, {"results": []})
    o.receive_data(protocol.encode_frame(protocol.OK, 7, {"session": "s1", "heartbeat": 1.5}) + push)
    assert o.done and o.data_to_send() == b""
    # The master drops peers silent for 1.5 s: ping three times within that.
    assert o.welcome == Welcome("s1", 0.5, master_timeout=1.5)
    assert o.early == [protocol.Message(protocol.RESULTS, 0, {"results": []})]


def test_opening_fed_one_byte_at_a_time():
    o = opening()
    o.start()
    sent = b""
    stream = (challenge() + b"\x01" + protocol.encode_frame(protocol.OK, 7, {"session": "s"}))
    for i in range(len(stream)):
        o.receive_data(stream[i:i + 1])
        sent += o.data_to_send()
    assert o.done and o.welcome == Welcome("s", 5.0)  # no master timeout: our own heartbeat
    assert sent == auth.client_mac(KEY, CLIENT_NONCE, SERVER_NONCE) + protocol.encode_frame("hello", 7, HELLO)


def test_master_with_another_key_is_refused_but_still_answered():
    o = opening()
    o.start()
    with pytest.raises(AuthenticationError):
        o.receive_data(challenge(b"other key"))
    # The proof still goes out, so the master logs the failed attempt.
    assert o.data_to_send() == auth.client_mac(KEY, CLIENT_NONCE, SERVER_NONCE)
    assert o.state == "failed"
    assert failure_kind(AuthenticationError("x")) is Failure.FATAL


def test_master_refusing_our_proof():
    o = opening()
    o.start()
    o.receive_data(challenge())
    o.data_to_send()
    with pytest.raises(AuthenticationError):
        o.receive_data(b"\x00")
    assert o.state == "failed"


def test_garbage_reply_is_a_protocol_error_said_loudly():
    o = opening()
    o.start()
    with pytest.raises(ProtocolError, match="not a conveyor master") as info:
        o.receive_data(b"HTTP/1.1 400 Bad Request\r\n\r\n" * 4)
    assert o.data_to_send() == b""
    assert failure_kind(info.value) is Failure.LOUD


def test_master_speaking_another_version():
    o = opening()
    o.start()
    with pytest.raises(ProtocolError, match="protocol version"):
        o.receive_data(protocol.MAGIC + b"\x01\x02" + bytes(64))


def test_hello_refused_is_a_remote_error_retried_quietly():
    o = opening()
    o.start()
    o.receive_data(challenge() + b"\x01")
    with pytest.raises(RemoteError, match="draining") as info:
        o.receive_data(protocol.encode_frame(protocol.ERR, 7, {"type": "Busy", "message": "draining"}))
    assert o.state == "failed" and o.welcome is None
    assert failure_kind(info.value) is Failure.QUIET


@pytest.mark.parametrize("before, stage", [(b"", "the handshake"), (challenge() + b"\x01", "hello")])
def test_peer_closing_part_way(before, stage):
    o = opening()
    o.start()
    if before:
        o.receive_data(before)
    with pytest.raises(ConnectionLost, match=f"during {stage}") as info:
        o.receive_data(b"")
    assert failure_kind(info.value) is Failure.QUIET


def test_replies_to_other_requests_do_not_end_the_hello():
    o = opening()
    o.start()
    o.receive_data(challenge() + b"\x01" + protocol.encode_frame(protocol.OK, 3, {}))
    assert o.state == "hello"


# -- reconnect plan, failure kinds, liveness ----------------------------------------

def test_backoff_doubles_to_its_maximum_and_resets_on_success():
    plan = Reconnect([ADDR])
    assert [plan.failed() for _ in range(8)] == [0.05, 0.1, 0.2, 0.4, 0.8, 1.6, 2.0, 2.0]
    plan.succeeded()
    assert plan.failed() == timing.RECONNECT_FIRST
    first = Reconnect([ADDR], first=timing.FIRST_CONNECT_FIRST, maximum=timing.FIRST_CONNECT_MAX)
    assert [first.failed() for _ in range(7)] == [0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 5.0]


def test_several_addresses_are_tried_in_turn_and_only_a_failed_round_waits():
    a, b = Address("a", 1), Address("b", 2)
    plan = Reconnect([a, b])
    assert plan.address == a
    assert (plan.failed(), plan.address) == (0.0, b)
    assert (plan.failed(), plan.address) == (0.05, a)
    assert (plan.failed(), plan.address) == (0.0, b)
    assert (plan.failed(), plan.address) == (0.1, a)
    plan.failed()
    plan.succeeded()  # b answered: stay there, start the pauses again
    assert plan.address == b
    assert (plan.failed(), plan.failed()) == (0.0, 0.05)


def test_parse_addresses_one_or_many():
    assert parse_addresses("h:1") == (Address("h", 1),)
    assert parse_addresses(("h", 1)) == (Address("h", 1),)
    assert parse_addresses(["h:1", ("g", 2), "tls://k:3"]) == (Address("h", 1), Address("g", 2),
                                                                Address("k", 3, True))
    with pytest.raises(ValueError):
        parse_addresses([])


@pytest.mark.parametrize("exc, kind", [
    (AuthenticationError("x"), Failure.FATAL),
    (ConnectionLost("x"), Failure.QUIET),
    (ConnectionRefusedError(111, "refused"), Failure.QUIET),
    (TimeoutError(), Failure.QUIET),
    (RemoteError("Busy", "x"), Failure.QUIET),
    (ProtocolError("x"), Failure.LOUD),
    (ValueError("x"), Failure.LOUD),
])
def test_failure_kinds(exc, kind):
    assert failure_kind(exc) is kind


def test_liveness_pings_every_interval_and_gives_up_after_four_silent_ones():
    live = Liveness(timing.ping_interval(5.0, 1.5), now=100.0)  # 0.5 s
    assert not live.ping_due(100.49) and live.until_ping(100.25) == pytest.approx(0.25)
    assert live.ping_due(100.5) and not live.ping_due(100.9)
    assert live.until_ping(100.9) == pytest.approx(0.1)
    assert not live.silent(102.0)  # exactly four intervals: not yet
    assert live.silent(102.01) and live.silent_for(102.01) == pytest.approx(2.01)
    live.received(102.0)
    assert not live.silent(103.9) and live.silent(104.1)


def test_ping_interval_follows_a_shorter_master_timeout_only():
    assert timing.ping_interval(5.0, 30.0) == 5.0
    assert timing.ping_interval(5.0, 3.0) == 1.0
    assert timing.ping_interval(5.0, None) == 5.0


def test_connect_errors_name_the_master_and_the_reason():
    from conveyor.link.state import broken, unreachable

    refused = unreachable(ADDR, ConnectionRefusedError(111, "Connection refused"))
    assert str(refused) == "cannot connect to master at tcp://127.0.0.1:7700: Connection refused"
    assert "timed out" in str(unreachable(ADDR, TimeoutError()))
    assert "did not answer the handshake in time" in str(broken(ADDR, TimeoutError()))
    lost = ConnectionLost("closed during hello")
    assert broken(ADDR, lost) is lost
    assert all(failure_kind(e) is Failure.QUIET for e in (refused, lost))


def test_a_failed_attempt_is_quiet_loud_or_fatal(caplog):
    link = BlockingLink("127.0.0.1:1", KEY)
    fut = link.request_nowait(protocol.PING, {})  # not connected: waits for a connection
    with caplog.at_level(logging.WARNING, logger="conveyor.link"):
        assert link._attempt_failed(ConnectionLost("refused")) == 0.05
        assert not caplog.records  # a master that is away is retried without a word
        assert link._attempt_failed(ProtocolError("bad magic")) == 0.1
        assert "ProtocolError: bad magic" in caplog.text
        assert not fut.done()
        assert link._attempt_failed(AuthenticationError("authentication failed")) is None
    with pytest.raises(AuthenticationError):
        fut.result(0)


# -- both edges against a scripted master ----------------------------------------------

Script = Callable[[int, socket.socket, protocol.Connection], None]


class FakeMaster:
    """A master on 127.0.0.1 that runs the real handshake, then ``script(n, sock, conn)``
    for its n-th connection (0-based)."""

    def __init__(self, script: Script) -> None:
        self.script = script
        self.srv = socket.create_server(("127.0.0.1", 0))
        self.port = self.srv.getsockname()[1]
        self.errors: list[BaseException] = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        n = 0
        while True:
            try:
                sock, _ = self.srv.accept()
            except OSError:
                return
            with sock:
                try:
                    conn = protocol.Connection("server", KEY)
                    while not conn.authenticated:
                        conn.receive_data(sock.recv(4096))
                        sock.sendall(conn.data_to_send())
                    self.script(n, sock, conn)
                except BaseException as exc:  # reported by the test
                    self.errors.append(exc)
            n += 1

    def close(self) -> None:
        try:
            self.srv.shutdown(socket.SHUT_RDWR)  # wakes the accept
        except OSError:
            pass
        self.srv.close()
        self.thread.join(10)


def read_message(sock: socket.socket, conn: protocol.Connection, buffered: list[protocol.Message]) -> protocol.Message:
    while not buffered:
        data = sock.recv(65536)
        assert data, "the link closed the connection"
        buffered.extend(ev for ev in conn.receive_data(data) if isinstance(ev, protocol.Message))
    return buffered.pop(0)


def script_drop_then_answer(n: int, sock: socket.socket, conn: protocol.Connection) -> None:
    """1st connection: welcome plus a push in one write, read a request, hang up unanswered.
    2nd: welcome; the request comes again and is answered."""
    got: list[protocol.Message] = []
    hello = read_message(sock, conn, got)
    assert hello.op == protocol.HELLO and hello.fields["role"] == "worker"
    sock.sendall(protocol.encode_frame(protocol.OK, hello.rid, {"session": f"s{n}", "heartbeat": 30.0})
                 + protocol.encode_frame("note", 0, {"n": n}))
    request = read_message(sock, conn, got)
    while request.op == protocol.PING:
        request = read_message(sock, conn, got)
    assert request.op == protocol.STATUS
    if n == 0:
        return  # hang up: the request is unanswered
    sock.sendall(protocol.encode_frame(protocol.OK, request.rid, {"answered_on": n}))
    while sock.recv(65536):  # until the link closes
        pass


def wait_for(predicate: Callable[[], bool], timeout: float = 30.0) -> bool:
    done = threading.Event()
    deadline = threading.Timer(timeout, done.set)
    deadline.start()
    try:
        while not done.is_set():
            if predicate():
                return True
            done.wait(0.01)
        return False
    finally:
        deadline.cancel()


def test_blocking_link_delivers_early_pushes_and_resends_after_a_reconnect():
    master = FakeMaster(script_drop_then_answer)
    notes: list[int] = []
    link = BlockingLink(("127.0.0.1", master.port), KEY, role="worker",
                        on_message=lambda m: notes.append(m.fields["n"]))
    try:
        link.connect()
        assert link.session == "s0" and link.connected
        assert link.request(protocol.STATUS, {}, timeout=30) == {"answered_on": 1}
        assert link.session == "s1" and wait_for(lambda: notes == [0, 1])
    finally:
        link.close()
        master.close()
    assert not master.errors


def test_async_link_delivers_early_pushes_and_resends_after_a_reconnect():
    master = FakeMaster(script_drop_then_answer)
    notes: list[int] = []
    connects: list[str | None] = []

    async def main() -> None:
        link = AsyncLink(("127.0.0.1", master.port), KEY, role="worker",
                         on_message=lambda m: notes.append(m.fields["n"]),
                         on_connect=lambda: connects.append(link.session))
        await link.connect()
        try:
            assert await link.request(protocol.STATUS, {}, timeout=30) == {"answered_on": 1}
            assert notes == [0, 1] and connects == ["s0", "s1"]
        finally:
            await link.close()

    try:
        asyncio.run(main())
    finally:
        master.close()
    assert not master.errors


def test_first_connect_tries_each_address_in_turn():
    master = FakeMaster(script_drop_then_answer)
    dead = socket.socket()
    dead.bind(("127.0.0.1", 0))  # bound, not listening: connections are refused
    link = BlockingLink([("127.0.0.1", dead.getsockname()[1]), ("127.0.0.1", master.port)], KEY, role="worker")
    try:
        link.connect()
        assert link.address.port == master.port and link.session == "s0"
    finally:
        link.close()
        master.close()
        dead.close()


def test_wrong_key_stops_the_first_connect():
    master = FakeMaster(script_drop_then_answer)
    link = BlockingLink(("127.0.0.1", master.port), b"wrong", role="worker")
    try:
        with pytest.raises(AuthenticationError):
            link.connect()
    finally:
        link.close()
        master.close()


# -- layering ------------------------------------------------------------------------------

def _imported_modules(path) -> set[str]:
    """The modules a source file imports, relative ones resolved against ``conveyor.<package>``."""
    import ast

    package = "conveyor." + path.parent.name
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package.rsplit(".", node.level - 1)[0] if node.level else ""
            module = ".".join(p for p in (base, node.module or "") if p)
            found.add(module)
            found.update(f"{module}.{alias.name}" for alias in node.names)
    return found


@pytest.mark.parametrize("package", ["link", "worker"])
def test_link_and_worker_import_nothing_from_the_client(package):
    """The link sits below the clients, and the worker is no client: both stand without client/."""
    from pathlib import Path

    import conveyor

    sources = sorted((Path(conveyor.__file__).parent / package).glob("*.py"))
    assert sources
    for path in sources:
        imported = _imported_modules(path)
        assert not [m for m in imported if m == "conveyor.client" or m.startswith("conveyor.client.")], path
