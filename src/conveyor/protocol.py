"""The conveyor wire protocol, sans-IO: bytes in, events out; messages in, bytes out.

No sockets, no asyncio, no clocks: whoever owns the socket feeds received
bytes to :meth:`Connection.receive_data` and writes what
:meth:`Connection.data_to_send` returns.

Handshake (fixed-size raw fields; nothing else is decoded before it succeeds)::

    client  HELLO      b"CNVY" | version:u8 | client_nonce:32
    master  CHALLENGE  b"CNVY" | status:u8 (0 ok, 1 bad version) | version:u8 | server_nonce:32 | server_mac:32
    client  PROOF      client_mac:32
    master  VERDICT    u8 (1 accepted, 0 refused)

After the handshake every frame is ``length:u32 big-endian | msgpack body`` and
every body is ``[op, request_id, fields]``: ``op`` a short string, ``request_id``
an int (0 for a push that expects no reply; > 0 for a request, echoed by its
``ok`` or ``err`` reply, so requests pipeline), ``fields`` a map. Batch ops
carry many tasks or results per frame.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from typing import Any

import msgpack  # type: ignore[import-untyped]

from . import auth
from .errors import AuthenticationError, FrameTooLarge, ProtocolError

MAGIC = b"CNVY"
VERSION = 1
DEFAULT_MAX_FRAME = 64 * 1024 * 1024
HELLO_SIZE = len(MAGIC) + 1 + auth.NONCE_SIZE
CHALLENGE_SIZE = len(MAGIC) + 2 + auth.NONCE_SIZE + auth.MAC_SIZE
PROOF_SIZE = auth.MAC_SIZE
VERDICT_SIZE = 1
_HEADER = struct.Struct(">I")

# Ops. Requests (request_id > 0) are answered with OK or ERR.
HELLO = "hello"  # {role, name, host, pid, queues, weights, concurrency, periodic, pool, loop} -> {session, heartbeat}
SUBMIT = "submit"  # {tasks: [wire task...], subscribe} -> {new: int}; results are pushed to the submitter
#                   unless subscribe is false (fire-and-forget: nothing is kept for them)
SUBSCRIBE = "subscribe"  # {ids} -> {}; results of those tasks are pushed when stored
FETCH = "fetch"  # {ids} -> {results: [wire result...], missing: [id...]}
STATUS = "status"  # {} -> {queues, workers, gone_workers, counters, rates, schedules, metrics...}
ACK = "ack"  # {results: [[id, token, ok, payload, codec]...]} -> {} once committed
RETURN = "return"  # {leases: [[id, token]...]} -> {n}: prefetched tasks handed back
# A worker's claim on the leases it holds, after a reconnect or a stall: the master keeps
# (adopts) those whose token still holds and names the rest, which the worker must not run.
ADOPT = "adopt"  # {leases: [[id, token]...]} -> {lost: [id...]}
PING = "ping"  # {} -> {}
CREDIT = "credit"  # push {n, revoke}: the worker can take n more tasks (revoke: n fewer)
# Plain queues (queue.Queue over the network).
QPUT = "qput"  # {queue, items: [[id, payload, codec]...], maxsize, timeout} -> {accepted}
QGET = "qget"  # {queue, max, timeout, ack} -> {items: [[id, token, payload, codec]...]}
QACK = "qack"  # {items: [[id, token]...]} -> {n}
QJOIN = "qjoin"  # {queue, timeout} -> {done: bool}: every item put has been acknowledged
QSIZE = "qsize"  # {queue} -> {ready, delayed, leased}
QINFO = "qinfo"  # {queue} -> {declared, maxsize}: queues the master was started with
QLIST = "qlist"  # {} -> {queues: [{queue, ready, delayed, leased, maxsize, consumers}...]}
# Job control.
CANCEL = "cancel"  # {ids} -> {cancelled, finished, unknown}; also pushed to the worker running one
RETRY = "retry"  # {ids} or {queue, states} -> {requeued, skipped, unknown}
PURGE = "purge"  # {queue, states} -> {n}
INSPECT = "inspect"  # {id} -> {task}
TASKLIST = "tasks"  # {filter..., limit, cursor, newest_first} -> {tasks, cursor}; or {queue, state, limit, offset} -> {tasks}
#: The filter fields of TASKLIST, COUNT, RETRY_MATCHING and CANCEL_MATCHING: states, queue, name,
#: id_prefix, key, created_from, created_to (all optional; see records.TaskFilter).
COUNT = "count"  # {filter..., cap} -> {n, exact}: exact False means "at least n"
RETRY_MATCHING = "retry_matching"  # {filter...} -> {n, ids (the first MAX_REPLY_IDS)}: requeue finished ones
CANCEL_MATCHING = "cancel_matching"  # {filter...} -> {n, ids (the first MAX_REPLY_IDS)}: cancel unfinished ones
PROGRESS = "progress"  # worker push {id, token, done, total, message}; pushed on to subscribers
STARTED = "started"  # worker push {leases: [[id, token]...]}: those tasks left its prefetch and began
# Pushes from the master (request_id 0).
TASKS = "push_tasks"  # {tasks: [[id, token, name, payload, codec, options, extra]...]}
RESULTS = "results"  # {results: [wire result...]}
# Replies.
OK = "ok"
ERR = "err"  # {type, message}

# Periodic schedules (master/scheduler.py; a worker's hello may carry "periodic":
# [schedule...] declared by @conveyor.periodic in its modules).
SCHED_ADD = "sched_add"  # {schedule: {name, task, queue, payload, codec, cron, every, tz, missed, options},
#                           replace: bool} -> {schedule}
SCHED_LIST = "sched_list"  # {} -> {schedules: [schedule + source, created_at, last_slot, next_slot...]}
SCHED_DEL = "sched_del"  # {name} -> {}; NotFound for an unknown name
SCHED_RUN = "sched_run"  # {name} -> {id, new}: enqueue the schedule's task now; NotFound if unknown

#: The ops a peer sends as requests (request_id > 0; some also as pushes, e.g. a ping or a
#: resubscription after a reconnect).
REQUEST_OPS = frozenset({HELLO, SUBMIT, SUBSCRIBE, FETCH, STATUS, ACK, RETURN, ADOPT, PING,
                         QPUT, QGET, QACK, QJOIN, QSIZE, QINFO, QLIST, CANCEL, RETRY, PURGE,
                         INSPECT, TASKLIST, COUNT, RETRY_MATCHING, CANCEL_MATCHING, SCHED_ADD, SCHED_LIST, SCHED_DEL, SCHED_RUN})
#: The ops a worker pushes to the master (request_id 0, never answered).
PEER_PUSH_OPS = frozenset({CREDIT, PROGRESS, STARTED})
#: Every op the master accepts from a peer: its routes serve exactly these.
INBOUND_OPS = REQUEST_OPS | PEER_PUSH_OPS


@dataclass(slots=True, frozen=True)
class Message:
    """One decoded frame: an op, its request id and its fields."""

    op: str
    rid: int
    fields: dict[str, Any]


@dataclass(slots=True, frozen=True)
class HandshakeDone:
    """The peer proved it holds the authkey; messages may flow."""


@dataclass(slots=True, frozen=True)
class HandshakeFailed:
    """The peer failed the handshake; send what is pending, then close."""

    reason: str


Event = Message | HandshakeDone | HandshakeFailed


def encode_frame(op: str, rid: int, fields: dict[str, Any]) -> bytes:
    """One frame's bytes: length prefix and msgpack body."""
    body: bytes = msgpack.packb([op, rid, fields], use_bin_type=True)
    return _HEADER.pack(len(body)) + body


