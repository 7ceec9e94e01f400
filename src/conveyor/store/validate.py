"""Argument checks every store shares, so each store refuses the same bad input
with the same message (before it touches anything)."""

from __future__ import annotations

from collections.abc import Sequence

from ..records import FINISHED, STATES

FINISHED_STATES: frozenset[str] = frozenset(FINISHED)
ALL_STATES: frozenset[str] = frozenset(STATES)


def finished_states(states: Sequence[str], what: str) -> frozenset[str]:
    """``states`` as a set; ValueError unless every one is a finished state.

    ``what`` names the operation in the message ("requeue", "purge").
    """
    wanted = frozenset(states)
    bad = sorted(wanted - FINISHED_STATES)
    if bad:
        raise ValueError(f"cannot {what} {bad[0]} tasks: only finished states "
                         f"({', '.join(FINISHED)})")
    return wanted


def check_page(state: str | None, limit: int, offset: int) -> None:
    """ValueError unless ``state`` (when given) is a state and ``limit``/``offset`` a sane page."""
    if state is not None and state not in ALL_STATES:
        raise ValueError(f"unknown state {state!r}: choose one of {', '.join(STATES)}")
    if not 1 <= limit <= 1000:
        raise ValueError(f"limit must be 1..1000, not {limit}")
    if offset < 0:
        raise ValueError(f"offset must be >= 0, not {offset}")
