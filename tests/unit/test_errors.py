"""Task failures conveyor names map back to their own classes, in one place (errors.task_error)."""

from __future__ import annotations

import pickle

import pytest

from conveyor import serde
from conveyor.errors import (
    DependencyFailed,
    TaskError,
    TaskTimeout,
    UnknownTask,
    WorkerCrashed,
    task_error,
)


@pytest.mark.parametrize("cls", [TaskTimeout, WorkerCrashed, UnknownTask, DependencyFailed])
def test_named_failure_round_trips_as_its_own_class(cls):
    local = cls("it went wrong")
    assert str(local) == "it went wrong"  # what a worker encodes is the message alone
    err = serde.decode_error(serde.encode_error(local))
    remote = task_error(err["type"], err["message"], err["traceback"])
    assert type(remote) is cls and isinstance(remote, TaskError)
    assert remote.type_name == f"conveyor.errors.{cls.__name__}"
    assert remote.message == "it went wrong"
    assert str(remote).startswith(f"conveyor.errors.{cls.__name__}: it went wrong\n\nRemote traceback:")
    copy = pickle.loads(pickle.dumps(remote))
    assert type(copy) is cls and copy.message == "it went wrong" and str(copy) == str(remote)


def test_any_other_type_stays_a_plain_task_error():
    exc = task_error("ValueError", "bad", "tb")
    assert type(exc) is TaskError
    assert (exc.type_name, exc.message, exc.remote_traceback) == ("ValueError", "bad", "tb")
    assert type(task_error("mymod.TaskTimeout", "x")) is TaskError  # only conveyor's own names map
