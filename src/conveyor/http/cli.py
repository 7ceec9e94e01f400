"""``conveyor dashboard``: the web dashboard and ``/metrics`` as their own process.

cli.py registers it with :func:`add_dashboard_command`; the helpers it passes
(authkey loading, bind parsing, TLS, the one-line error type) are the ones
every other command uses.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from collections.abc import Callable
from typing import Any

from ..auth import is_loopback
from ..errors import AuthenticationError, ConnectionLost
from .security import ENV_LOGIN, Guard, load_login_secret

DEFAULT_BIND = "127.0.0.1:7780"


def add_dashboard_command(sub: Any, add_connect: Callable[[argparse.ArgumentParser], None],
                          add_common: Callable[[argparse.ArgumentParser], None],
                          run: Callable[[argparse.Namespace], int]) -> None:
    """Add ``conveyor dashboard`` to the subcommands; ``run`` is called with its arguments."""
    p = sub.add_parser("dashboard", help="serve the web dashboard and /metrics for a master")
    add_connect(p)
    p.add_argument("--bind", "-b", default=DEFAULT_BIND,
                   help=f"HOST:PORT to serve on (default {DEFAULT_BIND}; a non-loopback address needs a login)")
    p.add_argument("--login-file", metavar="FILE",
                   help=f"password or token for the login, first line of FILE (default: ${ENV_LOGIN})")
    p.add_argument("--login-required", action="store_true",
                   help="ask for the login on loopback too (it is always asked elsewhere)")
    p.add_argument("--metrics-public", action="store_true", help="serve /metrics without the login")
    p.add_argument("--interval", type=float, default=2.0, help="seconds between status polls (default 2)")
    add_common(p)
    p.set_defaults(func=run)


def run_dashboard(args: argparse.Namespace, *, authkey: bytes | None, bind: tuple[str, int],
                  ssl_context: Any, error: type[Exception]) -> int:
    """Check the login rules and the authkey, then serve until SIGINT or SIGTERM.

    ``error`` is the CLI's one-line error type: a refusal is one line and exit 1.
    """
    try:
        from .app import build_app
        from .gateway import Gateway
    except ImportError as exc:
        raise error(f"the dashboard needs its extra: pip install 'conveyor[dashboard]' ({exc})") from None

    host, port = bind
    try:
        secret = load_login_secret(args.login_file)
    except (OSError, ValueError) as exc:
        raise error(f"cannot read login file: {exc}") from None
    if not is_loopback(host) and secret is None:
        raise error(f"refusing to serve on {host} without a login: pass --login-file or set {ENV_LOGIN} "
                    "(only loopback addresses may go without one)")
    if args.login_required and secret is None:
        raise error(f"--login-required needs a login: pass --login-file or set {ENV_LOGIN}")
    if args.interval <= 0:
        raise error("--interval must be positive")
    try:
        gateway = Gateway(args.connect or _default_address(), authkey,
                          timeout=max(args.connect_timeout, 1.0), ssl_context=ssl_context)
    except ValueError as exc:  # a malformed --connect or CONVEYOR_ADDRESS
        raise error(str(exc)) from None
    try:
        gateway.connect_now()
    except AuthenticationError:
        gateway.close()
        raise error(f"the master at {gateway.address} refused the authkey (check CONVEYOR_AUTHKEY "
                    "or --authkey-file)") from None
    except ConnectionLost as exc:
        logging.getLogger("conveyor.dashboard").warning("%s; serving anyway and retrying", exc)
    guard = Guard(secret, metrics_public=args.metrics_public)
    app = build_app(gateway, guard, interval=args.interval)
    return asyncio.run(_serve(app, host, port))


def _default_address() -> str:
    """Every master ``CONVEYOR_ADDRESS`` names (or the default), comma-separated: the
    dashboard's client fails over between them as any client does."""
    from ..client.client import resolve_addresses

    return ",".join(str(a) for a in resolve_addresses(None))


async def _serve(app: Any, host: str, port: int) -> int:
    from aiohttp import web

    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    bound = runner.addresses[0]
    print(f"dashboard listening on http://{host}:{bound[1]}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()
    print("dashboard stopped", file=sys.stderr)
    return 0
