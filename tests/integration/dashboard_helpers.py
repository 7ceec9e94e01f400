"""Start ``conveyor dashboard`` as a real process and talk HTTP to it like a browser would."""

from __future__ import annotations

import http.cookiejar
import os
import re
import signal
import subprocess
import sys
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field

from conveyor.cluster import LocalCluster

from ..waiting import wait_until
from .conftest import ROOT

__all__ = ["Browser", "Dashboard", "Reply", "run_dashboard_cli", "wait_until"]

_LISTENING = re.compile(r"dashboard listening on (http://\S+)")
_CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')


@dataclass
class Reply:
    """One HTTP answer: status, final URL (after redirects), headers and body text."""

    status: int
    url: str
    body: str
    headers: dict = field(default_factory=dict)


class Browser:
    """A cookie-keeping HTTP client that follows redirects, like a browser without JavaScript."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.jar = http.cookiejar.CookieJar()
        self.opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(self.jar))

    def _open(self, req: urllib.request.Request) -> Reply:
        try:
            with self.opener.open(req, timeout=60) as resp:
                return Reply(resp.status, resp.url, resp.read().decode(), dict(resp.headers))
        except urllib.error.HTTPError as exc:
            return Reply(exc.code, exc.url, exc.read().decode(), dict(exc.headers))

    def get(self, path: str, headers: dict | None = None) -> Reply:
        return self._open(urllib.request.Request(self.base + path, headers=headers or {}))

    def post(self, path: str, data: dict | list, *, csrf: bool = True) -> Reply:
        """POST a form; with ``csrf`` the token is read from a page first, as the page's form carries it."""
        pairs = list(data.items()) if isinstance(data, dict) else list(data)
        if csrf:
            pairs.append(("csrf_token", self.csrf()))
        body = urllib.parse.urlencode(pairs).encode()
        return self._open(urllib.request.Request(self.base + path, data=body, method="POST"))

    def csrf(self) -> str:
        page = self.get("/login")
        match = _CSRF.search(page.body)
        assert match, page.body[:500]
        return match.group(1)


class Dashboard:
    """A ``conveyor dashboard`` process for ``cluster`` on a free port; stopped by ``stop``."""

    def __init__(self, cluster: LocalCluster, *args: str, env: dict | None = None,
                 interval: float = 0.3) -> None:
        self.log = cluster.log_dir / "dashboard.log"
        cmd = [sys.executable, "-m", "conveyor", "dashboard", "--connect", cluster.address,
               "--bind", "127.0.0.1:0", "--interval", str(interval), "--timeout", "2", *args]
        with open(self.log, "ab") as err:
            self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, cwd=ROOT,
                                         env={**cluster.env(), **(env or {})})
        line = self.proc.stdout.readline().decode() if self.proc.stdout else ""
        match = _LISTENING.search(line)
        if not match:
            self.stop()
            raise RuntimeError(f"dashboard did not start: {line!r}; {self.log.read_text()[-2000:]}")
        self.url = match.group(1)

    def browser(self) -> Browser:
        return Browser(self.url)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        if self.proc.stdout:
            self.proc.stdout.close()


def run_dashboard_cli(*args: str, env: dict | None = None, timeout: float = 30) -> subprocess.CompletedProcess:
    """Run ``conveyor dashboard ARGS`` expecting it to exit by itself (a refusal)."""
    return subprocess.run([sys.executable, "-m", "conveyor", "dashboard", *args], capture_output=True,
                          text=True, timeout=timeout, cwd=ROOT, env={**os.environ, **(env or {})})
