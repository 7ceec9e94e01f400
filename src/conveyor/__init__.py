"""conveyor: a durable distributed task queue and job scheduler.

A master keeps named queues in a durable store and serves them behind an
authkey; workers anywhere run the tasks; clients submit work and get
futures back.
"""

__version__ = "0.1.0"

from .client.client import Client, ConveyorExecutor, TaskFuture, as_completed, connect  # noqa: E402
from .context import current_task  # noqa: E402
from .errors import (  # noqa: E402
    AuthenticationError,
    ConnectionLost,
    ConveyorError,
    DependencyFailed,
    NotFound,
    ProtocolError,
    RemoteError,
    Retry,
    SerializationError,
    SoftTimeLimitExceeded,
    StoreError,
    TaskError,
    TaskTimeout,
    UnknownTask,
    WorkerCrashed,
)
from .periodic import periodic  # noqa: E402
from .tasks import task  # noqa: E402

__all__ = [
    "AuthenticationError",
    "Client",
    "ConnectionLost",
    "ConveyorError",
    "ConveyorExecutor",
    "DependencyFailed",
    "Retry",
    "SoftTimeLimitExceeded",
    "NotFound",
    "ProtocolError",
    "RemoteError",
    "SerializationError",
    "StoreError",
    "TaskError",
    "TaskFuture",
    "TaskTimeout",
    "UnknownTask",
    "WorkerCrashed",
    "__version__",
    "as_completed",
    "connect",
    "current_task",
    "periodic",
    "task",
]
