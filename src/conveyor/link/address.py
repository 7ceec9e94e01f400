"""Master addresses: where a link connects, and how a user may write one.

A link is given one address or a list of them (``parse_addresses``), as a
list or as one comma-separated string (``"a:7700,b:7700"``); the reconnect
plan (link/policy.py) tries them in turn and moves to the next one when a
connection is lost. A host name that resolves to several addresses is tried
address by address by the link's edges (``connect_order``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeGuard

#: The port a bare ``host`` means.
DEFAULT_PORT = 7700


@dataclass(frozen=True, slots=True)
class Address:
    """A master's address: host, port and whether to speak TLS."""

    host: str
    port: int
    tls: bool = False

    def __str__(self) -> str:
        return f"{'tls' if self.tls else 'tcp'}://{self.host}:{self.port}"


#: What a user may pass for one address.
AddressLike = str | tuple[str, int] | Address
#: What a user may pass for the masters a link may connect to: one address or a list.
AddressesLike = AddressLike | Sequence[AddressLike]


def parse_address(address: AddressLike, default_port: int = DEFAULT_PORT) -> Address:
    """Parse ``host:port``, ``tcp://host:port``, ``tls://host:port`` or a (host, port) tuple."""
    if isinstance(address, Address):
        return address
    if isinstance(address, tuple):
        host, port = address
        return Address(host or "127.0.0.1", int(port))
    if not isinstance(address, str) or not address:
        raise ValueError(f"invalid address {address!r}: expected host:port")
    tls = False
    text = address
    if "://" in text:
        scheme, text = text.split("://", 1)
        if scheme not in ("tcp", "tls"):
            raise ValueError(f"invalid address {address!r}: scheme must be tcp:// or tls://")
        tls = scheme == "tls"
    if text.startswith("["):  # [ipv6]:port
        host, _, rest = text[1:].partition("]")
        port_text = rest.lstrip(":")
    else:
        host, sep, port_text = text.rpartition(":")
        if not sep:
            host, port_text = text, str(default_port)
    try:
        port = int(port_text)
        if not 0 < port < 65536:
            raise ValueError
    except ValueError:
        raise ValueError(f"invalid address {address!r}: port must be a number from 1 to 65535") from None
    return Address(host or "127.0.0.1", port, tls)


def parse_addresses(addresses: AddressesLike, default_port: int = DEFAULT_PORT) -> tuple[Address, ...]:
    """One address, or a non-empty list of them, as a tuple of Address in the order given.

    A ``(host, port)`` tuple is one address; a list (or a tuple of addresses)
    is several, and so is a string of comma-separated ones (``"a:7700,b:7700"``).
    """
    if isinstance(addresses, Address):
        return (addresses,)
    if isinstance(addresses, str):
        parts = [part.strip() for part in addresses.split(",")]
        if len(parts) > 1 and not all(parts):
            raise ValueError(f"invalid address list {addresses!r}: an empty entry between commas")
        return tuple(parse_address(part, default_port) for part in parts)
    if _is_host_port(addresses):
        return (parse_address((addresses[0], addresses[1]), default_port),)
    # (TypeGuard cannot tell mypy that a host-port tuple is gone by now.)
    parsed = tuple(parse_address(a, default_port) for a in addresses)  # type: ignore[arg-type]
    if not parsed:
        raise ValueError("no master address given")
    return parsed


def _is_host_port(value: object) -> TypeGuard[tuple[str, int]]:
    return (isinstance(value, tuple) and len(value) == 2 and isinstance(value[0], str)
            and isinstance(value[1], int))


def connect_order(resolved: Sequence[str], avoid: str | None) -> list[str]:
    """The resolved IP addresses of one master name in the order to try them: as the
    resolver gave them (duplicates dropped), but ``avoid`` (the one whose connection
    was just lost) last, so that a name with several addresses fails over too."""
    order = list(dict.fromkeys(resolved))
    if avoid in order and len(order) > 1:
        order.remove(avoid)
        order.append(avoid)
    return order
