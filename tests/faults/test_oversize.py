"""A request over the master's frame limit is an error, once (issue 10, must-have 4).

The client learns the limit in the hello answer and refuses such a request itself,
naming both sizes; it is never sent, so never resent. Before this, the master closed
the connection, the client reconnected and resent it, 138 times in 20 s, and submit()
never returned. A peer that sends one anyway gets its request answered with the error
before the connection closes, so it fails that request rather than resending it.
"""

from __future__ import annotations

import asyncio
import re
import struct

import pytest

from conveyor import protocol
from conveyor.aio import connect
from conveyor.errors import FrameTooLarge, TaskError
from tests.waiting import wait_until

from .memory_peer import RawPeer

LIMIT = 200_000


@pytest.fixture
def small_master(make_cluster):
    cluster = make_cluster(modules=["tests.faults.memtasks"], workers=1,
                           master_args=["--max-frame-size", str(LIMIT)]).start()
    cluster.wait_for_workers(1)
    return cluster


def refusals(cluster) -> int:
    """How many frames the master refused for their size (its log lines, each counted once)."""
    text = cluster.log_path(cluster.master).read_text()
    return len(re.findall(r"exceeds the maximum of", text))


def test_an_oversized_submit_fails_in_the_caller_naming_both_sizes_and_is_never_sent(small_master):
    with small_master.client() as c:
        with pytest.raises(FrameTooLarge) as info:
            c.submit("tests.faults.memtasks:echo", "x" * (2 * LIMIT))
        assert not c._core._pending  # nothing left to resubmit after a reconnect
        message = str(info.value)
        assert f"frame limit of {LIMIT} bytes" in message
        size = int(re.search(r"of (\d+) bytes exceeds", message).group(1))
        assert size > 2 * LIMIT
        # The same client carries on, on the same connection: nothing was sent or refused.
        assert c.submit("tests.faults.memtasks:echo", "small").result(60) == "small"
        assert c.status()["counters"].get("submitted", 0) == 1
    assert refusals(small_master) == 0


def test_the_async_client_refuses_it_too(small_master):
    async def main() -> None:
        async with await connect(small_master.address, small_master.authkey) as c:
            with pytest.raises(FrameTooLarge, match=f"frame limit of {LIMIT} bytes"):
                await c.submit("tests.faults.memtasks:echo", "x" * (2 * LIMIT))
            assert await (await c.submit("tests.faults.memtasks:echo", 5)) == 5

    asyncio.run(main())
    assert refusals(small_master) == 0


def test_a_peer_that_sends_one_anyway_gets_that_request_refused_then_the_connection_closes(small_master):
    peer = RawPeer(small_master.address, small_master.authkey, timeout=30)
    assert peer.welcome is not None and peer.welcome.max_frame == LIMIT
    body = protocol.encode_frame(protocol.SUBMIT, 42, {"tasks": [], "pad": b"\x00" * (LIMIT + 1)})
    peer.sock.sendall(body[:4096])  # the length and the start of the body: enough to name the request
    replies = []
    while not replies:
        msgs = peer.read()
        assert msgs, "closed without an answer"
        replies = [m for m in msgs if m.rid == 42]
    (reply,) = replies
    assert reply.op == protocol.ERR and reply.fields["type"] == "FrameTooLarge"
    assert f"exceeds the master's frame limit of {LIMIT} bytes" in reply.fields["message"]
    assert str(len(body) - 4) in reply.fields["message"]
    assert wait_until(peer.closed_by_master_nowait, timeout=30)
    peer.close()
    assert refusals(small_master) == 1


def test_the_limit_comes_from_the_master_not_the_client(small_master):
    # The client's own limit is the 64 MiB default; the master's word wins once connected.
    with small_master.client() as c:
        assert c.submit("tests.faults.memtasks:echo", "y" * (LIMIT // 2)).result(60) == "y" * (LIMIT // 2)
        with pytest.raises(FrameTooLarge):
            c.submit("tests.faults.memtasks:echo", "y" * (LIMIT + 1))


def test_a_frame_length_alone_over_the_limit_closes_the_connection(small_master):
    peer = RawPeer(small_master.address, small_master.authkey, timeout=30)
    peer.sock.sendall(struct.pack(">I", 1 << 31))
    assert wait_until(peer.closed_by_master_nowait, timeout=30)
    peer.close()


def test_a_result_over_the_limit_fails_its_task_once_instead_of_running_it_again(small_master):
    # The worker cannot send it (the master would refuse the frame): the task fails with
    # FrameTooLarge, naming both sizes, in its first attempt; it is not left to expire and
    # run again, failing the same way forever.
    with small_master.client() as client:
        fut = client.submit("tests.faults.memtasks:blob", LIMIT + 50_000)
        with pytest.raises(TaskError) as info:
            fut.result(timeout=60)
        assert info.value.type_name == "conveyor.errors.FrameTooLarge"
        assert f"exceeds the master's frame limit of {LIMIT} bytes" in info.value.message
        assert client.inspect(fut.task_id)["attempts"] == 1
        assert client.submit("tests.faults.memtasks:blob", 10).result(timeout=60) == "x" * 10
