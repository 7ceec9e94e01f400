"""When a pool's children are replaced, added or removed: recycling after N tasks or past a
memory limit, and autoscaling between MIN and MAX children.

The rules are pure functions of what the pool knows (``now``, its children and
its queue), tested without a clock; :mod:`.process_pool` applies them.

- **Recycling**: a child that has run ``max_tasks_per_child`` tasks, or whose
  resident memory (measured by the child itself after each task) is over
  ``max_memory_per_child`` MB, is asked to exit after the task that crossed the
  line (its ``on_child_exit`` hooks run) and a fresh child takes its place. A
  child is never sent more tasks than it has left.
- **Autoscaling** (:func:`autoscale_target`): while jobs wait and every child is
  busy, children are added at once, up to MAX; once some children have been
  idle for ``idle_after`` seconds (:data:`AUTOSCALE_IDLE` by default), one idle
  child is removed, and one more every ``idle_after`` seconds while children
  stay idle, down to MIN.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import argparse

__all__ = ["Lifecycle", "autoscale_target", "parse_autoscale", "rss_bytes", "add_lifecycle_arguments",
           "lifecycle_from_args",
           "AUTOSCALE_IDLE", "AUTOSCALE_TICK"]

#: Seconds children must have been idle before one is removed by autoscaling.
AUTOSCALE_IDLE = 30.0
#: How often (seconds) an autoscaling pool re-applies the rule when nothing else prompts it.
AUTOSCALE_TICK = 1.0


@dataclass(frozen=True, slots=True)
class Lifecycle:
    """A pool's recycling and scaling settings (None: off)."""

    max_tasks_per_child: int | None = None
    max_memory_per_child: int | None = None  # MB of resident memory
    autoscale: tuple[int, int] | None = None  # (minimum, maximum) children
    autoscale_idle: float = AUTOSCALE_IDLE

    def __post_init__(self) -> None:
        for name in ("max_tasks_per_child", "max_memory_per_child"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
                raise ValueError(f"{name} must be a positive integer, not {value!r}")
        if self.autoscale is not None:
            low, high = self.autoscale
            if not 1 <= low <= high:
                raise ValueError(f"autoscale needs 1 <= MIN <= MAX, not {low},{high}")
        if self.autoscale_idle <= 0:
            raise ValueError("autoscale_idle must be a positive number of seconds")

    @property
    def active(self) -> bool:
        """True if any setting is on."""
        return (self.max_tasks_per_child is not None or self.max_memory_per_child is not None
                or self.autoscale is not None)

    def tasks_left(self, done: int) -> int | None:
        """How many more tasks a child that ran ``done`` may take (None: no limit)."""
        if self.max_tasks_per_child is None:
            return None
        return max(0, self.max_tasks_per_child - done)

    def should_recycle(self, done: int, rss: int | None) -> str | None:
        """Why a child that ran ``done`` tasks and holds ``rss`` bytes must be replaced, or None."""
        if self.max_tasks_per_child is not None and done >= self.max_tasks_per_child:
            return f"it ran {done} task(s) (--max-tasks-per-child {self.max_tasks_per_child})"
        if self.max_memory_per_child is not None and rss is not None \
                and rss > self.max_memory_per_child * 1024 * 1024:
            return (f"it holds {rss / 1048576:.0f} MB "
                    f"(--max-memory-per-child {self.max_memory_per_child})")
        return None


def autoscale_target(now: float, *, children: int, busy: int, waiting: int,
                     idle_since: float | None, minimum: int, maximum: int,
                     idle_after: float = AUTOSCALE_IDLE) -> int:
    """How many children an autoscaling pool should have.

    ``children`` are running (started or starting), ``busy`` of them run a task,
    ``waiting`` jobs are queued and unstarted, and ``idle_since`` is when the pool
    last had no idle child, or last removed one (None: no child is idle).

    - Work waits and no child is free: grow to ``busy + waiting``, at most ``maximum``.
    - Some children have been idle ``idle_after`` seconds: one fewer, at least
      ``minimum`` and never below ``busy``.
    - Otherwise keep ``children``; always within ``[minimum, maximum]``.
    """
    target = children
    free = children - busy
    if waiting > free:
        target = max(children, min(maximum, busy + waiting))
    elif waiting == 0 and free > 0 and idle_since is not None and now - idle_since >= idle_after:
        target = max(busy, children - 1)
    return max(minimum, min(maximum, target))


def parse_autoscale(text: str) -> tuple[int, int]:
    """``"MIN,MAX"`` (or just ``"MAX"``, meaning ``1,MAX``) as two integers; ValueError
    with a one-line message otherwise."""
    parts = [p.strip() for p in text.split(",")]
    try:
        if len(parts) == 1:
            low, high = 1, int(parts[0])
        elif len(parts) == 2:
            low, high = int(parts[0]), int(parts[1])
        else:
            raise ValueError
    except ValueError:
        raise ValueError(f"--autoscale takes MIN,MAX (two integers), not {text!r}") from None
    if not 1 <= low <= high:
        raise ValueError(f"--autoscale needs 1 <= MIN <= MAX, not {text!r}")
    return low, high


def rss_bytes() -> int | None:
    """This process's resident memory now, in bytes (None where it cannot be read)."""
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        pass
    try:
        import resource  # the peak, where /proc is missing (macOS reports bytes, Linux KiB)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak if os.uname().sysname == "Darwin" else peak * 1024
    except (ImportError, OSError):
        return None


def lifecycle_from_args(args: argparse.Namespace) -> Lifecycle | None:
    """The settings of :func:`add_lifecycle_arguments`' flags (and ``--pool``), or None if
    none is given; ValueError with a one-line message naming the flag otherwise."""
    if args.max_tasks_per_child is None and args.max_memory_per_child is None and args.autoscale is None:
        return None
    try:
        autoscale = parse_autoscale(args.autoscale) if args.autoscale is not None else None
        lifecycle = Lifecycle(args.max_tasks_per_child, args.max_memory_per_child, autoscale,
                              args.autoscale_idle)
    except ValueError as exc:
        raise ValueError(str(exc).replace("max_tasks_per_child", "--max-tasks-per-child")
                         .replace("max_memory_per_child", "--max-memory-per-child")
                         .replace("autoscale_idle", "--autoscale-idle")) from None
    pool = getattr(args, "pool", "process")
    if pool == "thread":
        raise ValueError("--max-tasks-per-child, --max-memory-per-child and --autoscale need child "
                         "processes: use --pool process (or --pool asyncio for the first two)")
    if pool == "asyncio" and autoscale is not None:
        raise ValueError("--autoscale applies to --pool process (the asyncio pool runs one child)")
    return lifecycle


def add_lifecycle_arguments(parser: argparse.ArgumentParser) -> None:
    """The worker's pool lifecycle flags (process pool; the asyncio pool takes the
    recycling ones)."""
    parser.add_argument("--max-tasks-per-child", type=int, default=None, metavar="N",
                        help="replace a pool child after it ran N tasks")
    parser.add_argument("--max-memory-per-child", type=int, default=None, metavar="MB",
                        help="replace a pool child after the task that took its resident memory over MB")
    parser.add_argument("--autoscale", default=None, metavar="MIN,MAX",
                        help="process pool: run MIN to MAX children, adding them while work waits "
                             "and removing idle ones (overrides --concurrency)")
    parser.add_argument("--autoscale-idle", type=float, default=None, metavar="S",
                        help=f"seconds children stay idle before one is removed (default {AUTOSCALE_IDLE:g})")
