"""Queue prefetch (``prefetch=N``) against a real master: items come from memory in
order, stay leased (so unseen by others) until taken, and go back to the queue when
released, on a normal close, and when the consumer is killed."""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading

import pytest

import conveyor

from .conftest import ROOT


def _role_prefetch_hold(name: str, ack: str, prefetch: str) -> None:
    """Get one item with prefetch, report it, and hold everything until killed."""
    c = conveyor.Client(os.environ["CONVEYOR_ADDRESS"], os.environ["CONVEYOR_AUTHKEY"])
    q = c.queue(name, ack=ack, prefetch=int(prefetch))
    print(json.dumps(q.get(timeout=10)), flush=True)
    threading.Event().wait(120)


@pytest.fixture
def client(master):
    with master.client() as c:
        yield c


def test_prefetched_items_come_in_order_and_are_leased_until_taken(client):
    q = client.queue("pf-order", prefetch=4)
    q.put_many(list(range(10)))
    assert q.get(timeout=10) == 0
    assert q.qsize() == 6  # 0 handed out, 1-3 prefetched: all four leased to this consumer
    got = [0] + [q.get(timeout=10) for _ in range(9)]
    assert got == list(range(10))
    with pytest.raises(queue.Empty):
        q.get(timeout=0.2)
    for _ in got:
        q.task_done()
    with pytest.raises(ValueError):
        q.task_done()  # prefetched items are not acknowledged by task_done: only those handed out
    assert q.join(timeout=10) is True


def test_released_prefetched_items_go_to_another_consumer(master, client):
    q = client.queue("pf-release", prefetch=5)
    q.put_many(list(range(10)))
    assert q.get(timeout=10) == 0  # 1-4 wait here
    with master.client() as other_client:
        other = other_client.queue("pf-release")
        assert other.get_many(10, timeout=10) == [5, 6, 7, 8, 9]  # only what nobody holds
        assert q.release_prefetched() == 4
        assert other.get_many(10, timeout=10) == [1, 2, 3, 4]
        for _ in range(9):
            other.task_done()
    q.task_done()
    assert q.join(timeout=10) is True


def test_auto_close_acknowledges_what_was_taken_and_returns_the_rest(master, client):
    with master.client() as consumer:
        q = consumer.queue("pf-auto", ack="auto", prefetch=5)
        client.queue("pf-auto").put_many(list(range(10)))
        assert [q.get(timeout=10), q.get(timeout=10)] == [0, 1]
    # Closed normally: 0 and 1 acknowledged; 2-4 (prefetched, never taken) back in the queue.
    again = client.queue("pf-auto")
    assert again.get_many(10, timeout=10) == [2, 3, 4, 5, 6, 7, 8, 9]
    for _ in range(8):
        again.task_done()
    assert again.join(timeout=10) is True


@pytest.mark.parametrize("ack", ["task_done", "auto"])
def test_a_killed_consumer_s_prefetched_items_are_delivered_again(master, client, ack):
    name = f"pf-kill-{ack}"
    q = client.queue(name)
    q.put_many([f"job-{i}" for i in range(5)])
    code = ("import sys; from tests.integration.test_queue_prefetch import _role_prefetch_hold as f; "
            "f(*sys.argv[1:])")
    holder = subprocess.Popen([sys.executable, "-c", code, name, ack, "5"], cwd=ROOT, env=master.env(),
                              stdout=subprocess.PIPE, text=True)
    try:
        assert json.loads(holder.stdout.readline()) == "job-0"
        assert q.qsize() == 0  # one taken, four prefetched: all leased to the holder
        holder.send_signal(signal.SIGKILL)
        holder.wait(10)
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait(10)
        holder.stdout.close()
    again: list[str] = []
    while len(again) < 5:
        again.extend(q.get_many(5, timeout=10))
    assert sorted(again) == [f"job-{i}" for i in range(5)]
    for _ in again:
        q.task_done()
    assert q.join(timeout=10) is True


def test_prefetch_needs_a_leasing_ack_mode_and_a_sane_count(client):
    with pytest.raises(ValueError, match="prefetch needs"):
        client.queue("pf-bad", ack="get", prefetch=2)
    for bad in (0, -1, 10_001, True, 2.5):
        with pytest.raises(ValueError, match="prefetch must be"):
            client.queue("pf-bad", prefetch=bad)
    assert client.queue("pf-bad", ack="get").prefetch == 1
