"""The blocking link's read role: a waiting caller reads its own reply when no other
thread reads, many callers share one connection, and pings go on while a caller reads.

Against a scripted master on 127.0.0.1 (the FakeMaster of test_link.py).
"""

from __future__ import annotations

import socket
import struct
import threading

from conveyor import protocol
from conveyor.link.blocking import BlockingLink

from .test_link import KEY, FakeMaster, read_message, wait_for


def _welcome(sock: socket.socket, conn: protocol.Connection, got: list[protocol.Message], n: int,
             heartbeat: float = 30.0) -> None:
    hello = read_message(sock, conn, got)
    assert hello.op == protocol.HELLO
    sock.sendall(protocol.encode_frame(protocol.OK, hello.rid, {"session": f"s{n}", "heartbeat": heartbeat}))


def test_a_waiting_caller_reads_its_reply_and_the_push_before_it_on_its_own_thread():
    links: list[BlockingLink] = []

    def script(n: int, sock: socket.socket, conn: protocol.Connection) -> None:
        got: list[protocol.Message] = []
        _welcome(sock, conn, got, n)
        while True:
            try:
                request = read_message(sock, conn, got)
            except AssertionError:  # the link closed
                return
            if request.op == protocol.PING:
                continue
            # Answer only once the caller holds the read role: nothing else is there to
            # read, so the reader thread cannot be the one holding it.
            assert wait_for(lambda: links[0]._rlock.locked(), 10)
            sock.sendall(protocol.encode_frame("note", 0, {"rid": request.rid})
                         + protocol.encode_frame(protocol.OK, request.rid, {"echo": request.fields["i"]}))

    master = FakeMaster(script)
    handled_on: list[str] = []
    link = BlockingLink(("127.0.0.1", master.port), KEY, role="worker",
                        on_message=lambda m: handled_on.append(threading.current_thread().name))
    links.append(link)
    try:
        link.connect()
        for i in range(5):
            assert link.request(protocol.STATUS, {"i": i}, timeout=30) == {"echo": i}
        # The pushes were handled where the replies were read: on the calling thread.
        assert handled_on == [threading.current_thread().name] * 5
    finally:
        link.close()
        master.close()
    assert not master.errors


def test_many_threads_share_the_read_role_and_each_gets_its_own_replies():
    pushed: list[int] = []

    def script_echo(n: int, sock: socket.socket, conn: protocol.Connection) -> None:
        """Answer every request with its own fields, a push before every third answer."""
        got: list[protocol.Message] = []
        _welcome(sock, conn, got, n)
        while True:
            try:
                request = read_message(sock, conn, got)
            except AssertionError:  # the link closed
                return
            if request.op == protocol.PING:
                continue
            push = b""
            if request.rid % 3 == 0:
                push = protocol.encode_frame("note", 0, {})
                pushed.append(1)
            sock.sendall(push + protocol.encode_frame(protocol.OK, request.rid, dict(request.fields)))

    master = FakeMaster(script_echo)
    notes: list[int] = []
    link = BlockingLink(("127.0.0.1", master.port), KEY, role="worker", on_message=lambda m: notes.append(1))
    failures: list[BaseException] = []

    def caller(t: int) -> None:
        try:
            for i in range(100):
                assert link.request(protocol.STATUS, {"t": t, "i": i}, timeout=30) == {"t": t, "i": i}
        except BaseException as exc:
            failures.append(exc)

    try:
        link.connect()
        threads = [threading.Thread(target=caller, args=(t,)) for t in range(8)]
        for th in threads:
            th.start()
        for th in threads:
            th.join(60)
        assert not any(th.is_alive() for th in threads)
        assert not failures
        assert pushed and len(notes) == len(pushed)  # each push handled once, by whichever thread read it
    finally:
        link.close()
        master.close()
    assert not master.errors


def test_pings_go_on_while_a_caller_holds_the_read_role():
    """A master with a short heartbeat answers only after three pings: the caller waiting
    (and reading) all that time must not stop the reader thread's pings."""

    def script(n: int, sock: socket.socket, conn: protocol.Connection) -> None:
        got: list[protocol.Message] = []
        _welcome(sock, conn, got, n, heartbeat=0.6)  # the link pings every 0.2 s
        request = read_message(sock, conn, got)
        while request.op == protocol.PING:
            request = read_message(sock, conn, got)
        pings = 0
        while pings < 3:
            if read_message(sock, conn, got).op == protocol.PING:
                pings += 1
        sock.sendall(protocol.encode_frame(protocol.OK, request.rid, {"pings": pings}))
        while sock.recv(65536):
            pass

    master = FakeMaster(script)
    link = BlockingLink(("127.0.0.1", master.port), KEY, role="worker")
    try:
        link.connect()
        assert link.request(protocol.STATUS, {}, timeout=30) == {"pings": 3}
        assert link.session == "s0"  # answered on the first connection: never judged silent
    finally:
        link.close()
        master.close()
    assert not master.errors


def test_close_wakes_the_reader_thread_at_once():
    """The reader thread waits on epoll, which forgets a closed socket: close() shuts the
    connection down, lets the reader thread leave, and only then closes the socket, so the
    thread is gone when close() returns (not still waiting for its next ping)."""

    def script(n: int, sock: socket.socket, conn: protocol.Connection) -> None:
        got: list[protocol.Message] = []
        _welcome(sock, conn, got, n, heartbeat=60.0)  # the next ping is 20 s away
        while sock.recv(65536):
            pass

    master = FakeMaster(script)
    link = BlockingLink(("127.0.0.1", master.port), KEY, role="worker")
    try:
        link.connect()
        assert link.connected
        link.close()  # joins the reader thread for at most 5 s
        assert link._reader is not None and not link._reader.is_alive()
    finally:
        link.close()
        master.close()
    assert not master.errors


def test_a_reset_read_by_the_waiting_caller_wakes_the_reader_thread_to_reconnect():
    """The master resets the connection (as the kernel does for a master killed with unread
    bytes) while a caller holds the read role: the caller reads the reset, and the reader
    thread must learn of it at once (the caller's shutdown of the socket wakes its epoll),
    not from the master's silence (60 s of heartbeat here)."""
    connections: list[int] = []

    def script(n: int, sock: socket.socket, conn: protocol.Connection) -> None:
        got: list[protocol.Message] = []
        _welcome(sock, conn, got, n, heartbeat=60.0)
        connections.append(n)
        if n > 0:  # the link came back: hold this connection until it closes
            while True:
                try:
                    read_message(sock, conn, got)
                except AssertionError:
                    return
        request = read_message(sock, conn, got)
        while request.op == protocol.PING:
            request = read_message(sock, conn, got)
        assert wait_for(lambda: links[0]._rlock.locked(), 10)  # the caller reads, not the reader thread
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()  # a reset, not a clean end

    links: list[BlockingLink] = []
    master = FakeMaster(script)
    link = BlockingLink(("127.0.0.1", master.port), KEY, role="worker")
    links.append(link)
    try:
        link.connect()
        fut = link.request_nowait(protocol.STATUS, {})
        link.wait_reading(fut.done, timeout=10)  # reads the reset itself and gives up the role
        assert wait_for(lambda: len(connections) >= 2, 20), "the reader thread did not reconnect"
    finally:
        link.close()
        master.close()