#: Frames from this size up are decoded with an allowance of containers (server side).
#: Below it, even the worst frame (empty arrays, ~70 bytes of memory per byte) costs
#: under 20 MB for the moment it is decoded, and the hooks that count containers
#: (~0.5 us each) stay off the everyday batches of small tasks.
GUARD_FROM = 256 * 1024
#: A guarded frame may hold one container (array or map) per this many bytes, plus
#: :data:`CONTAINER_SLACK`. Real requests spend 18 bytes or more per container (a
#: submitted task is a 9-field list with an options map and ~60 bytes); a frame of empty
#: arrays (1 byte each, ~70 bytes of memory each) is what this stops.
BYTES_PER_CONTAINER = 8
CONTAINER_SLACK = 1024


class _Expansion(Exception):
    """A guarded frame holds more containers than its size allows."""


def _limits(size: int, guarded: bool) -> dict[str, int]:
    """msgpack's own limits tied to the frame's size: nothing inside a frame can be
    longer than the frame, so a forged length cannot make msgpack allocate ahead."""
    items = size // 4 if guarded else size  # a guarded array's items take >= 4 bytes each
    return {"max_bin_len": size, "max_str_len": size, "max_ext_len": size,
            "max_array_len": items, "max_map_len": items // 2 if guarded else size}


def decode_body(body: bytes | memoryview, *, guarded: bool = False) -> Message:
    """Decode one frame body into a Message, or raise ProtocolError.

    ``guarded`` (the master's side) bounds what a large frame may expand into:
    array and map lengths to a quarter of its bytes, and the number of containers
    to one per :data:`BYTES_PER_CONTAINER` bytes, so a frame costs at most a small
    multiple of its size in memory. Nesting depth is bounded by msgpack itself.
    """
    size = len(body)
    guard = guarded and size >= GUARD_FROM
    kwargs: dict[str, Any] = _limits(size, guard)
    if guard:
        left = [size // BYTES_PER_CONTAINER + CONTAINER_SLACK]

        def counted(value: Any) -> Any:
            left[0] -= 1
            if left[0] < 0:
                raise _Expansion
            return value

        kwargs["list_hook"] = counted
        kwargs["object_hook"] = counted
    try:
        value = msgpack.unpackb(body, raw=False, strict_map_key=False, **kwargs)
    except _Expansion:
        raise ProtocolError(f"frame of {size} bytes holds more than "
                            f"{size // BYTES_PER_CONTAINER + CONTAINER_SLACK} arrays and maps") from None
    except Exception as exc:  # msgpack raises several types for garbage
        raise ProtocolError(f"undecodable frame: {exc}") from None
    if (
        not isinstance(value, list)
        or len(value) != 3
        or not isinstance(value[0], str)
        or not isinstance(value[1], int)
        or not isinstance(value[2], dict)
    ):
        raise ProtocolError("frame is not [op, request_id, fields]")
    return Message(value[0], value[1], value[2])


class OversizeFrame(FrameTooLarge):
    """A frame announced more bytes than the connection accepts.

    ``rid`` is the request id read from the start of its body when the bytes
    that came with the length held it (None otherwise): the master answers that
    request with an error, so the peer fails it instead of resending it.
    """

    def __init__(self, size: int, limit: int, rid: int | None) -> None:
        super().__init__(f"frame of {size} bytes exceeds the maximum of {limit}")
        self.size = size
        self.limit = limit
        self.rid = rid


def peek_request_id(prefix: bytes | memoryview) -> int | None:
    """The request id of a frame body from its first bytes (``[op, rid, ...``), if they hold it."""
    unpacker = msgpack.Unpacker(raw=False, max_buffer_size=len(prefix) or 1)
    try:
        unpacker.feed(prefix)
        if unpacker.read_array_header() != 3:
            return None
        op = unpacker.unpack()
        rid = unpacker.unpack()
    except Exception:  # too few bytes, or not a frame
        return None
    if isinstance(op, str) and isinstance(rid, int) and not isinstance(rid, bool) and rid > 0:
        return rid
    return None


#: How many bytes of an oversized frame's body are looked at for its request id.
_PEEK = 64


class Connection:
    """One side of a conveyor connection: the handshake state machine, then framing.

    ``role`` is "client" (clients and workers) or "server" (the master).
    ``nonce`` is injectable for byte-for-byte tests; by default it is random.
    """

    def __init__(self, role: str, authkey: bytes | str | None, *,
                 max_frame_size: int = DEFAULT_MAX_FRAME, nonce: bytes | None = None) -> None:
        if role not in ("client", "server"):
            raise ValueError("role must be 'client' or 'server'")
        self.role = role
        self.max_frame_size = max_frame_size
        self._key = auth.as_key(authkey)
        self._nonce = nonce if nonce is not None else os.urandom(auth.NONCE_SIZE)
        if len(self._nonce) != auth.NONCE_SIZE:
            raise ValueError(f"nonce must be {auth.NONCE_SIZE} bytes")
        self._peer_nonce = b""
        self._buf = bytearray()
        self._out = bytearray()
        # client: "hello" -> "challenge" -> "verdict" -> "open"; server: "hello" -> "proof" -> "open"
        self.state = "hello" if role == "server" else "start"
        self.authenticated = False

    # -- outgoing ---------------------------------------------------------
    def initiate(self) -> bytes:
        """Client only: the HELLO bytes that open the handshake."""
        if self.role != "client" or self.state != "start":
            raise ProtocolError("initiate() is for a new client connection")
        self.state = "challenge"
        return MAGIC + bytes([VERSION]) + self._nonce

    def send(self, op: str, rid: int, fields: dict[str, Any]) -> bytes:
        """The bytes of one message; only after the handshake succeeded."""
        if not self.authenticated:
            raise ProtocolError("cannot send messages before the handshake succeeded")
        return encode_frame(op, rid, fields)

    def data_to_send(self) -> bytes:
        """Handshake bytes produced by receive_data, to be written to the peer."""
        out = bytes(self._out)
        self._out.clear()
        return out

    # -- incoming ---------------------------------------------------------
    def receive_data(self, data: bytes) -> list[Event]:
        """Feed received bytes; returns the events they complete (possibly none).

        Raises ProtocolError (FrameTooLarge for an oversized frame) on bytes
        that are not valid; the connection must then be closed.
        """
        if self.state == "closed":
            raise ProtocolError("connection is closed")
        self._buf += data
        if not self.authenticated:
            events = self._handshake()
            if not self.authenticated:
                return events
        else:
            events = []
        buf = self._buf
        pos = 0
        end = len(buf)
        limit = self.max_frame_size
        guarded = self.role == "server"
        view = memoryview(buf)
        try:
            while end - pos >= 4:
                (size,) = _HEADER.unpack_from(buf, pos)
                if size > limit:
                    self.state = "closed"
                    rid = peek_request_id(bytes(view[pos + 4: pos + 4 + _PEEK])) if end - pos > 4 else None
                    raise OversizeFrame(size, limit, rid)
                if end - pos - 4 < size:
                    break
                events.append(decode_body(view[pos + 4: pos + 4 + size], guarded=guarded))
                pos += 4 + size
        finally:
            view.release()
        if pos:
            del buf[:pos]
        return events

    def partial_frame(self) -> int:
        """The announced size of the frame being received (0 when none is under way).

        Only meaningful after the handshake: the master reserves that many bytes of
        its budget for partial frames before it reads on (master/backpressure.py).
        """
        if not self.authenticated or len(self._buf) < 4:
            return 0
        size: int = _HEADER.unpack_from(self._buf, 0)[0]
        return size + 4

    @property
    def buffered(self) -> int:
        """Bytes received and not yet made into events."""
        return len(self._buf)

    def _handshake(self) -> list[Event]:
        buf = self._buf
        if self.role == "server":
            if self.state == "hello" and len(buf) >= HELLO_SIZE:
                if buf[:4] != MAGIC:
                    self.state = "closed"
                    raise ProtocolError("not a conveyor client (bad magic)")
                version = buf[4]
                self._peer_nonce = bytes(buf[5:HELLO_SIZE])
                del buf[:HELLO_SIZE]
                if version != VERSION:
                    self._out += MAGIC + bytes([1, VERSION]) + bytes(auth.NONCE_SIZE + auth.MAC_SIZE)
                    self.state = "closed"
                    return [HandshakeFailed(f"unsupported protocol version {version}")]
                mac = auth.server_mac(self._key, self._peer_nonce, self._nonce)
                self._out += MAGIC + bytes([0, VERSION]) + self._nonce + mac
                self.state = "proof"
            if self.state == "proof" and len(buf) >= PROOF_SIZE:
                proof = bytes(buf[:PROOF_SIZE])
                del buf[:PROOF_SIZE]
                if not auth.verify(auth.client_mac(self._key, self._peer_nonce, self._nonce), proof):
                    self._out += b"\x00"
                    self.state = "closed"
                    return [HandshakeFailed("authentication failed")]
                self._out += b"\x01"
                self.state = "open"
                self.authenticated = True
                return [HandshakeDone()]
            return []
        # client
        if self.state == "challenge" and len(buf) >= CHALLENGE_SIZE:
            if buf[:4] != MAGIC:
                self.state = "closed"
                raise ProtocolError("the peer is not a conveyor master (bad magic)")
            status, version = buf[4], buf[5]
            if status != 0:
                self.state = "closed"
                raise ProtocolError(f"the master does not speak protocol version {VERSION} (it speaks {version})")
            self._peer_nonce = bytes(buf[6:6 + auth.NONCE_SIZE])
            mac = bytes(buf[6 + auth.NONCE_SIZE:CHALLENGE_SIZE])
            del buf[:CHALLENGE_SIZE]
            # Answer even when the master's proof is wrong, so the master logs the failure.
            self._out += auth.client_mac(self._key, self._nonce, self._peer_nonce)
            if not auth.verify(auth.server_mac(self._key, self._nonce, self._peer_nonce), mac):
                self.state = "closed"
                raise AuthenticationError("authentication failed")
            self.state = "verdict"
        if self.state == "verdict" and len(buf) >= VERDICT_SIZE:
            verdict = buf[0]
            del buf[:1]
            if verdict != 1:
                self.state = "closed"
                raise AuthenticationError("authentication failed")
            self.state = "open"
            self.authenticated = True
            return [HandshakeDone()]
        return []
