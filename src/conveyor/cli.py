"""The ``conveyor`` command: master, worker, status, submit, demo — thin over the library."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import sys
from typing import TYPE_CHECKING, Any, NoReturn

from . import __version__, loops
from .auth import ENV_AUTHKEY, client_tls_context, is_loopback, load_authkey, server_tls_context
from .errors import ConveyorError, StoreError

if TYPE_CHECKING:
    import ssl

    from .client.client import Client
    from .worker.lifecycle import Lifecycle

EXIT_USAGE = 2


class CliError(Exception):
    """A user-facing failure: printed as one line, exit status 1."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # one line, not a usage dump
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _authkey(args: argparse.Namespace) -> bytes | None:
    try:
        return load_authkey(args.authkey_file)
    except (OSError, ValueError) as exc:
        raise CliError(f"cannot read authkey file: {exc}") from None


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--authkey-file", metavar="FILE",
                   help=f"read the authkey from FILE (default: the {ENV_AUTHKEY} environment variable)")
    p.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"],
                   help="log verbosity (default INFO)")


def _add_connect(p: argparse.ArgumentParser, timeout_flags: tuple[str, ...] = ("--timeout", "--connect-timeout"),
                 ) -> None:
    """Where the master is; ``conveyor submit`` keeps ``--timeout`` for the task's own limit."""
    p.add_argument("--connect", "-c", metavar="ADDRESS", default=None,
                   help="master address: host:port, tcp://host:port or tls://host:port "
                        "(default: $CONVEYOR_ADDRESS or 127.0.0.1:7700)")
    p.add_argument("--tls-ca", metavar="FILE", help="trust this CA (or self-signed) certificate for tls://")
    p.add_argument(*timeout_flags, dest="connect_timeout", type=float, default=10.0, metavar="S",
                   help="seconds to wait for the master (default 10)")


def _client_ssl(args: argparse.Namespace) -> ssl.SSLContext | None:
    return client_tls_context(args.tls_ca) if args.tls_ca else None


def _setup_logging(level: str, fmt: str = "text", file: str | None = None) -> None:
    from .logs import setup_logging

    try:
        setup_logging(level, fmt, file)
    except ValueError as exc:
        raise CliError(str(exc)) from None


def _parse_bind(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep:
        host, port = text, "7700"
    host = host.strip("[]") or "127.0.0.1"
    try:
        port_n = int(port)
        if not 0 <= port_n < 65536:
            raise ValueError
    except ValueError:
        raise CliError(f"invalid --bind {text!r}: expected HOST:PORT") from None
    return host, port_n


# -- master -----------------------------------------------------------------
_held_locks: list[Any] = []


def _lock_data_dir(data: str) -> bool:
    """One master per data directory: a second would void the first one's leases.

    False if the lock file cannot be made yet (no directory, or not writable):
    opening the store then says why, or makes the directory for a second try.
    """
    import fcntl

    path = os.path.join(data, "master.lock")
    try:
        handle = open(path, "a+")  # noqa: SIM115 - held open for the life of the process
    except OSError:
        return False
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.seek(0)
        owner = handle.read().strip() or "another process"
        handle.close()
        raise CliError(f"data directory {data} is in use by another master (pid {owner})") from None
    handle.seek(0)
    handle.truncate()
    handle.write(str(os.getpid()))
    handle.flush()
    _held_locks.append(handle)
    return True


def cmd_master(args: argparse.Namespace) -> int:
    from .master import Master
    from .store import open_store

    _setup_logging(args.log_level, args.log_format, args.log_file)
    authkey = _authkey(args)
    host, port = _parse_bind(args.bind)
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
    data = None if args.data == ":memory:" else args.data
    # The lock before the store: the store keeps its file locked, and a second master
    # must hear who holds the directory, not wait on SQLite's lock.
    locked = data is not None and _lock_data_dir(data)
    try:
        store = open_store(data, sync=args.sync)
    except StoreError as exc:
        raise CliError(str(exc)) from None
    if data is not None and not locked and not _lock_data_dir(data):
        raise CliError(f"cannot lock data directory {data}")

    async def run() -> None:
        master = Master(store, authkey=authkey, host=host, port=port, ssl_context=ssl_ctx,
                        lease_for=args.lease, heartbeat_timeout=args.heartbeat_timeout,
                        result_ttl=args.result_ttl, allow_pickle=args.pickle,
                        handshake_timeout=args.handshake_timeout,
                        max_frame_size=args.max_frame_size)
        try:
            await master.start()
        except OSError as exc:
            raise CliError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, lambda: asyncio.ensure_future(master.close()))
        print(f"conveyor master {__version__} listening on "
              f"{'tls' if ssl_ctx else 'tcp'}://{host}:{master.port} "
              f"(store: {args.data}, sync: {args.sync})", flush=True)
        await master.serve_forever()
        logging.getLogger("conveyor.master").info("master stopped")

    try:
        loops.run(run())
    finally:
        store.close()
    return 0


