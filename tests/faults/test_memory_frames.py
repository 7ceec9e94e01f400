"""Frames that would make the master hold or build far more than they are worth
(issue 10, must-have 3, attacks b and c): partial frames share one budget, and a
frame's decoding is bounded by its size.

Before this, six connections each stalling 63 MiB into a 64 MiB frame held 378 MB,
and one 4 MiB frame of empty msgpack arrays took the master to 318 MB.
"""

from __future__ import annotations

import struct
import threading

import msgpack
import pytest

from conveyor import protocol
from tests.waiting import wait_until

from .memory_peer import RawPeer, rss

MAX_RSS = 150 * 1024 * 1024
MiB = 1024 * 1024


def served(cluster) -> None:
    """Another client is served as usual: submit, result, status."""
    with cluster.client() as c:
        assert c.submit("tests.faults.memtasks:echo", "served").result(60) == "served"
        assert c.status()["workers"]


def test_six_stalled_64mib_frames_hold_one_budget_not_six(make_cluster):
    cluster = make_cluster(modules=["tests.faults.memtasks"], workers=1).start()
    cluster.wait_for_workers(1)
    pid = cluster.master.pid
    peers = [RawPeer(cluster.address, cluster.authkey, timeout=120) for _ in range(6)]
    sent = [0] * len(peers)

    def stall(i: int) -> None:
        # A 64 MiB frame of which 63 MiB come, then nothing: the rest never does.
        sock = peers[i].sock
        try:
            sock.sendall(struct.pack(">I", 64 * MiB - 16))
            chunk = b"\x00" * MiB
            for _ in range(63):
                sock.sendall(chunk)
                sent[i] += 1
        except OSError:
            pass  # closed at the end of the test while blocked

    threads = [threading.Thread(target=stall, args=(i,), daemon=True) for i in range(len(peers))]
    for t in threads:
        t.start()
    # One frame at a time fits the master's 64 MiB budget: one peer sends all of it,
    # the others are no longer read (their bytes wait in their own kernel buffers).
    assert wait_until(lambda: max(sent) == 63, timeout=120)
    assert wait_until(lambda: rss(pid) > 60 * MiB, timeout=30)  # the master holds that one frame
    assert sorted(sent)[-2] < 63
    peak = rss(pid, "VmHWM")
    print(f"master peak RSS with six stalled 63 MiB frames: {peak / MiB:.1f} MiB (sent {sent} MiB)")
    assert peak < MAX_RSS, f"master peaked at {peak / MiB:.0f} MiB"
    served(cluster)
    for p in peers:
        p.close()
    for t in threads:
        t.join(30)
    served(cluster)
    assert rss(pid, "VmHWM") < MAX_RSS


def empty_arrays_flat(size: int) -> bytes:
    return msgpack.packb(["submit", 7, {"tasks": [[]] * size}])


def empty_arrays_nested(size: int) -> bytes:
    return msgpack.packb(["submit", 7, {"tasks": [[[]] * 1000] * (size // 1003)}])


@pytest.mark.parametrize("body", [empty_arrays_flat, empty_arrays_nested], ids=["flat", "nested"])
def test_a_4mib_frame_of_empty_arrays_is_refused_without_expanding(make_cluster, body):
    cluster = make_cluster(modules=["tests.faults.memtasks"], workers=1).start()
    cluster.wait_for_workers(1)
    pid = cluster.master.pid
    frame = body(4 * MiB - 64)
    assert 4 * MiB - 4096 < len(frame) <= 4 * MiB
    peer = RawPeer(cluster.address, cluster.authkey, timeout=60)
    peer.sock.sendall(struct.pack(">I", len(frame)) + frame)
    assert wait_until(peer.closed_by_master_nowait, timeout=60)  # refused: that connection closed
    peak = rss(pid, "VmHWM")
    print(f"master peak RSS after a 4 MiB frame of empty arrays: {peak / MiB:.1f} MiB")
    assert peak < MAX_RSS, f"master peaked at {peak / MiB:.0f} MiB"
    served(cluster)
    log = cluster.log_path(cluster.master).read_text()
    assert "closing 127.0.0.1" in log and ("arrays and maps" in log or "exceeds" in log)
    peer.close()


def test_the_same_frames_decode_within_their_budget_in_process():
    # The decoder's own limits, without a master: the flat frame is refused by msgpack's
    # array length limit (a quarter of the frame), the nested one by the container count.
    for make in (empty_arrays_flat, empty_arrays_nested):
        with pytest.raises(protocol.ProtocolError):
            protocol.decode_body(make(4 * MiB - 64), guarded=True)


def test_a_frame_that_does_not_fit_the_budget_waits_for_the_one_under_way(make_cluster):
    cluster = make_cluster(modules=["tests.faults.memtasks"], workers=0,
                           master_args=["--frame-budget", str(MiB)]).start()
    first = RawPeer(cluster.address, cluster.authkey, timeout=60)
    second = RawPeer(cluster.address, cluster.authkey, timeout=60)
    big = protocol.encode_frame(protocol.PING, 11, {"pad": b"\x00" * (2 * MiB)})
    first.sock.sendall(big[:MiB])  # let in alone although larger than the budget
    with cluster.client() as watcher:  # the master has begun it (sendall only filled a buffer)
        assert wait_until(lambda: watcher.status()["frames"]["partial_bytes"] > 0, timeout=60)
    other = protocol.encode_frame(protocol.PING, 12, {"pad": b"\x00" * (600 * 1024)})
    second.sock.sendall(other)
    second.sock.settimeout(1.0)
    with pytest.raises(TimeoutError):  # not answered: its frame does not fit beside the first
        second.read()
    first.sock.sendall(big[MiB:])
    assert [m.rid for m in first.read()] == [11]
    second.sock.settimeout(60)
    assert [m.rid for m in second.read()] == [12]  # the first completed: the second is read
    first.close()
    second.close()
