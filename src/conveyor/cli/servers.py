"""``conveyor master`` and ``conveyor worker``: the long-running processes, and their settings.

Their settings come from flags, environment variables and a TOML file
(conveyor/config.py), in that order; every flag here defaults to None so
that "not given" is told apart from "given the default".
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

from .. import __version__, loops, timing
from ..auth import ENV_AUTHKEY, is_loopback, server_tls_context
from ..config import (
    ENV_CONFIG,
    ENV_STORE,
    MASTER,
    WORKER,
    ConfigError,
    authkey_source,
    config_path,
    load_file,
    resolve,
)
from ..errors import AuthenticationError, StoreError
from ..logs import add_log_arguments
from ..serving import DataDirInUse, check_port_free, listen_error, lock_data_dir
from ..worker.lifecycle import add_lifecycle_arguments
from .common import (
    NO_AUTHKEY,
    CliError,
    add_common,
    add_connect,
    master_address,
    parse_bind,
    read_authkey,
    setup_logging,
)

log = logging.getLogger("conveyor.cli")


def settings(section: str, args: argparse.Namespace) -> argparse.Namespace:
    """The command's settings: flag > environment > config file > default, as a Namespace."""
    path = config_path(args.config)
    try:
        file = load_file(path).get(section, {}) if path else {}
    except ConfigError as exc:
        raise CliError(str(exc)) from None
    flags = {name: getattr(args, name, None) for name in (MASTER if section == "master" else WORKER)}
    if not flags.get("modules"):
        flags["modules"] = None  # no MODULE on the command line is [], not a value
    merged = resolve(section, flags, file)
    merged["authkey_file"] = authkey_source(args.authkey_file, file.get("authkey_file"))
    return argparse.Namespace(**{**vars(args), **merged})


def add_config(p: argparse.ArgumentParser) -> None:
    """``--config FILE``: the TOML file of settings."""
    p.add_argument("--config", metavar="FILE", default=None,
                   help=f"TOML file of settings, overridden by environment and flags (default: ${ENV_CONFIG})")


# -- master -----------------------------------------------------------------
_held_locks: list[Any] = []  # one master per data directory: held for the life of the process


def _lock_data_dir(data: str) -> bool:
    """Lock the data directory; False if its lock file cannot be made yet (see serving.lock_data_dir)."""
    try:
        handle = lock_data_dir(data)
    except DataDirInUse as exc:
        raise CliError(str(exc)) from None
    if handle is None:
        return False
    _held_locks.append(handle)
    return True


def cmd_master(args: argparse.Namespace) -> int:
    """Serve queues from a durable store until SIGTERM or SIGINT."""
    from ..master import Master
    from ..store import open_store

    # A store named by a flag beats one from the environment or the file (--store over --data).
    flagged = args.store or args.data
    args = settings("master", args)
    setup_logging(args.log_level, args.log_format, args.log_file)
    authkey = read_authkey(args.authkey_file)
    host, port = parse_bind(args.bind)
    if not is_loopback(host) and not authkey:
        raise CliError(f"refusing to listen on {host} without an authkey: set {ENV_AUTHKEY} "
                       "or pass --authkey-file (only loopback addresses may go without one)")
    if args.tls_key and not args.tls_cert:
        raise CliError("--tls-key needs --tls-cert")
    ssl_ctx = None
    if args.tls_cert:
        try:
            ssl_ctx = server_tls_context(args.tls_cert, args.tls_key)
        except (OSError, ValueError) as exc:
            raise CliError(f"cannot load TLS certificate: {exc}") from None
    try:  # before the data directory: a port in use is said as such, whatever the directory
        check_port_free(host, port)
    except OSError as exc:
        raise CliError(exc.strerror or str(exc)) from None
    from ..store.dsn import is_postgres, redact

    target: str = flagged or args.store or args.data
    data = None if target == ":memory:" else target
    on_disk = data is not None and not is_postgres(data)  # a database server needs no local lock
    shown = redact(target) if is_postgres(target) else target  # a password is never printed
    # The lock before the store: the store keeps its file locked, and a second master
    # must hear who holds the directory, not wait on SQLite's lock.
    locked = data is not None and on_disk and _lock_data_dir(data)
    if getattr(args, "check", False) and data is not None and on_disk:
        _thorough_check(data)
    try:
        store = open_store(data, sync=args.sync)
    except StoreError as exc:
        raise CliError(str(exc)) from None
    if data is not None and on_disk and not locked and not _lock_data_dir(data):
        raise CliError(f"cannot lock data directory {data}")

    async def run() -> None:
        master = Master(store, authkey=authkey, host=host, port=port, ssl_context=ssl_ctx,
                        lease_for=args.lease, heartbeat_timeout=args.heartbeat_timeout,
                        result_ttl=args.result_ttl, allow_pickle=args.pickle,
                        handshake_timeout=args.handshake_timeout,
                        max_frame_size=args.max_frame_size, frame_budget=args.frame_budget)
        try:
            await master.start()
        except OSError as exc:
            raise CliError(listen_error(host, port, exc)) from None
        except StoreError as exc:  # met by the recovery sweeps at start (a corrupt page, a full disk)
            await master.close()
            raise CliError(str(exc)) from None
        if not authkey:
            # Once it serves (a refusal stays one line): loopback only, but every local
            # user and process can then submit, and have workers run, tasks.
            log.warning("no authkey configured: any local process may connect and submit tasks "
                        "(set %s or --authkey-file)", ENV_AUTHKEY)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, lambda: asyncio.ensure_future(master.close()))
        print(f"conveyor master {__version__} listening on "
              f"{'tls' if ssl_ctx else 'tcp'}://{host}:{master.port} "
              f"(store: {shown}, sync: {args.sync})", flush=True)
        await master.serve_forever()
        if master.fatal is not None:  # a corrupt store met at run time: logged once, as it stopped
            stopped_on.append(master.fatal)
            return
        logging.getLogger("conveyor.master").info("master stopped")

    stopped_on: list[BaseException] = []
    try:
        loops.run(run())
    finally:
        store.close()
    if stopped_on:
        if args.log_file:  # the line went to the log file: stderr hears it too
            print(f"conveyor master: stopping: {stopped_on[0]}", file=sys.stderr, flush=True)
        return 1
    return 0


