"""Multi-host PostgreSQL connection strings (the database failing over): recognised as a
store in both of libpq's forms, and their passwords never shown."""

from __future__ import annotations

import pytest

from conveyor.store.dsn import is_postgres, passwords, redact, scrub

URL = "postgresql://app:url-pw-1@db1:5432,db2:5433/jobs?target_session_attrs=read-write"
KV = "host=db1,db2 port=5432,5433 user=app password='kv pw 2' dbname=jobs target_session_attrs=read-write"
QUERY = "postgres://db1:5432,db2:5433/jobs?password=q-pw-3&target_session_attrs=read-write"


@pytest.mark.parametrize("dsn", [URL, KV, QUERY, "host=a,b target_session_attrs=read-write",
                                 "service=jobs", "dbname=jobs"])
def test_multi_host_strings_are_postgres_stores(dsn):
    assert is_postgres(dsn)


@pytest.mark.parametrize("path", ["/var/lib/conveyor", "data", "./host=x", "a b=c", "data=1",
                                  "C:\\conveyor\\data", ":memory:"])
def test_directories_are_not(path):
    assert not is_postgres(path)


@pytest.mark.parametrize(("dsn", "secret"), [(URL, "url-pw-1"), (KV, "kv pw 2"), (QUERY, "q-pw-3")])
def test_the_password_of_a_multi_host_string_is_never_shown(dsn, secret):
    shown = redact(dsn)
    assert secret not in shown and "***" in shown
    # The hosts stay: the operator must see which servers the master tries.
    assert "db1" in shown and "db2" in shown and "target_session_attrs=read-write" in shown
    assert secret in passwords(dsn)
    error = f'connection to server at "db2" failed for {dsn}: password {secret} rejected'
    assert secret not in scrub(error, dsn)
