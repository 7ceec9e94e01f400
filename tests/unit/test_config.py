"""The TOML configuration file: what it may hold, and flag > environment > file > default."""

from __future__ import annotations

import pytest

from conveyor.config import ConfigError, authkey_source, config_path, load_file, resolve


def write(tmp_path, text):
    path = tmp_path / "conveyor.toml"
    path.write_text(text)
    return str(path)


def test_file_values_are_checked_and_typed(tmp_path):
    path = write(tmp_path, '[master]\nbind = "0.0.0.0:7800"\nlease = 30\npickle = true\n'
                           '[worker]\nmodules = ["tasks"]\nqueues = ["high:3", "low:1"]\nconcurrency = 4\n')
    doc = load_file(path)
    assert doc["master"] == {"bind": "0.0.0.0:7800", "lease": 30.0, "pickle": True}
    assert isinstance(doc["master"]["lease"], float)
    assert doc["worker"] == {"modules": ["tasks"], "queues": ["high:3", "low:1"], "concurrency": 4}


@pytest.mark.parametrize(("text", "message"), [
    ('[master]\nbnd = "x"\n', "unknown key 'bnd' in [master]"),
    ('[workers]\n', "unknown table [workers] (expected [master] or [worker])"),
    ('[master]\nlease = "long"\n', "[master]: lease must be a number, not 'long'"),
    ('[master]\nlease = -1\n', "[master]: lease must be positive, not -1.0"),
    ('[master]\nsync = "always"\n', "[master]: sync must be one of normal, full, not 'always'"),
    ('[worker]\nconcurrency = true\n', "[worker]: concurrency must be an integer, not True"),
    ('[worker]\nmodules = [1]\n', "[worker]: modules must be a list of non-empty strings, not [1]"),
    ("[master\n", "is not valid TOML"),
])
def test_bad_files_are_one_line_naming_the_key(tmp_path, text, message):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_file(path)
    assert message in str(info.value) and "\n" not in str(info.value)
    assert str(info.value).startswith(f"config file {path}")


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="cannot read config file .*nope.toml: No such file or directory"):
        load_file(str(tmp_path / "nope.toml"))


def test_precedence_flag_env_file_default():
    file = {"connect": "file:1", "concurrency": 3, "pool": "thread"}
    env = {"CONVEYOR_ADDRESS": "env:2"}
    got = resolve("worker", {"connect": None, "concurrency": None, "pool": "asyncio"}, file, env)
    assert got["connect"] == "env:2" and got["concurrency"] == 3 and got["pool"] == "asyncio"
    assert got["connect_timeout"] == 10.0 and got["queues"] == "default"  # defaults
    assert resolve("worker", {"connect": "flag:3"}, file, env)["connect"] == "flag:3"
    assert resolve("worker", {}, file, {})["connect"] == "file:1"
    assert resolve("worker", {}, {}, {})["connect"] == "127.0.0.1:7700"


def test_config_path_and_authkey_source():
    assert config_path("a.toml", {"CONVEYOR_CONFIG": "b.toml"}) == "a.toml"
    assert config_path(None, {"CONVEYOR_CONFIG": "b.toml"}) == "b.toml"
    assert config_path(None, {}) is None
    assert authkey_source("flag.key", "file.key", {"CONVEYOR_AUTHKEY": "k"}) == "flag.key"
    assert authkey_source(None, "file.key", {"CONVEYOR_AUTHKEY": "k"}) is None  # the environment's key
    assert authkey_source(None, "file.key", {}) == "file.key"
