"""PostgreSQL connection strings: telling one from a data directory, and hiding passwords.

Kept apart from store/postgres.py so the command line can check and print a
connection string without importing psycopg. A password must never reach a
log line, an error message or ``conveyor status``: everything conveyor shows
of a connection string goes through :func:`redact`.
"""

from __future__ import annotations

import re
from urllib.parse import unquote

SCHEMES = ("postgresql://", "postgres://")
MASK = "***"

# URL form: scheme://user:password@host... (the password runs to the last '@' of the authority).
_URL_PASSWORD = re.compile(r"^(?P<head>postgres(?:ql)?://[^:/@?#]*:)(?P<pw>[^/?#]*)(?P<at>@)", re.I)
# key=value form (and URL query parameters): password=secret or password='se cret'.
_KV_PASSWORD = re.compile(r"(?P<key>\bpassword\s*=\s*)(?P<pw>'(?:[^'\\]|\\.)*'|[^\s&]*)", re.I)


def is_postgres(target: object) -> bool:
    """True when ``target`` (a ``--store`` value) is a PostgreSQL connection URL."""
    return isinstance(target, str) and target.lower().startswith(SCHEMES)


def redact(dsn: str) -> str:
    """``dsn`` with every password replaced by ``***`` (URL userinfo and ``password=``)."""
    out = _URL_PASSWORD.sub(lambda m: m["head"] + MASK + m["at"], dsn)
    return _KV_PASSWORD.sub(lambda m: m["key"] + MASK, out)


def passwords(dsn: str) -> list[str]:
    """The password(s) spelled in ``dsn``, so an error text can be scrubbed of them."""
    found = [m["pw"] for m in _URL_PASSWORD.finditer(dsn)]
    found += [m["pw"].strip("'") for m in _KV_PASSWORD.finditer(dsn)]
    found += [unquote(p) for p in found]  # a URL's %-escaped password as the server sees it
    return sorted({p for p in found if p}, key=len, reverse=True)


def scrub(text: str, dsn: str) -> str:
    """``text`` (an error message) with the passwords of ``dsn`` masked, wherever they appear."""
    for secret in passwords(dsn):
        text = text.replace(secret, MASK)
    return redact(text)
