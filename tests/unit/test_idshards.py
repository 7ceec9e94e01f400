"""IdShards: a set of task ids in up to 64 IdSets, so a growing set rehashes a sixty-fourth at a time."""

from __future__ import annotations

from conveyor.ids import new_id
from conveyor.master.idshards import IdShards

from .set_model import behaves_as_a_set


def test_behaves_as_a_set_under_random_adds_and_discards():
    behaves_as_a_set(IdShards, n_ids=3000, steps=20_000, p_add=0.6)


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
