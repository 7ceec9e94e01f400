"""Pure pieces: addresses, submit options, task naming, codecs, queue tracking, rates."""

from __future__ import annotations

import datetime as dt

import pytest

from conveyor import serde
from conveyor.client.options import make_task, split_options
from conveyor.errors import SerializationError, UnknownTask
from conveyor.link import Address, parse_address
from conveyor.master.dispatch import QueueTracker
from conveyor.master.rates import RateMeter
from conveyor.tasks import Registry, task, task_options


def module_level(x):
    return x


@pytest.mark.parametrize("text, expected", [
    ("127.0.0.1:7700", Address("127.0.0.1", 7700)),
    ("tcp://h:1", Address("h", 1)),
    ("tls://h:443", Address("h", 443, True)),
    ("[::1]:9", Address("::1", 9)),
    ("host", Address("host", 7700)),
    (("", 5), Address("127.0.0.1", 5)),
])
def test_parse_address(text, expected):
    assert parse_address(text) == expected


@pytest.mark.parametrize("bad", ["h:0", "h:70000", "h:x", "udp://h:1", ""])
def test_parse_address_rejects(bad):
    with pytest.raises(ValueError):
        parse_address(bad)


def test_split_options_keeps_task_kwargs():
    kwargs, options = split_options({"queue": "q", "x": 1, "priority": 3})
    assert kwargs == {"x": 1} and options == {"queue": "q", "priority": 3}


def test_make_task_fields():
    t = make_task(module_level, (1,), {"y": 2}, queue="q", priority=5, countdown=10, now=1000.0)
    assert t.name == f"{__name__}:module_level" and t.queue == "q" and t.priority == 5
    assert t.not_before == 1010.0
    assert serde.decode_call(t.payload) == ([1], {"y": 2})


def test_make_task_eta_must_be_aware():
    with pytest.raises(ValueError, match="timezone-aware"):
        make_task(module_level, (), {}, eta=dt.datetime(2030, 1, 1))
    when = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)
    assert make_task(module_level, (), {}, eta=when).not_before == when.timestamp()


@pytest.mark.parametrize("options, field", [
    ({"priority": "high"}, "priority"), ({"countdown": -1}, "countdown"),
    ({"timeout": 0}, "timeout"), ({"codec": "json"}, "codec"), ({"queue": ""}, "queue"),
    ({"countdown": float("nan")}, "countdown"),
])
def test_make_task_names_the_bad_field(options, field):
    with pytest.raises(ValueError, match=field):
        make_task(module_level, (), {}, **options)


def test_task_decorator_sets_name_and_queue():
    @task(name="custom:name", queue="images")
    def f():
        pass

    spec = task_options(f)
    assert spec.name == "custom:name" and spec.queue == "images"
    assert task_options("m:f").name == "m:f"
    with pytest.raises(ValueError):
        task_options("no-colon")


def test_registry_only_runs_functions_defined_in_its_modules():
    reg = Registry.from_modules(["conveyor.demo"])
    assert reg.resolve("conveyor.demo:square")(3) == 9
    for name in ("os:system", "conveyor.demo:annotations", "subprocess:run", "conveyor.demo:__import__"):
        with pytest.raises(UnknownTask, match="unknown task"):
            reg.resolve(name)


def test_msgpack_refuses_objects_and_pickle_is_opt_in():
    with pytest.raises(SerializationError):
        serde.encode(object())
    data = serde.encode({1, 2}, serde.PICKLE)
    with pytest.raises(SerializationError, match="not enabled"):
        serde.decode(data, serde.PICKLE)
    assert serde.decode(data, serde.PICKLE, allow_pickle=True) == {1, 2}


def test_error_payload_round_trip():
    try:
        raise KeyError("k")
    except KeyError as exc:
        err = serde.decode_error(serde.encode_error(exc))
    assert err["type"] == "KeyError" and "'k'" in err["message"] and "Traceback" in err["traceback"]
    assert serde.decode_error(b"\xc1")["type"] == "conveyor.errors.ProtocolError"


def test_queue_tracker_never_misses_an_enqueue_racing_a_lease():
    qt = QueueTracker()
    mark = qt.mark("q")
    qt.changed("q")  # an enqueue lands while the lease was in flight
    qt.empty("q", mark)
    assert qt.first_nonempty(["q"]) == "q"
    qt.empty("q", qt.mark("q"))
    assert qt.first_nonempty(["q", "r"]) == "r"
    qt.changed_unknown()
    assert qt.first_nonempty(["q"]) == "q"


def test_rate_meter():
    now = [100.0]
    meter = RateMeter(clock=lambda: now[0])
    meter.add(50)
    now[0] = 101.0
    meter.add(50)
    assert meter.rate(10) == 10.0
    now[0] = 200.0
    assert meter.rate(10) == 0.0


def test_task_ids_are_unique_and_sort_by_creation_time():
    import time

    from conveyor.ids import new_id

    first = [new_id() for _ in range(1000)]
    time.sleep(0.002)
    later = new_id()
    assert len(set(first)) == 1000
    assert all(len(i) == 32 and int(i, 16) >= 0 for i in first)
    assert max(first) < later


def test_task_ids_differ_between_forked_processes():
    import os

    from conveyor.ids import new_id

    new_id()
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.write(w, new_id().encode())
        os._exit(0)
    os.waitpid(pid, 0)
    child = os.read(r, 64).decode()
    assert child != new_id() and child[12:] != new_id()[12:]
