"""The tasks the examples run.

Workers run only functions defined in the modules they were started with, so
every example starts its workers with ``modules=["example_tasks"]`` and
``cwd=`` this directory (the worker's current directory is importable). The
example scripts import the same module to name the tasks they submit:
``client.submit(example_tasks.square, 7)`` sends the task name
``"example_tasks:square"``, never code.

They are plain module-level functions; ``@conveyor.task`` only adds defaults.
"""

from __future__ import annotations

import os
import time

import conveyor

# -- quickstart ---------------------------------------------------------------------


def square(n):
    return n * n


def slow_square(n, delay=0.1):
    time.sleep(delay)
    return n * n


def divide(a, b):
    return a / b  # divide(1, 0) raises ZeroDivisionError on the worker


# -- helpers for tasks that keep state between attempts -----------------------------


def _count(path):
    """Append one line to ``path`` and return how many lines were there before.

    Each attempt of a task may run in another process (or on another machine),
    so the examples count attempts in a file they pass to the task.
    """
    n = len(open(path).read().split()) if os.path.exists(path) else 0
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, b"x\n")
    finally:
        os.close(fd)
    return n


# -- retries ------------------------------------------------------------------------


def fetch(counter, fail_times):
    """A call to a flaky service: ConnectionError for the first ``fail_times`` attempts."""
    attempt = _count(counter) + 1
    if attempt <= fail_times:
        raise ConnectionError(f"service unavailable (attempt {attempt})")
    return f"fetched on attempt {attempt}"


def parse(text):
    return int(text)  # parse("abc") raises ValueError: retrying will not help


def poll_report(counter):
    """Not ready on the first attempt: ask for another one with conveyor.Retry."""
    attempt = _count(counter) + 1
    if attempt == 1:
        raise conveyor.Retry("report not ready yet", delay=0.2)
    return f"report ready on attempt {attempt}"


def import_file(path):
    """Fails until ``path`` exists: a task that needs someone to fix something."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"no such file: {os.path.basename(path)}")
    with open(path) as f:
        return f"imported {len(f.read().split())} rows"


# -- time limits --------------------------------------------------------------------


def hang(seconds):
    time.sleep(seconds)
    return "woke up"


def process_items(n_items, per_item):
    """Work through items; on the soft time limit, stop cleanly and say how far it got."""
    done = 0
    try:
        for _ in range(n_items):
            time.sleep(per_item)
            done += 1
    except conveyor.SoftTimeLimitExceeded:
        # Raised inside the task when soft_timeout passes: save partial work,
        # release resources, then return (or raise) before the hard timeout.
        return f"soft limit: saved {done} of {n_items} items, cleaned up"
    return f"all {n_items} items done"


# -- priorities, delays, rate limits, cancellation ----------------------------------


def stamp(label, delay=0.0):
    """Return [label, when it started, the pid of the worker that ran it].

    (Tasks run in child processes of the worker: its pid is their parent's.)
    """
    started = time.time()
    if delay:
        time.sleep(delay)
    return [label, started, os.getppid()]


# -- dependencies -------------------------------------------------------------------


def download(url):
    return f"<html>{url}</html>"


def word_count(upstream):
    (page,) = upstream  # pass_results: the results of the tasks waited for, as a list
    return len(page)


def publish(upstream, channel):
    (count,) = upstream
    return f"published {count} to {channel}"


def total(values, extra=0):
    return sum(values) + extra


def fail(message):
    raise ValueError(message)


# -- idempotency --------------------------------------------------------------------


def charge(order, amount, ledger):
    """Charge an order: appends to a ledger file, so running twice would charge twice."""
    with open(ledger, "a") as f:
        f.write(f"{order} {amount}\n")
    return f"charged {order} {amount}"


# -- progress -----------------------------------------------------------------------


def resize_images(n, per_image=0.1):
    task = conveyor.current_task()
    for i in range(1, n + 1):
        time.sleep(per_image)
        task.progress(i, n, message=f"image {i}/{n}")
    return n
