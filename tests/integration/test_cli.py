"""The conveyor command: status, submit, bad flags, unreachable masters, authkeys, TLS."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest

import conveyor
from conveyor.auth import client_tls_context
from conveyor.cluster import LocalCluster

from .conftest import ROOT, TASKS


def run(*args, env=None, timeout=60):
    full_env = dict(os.environ)
    full_env.update(env or {})
    return subprocess.run([sys.executable, "-m", "conveyor", *args], capture_output=True, text=True,
                          timeout=timeout, env=full_env, cwd=ROOT)


def run_many(*commands, env=None, timeout=60) -> list[subprocess.CompletedProcess]:
    """Run independent ``conveyor`` commands at once (both cores start interpreters), in order."""
    full_env = {**os.environ, **(env or {})}
    procs = [subprocess.Popen([sys.executable, "-m", "conveyor", *args], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=full_env, cwd=ROOT)
             for args in commands]
    done = []
    try:
        for args, proc in zip(commands, procs):
            out, err = proc.communicate(timeout=timeout)
            done.append(subprocess.CompletedProcess(args, proc.returncode, out, err))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    return done


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_help_on_every_command():
    commands = ([], ["master"], ["worker"], ["status"], ["submit"], ["demo"])
    for cmd, proc in zip(commands, run_many(*([*cmd, "--help"] for cmd in commands))):
        assert proc.returncode == 0 and "usage:" in proc.stdout, cmd


def test_bad_flag_is_one_line_not_a_traceback():
    proc = run("master", "--no-such-flag")
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "unrecognized arguments: --no-such-flag" in proc.stderr
    proc = run("worker", "x", "--concurrency", "zero")
    assert proc.returncode == 2 and "invalid int value" in proc.stderr and "Traceback" not in proc.stderr


def test_unreachable_master_is_one_line():
    port = free_port()
    for cmd, flag in ((["status"], "--timeout"), (["submit", "m:f", "1"], "--connect-timeout")):
        proc = run(*cmd, "--connect", f"127.0.0.1:{port}", flag, "3")
        assert proc.returncode == 1
        assert proc.stderr.strip().count("\n") == 0
        assert f"cannot connect to master at tcp://127.0.0.1:{port}" in proc.stderr


def test_status_and_submit_wait(cluster):
    env = {"CONVEYOR_AUTHKEY": cluster.authkey.decode()}
    with cluster.client() as client:  # the module shares the cluster: count from here
        before = client.status()["queues"].get("default", {})
    proc = run("submit", f"{TASKS}:add", "2", "40", "--connect", cluster.address, "--wait", env=env)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "42"
    proc = run("submit", f"{TASKS}:fail", '"nope"', "--connect", cluster.address, "--wait", env=env)
    assert proc.returncode == 1 and "ValueError: nope" in proc.stderr
    proc = run("status", "--connect", cluster.address, env=env)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "QUEUE" in out and "default" in out and "WORKER" in out
    assert out.count(f"{os.uname().nodename[:19]}") >= 2  # two workers with their host
    doc = json.loads(run("status", "--json", "--connect", cluster.address, env=env).stdout)
    counts = doc["queues"]["default"]
    assert counts["succeeded"] == before.get("succeeded", 0) + 1
    assert counts["failed"] == before.get("failed", 0) + 1
    assert {w["concurrency"] for w in doc["workers"]} == {2}
    assert all(isinstance(w["pid"], int) for w in doc["workers"])


def test_submit_passes_every_option_and_keyword_arguments(cluster):
    env = {"CONVEYOR_AUTHKEY": cluster.authkey.decode()}
    first = run("submit", f"{TASKS}:add", "1", "b=2", "--connect", cluster.address, "--wait", env=env)
    assert first.returncode == 0, first.stderr
    assert first.stdout.strip() == "3"  # b=2 went to the task as a keyword argument
    with cluster.client() as client:
        dep = client.submit(f"{TASKS}:square", 3)
        dep.result(60)
        proc = run("submit", f"{TASKS}:add", "5", "b=[1]", "--connect", cluster.address,
                   "--queue", "cli-q", "--priority", "7", "--countdown", "3600", "--timeout", "9",
                   "--soft-timeout", "4", "--retries", "2", "--retry-backoff", "0.5",
                   "--retry-backoff-max", "8", "--no-retry-jitter", "--retry-on", "KeyError",
                   "--retry-on", "ValueError", "--rate-limit", "10/m", "--after", dep.task_id,
                   "--key", "cli-key", env=env)
        assert proc.returncode == 0, proc.stderr
        task_id = proc.stdout.strip()
        info = client.inspect(task_id)
        assert task_id.startswith("key-")
        again = run("submit", f"{TASKS}:add", "5", "--connect", cluster.address, "--queue", "cli-q",
                    "--key", "cli-key", env=env)
        assert again.stdout.strip() == task_id  # one key, one task
        eta = run("submit", f"{TASKS}:square", "2", "--connect", cluster.address, "--queue", "cli-q",
                  "--eta", "2100-01-01T00:00:00+00:00", "--task-id", "cli-eta", env=env)
        assert eta.returncode == 0, eta.stderr
        eta_info = client.inspect("cli-eta")
    assert info["queue"] == "cli-q" and info["priority"] == 7 and info["state"] == "delayed"
    assert info["not_before"] > info["created_at"] + 3000
    assert info["after"] == [dep.task_id]
    assert info["options"] == {"timeout": 9.0, "soft_timeout": 4.0, "retries": 2, "retry_backoff": 0.5,
                               "retry_backoff_max": 8.0, "retry_jitter": False,
                               "retry_on": ["KeyError", "ValueError"], "rate_limit": "10/m"}
    assert eta_info["not_before"] == 4102444800.0


def test_submit_bad_option_is_one_line(cluster):
    env = {"CONVEYOR_AUTHKEY": cluster.authkey.decode()}
    cases = ((["--priority", "high"], "invalid"), (["--eta", "soon"], "eta"),
             (["--rate-limit", "fast"], "rate_limit"), (["--timeout", "0"], "timeout"),
             (["--countdown", "5", "--eta", "2100-01-01T00:00:00"], "countdown or eta"),
             (["--pass-results"], "pass_results"))
    procs = run_many(*(["submit", f"{TASKS}:add", "1", "--connect", cluster.address, *flags]
                       for flags, _ in cases), env=env)
    for (flags, fragment), proc in zip(cases, procs):
        assert proc.returncode in (1, 2), (flags, proc.stderr)
        assert fragment in proc.stderr and proc.stderr.strip().count("\n") == 0, (flags, proc.stderr)
        assert "Traceback" not in proc.stderr


def test_authkey_file_and_wrong_key_on_cli(cluster, tmp_path):
    keyfile = tmp_path / "key"
    keyfile.write_bytes(cluster.authkey + b"\n")
    proc = run("status", "--connect", cluster.address, "--authkey-file", str(keyfile),
               env={"CONVEYOR_AUTHKEY": ""})
    assert proc.returncode == 0, proc.stderr
    proc = run("status", "--connect", cluster.address, env={"CONVEYOR_AUTHKEY": "wrong"})
    assert proc.returncode == 1 and "authentication failed" in proc.stderr
    assert proc.stderr.strip().count("\n") == 0


def test_master_refuses_public_bind_without_authkey(tmp_path):
    proc = run("master", "--bind", f"0.0.0.0:{free_port()}", "--data", str(tmp_path / "d"),
               env={"CONVEYOR_AUTHKEY": ""}, timeout=20)
    assert proc.returncode == 1
    assert "refusing to listen on 0.0.0.0 without an authkey" in proc.stderr


def test_worker_with_missing_module_exits_with_one_line():
    proc = run("worker", "no_such_module_xyz", "--connect", "127.0.0.1:1")
    assert proc.returncode == 1
    assert "cannot import task module" in proc.stderr and "no_such_module_xyz" in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.fixture
def certs(tmp_path):
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key),
                    "-out", str(cert), "-days", "2", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"],
                   check=True, capture_output=True, timeout=60)
    return cert, key


def test_tls_end_to_end(make_cluster, certs):
    cert, key = certs
    cluster: LocalCluster = make_cluster(workers=0, master_args=["--tls-cert", str(cert), "--tls-key", str(key)])
    cluster.start_master()
    cluster.start_worker("--tls-ca", str(cert), "--connect", f"tls://127.0.0.1:{cluster.port}")
    ctx = client_tls_context(str(cert))
    with conveyor.connect(f"tls://127.0.0.1:{cluster.port}", cluster.authkey, ssl_context=ctx) as client:
        assert client.submit(f"{TASKS}:square", 12).result(60) == 144
    # Plain TCP to a TLS master fails cleanly, and an untrusted certificate is refused.
    with pytest.raises(conveyor.ConnectionLost):
        conveyor.connect(f"127.0.0.1:{cluster.port}", cluster.authkey, connect_timeout=3)
    with pytest.raises(conveyor.ConnectionLost):
        conveyor.connect(f"tls://127.0.0.1:{cluster.port}", cluster.authkey, connect_timeout=3)
