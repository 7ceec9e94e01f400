"""A task module whose child-start hook fails (a database that cannot be reached)."""

from __future__ import annotations

import conveyor


@conveyor.on_child_start
def connect_database() -> None:
    raise RuntimeError("no database at db.invalid:5432")


@conveyor.task
def noop() -> None:
    return None
