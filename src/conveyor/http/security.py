"""Login and CSRF protection for the dashboard: it can retry, cancel and purge.

* Login: one shared secret (a password or token) read from a file or an
  environment variable. A successful login gets a random session id in an
  HttpOnly, SameSite=Strict cookie; sessions live in this process only.
  Prometheus may send the secret as ``Authorization: Bearer SECRET`` instead.
* CSRF: every browser gets a random ``conveyor_csrf`` cookie; every form
  carries HMAC(server secret, that cookie). A POST whose field does not match
  its cookie is refused before anything is done. A forging site can neither
  read the cookie nor compute the HMAC.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path

ENV_LOGIN = "CONVEYOR_DASHBOARD_TOKEN"
SESSION_COOKIE = "conveyor_session"
CSRF_COOKIE = "conveyor_csrf"
CSRF_FIELD = "csrf_token"


def load_login_secret(path: str | None) -> str | None:
    """The login secret: the file's first line if ``path`` is given, else ``CONVEYOR_DASHBOARD_TOKEN``.

    None when neither is set. An empty secret is refused (it would let anyone in).
    """
    if path:
        text = Path(path).read_text(encoding="utf-8").strip()
        if not text:
            raise ValueError(f"login file {path} is empty")
        return text.splitlines()[0].strip()
    value = os.environ.get(ENV_LOGIN, "").strip()
    return value or None


@dataclass
class Guard:
    """Checks logins, sessions and CSRF tokens; ``secret`` None means no login is asked."""

    secret: str | None
    metrics_public: bool = False
    _key: bytes = field(default_factory=lambda: secrets.token_bytes(32))
    _sessions: set[str] = field(default_factory=set)

    @property
    def login_required(self) -> bool:
        """True when pages need a login."""
        return self.secret is not None

    def check_secret(self, given: str) -> bool:
        """True if ``given`` is the login secret (compared in constant time)."""
        if self.secret is None:
            return True
        return hmac.compare_digest(given.encode(), self.secret.encode())

    def new_session(self) -> str:
        """A fresh session id for a successful login."""
        sid = secrets.token_urlsafe(32)
        self._sessions.add(sid)
        return sid

    def end_session(self, sid: str | None) -> None:
        """Log a session out."""
        if sid:
            self._sessions.discard(sid)

    def is_logged_in(self, sid: str | None, authorization: str | None = None) -> bool:
        """True if no login is asked, or the session cookie or bearer token is valid."""
        if self.secret is None:
            return True
        if sid and sid in self._sessions:
            return True
        if authorization and authorization.startswith("Bearer "):
            return self.check_secret(authorization[len("Bearer "):].strip())
        return False

    @staticmethod
    def new_csrf_cookie() -> str:
        """A fresh random value for a browser's CSRF cookie."""
        return secrets.token_urlsafe(24)

    def csrf_token(self, cookie: str) -> str:
        """The form token that goes with the CSRF cookie ``cookie``."""
        return hmac.new(self._key, cookie.encode(), hashlib.sha256).hexdigest()

    def csrf_ok(self, cookie: str | None, token: str | None) -> bool:
        """True if the form's ``token`` matches the browser's CSRF ``cookie``."""
        if not cookie or not token:
            return False
        return hmac.compare_digest(self.csrf_token(cookie), token)