# -- worker -----------------------------------------------------------------
def parse_queues(text: str) -> tuple[list[str], list[int] | None]:
    """``"a,b"`` (served in order) or ``"a:3,b:1"`` (weighted): names and weights."""
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


def cmd_worker(args: argparse.Namespace) -> int:
    from .hooks import HookFailed
    from .worker.pool import PoolStartError
    from .worker.worker import Worker

    _setup_logging(args.log_level, args.log_format, args.log_file)
    lifecycle = _lifecycle(args)
    queues, weights = parse_queues(args.queues)
    if args.concurrency is not None and args.concurrency < 1:
        raise CliError("--concurrency must be at least 1")
    if args.prefetch is not None and args.prefetch < 1:
        raise CliError("--prefetch must be at least 1")
    if "" not in sys.path:
        sys.path.insert(0, "")  # the current directory is importable, as users expect
    from .tasks import Registry

    try:
        Registry.from_modules(args.modules)
    except Exception as exc:
        raise CliError(f"cannot import task module: {type(exc).__name__}: {exc}") from None
    worker = Worker(args.modules, args.connect or os.environ.get("CONVEYOR_ADDRESS") or "127.0.0.1:7700",
                    _authkey(args), queues=queues, weights=weights, concurrency=args.concurrency,
                    pool=args.pool,
                    prefetch=args.prefetch, allow_pickle=args.pickle, ssl_context=_client_ssl(args),
                    name=args.name, lifecycle=lifecycle)
    try:
        worker.run()
    except (HookFailed, PoolStartError) as exc:
        raise CliError(str(exc)) from None
    return 0


def _lifecycle(args: argparse.Namespace) -> Lifecycle | None:
    """The worker's recycling and autoscaling settings from its flags, or a one-line CliError."""
    from .worker.lifecycle import lifecycle_from_args

    try:
        return lifecycle_from_args(args)
    except ValueError as exc:
        raise CliError(str(exc)) from None


# -- status -----------------------------------------------------------------
def _connect(args: argparse.Namespace, **kw: Any) -> Client:
    from .client.client import Client

    return Client(args.connect, _authkey(args), ssl_context=_client_ssl(args),
                  connect_timeout=args.connect_timeout, **kw)


def format_status(st: dict[str, Any]) -> str:
    """The status document as the table ``conveyor status`` prints."""
    lines = [f"master {st['version']} pid {st['pid']} up {st['uptime']:.0f}s, store {st['store']}, "
             f"loop {st.get('loop', '?')}, "
             f"{st['clients']} client(s), {len(st['workers'])} worker(s)"]
    cols = ["ready", "delayed", "leased", "succeeded", "failed", "dead", "cancelled"]
    lines.append("")
    lines.append(f"{'QUEUE':<20}" + "".join(f"{c.upper():>11}" for c in cols))
    if not st["queues"]:
        lines.append("(no queues yet)")
    for q, counts in st["queues"].items():
        lines.append(f"{q:<20}" + "".join(f"{counts.get(c, 0):>11}" for c in cols))
    lines.append("")
    lines.append(f"{'WORKER':<28}{'HOST':<20}{'PID':>8}{'CONC':>6}{'INFLIGHT':>10}  QUEUES")
    if not st["workers"]:
        lines.append("(no workers connected)")
    for w in st["workers"]:
        lines.append(f"{w['name'][:27]:<28}{w['host'][:19]:<20}{w['pid'] or '-':>8}{w['concurrency']:>6}"
                     f"{w['inflight']:>10}  {','.join(w['queues'])}")
    rates = st["rates"]
    c = st["counters"]
    lines.append("")
    lines.append(f"completed/s: {rates['completed_10s']} (10s), {rates['completed_60s']} (60s); "
                 f"submitted {c.get('submitted', 0)}, completed {c.get('completed', 0)}, "
                 f"duplicate results dropped {c.get('duplicates', 0)}, stale reports {c.get('stale', 0)}")
    return "\n".join(lines)


