"""A compact set of task ids: 8 bytes a slot, for the results a session waits for.

A master with a million tasks queued for one client would keep a million
entries in a ``dict[str, set]`` (the id string, the dict slot, a set each:
several hundred bytes a task). A session's subscriptions only need a yes/no
when a result arrives, so each session keeps this instead: an open-addressing
table (linear probing) of 64-bit fingerprints of the ids in one ``array``,
at most half full. About 20-40 bytes a task; nothing per task is an object.

Fingerprints are the process's own ``hash(str)`` (SipHash, seeded per
process; a master never shares them). Two ids of one session's waiting tasks
sharing 64 bits (odds ~n²/2⁶⁵) only means one extra result pushed to it, which
a client ignores (it pushes nothing for ids it does not wait for); an id is
never missed.
"""

from __future__ import annotations

from array import array

_EMPTY, _GONE = 0, 1  # slot values: never used; removed (a tombstone, so probing goes past it)
_MASK64 = (1 << 64) - 1
_SMALL = 8  # the capacity of an empty set


def _key(tid: str) -> int:
    k = hash(tid) & _MASK64
    return k if k > _GONE else k + 2


class IdSet:
    """A set of task ids in 8 bytes a slot (see the module docstring)."""

    __slots__ = ("_slots", "_mask", "_used", "_live")

    def __init__(self) -> None:
        self._reset(_SMALL)

    def _reset(self, capacity: int) -> None:
        self._slots = array("Q", bytes(8 * capacity))
        self._mask = capacity - 1
        self._used = 0  # live entries and tombstones
        self._live = 0

    def __len__(self) -> int:
        return self._live

    def __contains__(self, tid: object) -> bool:
        if not self._live or not isinstance(tid, str):
            return False
        return self._find(_key(tid)) >= 0

    def _find(self, k: int) -> int:
        slots, mask = self._slots, self._mask
        i = k & mask
        while True:
            v = slots[i]
            if v == k:
                return i
            if v == _EMPTY:
                return -1
            i = (i + 1) & mask

    def add(self, tid: str) -> bool:
        """Add ``tid``; False if it was in the set already."""
        k = _key(tid)
        slots, mask = self._slots, self._mask
        i, free = k & mask, -1
        while True:
            v = slots[i]
            if v == k:
                return False
            if v == _EMPTY:
                break
            if v == _GONE and free < 0:
                free = i
            i = (i + 1) & mask
        self._live += 1
        if free >= 0:  # reuse a tombstone: the table gets no fuller
            slots[free] = k
            return True
        slots[i] = k
        self._used += 1
        if 2 * self._used > len(slots):
            self._rehash()
        return True

    def discard(self, tid: str) -> bool:
        """Remove ``tid``; False if it was not in the set."""
        if not self._live:
            return False
        i = self._find(_key(tid))
        if i < 0:
            return False
        self._slots[i] = _GONE
        self._live -= 1
        if not self._live:
            self._reset(_SMALL)  # drained: give the memory back
        return True

    def _rehash(self) -> None:
        """Move the live entries to a table 20-40 % full (grown, or shrunk when
        tombstones filled it): every add and lookup stays a short probe."""
        old = self._slots
        capacity = _SMALL
        while 2 * capacity < 5 * self._live:
            capacity *= 2
        self._reset(capacity)
        slots, mask = self._slots, self._mask
        live = 0
        for k in old:
            if k > _GONE:
                i = k & mask
                while slots[i] != _EMPTY:
                    i = (i + 1) & mask
                slots[i] = k
                live += 1
        self._used = self._live = live

    def nbytes(self) -> int:
        """The bytes of the table (what a session's subscriptions cost)."""
        return len(self._slots) * self._slots.itemsize