def _thorough_check(data: str) -> None:
    """``--check``: PRAGMA integrity_check of an existing store before it is opened; CliError if damaged."""
    from ..store.check import integrity_check, what_to_do
    from ..store.sqlite import DB_NAME

    path = os.path.join(data, DB_NAME)
    if not os.path.exists(path):
        return
    report = integrity_check(Path(path))
    if not report.ok:
        raise CliError(f"store at {path} is corrupt ({'; '.join(report.problems[:3])}): {what_to_do(data)}")
    log.info("store at %s passed integrity_check in %.1fs", path, report.seconds)


def add_master_command(sub: Any) -> None:
    """Register ``conveyor master``."""
    d = {s.name: s.default for s in MASTER.values()}
    p = sub.add_parser("master", help="run a master serving queues from a durable store")
    p.add_argument("--bind", "-b", help=f"HOST:PORT to listen on (default {d['bind']})")
    p.add_argument("--data", "-d",
                   help=f"data directory of the SQLite store (default ${ENV_STORE}, else ./conveyor-data; "
                        "':memory:' keeps nothing)")
    p.add_argument("--store", metavar="URL|DIR",
                   help="the store: postgresql://USER@HOST:PORT/DB for PostgreSQL (needs conveyor[postgres]), "
                        f"a directory for SQLite, or ':memory:'; wins over --data (default ${ENV_STORE})")
    p.add_argument("--sync", choices=["normal", "full"],
                   help="normal (default): a commit survives a killed master; full: also fsync, surviving power loss")
    p.add_argument("--tls-cert", metavar="FILE", help="serve TLS with this PEM certificate (chain)")
    p.add_argument("--tls-key", metavar="FILE", help="the certificate's PEM private key")
    p.add_argument("--heartbeat-timeout", type=float,
                   help=f"seconds of silence after which a worker is presumed dead (default {d['heartbeat_timeout']:g})")
    p.add_argument("--handshake-timeout", type=float,
                   help=f"seconds a new connection has to authenticate (default {d['handshake_timeout']:g})")
    p.add_argument("--lease", type=float,
                   help=f"lease length in seconds, extended while the worker lives (default {d['lease']:g})")
    p.add_argument("--result-ttl", type=float, help="seconds results are kept (default 86400, 24 h)")
    p.add_argument("--max-frame-size", type=int, help="largest frame accepted, in bytes (default 64 MiB)")
    p.add_argument("--frame-budget", type=int,
                   help="bytes of partly received frames all connections may hold; a frame that does not fit "
                        "waits (default 64 MiB)")
    p.add_argument("--pickle", action="store_true", default=None,
                   help="accept pickled payloads (trusted networks only)")
    p.add_argument("--check", action="store_true", default=False,
                   help="check the whole store (PRAGMA integrity_check: reads every page) before serving; "
                        "without it the start runs a quick check bounded in time")
    add_config(p)
    add_common(p)
    add_log_arguments(p)
    p.set_defaults(func=cmd_master)


# -- worker -----------------------------------------------------------------
def parse_queues(text: str | list[str]) -> tuple[list[str], list[int] | None]:
    """``"a,b"`` (served in order) or ``"a:3,b:1"`` (weighted): names and weights.

    A config file may give the same as a list: ``["a:3", "b:1"]``.
    """
    if isinstance(text, list):
        text = ",".join(text)
    names, weights = [], []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        name, sep, weight = part.partition(":")
        if not name:
            raise CliError(f"invalid --queues entry {part!r}")
        names.append(name)
        if sep:
            try:
                weights.append(int(weight))
                if weights[-1] < 1:
                    raise ValueError
            except ValueError:
                raise CliError(f"invalid weight in --queues entry {part!r}: use NAME:N with N >= 1") from None
    if not names:
        raise CliError("--queues needs at least one queue name")
    if weights and len(weights) != len(names):
        raise CliError("--queues: give a weight to every queue (a:3,b:1) or to none (a,b)")
    return names, weights or None


