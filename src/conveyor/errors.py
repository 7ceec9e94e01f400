"""One exception hierarchy for everything conveyor raises."""

from __future__ import annotations

import multiprocessing


class ConveyorError(Exception):
    """Base class of every error conveyor raises."""


class AuthenticationError(ConveyorError, multiprocessing.AuthenticationError):
    """The authkey handshake failed: the peer does not hold the same key.

    It is also a ``multiprocessing.AuthenticationError`` so code written for
    ``multiprocessing.managers`` catches it unchanged.
    """


class ProtocolError(ConveyorError):
    """A peer sent bytes that are not a valid conveyor frame or message."""


class FrameTooLarge(ProtocolError):
    """A frame announced a length above the connection's maximum frame size."""


class ConnectionLost(ConveyorError, ConnectionError):
    """The connection to the master dropped or could not be made."""


class StoreError(ConveyorError):
    """The store cannot be opened or written (unwritable or corrupt data directory)."""


class StoreFull(StoreError):
    """The store could not commit because its disk is full: nothing of the request happened.

    The master keeps running and serving reads; the next commit after space is
    freed succeeds. A client raises it for a submit or put the master could not commit.
    """


class StoreIOError(StoreError):
    """The store could not commit because the disk failed (an I/O error): nothing of the request happened."""


class StoreCorrupt(StoreError):
    """The store's file is damaged ("database disk image is malformed").

    The master refuses to start on such a file and stops if it meets one at
    run time; ``conveyor store recover DIR NEW_DIR`` salvages what is readable.
    """


#: The master-side StoreError types a client raises as themselves (an error reply's ``type``).
STORE_ERRORS: dict[str, type[StoreError]] = {
    cls.__name__: cls for cls in (StoreError, StoreFull, StoreIOError, StoreCorrupt)
}


class SerializationError(ConveyorError, TypeError):
    """A value cannot be encoded with the codec in use (raised at submit, never later)."""


class NotFound(ConveyorError, KeyError):
    """No task with that id is known to the master (never submitted, or its result expired)."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else "not found"


class RemoteError(ConveyorError):
    """The master refused a request; ``kind`` names the master-side error type."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(f"{kind}: {message}")
        self.kind = kind
        self.message = message


class TaskError(ConveyorError):
    """A task failed on a worker.

    ``type_name`` is the remote exception's qualified type name, ``message`` its
    text and ``remote_traceback`` the worker-side traceback text.
    """

    def __init__(self, type_name: str, message: str, remote_traceback: str = "") -> None:
        super().__init__(f"{type_name}: {message}")
        self.type_name = type_name
        self.message = message
        self.remote_traceback = remote_traceback

    def __str__(self) -> str:
        text = f"{self.type_name}: {self.message}"
        if self.remote_traceback:
            text += "\n\nRemote traceback:\n" + self.remote_traceback.rstrip()
        return text


class _NamedTaskFailure(TaskError):
    """A task failure conveyor itself names: raised on a worker or master with just a
    message, and re-raised on the client as its own class (see :func:`task_error`).

    Raised locally its text is the message alone (that is what a worker encodes);
    rebuilt from a remote error it reads like any ``TaskError``.
    """

    def __init__(self, message: str = "", remote_traceback: str = "", *, type_name: str | None = None) -> None:
        cls = type(self)
        super().__init__(type_name or f"{cls.__module__}.{cls.__qualname__}", message, remote_traceback)
        self.args = (message,)  # pickles and reprs as cls(message)
        self._remote = type_name is not None or bool(remote_traceback)

    def __str__(self) -> str:
        return super().__str__() if self._remote else self.message


class UnknownTask(_NamedTaskFailure):
    """A task names a function the worker was not started with; it is refused, never imported."""


class WorkerCrashed(_NamedTaskFailure):
    """The process running a task died (os._exit, a signal, the OOM killer)."""


class TaskTimeout(_NamedTaskFailure):
    """A task ran past its time limit and was stopped."""


class DependencyFailed(_NamedTaskFailure):
    """A task did not run because a task it depends on failed, died or was cancelled."""


# The remote type names that come back as their own class; any other is a plain TaskError.
_TASK_FAILURES: dict[str, type[_NamedTaskFailure]] = {
    f"{__name__}.{cls.__qualname__}": cls for cls in (UnknownTask, WorkerCrashed, TaskTimeout, DependencyFailed)
}


def task_error(type_name: str, message: str, remote_traceback: str = "") -> TaskError:
    """The exception a client raises for a failed task, by the remote type name:
    ``TaskTimeout``, ``WorkerCrashed``, ``UnknownTask`` and ``DependencyFailed`` as
    themselves (each a TaskError), anything else as a TaskError carrying the name."""
    cls = _TASK_FAILURES.get(type_name)
    if cls is None:
        return TaskError(type_name, message, remote_traceback)
    return cls(message, remote_traceback, type_name=type_name)


class SoftTimeLimitExceeded(ConveyorError):
    """Raised inside a task when its soft time limit passes, so it can clean up."""


class Retry(ConveyorError):
    """Raise inside a task to ask for another attempt, after ``delay`` seconds if given.

    The attempt counts against the task's ``retries`` (3 when it has none).
    """

    def __init__(self, message: str = "retry requested", *, delay: float | None = None) -> None:
        super().__init__(message)
        if delay is not None and (not isinstance(delay, (int, float)) or delay < 0):
            raise ValueError("Retry delay must be a non-negative number of seconds")
        self.delay = delay
