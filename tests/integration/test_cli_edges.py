"""The conveyor command's rough edges, each message checked word for word with real processes:
addresses, broken pipes, authkeys, the worker's connect timeout, unserved queues, inspect,
fitted tables, status --watch, confirmations."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys

import pytest

import conveyor

from .conftest import ROOT, TASKS
from .test_cli import free_port, run


def env_of(cluster, **extra):
    return {"CONVEYOR_AUTHKEY": cluster.authkey.decode(), **extra}


def one_line(proc) -> str:
    """The single stderr line of a failed command (and that it is one)."""
    assert proc.returncode != 0, proc.stdout
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr, proc.stderr
    return proc.stderr.strip()


@pytest.fixture
def master(make_cluster):
    """A master alone, no workers."""
    c = make_cluster(workers=0)
    c.start_master()
    return c


def test_addresses_bad_and_bare(master):
    env = env_of(master)
    assert one_line(run("status", "-c", "http://127.0.0.1:7700", env=env)) == (
        "conveyor status: error: 'http://127.0.0.1:7700' is not a conveyor address: "
        "use host:port, tcp://host:port or tls://host:port")
    assert one_line(run("status", "-c", "127.0.0.1:99999", env=env)) == (
        "conveyor status: error: invalid address '127.0.0.1:99999': port must be a number from 1 to 65535")
    assert one_line(run("submit", f"{TASKS}:add", "1", "-c", "host:port", env=env)) == (
        "conveyor submit: error: invalid address 'host:port': port must be a number from 1 to 65535")
    bare = run("status", "-c", str(master.port), env=env)  # a bare port is that port on 127.0.0.1
    assert bare.returncode == 0, bare.stderr
    assert bare.stdout.startswith("master ")


def test_broken_pipe_is_a_quiet_exit(master):
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone before anything is written, as with `| head -1` done early
    try:
        proc = subprocess.run([sys.executable, "-m", "conveyor", "status", "-c", master.address],
                              stdout=write_end, stderr=subprocess.PIPE, text=True, timeout=60, cwd=ROOT,
                              env={**os.environ, **env_of(master)})
    finally:
        os.close(write_end)
    assert proc.returncode == 1
    assert proc.stderr == ""


def test_missing_key_is_told_apart_from_a_wrong_key(master):
    missing = run("status", "-c", master.address, env={"CONVEYOR_AUTHKEY": ""})
    assert one_line(missing) == "conveyor status: error: no authkey configured (set CONVEYOR_AUTHKEY or --authkey-file)"
    wrong = run("status", "-c", master.address, env={"CONVEYOR_AUTHKEY": "wrong"})
    assert one_line(wrong) == "conveyor status: error: authentication failed"
    worker = run("worker", TASKS, "-c", master.address, env={"CONVEYOR_AUTHKEY": ""})
    assert one_line(worker) == ("conveyor worker: error: no authkey configured "
                                "(set CONVEYOR_AUTHKEY or --authkey-file)")


def test_master_without_key_warns(tmp_path):
    proc = subprocess.Popen([sys.executable, "-m", "conveyor", "master", "--bind", "127.0.0.1:0",
                             "--data", ":memory:"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=ROOT, env={**os.environ, "CONVEYOR_AUTHKEY": ""})
    try:
        assert "listening on tcp://127.0.0.1:" in proc.stdout.readline()
        # Logged before the line above: among the log lines already written.
        warning = next(line for line in iter(proc.stderr.readline, "") if "WARNING" in line)
    finally:
        proc.terminate()
        proc.wait(30)
    assert warning.rstrip().endswith(
        "WARNING conveyor.cli: no authkey configured: any local process may connect and submit tasks "
        "(set CONVEYOR_AUTHKEY or --authkey-file)")


def test_worker_connect_timeout_gives_up_as_its_help_says():
    port = free_port()
    help_text = run("worker", "--help").stdout
    assert "--connect-timeout S, --timeout S" in help_text
    assert ("seconds to keep trying to reach the master at start-up before giving up (default 10)"
            in " ".join(help_text.split()))
    for flag in ("--connect-timeout", "--timeout"):  # the old name stays an alias
        proc = run("worker", TASKS, "-c", f"127.0.0.1:{port}", flag, "1", "--log-level", "ERROR",
                   env={"CONVEYOR_AUTHKEY": "k"}, timeout=60)
        assert one_line(proc) == (f"conveyor worker: error: cannot connect to master at tcp://127.0.0.1:{port}: "
                                  "Connection refused (gave up after --connect-timeout 1s)")


def test_worker_started_with_its_master_waits_for_it(tmp_path):
    """A worker started before its master keeps trying (it used to give up at once on a refusal)."""
    port = free_port()
    env = {**os.environ, "CONVEYOR_AUTHKEY": "k"}
    worker = subprocess.Popen([sys.executable, "-m", "conveyor", "worker", TASKS, "-c", f"127.0.0.1:{port}",
                               "--connect-timeout", "60", "--name", "early"], cwd=ROOT, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    master = None
    try:
        assert "Connection refused; retrying in" in worker.stderr.readline()  # it tried, and goes on
        master, line = _start_master("--bind", f"127.0.0.1:{port}", "--data", ":memory:", env={"CONVEYOR_AUTHKEY": "k"})
        assert "listening" in line
        with conveyor.connect(f"127.0.0.1:{port}", b"k") as client:
            assert client.submit(f"{TASKS}:add", 2, 3).result(60) == 5
            assert [w["name"] for w in client.status()["workers"]] == ["early"]
    finally:
        for proc in (worker, master):
            if proc is not None:
                proc.terminate()
                proc.wait(30)


def test_submit_to_an_unserved_queue_says_so(make_cluster):
    cluster = make_cluster(workers=1).start()
    cluster.wait_for_workers(1)
    env = env_of(cluster)
    proc = run("submit", f"{TASKS}:add", "1", "-c", cluster.address, "-q", "nobody-serves", env=env)
    assert proc.returncode == 0
    assert proc.stderr == ("warning: no connected worker serves queue 'nobody-serves': "
                           "the task waits in the queue until one does\n")
    assert re.fullmatch(r"[0-9a-f]{32}\n", proc.stdout)
    served = run("submit", f"{TASKS}:add", "1", "2", "-c", cluster.address, "--wait", env=env)
    assert served.returncode == 0 and served.stdout == "3\n" and served.stderr == ""


def test_inspect_shows_arguments_and_every_failure(make_cluster):
    cluster = make_cluster(workers=1).start()
    cluster.wait_for_workers(1)
    env = env_of(cluster)
    with cluster.client() as client:
        once = client.submit(f"{TASKS}:fail", "no retries")
        twice = client.submit(f"{TASKS}:fail", "twice", retries=1, retry_backoff=0.01)
        for fut in (once, twice):
            with pytest.raises(Exception, match="ValueError"):
                fut.result(60)
        doc = client.inspect(once.task_id)
    out = run("inspect", once.task_id, "-c", cluster.address, env=env).stdout
    assert "\nattempt 1 failed" in out and ": ValueError: no retries\nTraceback (most recent call last):" in out
    assert "attempt 2 failed" not in out
    if "args" in doc:  # masters that send the arguments
        assert '\nargs      ["no retries"]\n' in out
    out = run("inspect", twice.task_id, "-c", cluster.address, env=env).stdout
    assert out.count(": ValueError: twice\nTraceback (most recent call last):") == 2
    assert "\nattempt 1 failed" in out and "\nattempt 2 failed" in out


def _columns_aligned(lines: list[str]) -> bool:
    """Every row ends its right-aligned number columns where the header ends them."""
    ends = [[m.end() for m in re.finditer(r"\S+", line)] for line in lines]
    return all(row[-3:] == ends[0][-3:] for row in ends[1:])


def test_status_and_tasks_tables_fit_long_names(make_cluster):
    cluster = make_cluster(workers=0)
    cluster.start_master()
    long_worker = "w-" + "x" * 70
    cluster.start_worker("--name", long_worker)
    cluster.wait_for_workers(1)
    env = env_of(cluster)
    long_queue = "q-" + "y" * 70
    with cluster.client() as client:
        for queue in ("a", long_queue):
            client.submit(f"{TASKS}:add", 1, queue=queue, countdown=3600)
    out = run("status", "-c", cluster.address, env=env).stdout.splitlines()
    start = out.index(next(line for line in out if line.startswith("QUEUE")))
    table = out[start:start + 3]
    assert table[0].split() == ["QUEUE", "WAITING", "DELAYED", "READY", "LEASED", "SUCCEEDED", "FAILED",
                                "DEAD", "CANCELLED"]
    assert _columns_aligned(table)
    assert long_queue not in "\n".join(out) and long_queue[:47] + "…" in table[2]
    worker_header = next(line for line in out if line.startswith("WORKER"))
    assert ("RUNNING" in worker_header and "PREFETCHED" in worker_header) or "INFLIGHT" in worker_header
    worker_row = out[out.index(worker_header) + 1]
    assert worker_row.startswith(long_worker[:47] + "…")
    tasks = run("tasks", "-c", cluster.address, env=env).stdout.splitlines()
    assert tasks[0].split() == ["TASK", "STATE", "QUEUE", "ATTEMPTS", "SUBMITTED", "FINISHED", "NAME"]
    assert [line.split()[2] for line in tasks[1:]] == [long_queue[:47] + "…", "a"]  # newest first
    assert tasks[1].index(f"{TASKS}:add") == tasks[2].index(f"{TASKS}:add")
    oldest = run("tasks", "--oldest", "-c", cluster.address, env=env).stdout.splitlines()
    assert [line.split()[2] for line in oldest[1:]] == ["a", long_queue[:47] + "…"]
    assert run("tasks", "-q", "none", "-c", cluster.address, env=env).stdout == "no tasks in queue 'none'\n"
    assert run("tasks", "-s", "dead", "-c", cluster.address, env=env).stdout == "no tasks in state dead\n"


def test_status_watch_redraws_until_ctrl_c(master):
    proc = subprocess.Popen([sys.executable, "-m", "conveyor", "status", "-c", master.address, "--watch", "0.1"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
                            env={**os.environ, **env_of(master)})
    frames = 0
    try:
        while frames < 2:
            line = proc.stdout.readline()
            assert line, proc.stderr.read()
            frames += line.startswith("master ")
        proc.send_signal(signal.SIGINT)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert frames == 2


def test_destructive_commands_ask_first(master):
    env = env_of(master)
    with master.client() as client:
        ids = [client.submit(f"{TASKS}:add", i, queue="later", countdown=3600).task_id for i in range(3)]
        client.submit(f"{TASKS}:add", 9, queue="other", countdown=3600)
    refused = run("cancel", "--queue", "later", "-c", master.address, env=env)
    assert one_line(refused) == ("conveyor cancel: error: cancel (queue 'later', state "
                                 "waiting/delayed/ready/leased) would touch 3 task(s): pass --yes to confirm "
                                 "(stdin is not a terminal to ask on)")
    with master.client() as client:
        assert {client.inspect(t)["state"] for t in ids} == {"delayed"}
    done = run("cancel", "--queue", "later", "--yes", "-c", master.address, env=env)
    assert done.returncode == 0 and done.stdout == "cancelled 3 task(s)\n"
    refused = run("retry", "--queue", "later", "--state", "cancelled", "-c", master.address, env=env)
    assert one_line(refused) == ("conveyor retry: error: retry (queue 'later', state cancelled) would touch "
                                 "3 task(s): pass --yes to confirm (stdin is not a terminal to ask on)")
    refused = run("purge", "--state", "cancelled", "-c", master.address, env=env)
    assert one_line(refused) == ("conveyor purge: error: purge (every queue, state cancelled) would touch "
                                 "3 task(s): pass --yes to confirm (stdin is not a terminal to ask on)")
    purged = run("purge", "--state", "cancelled", "--yes", "-c", master.address, env=env)
    assert purged.stdout == "purged 3 task(s)\n"
    with master.client() as client:
        assert client.status()["queues"]["other"]["delayed"] == 1  # other queues untouched
    nothing = run("purge", "-c", master.address, env=env)  # nothing to touch: nothing to ask
    assert nothing.returncode == 0 and nothing.stdout == "no tasks to purge (every queue, state dead)\n"


def _start_master(*args, env):
    proc = subprocess.Popen([sys.executable, "-m", "conveyor", "master", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True, cwd=ROOT, env={**os.environ, **env})
    return proc, proc.stdout.readline()


def test_config_file_for_master_and_worker_flags_and_env_override(make_cluster, tmp_path):
    port, other = free_port(), free_port()
    config = tmp_path / "conveyor.toml"
    config.write_text(f'[master]\nbind = "127.0.0.1:{port}"\ndata = ":memory:"\nsync = "full"\n'
                      f'[worker]\nmodules = ["{TASKS}"]\nqueues = "cfg-q"\nname = "from-file"\n'
                      'connect = "127.0.0.1:1"\nconcurrency = 1\n')
    procs = []
    try:
        proc, line = _start_master("--config", str(config), env={"CONVEYOR_AUTHKEY": "k"})
        procs.append(proc)
        assert line.startswith(f"conveyor master {conveyor.__version__} listening on "
                               f"tcp://127.0.0.1:{port} (store: :memory:, sync: full)")
        proc, line = _start_master("--bind", f"127.0.0.1:{other}",  # a flag beats the file ($CONVEYOR_CONFIG)
                                   env={"CONVEYOR_AUTHKEY": "k", "CONVEYOR_CONFIG": str(config)})
        procs.append(proc)
        assert f"listening on tcp://127.0.0.1:{other} (store: :memory:, sync: full)" in line
        # The worker takes its modules, queues and name from the file, its address from the environment.
        worker = subprocess.Popen([sys.executable, "-m", "conveyor", "worker", "--config", str(config)],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT,
                                  env={**os.environ, "CONVEYOR_AUTHKEY": "k",
                                       "CONVEYOR_ADDRESS": f"127.0.0.1:{port}"})
        procs.append(worker)
        with conveyor.connect(f"127.0.0.1:{port}", b"k") as client:
            fut = client.submit(f"{TASKS}:whoami", queue="cfg-q")
            fut.result(60)
            workers = client.status()["workers"]
        assert [(w["name"], w["queues"], w["concurrency"]) for w in workers] == [("from-file", ["cfg-q"], 1)]
    finally:
        for p in procs:
            p.terminate()
            p.wait(30)


def test_bad_config_is_one_line_naming_the_key(tmp_path):
    config = tmp_path / "bad.toml"
    config.write_text('[master]\nlease = "long"\n')
    proc = run("master", "--config", str(config), "--data", ":memory:", env={"CONVEYOR_AUTHKEY": "k"})
    assert one_line(proc) == (f"conveyor master: error: config file {config} [master]: "
                              "lease must be a number, not 'long'")
    config.write_text('[worker]\nqueue = "a"\n')
    proc = run("worker", TASKS, env={"CONVEYOR_CONFIG": str(config)})
    assert one_line(proc).startswith(f"conveyor worker: error: config file {config}: unknown key 'queue' "
                                     "in [worker] (known: ")


def test_confirmation_on_a_terminal(master):
    import pty

    env = env_of(master)
    with master.client() as client:
        for i in range(2):
            client.submit(f"{TASKS}:add", i, queue="ask", countdown=3600)
    for answer, expected_out, left in ((b"n\n", "not cancelled\n", 2), (b"y\n", "cancelled 2 task(s)\n", 0)):
        main_fd, terminal = pty.openpty()
        try:
            os.write(main_fd, answer)  # typed before the question: the terminal keeps it
            proc = subprocess.run([sys.executable, "-m", "conveyor", "cancel", "--queue", "ask", "-c",
                                   master.address], stdin=terminal, capture_output=True, text=True, timeout=60,
                                  cwd=ROOT, env={**os.environ, **env})
        finally:
            os.close(terminal)
            os.close(main_fd)
        assert proc.stderr == "cancel (queue 'ask', state waiting/delayed/ready/leased): 2 task(s). Go ahead? [y/N] "
        assert proc.stdout == expected_out
        with master.client() as client:
            assert client.status()["queues"]["ask"]["delayed"] == left
