"""MemoryStore internals the conformance suite cannot see: the undo log's snapshots."""

from __future__ import annotations

from conveyor.store.memory import MemoryStore, _Rec


def test_rec_copy_copies_every_slot_and_owns_its_lists():
    rec = _Rec()
    for i, name in enumerate(_Rec.__slots__):
        setattr(rec, name, f"value-{i}")
    rec.errors = [b"e1"]
    rec.dependents = ["d1"]
    snap = rec.copy()
    assert {name: getattr(snap, name) for name in _Rec.__slots__} \
        == {name: getattr(rec, name) for name in _Rec.__slots__}
    rec.errors.append(b"e2")
    rec.dependents.append("d2")
    assert snap.errors == [b"e1"] and snap.dependents == ["d1"]


def test_undo_log_keeps_task_and_schedule_snapshots_apart():
    store = MemoryStore()
    with store.transaction():
        store.save_schedule({"name": "a", "task": "m:f", "queue": "q", "payload": b"",
                             "created_at": 1.0})
        (level,) = store._undo
        assert list(level.schedules) == ["a"] and level.tasks == {}
    assert store._undo == [] and [r["name"] for r in store.schedules()] == ["a"]
