"""One model check for the master's compact id sets (IdSet, IdShards): a random mix of adds
and discards, compared step by step with Python's set."""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

from conveyor.ids import new_id


def behaves_as_a_set(make: Callable[[], Any], *, n_ids: int, steps: int, p_add: float) -> None:
    """Drive ``make()`` and a ``set`` with the same random adds and discards; every answer,
    length and membership must agree, and non-ids are never members."""
    rng = random.Random(7)
    ids = [new_id() for _ in range(n_ids)]
    s, model = make(), set()
    for _ in range(steps):
        tid = rng.choice(ids)
        if rng.random() < p_add:
            assert s.add(tid) == (tid not in model)
            model.add(tid)
        else:
            assert s.discard(tid) == (tid in model)
            model.discard(tid)
        assert len(s) == len(model)
    assert all((tid in s) == (tid in model) for tid in ids)
    assert 42 not in s and "" not in s
