"""conveyor: a durable distributed task queue and job scheduler.

A master keeps named queues in a durable store and serves them behind an
authkey; workers anywhere run the tasks; clients submit work and get
futures back.

Importing conveyor loads nothing but this file and changes nothing global:
each public name is imported from its module on first use (PEP 562), so a
task module that only says ``@conveyor.task`` does not pay for the client,
asyncio or a store.
"""

from __future__ import annotations

import importlib
import sys

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (and re) at startup

__version__ = "0.1.0"

# public name -> the module (relative to this package) that defines it
_LAZY: dict[str, str] = {
    "Client": ".client.client",
    "ConveyorExecutor": ".client.client",
    "TaskFuture": ".client.client",
    "as_completed": ".client.client",
    "connect": ".client.client",
    "current_task": ".context",
    **{name: ".middleware" for name in (
        "Middleware", "SubmitCall", "TaskCall", "add_middleware", "remove_middleware")},
    "on_child_exit": ".hooks",
    "on_child_start": ".hooks",
    "on_worker_start": ".hooks",
    "on_worker_stop": ".hooks",
    "periodic": ".periodic",
    "task": ".tasks",
    **{name: ".errors" for name in (
        "AuthenticationError", "ConnectionLost", "ConveyorError", "DependencyFailed", "FrameTooLarge",
        "NotFound", "ProtocolError", "RemoteError", "Retry", "SerializationError",
        "SoftTimeLimitExceeded", "StoreCorrupt", "StoreError", "StoreFull", "StoreIOError", "TaskError",
        "TaskTimeout", "UnknownTask", "WorkerCrashed",
    )},
}

__all__ = [  # the same names as _LAZY, spelled out for linters and readers
    "AuthenticationError", "Client", "ConnectionLost", "ConveyorError", "ConveyorExecutor",
    "DependencyFailed", "FrameTooLarge", "Middleware", "NotFound", "ProtocolError", "RemoteError", "Retry",
    "SerializationError", "SoftTimeLimitExceeded", "StoreCorrupt", "StoreError", "StoreFull",
    "StoreIOError", "SubmitCall", "TaskCall", "TaskError",
    "TaskFuture", "TaskTimeout", "UnknownTask", "WorkerCrashed", "__version__", "add_middleware",
    "as_completed", "connect", "current_task", "on_child_exit", "on_child_start", "on_worker_start",
    "on_worker_stop", "periodic", "remove_middleware", "task",
]


def __getattr__(name: str) -> Any:
    """Import a public name's module on first access and cache the name here."""
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value  # later accesses skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


class _Package(type(sys)):  # type: ignore[misc]  # types.ModuleType, without importing types
    """This package's module type: importing a submodule that shares a public name
    (``conveyor.periodic``) must not replace the name (the ``periodic`` decorator)
    with the module, as the import system's ``setattr(package, child, module)`` would."""

    def __setattr__(self, name: str, value: object) -> None:
        if name in _LAZY and isinstance(value, type(sys)):
            return  # the module stays reachable as sys.modules["conveyor.<name>"]
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package


if TYPE_CHECKING:  # for type checkers and IDEs: the names as if imported eagerly
    from typing import Any

    from .client.client import Client, ConveyorExecutor, TaskFuture, as_completed, connect
    from .context import current_task
    from .errors import (
        AuthenticationError,
        ConnectionLost,
        ConveyorError,
        DependencyFailed,
        FrameTooLarge,
        NotFound,
        ProtocolError,
        RemoteError,
        Retry,
        SerializationError,
        SoftTimeLimitExceeded,
        StoreCorrupt,
        StoreError,
        StoreFull,
        StoreIOError,
        TaskError,
        TaskTimeout,
        UnknownTask,
        WorkerCrashed,
    )
    from .hooks import on_child_exit, on_child_start, on_worker_start, on_worker_stop
    from .middleware import Middleware, SubmitCall, TaskCall, add_middleware, remove_middleware
    from .periodic import periodic
    from .tasks import task
