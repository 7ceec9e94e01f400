"""The ``conveyor`` command: one module per command group, wired together in ``app.py``.

Importing this package loads nothing else, on purpose: a worker started with
the ``conveyor`` script has each spawned pool child re-import that script
(multiprocessing re-runs the parent's main module), and the script's only
import is ``from conveyor.cli import main``. The command's modules load when
``main`` runs.
"""

from __future__ import annotations

from typing import Any

__all__ = ["CliError", "build_parser", "cmd_dashboard", "main", "parse_queues"]

_LAZY = {"CliError": ".common", "parse_queues": ".servers", "build_parser": ".app", "cmd_dashboard": ".app"}


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``conveyor`` command."""
    from .app import main as run

    return run(argv)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
