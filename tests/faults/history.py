"""A history checker for fault runs: what the clients were promised against what happened.

A run records the submits the master acknowledged, every result a client was
delivered (as many times as it was delivered), what ``inspect`` says of each task
afterwards (its attempt history), and optionally an execution log (one line per
execution of a task). :func:`check` lists every way the run broke a promise:

- an acknowledged submit with no delivered result, or with more than one;
- a result delivered for a task nobody submitted;
- a stored result that did not come from the session holding the task's lease:
  the attempt that finished the task must be the task's last lease (its number is
  the task's attempt count: a report from an earlier lease cannot settle it) and
  must be the only attempt recorded as finishing it;
- a result value that is not the one the task computes (``expected``), when given;
- a task run more often than it was leased (executions beyond its attempts).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

FINAL = ("succeeded", "failed")


@dataclass
class History:
    """What one run recorded."""

    submitted: list[str] = field(default_factory=list)  # ids of acknowledged submits
    delivered: list[tuple[str, Any]] = field(default_factory=list)  # (id, value), each delivery
    inspected: dict[str, dict[str, Any]] = field(default_factory=dict)  # id -> inspect output
    executions: Counter[str] = field(default_factory=Counter)  # id -> runs (from a log)

    def deliver(self, task_id: str, value: Any) -> None:
        self.delivered.append((task_id, value))

    def read_executions(self, path: Path, id_of: Mapping[str, str]) -> None:
        """Count the lines of an execution log; ``id_of`` maps a line's first word (the
        task's key; more words may follow) to its task id."""
        if path.exists():
            for line in path.read_text().splitlines():
                if line.strip():
                    self.executions[id_of[line.split()[0]]] += 1


def check(h: History, expected: Callable[[str], Any] | None = None) -> list[str]:
    """Every broken promise in ``h`` (empty: the run kept them all)."""
    problems: list[str] = []
    counts = Counter(tid for tid, _ in h.delivered)
    submitted = set(h.submitted)
    for tid in h.submitted:
        if counts[tid] != 1:
            problems.append(f"{tid}: acknowledged submit delivered {counts[tid]} result(s), not 1")
    problems += [f"{tid}: a result for a task never submitted" for tid in counts if tid not in submitted]
    if expected is not None:
        problems += [f"{tid}: result {value!r}, expected {expected(tid)!r}"
                     for tid, value in h.delivered if tid in submitted and value != expected(tid)]
    for tid, info in h.inspected.items():
        problems += _lease_problems(tid, info)
        runs = h.executions.get(tid, 0)
        if runs > info["attempts"]:
            problems.append(f"{tid}: ran {runs} times in {info['attempts']} lease(s)")
    return problems


def _lease_problems(tid: str, info: Mapping[str, Any]) -> list[str]:
    if info.get("state") not in FINAL:
        return [f"{tid}: not finished ({info.get('state')})"]
    finals = [a for a in info.get("attempt_log", ()) if a["outcome"] in FINAL]
    if len(finals) != 1:
        return [f"{tid}: {len(finals)} attempts recorded as finishing it, not 1"]
    if finals[0]["number"] != info["attempts"]:
        return [f"{tid}: settled by attempt {finals[0]['number']}, but its lease was attempt "
                f"{info['attempts']}'s"]
    return []


def inspect_all(client: Any, ids: Iterable[str], batch: int = 500) -> dict[str, dict[str, Any]]:
    """``client.inspect`` of every id, ``batch`` requests pipelined at a time (a soak
    inspects tens of thousands of tasks: one round trip each would take minutes)."""
    from conveyor import protocol

    ids = list(ids)
    out: dict[str, dict[str, Any]] = {}
    for i in range(0, len(ids), batch):
        chunk = ids[i:i + batch]
        replies = client.requests([(protocol.INSPECT, {"id": tid}) for tid in chunk])
        for tid, reply in zip(chunk, replies):
            out[tid] = client.wait(reply, 60)["task"]
    return out