def _reach_master(address: str, authkey: bytes | None, timeout: float, ssl_context: Any) -> None:
    """Keep trying to reach the master for ``--connect-timeout`` seconds, as the flag's help says.

    A master started at the same moment is waited for; none after that long
    is one line and exit 1. Once the worker has started it reconnects for as
    long as it runs (a master restart must not stop the fleet): only the
    first contact is bounded.
    """
    from ..client.client import Client
    from ..errors import ConnectionLost

    deadline = time.monotonic() + timeout
    delay = timing.FIRST_CONNECT_FIRST
    while True:
        try:
            Client(address, authkey, ssl_context=ssl_context,
                   connect_timeout=max(deadline - time.monotonic(), 0.1),
                   name=f"worker-probe-{os.getpid()}").close()
            return
        except AuthenticationError:
            if not authkey:
                raise CliError(NO_AUTHKEY) from None
            raise
        except ConnectionLost as exc:
            left = deadline - time.monotonic()
            if left <= 0:
                raise CliError(f"{exc} (gave up after --connect-timeout {timeout:g}s)") from None
            pause = min(delay, left)
            log.warning("%s; retrying in %.1fs", exc, pause)
            time.sleep(pause)
            delay = timing.next_backoff(delay, maximum=timing.FIRST_CONNECT_MAX)


def cmd_worker(args: argparse.Namespace) -> int:
    """Run tasks from the given modules for a master until SIGTERM or SIGINT."""
    from ..hooks import HookFailed
    from ..worker.lifecycle import lifecycle_from_args
    from ..worker.pool import PoolStartError
    from ..worker.worker import Worker
    from .common import client_ssl

    args = settings("worker", args)
    setup_logging(args.log_level, args.log_format, args.log_file)
    try:
        lifecycle = lifecycle_from_args(args)
    except ValueError as exc:
        raise CliError(str(exc)) from None
    if not args.modules:
        raise CliError("give the MODULE(s) of tasks to run, on the command line or as modules in [worker]")
    queues, weights = parse_queues(args.queues)
    if args.concurrency is not None and args.concurrency < 1:
        raise CliError("--concurrency must be at least 1")
    if args.prefetch is not None and args.prefetch < 1:
        raise CliError("--prefetch must be at least 1")
    if args.connect_timeout <= 0:
        raise CliError("--connect-timeout must be positive")
    if "" not in sys.path:
        sys.path.insert(0, "")  # the current directory is importable, as users expect
    from ..tasks import Registry

    try:
        Registry.from_modules(args.modules)
    except Exception as exc:
        raise CliError(f"cannot import task module: {type(exc).__name__}: {exc}") from None
    address = master_address(args.connect)
    authkey = read_authkey(args.authkey_file)
    ssl_context = client_ssl(args)
    _reach_master(address, authkey, args.connect_timeout, ssl_context)
    worker = Worker(args.modules, address, authkey, queues=queues, weights=weights,
                    concurrency=args.concurrency, pool=args.pool, prefetch=args.prefetch,
                    allow_pickle=args.pickle, ssl_context=ssl_context, name=args.name,
                    lifecycle=lifecycle)
    try:
        worker.run()
    except (HookFailed, PoolStartError) as exc:
        raise CliError(str(exc)) from None
    return 0


def add_worker_command(sub: Any) -> None:
    """Register ``conveyor worker``."""
    p = sub.add_parser("worker", help="run tasks from MODULE(s) for a master")
    p.add_argument("modules", nargs="*", metavar="MODULE",
                   help="modules whose functions this worker may run (or modules = [...] in the config file)")
    add_connect(p, timeout_default=None,
                timeout_help="seconds to keep trying to reach the master at start-up before giving up "
                             "(default 10); once it has served, the worker reconnects for as long as it runs")
    p.add_argument("--concurrency", "-n", type=int, help="parallel tasks (default: CPU count)")
    p.add_argument("--pool", choices=["process", "thread", "asyncio"],
                   help="where tasks run (default process; asyncio: async def tasks, --concurrency of them "
                        "at once in one child process)")
    p.add_argument("--queues", "-q", help="comma-separated queues, served in this order; "
                   "or weighted, e.g. high:3,low:1 (default: default)")
    p.add_argument("--prefetch", type=int, help="fixed credit window (default: adaptive)")
    p.add_argument("--name", help="worker name shown in status (default host-pid)")
    p.add_argument("--pickle", action="store_true", default=None, help="run pickled payloads (trusted networks only)")
    add_config(p)
    add_common(p)
    add_log_arguments(p)
    add_lifecycle_arguments(p)
    p.set_defaults(func=cmd_worker)
