"""Tasks the integration tests run on real workers."""

from __future__ import annotations

import os
import time


def square(n):
    return n * n


def slow_square(n, delay=0.01):
    time.sleep(delay)
    return n * n


def add(a, b=0):
    return a + b


def fail(message):
    raise ValueError(message)


def crash(code=3):
    os._exit(code)


def sleep(seconds):
    time.sleep(seconds)
    return seconds


def record(path, n, delay=0.0):
    """Append n to a file (O_APPEND: one line per execution, even across processes)."""
    if delay:
        time.sleep(delay)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"{n}\n".encode())
    finally:
        os.close(fd)
    return n


def whoami():
    return os.getpid()


def flaky(path, fail_times, value="ok"):
    """Fail the first `fail_times` calls (counted in a file), then return value."""
    n = len(open(path).read().split()) if os.path.exists(path) else 0
    record(path, n)
    if n < fail_times:
        raise ValueError(f"flaky failure {n + 1}")
    return value


def raise_key_error():
    raise KeyError("missing")


def ask_retry(path, delay=0.05):
    n = len(open(path).read().split()) if os.path.exists(path) else 0
    record(path, n)
    if n < 1:
        import conveyor

        raise conveyor.Retry("not yet", delay=delay)
    return n


def hang(seconds=60, started=None):
    """Sleep ``seconds``; first create the file ``started``, if given, so a test can wait for the start."""
    if started:
        open(started, "w").close()
    time.sleep(seconds)
    return "woke"


def soft_limited(seconds=10):
    import conveyor

    try:
        time.sleep(seconds)
    except conveyor.SoftTimeLimitExceeded:
        return "cleaned up"
    return "finished"


def with_progress(steps=5, delay=0.1):
    import conveyor

    task = conveyor.current_task()
    for i in range(1, steps + 1):
        time.sleep(delay)
        task.progress(i, steps, message=f"step {i}")
    return steps


def total(values, extra=0):
    return sum(values) + extra


def stamp(path, label):
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"{label} {time.time()}\n".encode())
    finally:
        os.close(fd)
    return label


class Point:
    def __init__(self, x, y):
        self.x, self.y = x, y


def norm2(p):
    return Point(p.x * p.x, p.y * p.y)


def apply(fn, value):
    return fn(value)


def noisy_flaky(path, fail_times):
    """Print and log a line naming the attempt, fail the first ``fail_times`` attempts
    (counted in a file), then return "done" (attempt history and output tests)."""
    import logging
    import sys

    n = len(open(path).read().split()) if os.path.exists(path) else 0
    record(path, n)
    print(f"printed by attempt {n + 1} <script>x</script>")
    print(f"stderr of attempt {n + 1}", file=sys.stderr)
    logging.getLogger("noisy").warning("logged by attempt %d", n + 1)
    if n < fail_times:
        raise ValueError(f"noisy failure {n + 1}")
    return "done"


def chatty(n_bytes):
    """Print ``n_bytes`` of output in 1 KiB lines, then an end marker."""
    line = "y" * 1023
    for _ in range(n_bytes // 1024):
        print(line)
    print("the end")
    return n_bytes


def hang_first(path, started):
    """The first attempt (no ``path`` yet) creates ``path`` and ``started`` and hangs;
    later attempts return "second" (a worker is killed under the first)."""
    if not os.path.exists(path):
        open(path, "w").close()
        open(started, "w").close()
        time.sleep(120)
        return "first"
    return "second"
