"""Task naming, the ``@task`` decorator, and the registry a worker runs from.

A task is named ``"module:qualname"``. A worker imports the modules it was
started with and runs only functions defined in them: a task naming anything
else (``os:system``) is refused as unknown and never imported.
"""

from __future__ import annotations

import importlib
import inspect
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .options import DEFAULT_QUEUE, TASK_OPTIONS, check_task_defaults, validate

__all__ = ["DEFAULT_QUEUE", "TASK_OPTIONS", "Registry", "TaskOptions", "task", "task_options"]
#: The attribute ``@task`` sets on a function: its TaskOptions.
TASK_ATTR = "__conveyor_task__"


@dataclass(frozen=True, slots=True)
class TaskOptions:
    """Per-task defaults set by ``@task``; a submit may override them."""

    name: str
    queue: str = DEFAULT_QUEUE
    options: dict[str, Any] = field(default_factory=dict)


def module_name(fn: Callable[..., Any]) -> str:
    """The module a worker imports ``fn`` from (a script's own name for ``__main__``)."""
    module = fn.__module__
    if module == "__main__":
        # A script's functions are importable by workers under the script's own name.
        main = sys.modules.get("__main__")
        spec = getattr(main, "__spec__", None)
        if spec is not None and spec.name:
            return str(spec.name)
        path = getattr(main, "__file__", None)
        if path:
            return Path(path).stem
    return module


def task(fn: Callable[..., Any] | None = None, *, name: str | None = None, queue: str = DEFAULT_QUEUE,
         **options: Any) -> Any:
    """Mark a module-level function as a task and set its defaults.

    ``name`` overrides the default ``"module:qualname"``; ``queue`` is the
    queue submits go to unless they say otherwise. Works bare (``@task``) or
    with arguments (``@task(queue="images")``). Other keywords are the task's
    defaults for the options in ``conveyor.options.TASK_OPTIONS`` (``timeout``,
    ``retries``, ``priority``...), checked here: TypeError for an unknown name,
    ValueError naming a bad value. The function is returned unchanged, so it
    can still be called locally.
    """

    defaults = check_task_defaults(options)  # declared in conveyor.options, checked once here
    validate("queue", queue)

    def mark(f: Callable[..., Any]) -> Callable[..., Any]:
        if not callable(f):
            raise TypeError("@task decorates a function")
        task_name = name or f"{module_name(f)}:{f.__qualname__}"
        if ":" not in task_name:
            raise ValueError(f"task name {task_name!r} must look like 'module:function'")
        setattr(f, TASK_ATTR, TaskOptions(task_name, queue, dict(defaults)))
        return f

    return mark(fn) if fn is not None else mark


def task_options(fn: Callable[..., Any] | str) -> TaskOptions:
    """The name and defaults to submit ``fn`` with: a function or a ``"module:function"`` string."""
    if isinstance(fn, str):
        if ":" not in fn or fn.startswith(":") or fn.endswith(":"):
            raise ValueError(f"task name {fn!r} must look like 'module:function'")
        return TaskOptions(fn)
    marked = getattr(fn, TASK_ATTR, None)
    if isinstance(marked, TaskOptions):
        return marked
    if not callable(fn):
        raise TypeError(f"cannot submit {fn!r}: pass a function or a 'module:function' string")
    qualname = getattr(fn, "__qualname__", "")
    if "<lambda>" in qualname or "<locals>" in qualname:
        raise TypeError(
            f"cannot submit {qualname}: workers run module-level functions only "
            "(define it at module level, or pass 'module:function')"
        )
    return TaskOptions(f"{module_name(fn)}:{qualname}")


class Registry:
    """The functions a worker may run, by task name, from the modules it was started with."""

    def __init__(self, functions: dict[str, Callable[..., Any]] | None = None, modules: Iterable[str] = ()) -> None:
        self.functions: dict[str, Callable[..., Any]] = dict(functions or {})
        self.modules = list(modules)

    @classmethod
    def from_modules(cls, modules: Iterable[str]) -> Registry:
        """Import ``modules`` (the current directory is importable) and collect their tasks.

        Every function defined in a module (not imported into it) is a task
        under ``"module:qualname"``; an ``@task(name=...)`` adds its own name.
        """
        if "" not in sys.path and "." not in sys.path:
            sys.path.insert(0, "")
        functions: dict[str, Callable[..., Any]] = {}
        names = list(modules)
        for modname in names:
            module = importlib.import_module(modname)
            for value in vars(module).values():
                if not inspect.isfunction(value):
                    continue
                marked = getattr(value, TASK_ATTR, None)
                if value.__module__ == module.__name__:
                    functions[f"{modname}:{value.__qualname__}"] = value
                    if marked is not None:
                        functions[marked.name] = value
                elif marked is not None and marked.name.split(":", 1)[0] == modname:
                    functions[marked.name] = value
        return cls(functions, names)

    def resolve(self, name: str) -> Callable[..., Any]:
        """The function for a task name, or UnknownTask; never imports anything."""
        fn = self.functions.get(name)
        if fn is None:
            from .errors import UnknownTask  # here: declaring tasks need not load errors

            mods = ", ".join(self.modules) or "(none)"
            raise UnknownTask(f"unknown task {name!r}: this worker runs only tasks defined in {mods}")
        return fn
