"""Which event loop the master and workers run on."""

from __future__ import annotations

import asyncio
import sys

import pytest

from conveyor import loops


@pytest.mark.skipif(sys.platform == "win32", reason="uvloop is not a dependency on Windows")
def test_uvloop_is_the_default_where_it_is_a_dependency(monkeypatch):
    monkeypatch.delenv("CONVEYOR_LOOP", raising=False)
    import uvloop

    assert loops.name() == "uvloop"
    loop = loops.new_event_loop()
    try:
        assert isinstance(loop, uvloop.Loop)
    finally:
        loop.close()


def test_conveyor_loop_asyncio_chooses_the_stdlib_loop(monkeypatch):
    monkeypatch.setenv("CONVEYOR_LOOP", "asyncio")
    assert loops.name() == "asyncio"
    loop = loops.new_event_loop()
    try:
        assert type(loop).__module__.startswith("asyncio")
    finally:
        loop.close()


@pytest.mark.parametrize("choice", ["", "asyncio"])
def test_run_returns_the_coroutine_result_on_the_chosen_loop(monkeypatch, choice):
    monkeypatch.setenv("CONVEYOR_LOOP", choice)

    async def main() -> str:
        await asyncio.sleep(0)
        return type(asyncio.get_running_loop()).__module__

    module = loops.run(main())
    assert module.startswith("uvloop" if loops.name() == "uvloop" else "asyncio")
