"""Authkeys, the HMAC challenge/response, and TLS contexts.

Both sides prove they hold the key without sending it: each answers the
other's random nonce with HMAC-SHA256(key, label + nonces). The labels
differ by direction so one side's answer can never be replayed as the other's.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import ssl
from collections.abc import Mapping
from pathlib import Path

NONCE_SIZE = 32
MAC_SIZE = 32
ENV_AUTHKEY = "CONVEYOR_AUTHKEY"
_SERVER_LABEL = b"conveyor-v1-server"
_CLIENT_LABEL = b"conveyor-v1-client"


def as_key(authkey: bytes | str | None) -> bytes:
    """Normalise an authkey: str is encoded as UTF-8; None becomes the empty key."""
    if authkey is None:
        return b""
    if isinstance(authkey, str):
        return authkey.encode("utf-8")
    if isinstance(authkey, (bytes, bytearray, memoryview)):
        return bytes(authkey)
    raise TypeError(f"authkey must be bytes or str, not {type(authkey).__name__}")


def server_mac(key: bytes, client_nonce: bytes, server_nonce: bytes) -> bytes:
    """What the master answers to prove it holds ``key``."""
    return hmac.new(key, _SERVER_LABEL + client_nonce + server_nonce, hashlib.sha256).digest()


def client_mac(key: bytes, client_nonce: bytes, server_nonce: bytes) -> bytes:
    """What a client or worker answers to prove it holds ``key``."""
    return hmac.new(key, _CLIENT_LABEL + server_nonce + client_nonce, hashlib.sha256).digest()


def verify(expected: bytes, got: bytes) -> bool:
    """Constant-time comparison of two MACs."""
    return hmac.compare_digest(expected, got)


def is_loopback(host: str) -> bool:
    """True for addresses only this machine can reach (127.0.0.0/8, ::1, localhost)."""
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def load_authkey(authkey_file: str | os.PathLike[str] | None = None, *,
                 env: Mapping[str, str] | None = None) -> bytes | None:
    """The authkey from a file (its bytes, one trailing newline stripped) or ``CONVEYOR_AUTHKEY``.

    Returns None when neither is set. A file that cannot be read raises OSError.
    """
    if authkey_file:
        data = Path(authkey_file).read_bytes()
        if data.endswith(b"\r\n"):
            data = data[:-2]
        elif data.endswith(b"\n"):
            data = data[:-1]
        if not data:
            raise ValueError(f"authkey file {authkey_file} is empty")
        return data
    value = (os.environ if env is None else env).get(ENV_AUTHKEY)
    return value.encode("utf-8") if value else None


def server_tls_context(certfile: str, keyfile: str | None = None) -> ssl.SSLContext:
    """A TLS context for the master from a certificate (and key) in PEM files."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(certfile, keyfile)
    return ctx


def client_tls_context(cafile: str | None = None, *, check_hostname: bool = True) -> ssl.SSLContext:
    """A TLS context for clients and workers; ``cafile`` trusts a private CA (or self-signed cert)."""
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=cafile)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.check_hostname = check_hostname
    return ctx
