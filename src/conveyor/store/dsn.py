"""PostgreSQL connection strings: telling one from a data directory, and hiding passwords.

Kept apart from store/postgres.py so the command line can check and print a
connection string without importing psycopg. Both of libpq's forms are accepted,
with one host or several (the database failing over: libpq connects to the first
host that suits ``target_session_attrs``): the URL form
``postgresql://user:pw@a:5432,b:5433/db?target_session_attrs=read-write`` and the
key=value form ``host=a,b port=5432,5433 dbname=db target_session_attrs=read-write``. A password must never reach a
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
# key=value form: only such pairs, separated by blanks (a value may be quoted).
_KV_FORM = re.compile(r"^\s*(?:[a-z_]+\s*=\s*(?:'(?:[^'\\]|\\.)*'|[^\s']*)\s*)+$", re.I)
_KV_KEY = re.compile(r"(?:^|\s)([a-z_]+)\s*=", re.I)
# A key=value string names a server by one of these (a directory path never reads so).
_SERVER_KEYS = frozenset({"host", "hostaddr", "dbname", "service"})


def is_postgres(target: object) -> bool:
    """True when ``target`` (a ``--store`` value) is a PostgreSQL connection string: a
    ``postgresql://`` URL, or libpq's key=value form naming a host, database or service."""
    if not isinstance(target, str):
        return False
    if target.lower().startswith(SCHEMES):
        return True
    if "=" not in target or not _KV_FORM.match(target):
        return False
    return bool(_SERVER_KEYS & {k.lower() for k in _KV_KEY.findall(target)})


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
