"""Turning a call and its submit options into a task record, validated at submit time.

The options themselves (names, checks, defaults, where each travels) are
declared once in :mod:`conveyor.options`; this module applies them to a call.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from .. import middleware, serde
from .. import options as opts
from ..ids import new_id
from ..records import NewTask
from ..tasks import task_options

SUBMIT_OPTIONS = opts.SUBMIT_OPTIONS  # keyword arguments of Client.submit that are options


def split_options(kwargs: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Separate submit options from the task's own keyword arguments."""
    options = {k: kwargs[k] for k in kwargs.keys() & SUBMIT_OPTIONS}
    call_kwargs = {k: v for k, v in kwargs.items() if k not in SUBMIT_OPTIONS}
    return call_kwargs, options


def make_task(fn: Callable[..., Any] | str, args: tuple[Any, ...] | list[Any], kwargs: dict[str, Any], *,
              now: float | None = None, **given: Any) -> NewTask:
    """Build the task a submit sends: ``fn``'s ``@task`` defaults overridden by the
    options ``given``; ValueError naming a bad option, TypeError for an unknown one or
    an argument the codec cannot encode."""
    spec = task_options(fn)
    if middleware.active():
        args, kwargs, given = _before_submit(spec.name, args, kwargs, given)
    values = opts.resolve({"queue": spec.queue, **spec.options}, given)
    codec = values.get("codec", opts.OPTIONS["codec"].default)
    task_id = opts.key_id(values["key"]) if "key" in values else values.get("task_id") or new_id()
    payload = serde.encode_call(tuple(args), kwargs, codec)
    return NewTask(task_id, values["queue"], spec.name, payload, codec, values.get("priority", 0),
                   opts.not_before(values, time.time() if now is None else now), opts.stored(values),
                   values.get("after", []))


def _before_submit(name: str, args: tuple[Any, ...] | list[Any], kwargs: dict[str, Any],
                   given: dict[str, Any]) -> tuple[tuple[Any, ...], dict[str, Any], dict[str, Any]]:
    """Let the client middleware see the submit and add options and headers to it."""
    options = dict(given)
    given_headers = options.pop("headers", None)
    headers = opts.validate("headers", given_headers) if given_headers is not None else {}
    call = middleware.SubmitCall(name, tuple(args), dict(kwargs), options, headers)
    middleware.before_submit(call)
    options = dict(call.options)
    if call.headers:
        options["headers"] = dict(call.headers)
    return call.args, call.kwargs, options
