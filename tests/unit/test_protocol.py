"""The wire protocol, byte for byte, with no sockets."""

from __future__ import annotations

import hashlib
import hmac
import struct

import msgpack
import pytest

from conveyor import protocol
from conveyor.errors import AuthenticationError, FrameTooLarge, ProtocolError

KEY = b"secret"
CN = bytes(range(32))
SN = bytes(range(100, 132))


def pair(client_key=KEY, server_key=KEY):
    return (protocol.Connection("client", client_key, nonce=CN),
            protocol.Connection("server", server_key, nonce=SN))


def handshake(c, s):
    s_events = s.receive_data(c.initiate())
    assert s_events == []
    c_events = c.receive_data(s.data_to_send())
    s_events = s.receive_data(c.data_to_send())
    c_events += c.receive_data(s.data_to_send())
    return c_events, s_events


def test_hello_bytes_are_magic_version_nonce():
    c, _ = pair()
    assert c.initiate() == b"CNVY\x01" + CN


def test_challenge_bytes_carry_server_nonce_and_hmac():
    c, s = pair()
    s.receive_data(c.initiate())
    challenge = s.data_to_send()
    mac = hmac.new(KEY, b"conveyor-v1-server" + CN + SN, hashlib.sha256).digest()
    assert challenge == b"CNVY\x00\x01" + SN + mac


def test_proof_bytes_are_client_hmac_and_verdict_is_one():
    c, s = pair()
    s.receive_data(c.initiate())
    c.receive_data(s.data_to_send())
    proof = c.data_to_send()
    assert proof == hmac.new(KEY, b"conveyor-v1-client" + SN + CN, hashlib.sha256).digest()
    assert s.receive_data(proof) == [protocol.HandshakeDone()]
    assert s.data_to_send() == b"\x01"


def test_full_handshake_authenticates_both_sides():
    c, s = pair()
    c_events, s_events = handshake(c, s)
    assert c_events == [protocol.HandshakeDone()] and s_events == [protocol.HandshakeDone()]
    assert c.authenticated and s.authenticated


def test_key_is_never_sent():
    c, s = pair(b"k" * 40, b"k" * 40)
    s.receive_data(c.initiate())
    seen = s.data_to_send()
    c.receive_data(seen)
    seen += c.data_to_send()
    assert b"k" * 8 not in seen


def test_wrong_client_key_fails_on_client_and_server_refuses():
    c, s = pair(client_key=b"wrong")
    s.receive_data(c.initiate())
    with pytest.raises(AuthenticationError, match="authentication failed"):
        c.receive_data(s.data_to_send())
    # The client still answers, so the master can log the failed attempt.
    events = s.receive_data(c.data_to_send())
    assert events == [protocol.HandshakeFailed("authentication failed")]
    assert s.data_to_send() == b"\x00"
    assert not s.authenticated


def test_refused_verdict_raises_on_client():
    c, s = pair()
    s.receive_data(c.initiate())
    c.receive_data(s.data_to_send())
    with pytest.raises(AuthenticationError):
        c.receive_data(b"\x00")


def test_server_decodes_nothing_before_handshake():
    _, s = pair()
    frame = protocol.encode_frame("status", 1, {})
    with pytest.raises(ProtocolError, match="bad magic"):
        s.receive_data(frame + b"\x00" * 64)
    assert not s.authenticated


def test_server_refuses_unknown_version():
    _, s = pair()
    events = s.receive_data(b"CNVY\x09" + CN)
    assert events == [protocol.HandshakeFailed("unsupported protocol version 9")]
    assert s.data_to_send()[:6] == b"CNVY\x01\x01"


def test_client_reports_version_mismatch():
    c, _ = pair()
    c.initiate()
    with pytest.raises(ProtocolError, match="version"):
        c.receive_data(b"CNVY\x01\x02" + bytes(64))


def test_handshake_split_into_single_bytes():
    c, s = pair()
    for b in c.initiate():
        s.receive_data(bytes([b]))
    challenge = s.data_to_send()
    for b in challenge:
        c.receive_data(bytes([b]))
    events = []
    for b in c.data_to_send():
        events += s.receive_data(bytes([b]))
    assert events == [protocol.HandshakeDone()]


def test_frame_bytes():
    frame = protocol.encode_frame("ping", 7, {})
    body = msgpack.packb(["ping", 7, {}], use_bin_type=True)
    assert frame == struct.pack(">I", len(body)) + body
    assert frame == b"\x00\x00\x00\x08\x93\xa4ping\x07\x80"


def test_messages_after_handshake_and_pipelining():
    c, s = pair()
    handshake(c, s)
    data = c.send("submit", 1, {"tasks": [[b"x"]]}) + c.send("ping", 2, {})
    assert s.receive_data(data) == [
        protocol.Message("submit", 1, {"tasks": [[b"x"]]}),
        protocol.Message("ping", 2, {}),
    ]


def test_frames_arriving_with_the_last_handshake_bytes_are_decoded():
    c, s = pair()
    s.receive_data(c.initiate())
    c.receive_data(s.data_to_send())
    events = s.receive_data(c.data_to_send() + protocol.encode_frame("ping", 1, {}))
    assert events == [protocol.HandshakeDone(), protocol.Message("ping", 1, {})]


def test_partial_frames_wait_for_the_rest():
    c, s = pair()
    handshake(c, s)
    frame = c.send("ping", 3, {"a": 1})
    assert s.receive_data(frame[:2]) == []
    assert s.receive_data(frame[2:6]) == []
    assert s.receive_data(frame[6:]) == [protocol.Message("ping", 3, {"a": 1})]


def test_oversized_frame_is_refused_before_reading_it():
    c = protocol.Connection("client", KEY, nonce=CN)
    s = protocol.Connection("server", KEY, nonce=SN, max_frame_size=100)
    handshake(c, s)
    with pytest.raises(FrameTooLarge, match="exceeds the maximum of 100"):
        s.receive_data(struct.pack(">I", 101))


@pytest.mark.parametrize("body", [b"\xc1", msgpack.packb({"a": 1}), msgpack.packb([1, 2, 3]),
                                  msgpack.packb(["op", "x", {}]), msgpack.packb(["op", 1])])
def test_malformed_bodies_raise_protocol_error(body):
    c, s = pair()
    handshake(c, s)
    with pytest.raises(ProtocolError):
        s.receive_data(struct.pack(">I", len(body)) + body)


def test_send_before_handshake_is_refused():
    c, _ = pair()
    with pytest.raises(ProtocolError):
        c.send("ping", 1, {})


def test_string_authkey_is_utf8():
    c = protocol.Connection("client", "clé", nonce=CN)
    s = protocol.Connection("server", "clé".encode(), nonce=SN)
    c_events, s_events = handshake(c, s)
    assert s_events == [protocol.HandshakeDone()]
