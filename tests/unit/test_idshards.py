"""IdShards: a set of task ids in up to 64 IdSets, so a growing set rehashes a sixty-fourth at a time."""

from __future__ import annotations

import random

from conveyor.ids import new_id
from conveyor.master.idshards import IdShards


def test_behaves_as_a_set_under_random_adds_and_discards():
    rng = random.Random(7)
    ids = [new_id() for _ in range(3000)]
    s, model = IdShards(), set()
    for _ in range(20_000):
        tid = rng.choice(ids)
        if rng.random() < 0.6:
            assert s.add(tid) == (tid not in model)
            model.add(tid)
        else:
            assert s.discard(tid) == (tid in model)
            model.discard(tid)
        assert len(s) == len(model)
    assert all((tid in s) == (tid in model) for tid in ids)
    assert 42 not in s and "" not in s


def test_ids_spread_over_the_shards_and_a_drained_set_keeps_nothing():
    s = IdShards()
    ids = [new_id() for _ in range(64_000)]
    for tid in ids:
        s.add(tid)
    sizes = [len(shard) for shard in s._shards.values()]
    # Each shard rehashes only its own ids: none holds much more than its 1/64 share.
    assert len(sizes) == 64 and max(sizes) < 2 * 1000
    for tid in ids:
        assert s.discard(tid)
    assert len(s) == 0 and s.nbytes() == 0 and not s._shards
