"""``import conveyor`` is light and changes nothing global; the public names still resolve."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import conveyor

HEAVY = ("sqlite3", "croniter", "multiprocessing", "asyncio", "tqdm", "msgpack", "conveyor.store")


def _run(code: str) -> dict:
    """Run ``code`` in a fresh interpreter; it prints one JSON document."""
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                          text=True, timeout=60, check=True)
    return json.loads(proc.stdout)


def _loaded(prefixes: tuple[str, ...]) -> str:
    return f"sorted(m for m in sys.modules if m.split('.')[0] in {prefixes!r} or m.startswith({prefixes!r}))"


def test_import_conveyor_loads_nothing_heavy_and_touches_no_global_hook():
    doc = _run(f"""
        import atexit, json, sys
        registered = atexit._ncallbacks()
        import conveyor
        print(json.dumps({{"heavy": {_loaded(HEAVY)},
                          "own": sorted(m for m in sys.modules if m.startswith("conveyor")),
                          "hook": sys.excepthook is sys.__excepthook__,
                          "atexit": atexit._ncallbacks() - registered}}))
    """)
    assert doc["heavy"] == []
    assert doc["own"] == ["conveyor"]
    assert doc["hook"] is True
    assert doc["atexit"] == 0


def test_declaring_a_task_loads_no_client_store_or_event_loop():
    doc = _run(f"""
        import json, sys
        import conveyor

        @conveyor.task(timeout=5, retries=2, retry_on=[ValueError], priority=3)
        def job(x):
            return x

        print(json.dumps({{"heavy": {_loaded(HEAVY + ("conveyor.client", "socket"))}}}))
    """)
    assert doc["heavy"] == []


def test_public_names_resolve_lazily_and_match_all():
    assert set(conveyor.__all__) == set(conveyor._LAZY) | {"__version__"}
    assert set(conveyor.__all__) <= set(dir(conveyor))
    from conveyor import Client, TaskError, UnknownTask, current_task, periodic, task  # noqa: F401
    from conveyor.client.client import Client as DirectClient
    from conveyor.errors import TaskError as DirectTaskError

    assert conveyor.Client is DirectClient and conveyor.TaskError is DirectTaskError
    assert issubclass(conveyor.UnknownTask, conveyor.TaskError)
    assert callable(conveyor.task) and callable(conveyor.connect) and callable(conveyor.as_completed)
    try:
        conveyor.NoSuchName  # noqa: B018
    except AttributeError as exc:
        assert "NoSuchName" in str(exc)
    else:
        raise AssertionError("an unknown name must raise AttributeError")


def test_client_loads_no_store_and_no_croniter_and_installs_no_hook():
    doc = _run(f"""
        import json, sys
        import conveyor
        conveyor.Client, conveyor.connect, conveyor.TaskFuture
        print(json.dumps({{"heavy": {_loaded(("sqlite3", "croniter", "tqdm", "conveyor.store"))},
                          "hook": sys.excepthook is sys.__excepthook__}}))
    """)
    assert doc == {"heavy": [], "hook": True}


def test_store_package_loads_sqlite_only_when_asked():
    doc = _run(f"""
        import json, sys
        import conveyor.store as store
        before = {_loaded(("sqlite3", "conveyor.store.sqlite"))}
        store.NewTask, store.DUPLICATE, store.Store
        middle = {_loaded(("sqlite3", "conveyor.store.sqlite"))}
        store.SQLiteStore
        after = {_loaded(("sqlite3",))}
        print(json.dumps({{"before": before, "middle": middle, "after": after,
                          "all": sorted(set(store.__all__) - set(dir(store)))}}))
    """)
    assert doc["before"] == [] and doc["middle"] == []
    assert "sqlite3" in doc["after"]
    assert doc["all"] == []


def test_schedule_constant_copy_matches_its_source():
    from conveyor import schedule
    from conveyor.client import schedules

    assert schedules.RUN_ONCE == schedule.RUN_ONCE


def test_a_submodule_import_does_not_hide_the_public_name_it_shares():
    doc = _run("""
        import json, sys
        import conveyor.periodic  # the module loads first; the package name must stay the decorator
        import conveyor
        print(json.dumps({"decorator": conveyor.periodic is sys.modules["conveyor.periodic"].periodic}))
    """)
    assert doc == {"decorator": True}


def test_the_cli_entry_point_imports_nothing_until_main_runs():
    # A worker started with the ``conveyor`` script has each spawned pool child re-import the
    # script, whose one import is this: it must not cost the child the whole CLI.
    doc = _run(f"""
        import json, sys
        from conveyor.cli import main
        print(json.dumps({{"heavy": {_loaded(HEAVY)},
                          "own": sorted(m for m in sys.modules if m.startswith("conveyor"))}}))
    """)
    assert doc["heavy"] == []
    assert doc["own"] == ["conveyor", "conveyor.cli"]


def test_the_cli_package_still_offers_its_names():
    from conveyor import cli

    assert callable(cli.build_parser) and callable(cli.cmd_dashboard)
    assert issubclass(cli.CliError, Exception)
    assert cli.parse_queues("a,b") == (["a", "b"], None)
