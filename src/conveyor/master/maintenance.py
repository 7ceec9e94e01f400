"""The master's maintenance of the store in bounded batches.

Recovery at start, lease expiry, result-TTL purges, delay promotion, cascade
settling and a client's purge of a queue can each touch millions of rows. Done
as one store call, that call holds the store runner (and so every submit, lease
and reply) for as long as it takes. Here each is a loop of calls with a
``limit``, each call its own runner call: other requests are served between
batches, so no single stall grows with the depth of the store.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING

from . import attempts

if TYPE_CHECKING:
    from .context import Context

#: Rows per maintenance call: small enough that one call is a short transaction.
BATCH = 1000
#: The most dependents one complete/nack/cancel settles itself; the rest are
#: continued by :func:`settle_pending` (start-up and every reaper tick).
CASCADE_LIMIT = 500
#: Dependents settled per :meth:`Store.settle_pending` call.
SETTLE_BATCH = 500


async def _count_batches(ctx: Context, batch: Callable[[], int]) -> int:
    """Run ``batch`` (one store call of at most BATCH rows, each its own runner call, so
    other requests are served between them) until one comes back short; the rows in all."""
    total = 0
    while True:
        n: int = await ctx.runner.call(batch)
        total += n
        if n < BATCH:
            return total


async def release_all(ctx: Context, now: float) -> int:
    """Hand back every lease left from before a restart; how many."""
    return await _count_batches(ctx, lambda: ctx.store.release_all(now, limit=BATCH))


async def expire_leases(ctx: Context, now: float) -> list[str]:
    """Hand back every task whose lease deadline passed by ``now``; their ids."""
    expired: list[str] = []
    workers = attempts.workers_by_owner(ctx.sessions.values())  # who held each lease
    while True:
        got: list[str] = await ctx.runner.call(
            lambda: ctx.store.expire_leases(now, limit=BATCH, workers=workers))
        expired.extend(got)
        if len(got) < BATCH:
            return expired


async def purge_finished(ctx: Context, before: float) -> int:
    """Delete the finished tasks that finished before ``before``; how many."""
    return await _count_batches(ctx, lambda: ctx.store.purge_finished(before, limit=BATCH))


async def purge(ctx: Context, queue: str | None, states: Sequence[str]) -> int:
    """Delete the tasks in ``states`` (of ``queue``, or of all); how many."""
    return await _count_batches(ctx, lambda: ctx.store.purge(queue=queue, states=states, limit=BATCH))


async def promote_due(ctx: Context, now: float) -> tuple[set[str], float | None]:
    """Make every delayed task due by ``now`` ready: (their queues, the next due time)."""
    queues: set[str] = set()
    while True:
        got: list[str] = await ctx.runner.call(lambda: ctx.store.promote_due(now, limit=BATCH))
        queues.update(got)
        next_due: float | None = await ctx.runner.call(ctx.store.next_due)
        if next_due is None or next_due > now:
            return queues, next_due


async def settle_pending(ctx: Context, now: float, *,
                         after_batch: Callable[[], Awaitable[None]] | None = None) -> int:
    """Continue the dependency cascades cut short at :data:`CASCADE_LIMIT`; how many
    batches ran. ``after_batch`` runs after each batch that settled something (to
    deliver the dependents it failed and dispatch those it freed)."""
    batches = 0
    while True:
        more: bool = await ctx.runner.call(lambda: ctx.store.settle_pending(now, limit=SETTLE_BATCH))
        batches += 1
        if after_batch is not None:
            await after_batch()
        if not more:
            return batches
