"""Runs the store conformance suite (conveyor.store.conformance) on every store here.

Each store is one subclass with one ``store`` fixture; see the suite's docstring.
"""

from __future__ import annotations

import pytest

import conveyor.store as store_pkg
from conveyor.store import (
    FINISHED,
    STATES,
    WAITING,
    MemoryStore,
    QueueStats,
    SQLiteStore,
    Store,
    open_store,
)
from conveyor.store.conformance import StoreConformance
from conveyor.store.conformance_attempts import AttemptsConformance
from conveyor.store.conformance_counts import CountsConformance


class TestMemoryStore(StoreConformance, CountsConformance, AttemptsConformance):
    @pytest.fixture
    def store(self):
        s = MemoryStore()
        try:
            yield s
        finally:
            s.close()


class TestSQLiteStore(StoreConformance, CountsConformance, AttemptsConformance):
    @pytest.fixture(params=["normal", "full"])
    def store(self, request, tmp_path):
        s = SQLiteStore(tmp_path / "data", sync=request.param)
        try:
            yield s
        finally:
            s.close()




def test_open_store_picks_the_implementation(tmp_path):
    assert isinstance(open_store(None), MemoryStore)
    assert isinstance(open_store(":memory:"), MemoryStore)
    s = open_store(tmp_path / "d", sync="full")
    try:
        assert isinstance(s, SQLiteStore)
        assert (tmp_path / "d" / "conveyor.db").is_file()
    finally:
        s.close()
    s = open_store(str(tmp_path / "e"))
    assert isinstance(s, SQLiteStore)
    s.close()
    with pytest.raises(ValueError, match="normal"):
        open_store(None, sync="sometimes")
    assert store_pkg.Store is Store


def test_waiting_is_a_state_before_delayed():
    assert STATES[0] == WAITING and WAITING not in FINISHED
    assert QueueStats().as_dict() == dict.fromkeys(STATES, 0)
