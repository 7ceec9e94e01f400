"""Clients: the synchronous facade (client.py) over one async core (core.py)."""

from .client import Client, ConveyorExecutor, TaskFuture, as_completed, connect

__all__ = ["Client", "ConveyorExecutor", "TaskFuture", "as_completed", "connect"]
