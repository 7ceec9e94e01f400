"""How long a process pool child takes from spawn to ready-for-work.

Starts a pool child (``spawn``, as the process pool starts them) with a
trivial task module, times ``Process.start()`` until the child's "ready"
message arrives, asks it to exit, and repeats; prints the median and the
spread. Runs on trees before and after the pool split (the child's entry
point moved from ``conveyor.worker.pool`` to ``conveyor.worker.child``), so
the two can be compared on one machine::

    .venv/bin/python bench/child_start.py [--runs 20] [--entry asyncio]

``--entry asyncio`` times the asyncio pool's child instead. Also prints the
conveyor modules a child has imported once ready (with ``--modules``).
``--bare-package`` stands in an empty ``conveyor`` package for
``conveyor/__init__.py`` in the child (as a lazy ``__init__`` would be), to
time the child's own import chain apart from the package's public names.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # noop_tasks, in children too


def _entry(kind: str):
    """The child main function of this tree, and the arguments it takes after the pipe."""
    if kind == "asyncio":
        from conveyor.worker.async_child import _async_child_main

        return _async_child_main, (["noop_tasks"], False)
    try:
        from conveyor.worker.child import _child_main
    except ImportError:  # the tree before the split
        from conveyor.worker.pool import _child_main
    return _child_main, (["noop_tasks"], False)


def _bare_package() -> None:
    """Register ``conveyor`` as an empty package, so its submodules import without its __init__."""
    import importlib.util
    import types

    spec = importlib.util.find_spec("conveyor")
    module = types.ModuleType("conveyor")
    module.__path__ = list(spec.submodule_search_locations)
    sys.modules["conveyor"] = module


def _bare_child(conn, kind):  # pragma: no cover - runs in a child
    """The real child main, imported under an empty ``conveyor`` package."""
    _bare_package()
    target, args = _entry(kind)
    target(conn, *args)


def _report_modules(conn, kind, bare):  # pragma: no cover - runs in a child
    """A child that imports what the real one does, then sends its sys.modules."""
    import json

    if bare:
        _bare_package()
    _entry(kind)  # import the entry module as the real child does
    conn.send_bytes(json.dumps(sorted(sys.modules)).encode())


def spawn_once(ctx, target, args) -> float:
    """Seconds from start() to the child's ready message."""
    from conveyor import serde

    parent, child = ctx.Pipe(duplex=True)
    proc = ctx.Process(target=target, args=(child, *args))
    started = time.perf_counter()
    proc.start()
    child.close()
    kind, _ = serde.unpackb(parent.recv_bytes())
    elapsed = time.perf_counter() - started
    assert kind == "ready", kind
    parent.send_bytes(b"")  # stop
    proc.join(10)
    if proc.exitcode is None:
        proc.kill()
        proc.join()
    parent.close()
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--entry", choices=["process", "asyncio"], default="process")
    parser.add_argument("--modules", action="store_true", help="list the modules a child imported")
    parser.add_argument("--bare-package", action="store_true",
                        help="import the child's modules without conveyor/__init__.py")
    args = parser.parse_args()
    ctx = multiprocessing.get_context("spawn")
    if args.bare_package:
        target, targs = _bare_child, (args.entry,)
    else:
        target, targs = _entry(args.entry)
    spawn_once(ctx, target, targs)  # warm the page cache
    times = sorted(spawn_once(ctx, target, targs) for _ in range(args.runs))
    ms = [t * 1000 for t in times]
    label = " (empty conveyor package)" if args.bare_package else ""
    print(f"{args.entry} pool child{label}, spawn to ready, {args.runs} runs: median {statistics.median(ms):.1f} ms "
          f"(min {ms[0]:.1f}, max {ms[-1]:.1f})")
    if args.modules:
        parent, child = ctx.Pipe(duplex=True)
        proc = ctx.Process(target=_report_modules, args=(child, args.entry, args.bare_package))
        proc.start()
        child.close()
        import json

        names = json.loads(parent.recv_bytes())
        proc.join()
        heavy = [n for n in names if n.split(".")[0] in
                 ("asyncio", "uvloop", "tqdm", "croniter", "sqlite3", "ssl")
                 or n.startswith(("conveyor.client", "conveyor.store", "conveyor.master"))]
        print(f"{len(names)} modules; conveyor: {', '.join(n for n in names if n.startswith('conveyor'))}")
        print(f"heavy ones: {', '.join(heavy) or 'none'}")


if __name__ == "__main__":
    main()
