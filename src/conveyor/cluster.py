"""A master and workers as real processes on this machine, for demos, tests and benchmarks.

Each process is started with ``python -m conveyor`` and stopped by its own
PID: SIGTERM first, SIGKILL if it does not go within the grace period.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, BinaryIO

from .client.client import Client

_LISTENING = re.compile(r"listening on (tcp|tls)://(\S+):(\d+)")


class LocalCluster:
    """A master on the embedded store plus ``workers`` worker processes on 127.0.0.1.

    The master binds port 0 (a free port chosen by the OS) unless ``port``
    is given; the data directory is a temporary one unless ``data`` is given.
    Use as a context manager: every process is stopped on exit.
    """

    def __init__(
        self,
        *,
        workers: int = 2,
        modules: Sequence[str] = ("conveyor.demo",),
        concurrency: int | None = None,
        data: str | os.PathLike[str] | None = None,
        sync: str = "normal",
        authkey: bytes | None = None,
        port: int = 0,
        master_args: Sequence[str] = (),
        worker_args: Sequence[str] = (),
        cwd: str | os.PathLike[str] | None = None,
        log_dir: str | os.PathLike[str] | None = None,
        start_timeout: float = 20.0,
    ) -> None:
        # A temporary folder only for what the caller did not place; removed on exit.
        self._tmp = tempfile.mkdtemp(prefix="conveyor-cluster-") if data is None or log_dir is None else None
        self.data = Path(data) if data is not None else Path(self._tmp or ".") / "data"
        self.log_dir = Path(log_dir) if log_dir is not None else Path(self._tmp or ".") / "logs"
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.authkey = authkey if authkey is not None else secrets.token_hex(16).encode()
        self.n_workers = workers
        self.modules = list(modules)
        self.concurrency = concurrency
        self.sync = sync
        self.port = port
        self.master_args = list(master_args)
        self.worker_args = list(worker_args)
        self.cwd = str(cwd) if cwd is not None else None
        self.start_timeout = start_timeout
        self.master: subprocess.Popen[bytes] | None = None
        self.workers: list[subprocess.Popen[bytes]] = []
        self._counter = 0
        self._log_paths: dict[int, Path] = {}

    @property
    def address(self) -> str:
        """``127.0.0.1:PORT`` of the running master."""
        return f"127.0.0.1:{self.port}"

    def env(self) -> dict[str, str]:
        """The environment the cluster's processes get (carries the authkey)."""
        env = dict(os.environ)
        env["CONVEYOR_AUTHKEY"] = self.authkey.decode()
        env["CONVEYOR_ADDRESS"] = self.address
        env.setdefault("PYTHONUNBUFFERED", "1")
        return env

    def _log(self, name: str) -> BinaryIO:
        self._counter += 1
        self._last_log = self.log_dir / f"{self._counter:03d}-{name}.log"
        return open(self._last_log, "wb")

    def log_path(self, proc: subprocess.Popen[bytes]) -> Path:
        """The log file of a process this cluster started (its stderr; a worker's stdout too)."""
        return self._log_paths[proc.pid]

    def start_master(self) -> subprocess.Popen[bytes]:
        """Start (or restart, on the same data and port) the master and wait until it listens."""
        cmd = [sys.executable, "-m", "conveyor", "master", "--bind", f"127.0.0.1:{self.port}",
               "--data", str(self.data), "--sync", self.sync, *self.master_args]
        with self._log("master") as err:
            proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, env=self.env(), cwd=self.cwd)
        self._log_paths[proc.pid] = self._last_log
        self.master = proc
        deadline = time.monotonic() + self.start_timeout
        line = b""
        while time.monotonic() < deadline:
            line = proc.stdout.readline() if proc.stdout else b""
            if line or proc.poll() is not None:
                break
        match = _LISTENING.search(line.decode(errors="replace"))
        if not match:
            self._kill(proc)
            raise RuntimeError(f"master did not start: {line.decode(errors='replace').strip() or 'no output'}; "
                               f"see {self.log_dir}")
        self.port = int(match.group(3))
        return proc

    def start_worker(self, *extra: str, modules: Sequence[str] | None = None) -> subprocess.Popen[bytes]:
        """Start one more worker process."""
        cmd = [sys.executable, "-m", "conveyor", "worker", *(modules or self.modules),
               "--connect", self.address, *self.worker_args, *extra]
        if self.concurrency and "--concurrency" not in extra and "-n" not in extra:
            cmd += ["--concurrency", str(self.concurrency)]
        with self._log("worker") as err:
            proc = subprocess.Popen(cmd, stdout=err, stderr=subprocess.STDOUT, env=self.env(), cwd=self.cwd)
        self._log_paths[proc.pid] = self._last_log
        self.workers.append(proc)
        return proc

    def stop_worker(self, proc: subprocess.Popen[bytes], grace: float = 10.0) -> None:
        """Stop one worker started by this cluster (SIGTERM: a warm stop; SIGKILL after ``grace``)."""
        self._kill(proc, signal.SIGTERM, grace)
        if proc in self.workers:
            self.workers.remove(proc)

    def start(self) -> LocalCluster:
        """Start the master and the workers."""
        self.start_master()
        for _ in range(self.n_workers):
            self.start_worker()
        return self

    def client(self, **kwargs: Any) -> Client:
        """A client connected to this cluster's master."""
        return Client(self.address, self.authkey, **kwargs)

    def wait_for_workers(self, n: int | None = None, timeout: float = 30.0) -> None:
        """Block until ``n`` workers (default: all started and alive) are connected."""
        want = n if n is not None else sum(1 for w in self.workers if w.poll() is None)
        deadline = time.monotonic() + timeout
        with self.client() as c:
            while time.monotonic() < deadline:
                if len(c.status()["workers"]) >= want:
                    return
                time.sleep(0.05)
        raise TimeoutError(f"{want} worker(s) did not connect within {timeout}s; see {self.log_dir}")

    def kill_master(self, sig: int = signal.SIGKILL) -> None:
        """Send ``sig`` to the master and reap it."""
        if self.master is not None:
            self._kill(self.master, sig)

    @staticmethod
    def _kill(proc: subprocess.Popen[bytes], sig: int = signal.SIGKILL, grace: float = 10.0) -> None:
        if proc.poll() is None:
            try:
                proc.send_signal(sig)
            except ProcessLookupError:
                pass
            try:
                proc.wait(grace)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        if proc.stdout:
            proc.stdout.close()

    def stop(self, grace: float = 10.0) -> None:
        """Stop workers, then the master (SIGTERM, then SIGKILL after ``grace``)."""
        for w in self.workers:
            if w.poll() is None:
                w.send_signal(signal.SIGTERM)  # once: a second SIGTERM means a cold stop
        deadline = time.monotonic() + grace
        for w in self.workers:
            try:
                w.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                self._kill(w, signal.SIGKILL)
        if self.master is not None:
            self._kill(self.master, signal.SIGTERM, grace)

    def logs(self) -> str:
        """Every process's log, for a failing test's report."""
        parts = []
        for path in sorted(self.log_dir.glob("*.log")):
            parts.append(f"==== {path.name}\n{path.read_text(errors='replace')[-4000:]}")
        return "\n".join(parts)

    def __enter__(self) -> LocalCluster:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc: object) -> None:
        self.stop()
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