def cmd_status(args: argparse.Namespace) -> int:
    with _connect(args) as client:
        st = client.status()
    print(json.dumps(st, indent=2) if args.json else format_status(st))
    return 0


# -- submit -----------------------------------------------------------------
def _parse_arg(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


def _split_call(words: list[str]) -> tuple[list[Any], dict[str, Any]]:
    """A task's arguments from the command line: ``name=value`` is a keyword argument,
    anything else positional; values are JSON where they parse (``'"a=b"'`` is the string)."""
    args: list[Any] = []
    kwargs: dict[str, Any] = {}
    for word in words:
        name, sep, value = word.partition("=")
        if sep and name.isidentifier():
            kwargs[name] = _parse_arg(value)
        elif kwargs:
            raise CliError(f"positional argument {word!r} follows keyword arguments")
        else:
            args.append(_parse_arg(word))
    return args, kwargs


def _add_submit_options(p: argparse.ArgumentParser) -> None:
    """One flag per option of conveyor.options: the CLI can pass whatever Python can."""
    from .options import OPTIONS

    for opt in OPTIONS.values():
        flag = "--" + opt.name.replace("_", "-")
        names = [flag, "-q"] if opt.name == "queue" else [flag]
        if opt.cli_action == "flag":
            p.add_argument(*names, dest=opt.name, action="store_true", default=None, help=opt.help)
        elif opt.cli_action == "bool":
            p.add_argument(*names, dest=opt.name, action=argparse.BooleanOptionalAction, default=None,
                           help=opt.help)
        else:
            p.add_argument(*names, dest=opt.name, type=_cli_value(opt.name, opt.cli_type), default=None,
                           action=opt.cli_action or "store", metavar=opt.metavar, help=opt.help)


def _cli_value(name: str, parse: Any) -> Any:
    """Wrap an option's text parser so a bad value is argparse's one-line error naming the flag."""
    def convert(text: str) -> Any:
        try:
            return parse(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
    convert.__name__ = name  # argparse names the type in its message
    return convert


def cmd_submit(args: argparse.Namespace) -> int:
    from .errors import TaskError
    from .options import OPTIONS

    values, kwargs = _split_call(args.args)
    options = {name: getattr(args, name) for name in OPTIONS if getattr(args, name, None) is not None}
    with _connect(args) as client:
        try:
            fut = client.submit_call(args.task, values, kwargs, **options)
        except (ValueError, TypeError) as exc:
            raise CliError(str(exc)) from None
        if not args.wait:
            print(fut.task_id)
            return 0
        try:
            value = fut.result(args.wait_timeout)
        except TaskError as exc:
            print(f"{fut.task_id} failed: {exc.type_name}: {exc.message}", file=sys.stderr)
            return 1
        except TimeoutError:
            raise CliError(f"no result for {fut.task_id} within {args.wait_timeout}s") from None
        print(json.dumps(value) if not isinstance(value, bytes) else repr(value))
    return 0


# -- demo -------------------------------------------------------------------
def cmd_demo(args: argparse.Namespace) -> int:
    from .demo_run import run_demo

    return run_demo(tasks=args.tasks, workers=args.workers, concurrency=args.concurrency,
                    data=args.data, sync=args.sync)


# -- dashboard --------------------------------------------------------------
def cmd_dashboard(args: argparse.Namespace) -> int:
    """``conveyor dashboard``: conveyor/http/cli.py does the work."""
    from .http.cli import run_dashboard

    _setup_logging(args.log_level)
    return run_dashboard(args, authkey=_authkey(args), bind=_parse_bind(args.bind),
                         ssl_context=_client_ssl(args), error=CliError)


# -- parser -----------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    from .logs import add_log_arguments
    from .worker.lifecycle import add_lifecycle_arguments

    parser = _Parser(prog="conveyor", description="A durable distributed task queue: master, workers, clients.")
    parser.add_argument("--version", action="version", version=f"conveyor {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    p = sub.add_parser("master", help="run a master serving queues from a durable store")
    p.add_argument("--bind", "-b", default="127.0.0.1:7700", help="HOST:PORT to listen on (default 127.0.0.1:7700)")
    p.add_argument("--data", "-d", default="conveyor-data",
                   help="data directory of the SQLite store (default ./conveyor-data; ':memory:' keeps nothing)")
    p.add_argument("--sync", choices=["normal", "full"], default="normal",
                   help="normal: a commit survives a killed master; full: also fsync, surviving power loss")
    p.add_argument("--tls-cert", metavar="FILE", help="serve TLS with this PEM certificate (chain)")
    p.add_argument("--tls-key", metavar="FILE", help="the certificate's PEM private key")
    p.add_argument("--heartbeat-timeout", type=float, default=15.0,
                   help="seconds of silence after which a worker is presumed dead (default 15)")
    p.add_argument("--handshake-timeout", type=float, default=10.0,
                   help="seconds a new connection has to authenticate (default 10)")
    p.add_argument("--lease", type=float, default=60.0, help="lease length in seconds, extended while the worker lives")
    p.add_argument("--result-ttl", type=float, default=86400.0, help="seconds results are kept (default 24 h)")
    p.add_argument("--max-frame-size", type=int, default=64 * 1024 * 1024, help="largest frame accepted, in bytes")
    p.add_argument("--pickle", action="store_true", help="accept pickled payloads (trusted networks only)")
    _add_common(p)
    add_log_arguments(p)
    p.set_defaults(func=cmd_master)

    p = sub.add_parser("worker", help="run tasks from MODULE(s) for a master")
    p.add_argument("modules", nargs="+", metavar="MODULE", help="modules whose functions this worker may run")
    _add_connect(p)
    p.add_argument("--concurrency", "-n", type=int, default=None, help="parallel tasks (default: CPU count)")
    p.add_argument("--pool", choices=["process", "thread", "asyncio"], default="process", help="where tasks run (default process; asyncio: async def tasks, --concurrency of them at once in one child process)")
    p.add_argument("--queues", "-q", default="default", help="comma-separated queues, served in this order; "
                   "or weighted, e.g. high:3,low:1")
    p.add_argument("--prefetch", type=int, default=None, help="fixed credit window (default: adaptive)")
    p.add_argument("--name", default=None, help="worker name shown in status (default host-pid)")
    p.add_argument("--pickle", action="store_true", help="run pickled payloads (trusted networks only)")
    _add_common(p)
    add_log_arguments(p)
    add_lifecycle_arguments(p)
    p.set_defaults(func=cmd_worker)

    p = sub.add_parser("status", help="show queues, workers and rates")
    _add_connect(p)
    p.add_argument("--json", action="store_true", help="print the raw status document as JSON")
    _add_common(p)
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("submit", help="submit MODULE:FUNC with arguments (JSON where they parse)")
    p.add_argument("task", metavar="MODULE:FUNC")
    p.add_argument("args", nargs="*", metavar="ARG",
                   help="positional arguments, then NAME=VALUE keyword arguments (JSON where they parse)")
    _add_connect(p, ("--connect-timeout",))
    _add_submit_options(p)
    p.add_argument("--wait", "-w", action="store_true", help="wait for the result and print it as JSON")
    p.add_argument("--wait-timeout", type=float, default=None, help="give up waiting after this many seconds")
    _add_common(p)
    p.set_defaults(func=cmd_submit)

    from .cli_jobs import add_job_commands

    add_job_commands(sub, _add_connect, _add_common, _connect, CliError)

    from .cli_schedule import add_schedule_commands  # conveyor schedule add|list|remove

    add_schedule_commands(sub, _add_connect, _add_common, _connect, CliError)

    from .http.cli import add_dashboard_command  # conveyor dashboard

    add_dashboard_command(sub, _add_connect, _add_common, cmd_dashboard)

    p = sub.add_parser("demo", help="start a master and workers, square 10,000 numbers, print a summary")
    p.add_argument("--tasks", type=int, default=10_000, help="how many tasks (default 10000)")
    p.add_argument("--workers", type=int, default=2, help="worker processes (default 2)")
    p.add_argument("--concurrency", type=int, default=None, help="slots per worker (default: CPU count)")
    p.add_argument("--data", default=None, help="data directory (default: a temporary one)")
    p.add_argument("--sync", choices=["normal", "full"], default="normal")
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``conveyor`` command."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return EXIT_USAGE
    prog = f"conveyor {args.command}"
    try:
        return args.func(args) or 0
    except CliError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 1
    except ConveyorError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
