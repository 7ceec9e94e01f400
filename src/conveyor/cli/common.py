"""What every ``conveyor`` command shares: the one-line error, the parser, connecting, confirming.

A command raises :class:`CliError` (or lets a ConveyorError through) and
``conveyor.cli.main`` prints it as one line with exit status 1: a user reads
a sentence, never a traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import TYPE_CHECKING, Any, NoReturn

from ..auth import ENV_AUTHKEY, client_tls_context, load_authkey
from ..config import ENV_ADDRESS
from ..link.address import DEFAULT_PORT, parse_address

if TYPE_CHECKING:
    import ssl

    from ..client.client import Client

EXIT_USAGE = 2
DEFAULT_ADDRESS = f"127.0.0.1:{DEFAULT_PORT}"
#: What a client without a key hears when the master wants one ("authentication failed" is a wrong key).
NO_AUTHKEY = f"no authkey configured (set {ENV_AUTHKEY} or --authkey-file)"


class CliError(Exception):
    """A user-facing failure: printed as one line, exit status 1."""


class Parser(argparse.ArgumentParser):
    """argparse with a one-line error instead of a usage dump."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def read_authkey(authkey_file: str | None) -> bytes | None:
    """The authkey from ``authkey_file`` or ``$CONVEYOR_AUTHKEY``; a bad file is a CliError."""
    try:
        return load_authkey(authkey_file)
    except (OSError, ValueError) as exc:
        raise CliError(f"cannot read authkey file: {exc}") from None


def add_common(p: argparse.ArgumentParser) -> None:
    """``--authkey-file`` and ``--log-level``; None when not given, so a config file may set them."""
    p.add_argument("--authkey-file", metavar="FILE",
                   help=f"read the authkey from FILE (default: the {ENV_AUTHKEY} environment variable)")
    p.add_argument("--log-level", default=None, choices=["DEBUG", "INFO", "WARNING", "ERROR"],
                   help="log verbosity (default INFO)")


def add_connect(p: argparse.ArgumentParser, timeout_flags: tuple[str, ...] = ("--connect-timeout", "--timeout"),
                timeout_default: float | None = 10.0,
                timeout_help: str = "seconds to wait for the master to answer (default 10)") -> None:
    """Where the master is; ``conveyor submit`` keeps ``--timeout`` for the task's own limit.

    The worker passes ``timeout_default=None`` so that its config file can set it.
    """
    p.add_argument("--connect", "-c", metavar="ADDRESS", default=None,
                   help="master address: host:port, a bare port (on 127.0.0.1), tcp://host:port or "
                        "tls://host:port; several masters of one cluster comma-separated (a:7700,b:7700), "
                        f"tried in turn (default: ${ENV_ADDRESS} or {DEFAULT_ADDRESS})")
    p.add_argument("--tls-ca", metavar="FILE", help="trust this CA (or self-signed) certificate for tls://")
    p.add_argument(*timeout_flags, dest="connect_timeout", type=float, default=timeout_default, metavar="S",
                   help=timeout_help)


def master_address(text: str | None) -> str:
    """The master address a user gave (or the environment's, or the default), checked.

    A bare port means that port on 127.0.0.1; anything that is not an address
    of ours is one line saying so, before any connection is tried.
    """
    given = (text or os.environ.get(ENV_ADDRESS) or DEFAULT_ADDRESS).strip()
    parts = []
    for part in given.split(","):  # several masters of one cluster: a,b (each checked alone)
        part = part.strip()
        if part.isdigit():
            part = f"127.0.0.1:{part}"
        try:
            parse_address(part)
        except ValueError as exc:
            if "://" in part and not part.startswith(("tcp://", "tls://")):
                raise CliError(f"{part!r} is not a conveyor address: use host:port, tcp://host:port "
                               "or tls://host:port") from None
            raise CliError(str(exc)) from None
        parts.append(part)
    return ",".join(parts)


def client_ssl(args: argparse.Namespace) -> ssl.SSLContext | None:
    """The TLS context for ``--tls-ca``, or None (plain TCP, or tls:// with the system's CAs)."""
    tls_ca = getattr(args, "tls_ca", None)
    try:
        return client_tls_context(tls_ca) if tls_ca else None
    except (OSError, ValueError) as exc:
        raise CliError(f"cannot load --tls-ca {tls_ca}: {exc}") from None


def connect(args: argparse.Namespace, **kw: Any) -> Client:
    """A client of the master the command's flags name; a refused key is told apart from a missing one."""
    from ..client.client import Client
    from ..errors import AuthenticationError

    authkey = read_authkey(args.authkey_file)
    timeout = args.connect_timeout if args.connect_timeout is not None else 10.0
    try:
        return Client(master_address(args.connect), authkey, ssl_context=client_ssl(args),
                      connect_timeout=timeout, **kw)
    except AuthenticationError:
        if not authkey:
            raise CliError(NO_AUTHKEY) from None
        raise


def setup_logging(level: str | None, fmt: str | None = None, file: str | None = None) -> None:
    """Log lines on stderr (or appended to ``file``), one per record, as text or json."""
    from ..logs import setup_logging as setup

    try:
        setup(level or "INFO", fmt or "text", file)
    except ValueError as exc:
        raise CliError(str(exc)) from None


def parse_bind(text: str) -> tuple[str, int]:
    """``HOST:PORT`` (or ``HOST``, or a bare ``PORT``) to listen on."""
    if text.isdigit():
        text = f"127.0.0.1:{text}"
    host, sep, port = text.rpartition(":")
    if not sep:
        host, port = text, str(DEFAULT_PORT)
    host = host.strip("[]") or "127.0.0.1"
    try:
        port_n = int(port)
        if not 0 <= port_n < 65536:
            raise ValueError
    except ValueError:
        raise CliError(f"invalid --bind {text!r}: expected HOST:PORT with a port from 0 to 65535") from None
    return host, port_n


def add_yes(p: argparse.ArgumentParser) -> None:
    """``--yes``: the confirmation a destructive command asks for, given in advance."""
    p.add_argument("--yes", "-y", action="store_true", help="do not ask for confirmation")


def confirm(action: str, count: int, yes: bool) -> bool:
    """Ask before a destructive command touches ``count`` tasks; True to go ahead.

    ``--yes`` answers in advance. Without a terminal on stdin nobody can
    answer, so the command refuses rather than guess.
    """
    if yes or count == 0:
        return True
    if not sys.stdin.isatty():
        raise CliError(f"{action} would touch {count} task(s): pass --yes to confirm "
                       "(stdin is not a terminal to ask on)")
    sys.stderr.write(f"{action}: {count} task(s). Go ahead? [y/N] ")
    sys.stderr.flush()
    answer = sys.stdin.readline().strip().lower()
    return answer in ("y", "yes")
