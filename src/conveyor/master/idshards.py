"""A set of task ids split into shards, so no one insert stalls the master.

An :class:`~conveyor.master.idset.IdSet` grows by rehashing every entry at
once: at a million ids that is a pure-Python pass of most of a second, and
it happens on the master's loop, in the middle of some client's submit
(every other session waits). ``IdShards`` keeps up to 64 IdSets, chosen by
the top bits of the id's fingerprint (the IdSet places entries by the low
bits, so each shard stays evenly spread): each shard holds a sixty-fourth of
the ids, so each rehash moves a sixty-fourth of them, about 10 ms at a
million waiting results. Shards are made as ids arrive: a session waiting for
a handful of results pays for a handful of small shards.
"""

from __future__ import annotations

from .idset import IdSet

SHARD_BITS = 6
_SHIFT = 64 - SHARD_BITS
_MASK64 = (1 << 64) - 1


def _shard(tid: str) -> int:
    return (hash(tid) & _MASK64) >> _SHIFT


class IdShards:
    """The set interface of :class:`IdSet` (add, discard, ``in``, ``len``, nbytes), sharded."""

    __slots__ = ("_shards", "_live")

    def __init__(self) -> None:
        self._shards: dict[int, IdSet] = {}
        self._live = 0

    def __len__(self) -> int:
        return self._live

    def __contains__(self, tid: object) -> bool:
        if not self._live or not isinstance(tid, str):
            return False
        shard = self._shards.get(_shard(tid))
        return shard is not None and tid in shard

    def add(self, tid: str) -> bool:
        """Add ``tid``; False if it was in the set already."""
        i = _shard(tid)
        shard = self._shards.get(i)
        if shard is None:
            shard = self._shards[i] = IdSet()
        if shard.add(tid):
            self._live += 1
            return True
        return False

    def discard(self, tid: str) -> bool:
        """Remove ``tid``; False if it was not in the set."""
        if not self._live:
            return False
        i = _shard(tid)
        shard = self._shards.get(i)
        if shard is None or not shard.discard(tid):
            return False
        self._live -= 1
        if not shard:
            del self._shards[i]  # drained: give its memory back
        return True

    def nbytes(self) -> int:
        """The bytes of the shards' tables."""
        return sum(s.nbytes() for s in self._shards.values())
