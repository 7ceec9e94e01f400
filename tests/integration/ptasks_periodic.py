"""A task module that declares a schedule in code: a worker serving it declares
``ptasks-tick`` to the master in its hello."""

from __future__ import annotations

import os

import conveyor

from .ptasks import log_slot

TICKS_ENV = "CONVEYOR_TEST_TICKS"


@conveyor.periodic(every=1, name="ptasks-tick", missed="skip")
def tick():
    path = os.environ.get(TICKS_ENV)
    if path:
        log_slot(path)
    return path
