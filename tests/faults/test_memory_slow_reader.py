"""A client that never reads its socket while its results pile up (issue 10, must-have 3, attack a).

The master pushes a peer's results only while its transport drains; once over the
high-water mark it stops pushing (and reading) and the results wait in the store.
Before this, 20,000 results of 10 KB grew the master by 220 MB and stayed allocated.
"""

from __future__ import annotations

import time

import pytest

from conveyor import protocol, wire
from conveyor.client.options import make_task
from tests.waiting import wait_for, wait_until

from .memory_peer import RawPeer, rss

MAX_RSS = 150 * 1024 * 1024
N = 20_000
SIZE = 10_000


@pytest.mark.timeout(600)
def test_a_client_that_never_reads_costs_the_master_no_memory_and_gets_every_result_once_it_reads(make_cluster):
    cluster = make_cluster(modules=["tests.faults.memtasks"], workers=2, concurrency=4).start()
    cluster.wait_for_workers(2)
    master_pid = cluster.master.pid
    tasks = [make_task("tests.faults.memtasks:blob", (SIZE,), {}) for _ in range(N)]
    ids = [t.id for t in tasks]
    # The peer waits for every result (subscribed before any exists), then reads nothing.
    peer = RawPeer(cluster.address, cluster.authkey)
    rids = {peer.send(protocol.SUBSCRIBE, {"ids": ids[i:i + 1000]}) for i in range(0, N, 1000)}
    while rids:
        rids -= {m.rid for m in peer.read() if m.op == protocol.OK}
    with cluster.client() as submitter:  # another client submits the work
        for i in range(0, N, 1000):
            submitter.request(protocol.SUBMIT, {"tasks": [wire.task_to_wire(t) for t in tasks[i:i + 1000]],
                                                "subscribe": False}).result(120)
    with cluster.client() as c:
        # Every result is computed and stored while the peer reads nothing.
        wait_for(lambda: c.status()["counters"].get("completed", 0) >= N, timeout=400, interval=0.5,
                 what="20,000 results stored")
        held, peak = rss(master_pid), rss(master_pid, "VmHWM")
        print(f"master RSS with {N} results of {SIZE} B unread: {held / 2**20:.1f} MiB (peak {peak / 2**20:.1f} MiB)")
        assert peak < MAX_RSS, f"master peaked at {peak / 2**20:.0f} MiB"
        # Meanwhile everyone else is served.
        assert c.submit("tests.faults.memtasks:echo", "still here").result(60) == "still here"
        assert c.status()["workers"]
    # The peer reads at last: every result arrives, read back from the store.
    got: set[str] = set()
    deadline = time.monotonic() + 120
    while len(got) < N and time.monotonic() < deadline:
        for msg in peer.read():
            if msg.op == protocol.RESULTS:
                got.update(r[0] for r in msg.fields["results"])
    peer.close()
    assert got == set(ids)
    assert wait_until(lambda: rss(master_pid) < MAX_RSS, timeout=30)
