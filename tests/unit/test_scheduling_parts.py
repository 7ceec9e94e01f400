"""Pure scheduling pieces with time and randomness as arguments: retry policy,
rate limits, weighted queues, queue-spec parsing."""

from __future__ import annotations

import random

import pytest

from conveyor.cli import CliError, parse_queues
from conveyor.master.dispatch import QueueTracker
from conveyor.ratelimit import TokenBucket, parse_rate
from conveyor.retries import backoff, decide, normalise_options

VALUE_ERROR = {"type": "ValueError", "mro": ["ValueError", "Exception", "BaseException"]}


def test_no_retries_means_plain_failure():
    assert decide({}, 0, VALUE_ERROR) is None


def test_retries_until_budget_then_dead():
    opts = normalise_options({"retries": 2, "retry_backoff": 1.0, "retry_jitter": False})
    assert decide(opts, 0, VALUE_ERROR) == {"delay": 1.0}
    assert decide(opts, 1, VALUE_ERROR) == {"delay": 2.0}
    assert decide(opts, 2, VALUE_ERROR) == {"dead": True}


def test_backoff_is_capped_and_jittered():
    opts = {"retry_backoff": 10.0, "retry_backoff_max": 25.0}
    assert backoff(opts, 1, rand=lambda: 1.0) == 10.0
    assert backoff(opts, 3, rand=lambda: 1.0) == 25.0
    assert backoff(opts, 3, rand=lambda: 0.0) == 12.5


def test_retry_on_matches_base_classes_by_name():
    opts = normalise_options({"retries": 1, "retry_on": (LookupError,)})
    key_error = {"type": "KeyError", "mro": ["KeyError", "LookupError", "Exception", "BaseException"]}
    assert decide(opts, 0, key_error)["delay"] >= 0
    assert decide(opts, 0, VALUE_ERROR) is None


def test_explicit_retry_uses_its_delay_and_default_budget():
    err = {"type": "conveyor.errors.Retry", "delay": 0.25}
    assert decide({}, 0, err) == {"delay": 0.25}
    assert decide({}, 3, err) == {"dead": True}


def test_retry_budget_restarts_after_manual_retry():
    opts = {"retries": 1, "retry_base": 2, "retry_jitter": False}
    assert decide(opts, 2, VALUE_ERROR) == {"delay": 1.0}
    assert decide(opts, 3, VALUE_ERROR) == {"dead": True}


def test_unknown_tasks_never_retry():
    assert decide({"retries": 5}, 0, {"type": "conveyor.errors.UnknownTask"}) is None


@pytest.mark.parametrize("options, field", [
    ({"retries": -1}, "retries"), ({"retries": 1.5}, "retries"), ({"retry_backoff": -2}, "retry_backoff"),
    ({"retry_jitter": "yes"}, "retry_jitter"), ({"retry_on": (42,)}, "retry_on"),
])
def test_invalid_retry_options_name_the_field(options, field):
    with pytest.raises(ValueError, match=field):
        normalise_options(options)


def test_parse_rate():
    assert parse_rate("100/m") == (100.0, 60.0)
    assert parse_rate("5/s") == (5.0, 1.0)
    assert parse_rate("10/2h") == (10.0, 7200.0)
    for bad in ("fast", "0/s", "10/y", "-1/m"):
        with pytest.raises(ValueError, match="rate_limit"):
            parse_rate(bad)


def test_token_bucket_with_injected_time():
    bucket = TokenBucket(2, 1.0)
    assert bucket.take(100.0) == 0.0
    assert bucket.take(100.0) == 0.0
    assert bucket.take(100.0) == pytest.approx(0.5)
    assert bucket.take(100.5) == 0.0
    assert bucket.take(100.5) == pytest.approx(0.5)


def test_weighted_queue_choice_follows_weights_and_skips_empty():
    qt = QueueTracker()
    rng = random.Random(7)
    picks = [qt.pick_weighted(["high", "low"], [3, 1], rng) for _ in range(4000)]
    share = picks.count("high") / len(picks)
    assert 0.7 < share < 0.8
    qt.empty("high", qt.mark("high"))
    assert {qt.pick_weighted(["high", "low"], [3, 1], rng) for _ in range(50)} == {"low"}
    qt.empty("low", qt.mark("low"))
    assert qt.pick_weighted(["high", "low"], [3, 1], rng) is None


def test_parse_queues():
    assert parse_queues("a,b") == (["a", "b"], None)
    assert parse_queues("a:3, b:1") == (["a", "b"], [3, 1])
    for bad in ("", "a:3,b", "a:0", "a:x", ":3"):
        with pytest.raises(CliError):
            parse_queues(bad)
