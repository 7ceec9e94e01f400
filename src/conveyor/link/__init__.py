"""The link to a master: addresses, the opening sequence, reconnecting, liveness.

One sequence — connect, TLS, HMAC handshake, HELLO, reconnect with backoff —
used by the sync client, the asyncio client and the worker:

- ``address``  — ``Address`` and parsing one address or a list of them.
- ``opening``  — the handshake and HELLO, sans-IO (``Opening``).
- ``policy``   — reconnect plan and backoff, failure kinds, ping/silence rules.
- ``state``    — ``LinkState``: settings and requests kept across reconnects.
- ``aio``      — ``AsyncLink``, the asyncio edge (asyncio client, worker).
- ``blocking`` — ``BlockingLink``, the blocking-socket edge (sync client).

Only the names below are loaded here; the edges are imported from their modules.
"""

from .address import Address, AddressesLike, AddressLike, parse_address, parse_addresses

__all__ = ["Address", "AddressLike", "AddressesLike", "parse_address", "parse_addresses"]
