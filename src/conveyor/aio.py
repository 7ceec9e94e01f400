"""``conveyor.aio``: the asyncio API beside the synchronous one."""

from .client.aio import AsyncClient, connect

__all__ = ["AsyncClient", "connect"]
