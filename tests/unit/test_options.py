"""conveyor.options: every submit/task option declared once, its readers, and who uses the table."""

from __future__ import annotations

import datetime as dt

import pytest

import conveyor
from conveyor import options as opts
from conveyor import serde
from conveyor.cli import build_parser
from conveyor.client.options import make_task

BAD = {
    "queue": "", "priority": 1.5, "countdown": -1, "eta": dt.datetime(2030, 1, 1), "timeout": 0,
    "soft_timeout": float("inf"), "codec": "json", "task_id": 7, "key": "", "after": [3],
    "pass_results": "yes", "rate_limit": "fast", "retries": -1, "retry_backoff": "soon",
    "retry_backoff_max": -5, "retry_jitter": 1, "retry_on": [42],
    "headers": {"k": 1},
}


def module_level(x=None, y=None):
    return x


def test_every_option_is_declared_with_a_route_readers_and_help():
    assert set(BAD) == set(opts.OPTIONS)
    for name, o in opts.OPTIONS.items():
        assert o.name == name
        assert o.travels in (opts.OPTIONS_DICT, opts.RECORD, opts.CLIENT)
        assert o.readers and o.help


@pytest.mark.parametrize("name", sorted(BAD))
def test_each_validator_names_its_option(name):
    with pytest.raises(ValueError, match=name):
        opts.validate(name, BAD[name])


def test_task_options_are_the_ones_a_task_may_default():
    assert opts.TASK_OPTIONS == {"priority", "timeout", "soft_timeout", "rate_limit", "retries",
                                 "retry_backoff", "retry_backoff_max", "retry_jitter", "retry_on"}
    with pytest.raises(TypeError, match="unknown task option"):
        conveyor.task(countdown=5)
    with pytest.raises(ValueError, match="timeout"):
        conveyor.task(timeout=-1)
    with pytest.raises(ValueError, match="retries"):
        conveyor.periodic(every=60, retries="many")


def test_validators_normalise_what_travels():
    assert opts.validate("timeout", 3) == 3.0 and isinstance(opts.validate("timeout", 3), float)
    assert opts.validate("retry_on", KeyError) == ["KeyError"]
    assert opts.validate("retry_on", [serde.SerializationError, "x.Y"]) == \
        ["conveyor.errors.SerializationError", "x.Y"]
    assert opts.exception_name(serde.SerializationError) == serde.type_name(serde.SerializationError)

    class Dep:
        task_id = "abc"

    assert opts.validate("after", Dep()) == ["abc"] and opts.validate("after", "id1") == ["id1"]


def test_resolve_merges_task_defaults_and_checks_combinations():
    values = opts.resolve({"queue": "q", "timeout": 5.0, "priority": 1}, {"priority": 3, "timeout": None})
    assert values == {"queue": "q", "timeout": 5.0, "priority": 3}
    with pytest.raises(TypeError, match="unknown submit option"):
        opts.resolve({}, {"colour": "red"})
    now = dt.datetime.now(dt.UTC)
    for given, fragment in (({"countdown": 1, "eta": now}, "countdown or eta"),
                            ({"key": "k", "task_id": "t"}, "key or task_id"),
                            ({"pass_results": True}, "pass_results")):
        with pytest.raises(ValueError, match=fragment):
            opts.resolve({}, given)


def test_make_task_routes_each_option_where_the_table_says():
    t = make_task(module_level, (1,), {"y": 2}, queue="q", priority=5, countdown=10, timeout=3,
                  retries=2, retry_on=[KeyError], rate_limit="5/s", after=["a", "b"], pass_results=True,
                  now=1000.0)
    assert (t.queue, t.priority, t.not_before, t.after) == ("q", 5, 1010.0, ["a", "b"])
    assert t.options == {"timeout": 3.0, "retries": 2, "retry_on": ["KeyError"], "rate_limit": "5/s",
                         "pass_results": True, "after": ["a", "b"]}
    keyed = make_task(module_level, (), {}, key="k1")
    assert keyed.id == make_task(module_level, (), {}, key="k1").id == opts.key_id("k1")
    assert make_task(module_level, (), {}, task_id="mine").id == "mine"


def test_task_defaults_travel_and_a_submit_overrides_them():
    @conveyor.task(queue="images", priority=2, timeout=30, retries=1)
    def resize():
        pass

    t = make_task(resize, (), {})
    assert (t.queue, t.priority, t.options) == ("images", 2, {"timeout": 30.0, "retries": 1})
    t = make_task(resize, (), {}, priority=9, timeout=1, queue="fast")
    assert (t.queue, t.priority, t.options) == ("fast", 9, {"timeout": 1.0, "retries": 1})


def test_readers_are_tolerant_of_anything_stored():
    good = {"timeout": 2.5, "soft_timeout": 1, "priority": 4, "rate_limit": "10/m", "after": ["a"],
            "pass_results": True, "retries": 3, "retry_backoff": 2.0, "retry_jitter": False,
            "retry_on": ["KeyError"], "retry_base": 1}
    assert opts.timeout_of(good) == 2.5 and opts.soft_timeout_of(good) == 1.0
    assert opts.priority_of(good) == 4 and opts.rate_limit_of(good) == (10.0, 60.0)
    assert opts.dependencies_of(good) == ["a"] and opts.passes_results(good)
    policy = opts.retry_policy_of(good)
    assert policy == opts.RetryPolicy(retries=3, backoff=2.0, backoff_max=300.0, jitter=False,
                                      retry_on=("KeyError",), base=1)
    bad = {"timeout": "x", "soft_timeout": -1, "priority": True, "rate_limit": "fast", "after": "a",
           "pass_results": 1, "retries": "3", "retry_base": "2"}
    assert opts.timeout_of(bad) is None and opts.soft_timeout_of(bad) is None
    assert opts.priority_of(bad) == 0 and opts.rate_limit_of(bad) is None
    assert opts.dependencies_of(bad) == [] and not opts.passes_results(bad)
    assert opts.retry_policy_of(bad) == opts.RetryPolicy()
    for junk in (None, [], "x"):
        assert opts.timeout_of(junk) is None and opts.priority_of(junk) == 0
        assert opts.retry_policy_of(junk) == opts.RetryPolicy()


def test_cli_submit_has_a_flag_for_every_option():
    parser = build_parser()
    args = parser.parse_args(["submit", "m:f", "--priority", "3", "--eta", "2030-01-01T00:00:00",
                              "--retry-on", "A", "--retry-on", "B", "--no-retry-jitter", "--pass-results",
                              "--after", "x"])
    assert args.priority == 3 and args.eta == dt.datetime(2030, 1, 1, tzinfo=dt.UTC)
    assert args.retry_on == ["A", "B"] and args.retry_jitter is False and args.pass_results is True
    submit = next(a for a in parser._subparsers._group_actions[0].choices["submit"]._actions
                  if a.dest == "timeout")
    assert submit.option_strings == ["--timeout"]  # the task's limit; --connect-timeout is the link's
    flags = {a.dest for a in parser._subparsers._group_actions[0].choices["submit"]._actions}
    assert set(opts.OPTIONS) <= flags
