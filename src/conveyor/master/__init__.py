"""The master: serves named queues from a store over TCP behind an authkey."""

from .server import DEFAULT_PORT, Master

__all__ = ["DEFAULT_PORT", "Master"]
