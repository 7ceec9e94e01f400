"""Failover in the link, without I/O: address lists, moving on after a lost
connection, a name with several addresses, and the liveness cadences."""

from __future__ import annotations

import pytest

from conveyor import timing
from conveyor.link import Address, parse_addresses
from conveyor.link.address import connect_order
from conveyor.link.policy import Liveness, Reconnect


def test_a_silent_master_is_noticed_within_about_three_seconds_by_default():
    # The default ping cadence against a master with the default heartbeat timeout.
    every = timing.ping_interval(timing.HEARTBEAT, timing.HEARTBEAT_TIMEOUT)
    live = Liveness(every, now=0.0)
    limit = every * timing.MISSED_HEARTBEATS
    assert 2.0 <= limit <= 4.0
    assert not live.silent(limit) and live.silent(limit + 0.01)
    # ...and a peer still pings at least three times within the master's timeout.
    assert every * timing.PINGS_PER_MASTER_TIMEOUT <= timing.HEARTBEAT_TIMEOUT


def test_worker_stall_is_judged_in_five_second_units_or_by_a_short_master_timeout():
    assert timing.worker_stall_after(None) == 10.0
    assert timing.worker_stall_after(timing.HEARTBEAT_TIMEOUT) == 10.0
    assert timing.worker_stall_after(2.0) == pytest.approx(4 / 3)  # below the master's 2 s


def test_a_lost_connection_moves_to_the_next_master_at_once():
    a, b = Address("a", 1), Address("b", 2)
    plan = Reconnect([a, b])
    plan.failed()  # a pause is due after the next failure of this round...
    plan.lost("10.0.0.1")  # ...but a lost connection starts a new round at the next master
    assert plan.address == a and plan.avoid == "10.0.0.1"
    assert (plan.failed(), plan.address) == (0.0, b)
    single = Reconnect([a])
    single.lost()
    assert single.address == a


def test_address_lists_as_comma_separated_strings():
    assert parse_addresses("a:1,b:2") == (Address("a", 1), Address("b", 2))
    assert parse_addresses(" a:1 , tls://b:2 ") == (Address("a", 1), Address("b", 2, True))
    with pytest.raises(ValueError, match="empty entry"):
        parse_addresses("a:1,,b:2")


def test_a_name_with_several_addresses_tries_the_lost_one_last():
    assert connect_order(["1.1.1.1", "2.2.2.2", "1.1.1.1"], None) == ["1.1.1.1", "2.2.2.2"]
    assert connect_order(["1.1.1.1", "2.2.2.2"], "1.1.1.1") == ["2.2.2.2", "1.1.1.1"]
    assert connect_order(["1.1.1.1"], "1.1.1.1") == ["1.1.1.1"]


def test_the_next_check_comes_when_a_ping_or_the_silence_limit_is_due():
    live = Liveness(1.0, now=0.0)
    assert live.until_check(0.0) == pytest.approx(1.0)  # a ping first
    live.ping_due(3.5)  # pinged at 3.5, nothing heard since 0
    assert live.until_check(3.5) == pytest.approx(0.51)  # the limit (4 s) before the next ping
    assert not live.silent(3.99) and live.silent(3.5 + live.until_check(3.5))
    assert live.until_check(10.0) == 0.0
