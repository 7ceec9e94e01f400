"""The TOML configuration file of ``conveyor master`` and ``conveyor worker``.

One file holds a ``[master]`` and a ``[worker]`` table; a key is named as its
flag without the dashes (``--heartbeat-timeout`` is ``heartbeat_timeout``).
A setting comes from, in this order: the command-line flag, the environment
variable (the few settings that have one), the file, the built-in default.
The file is ``--config FILE`` or ``$CONVEYOR_CONFIG``; without either, none.

Bad input is refused before anything starts, with one line naming the key,
because a typo that is silently ignored runs a master with the wrong settings.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from .auth import ENV_AUTHKEY

#: The environment variable naming the configuration file when ``--config`` is not given.
ENV_CONFIG = "CONVEYOR_CONFIG"
#: The environment variable giving the master's address to workers and clients.
ENV_ADDRESS = "CONVEYOR_ADDRESS"
#: The master's store (a directory, ``:memory:`` or a ``postgresql://`` URL) when no flag names one.
ENV_STORE = "CONVEYOR_STORE"

SECTIONS = ("master", "worker")


class ConfigError(ValueError):
    """A configuration file that cannot be read or holds a bad key or value (one line)."""


@dataclass(frozen=True, slots=True)
class Setting:
    """One configurable setting: its type, default and, if any, its environment variable."""

    name: str
    kind: type | tuple[type, ...]
    default: Any
    env: str | None = None
    choices: tuple[str, ...] | None = None
    check: Callable[[Any], bool] | None = None  # a further rule, e.g. "positive"
    rule: str = ""  # what ``check`` demands, for the error message

    def validate(self, value: Any, where: str) -> Any:
        """The value if it fits this setting, else ConfigError naming the key."""
        kinds = self.kind if isinstance(self.kind, tuple) else (self.kind,)
        # TOML integers are fine where a float is expected; a bool is not a number.
        if float in kinds and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if isinstance(value, bool) and bool not in kinds:
            raise ConfigError(f"{where}: {self.name} must be {_kind_name(kinds)}, not {value!r}")
        if not isinstance(value, kinds):
            raise ConfigError(f"{where}: {self.name} must be {_kind_name(kinds)}, not {value!r}")
        if isinstance(value, list) and not all(isinstance(v, str) and v for v in value):
            raise ConfigError(f"{where}: {self.name} must be a list of non-empty strings, not {value!r}")
        if self.choices is not None and value not in self.choices:
            raise ConfigError(f"{where}: {self.name} must be one of {', '.join(self.choices)}, not {value!r}")
        if self.check is not None and not self.check(value):
            raise ConfigError(f"{where}: {self.name} must be {self.rule}, not {value!r}")
        return value


def _kind_name(kinds: tuple[type, ...]) -> str:
    names = {str: "a string", int: "an integer", float: "a number", bool: "true or false",
             list: "a list of strings"}
    return " or ".join(names.get(k, k.__name__) for k in kinds)


def _positive(value: Any) -> bool:
    return bool(value > 0)


_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
_COMMON = (
    Setting("authkey_file", str, None),
    Setting("log_level", str, "INFO", choices=_LEVELS),
)
#: The master's and worker's log destination and format (conveyor.logs).
_LOGS = (
    Setting("log_file", str, None),
    Setting("log_format", str, "text", choices=("text", "json")),
)

#: What ``[master]`` may hold, with the defaults ``conveyor master`` uses.
MASTER: dict[str, Setting] = {s.name: s for s in (
    Setting("bind", str, "127.0.0.1:7700"),
    Setting("store", str, None, env=ENV_STORE),
    Setting("data", str, "conveyor-data"),
    Setting("sync", str, "normal", choices=("normal", "full")),
    Setting("tls_cert", str, None),
    Setting("tls_key", str, None),
    Setting("heartbeat_timeout", float, 15.0, check=_positive, rule="positive"),
    Setting("handshake_timeout", float, 10.0, check=_positive, rule="positive"),
    Setting("lease", float, 60.0, check=_positive, rule="positive"),
    Setting("result_ttl", float, 86400.0, check=_positive, rule="positive"),
    Setting("max_frame_size", int, 64 * 1024 * 1024, check=_positive, rule="positive"),
    # The bytes of partially received frames all connections together may hold (master/backpressure.py).
    Setting("frame_budget", int, 64 * 1024 * 1024, check=_positive, rule="positive"),
    Setting("pickle", bool, False),
    *_COMMON,
    *_LOGS,
)}

#: What ``[worker]`` may hold, with the defaults ``conveyor worker`` uses.
WORKER: dict[str, Setting] = {s.name: s for s in (
    Setting("modules", list, None),
    Setting("connect", str, "127.0.0.1:7700", env=ENV_ADDRESS),
    Setting("connect_timeout", float, 10.0, check=_positive, rule="positive"),
    Setting("tls_ca", str, None),
    Setting("queues", (str, list), "default"),
    Setting("concurrency", int, None, check=_positive, rule="at least 1"),
    Setting("pool", str, "process", choices=("process", "thread", "asyncio")),
    Setting("prefetch", int, None, check=_positive, rule="at least 1"),
    Setting("name", str, None),
    Setting("pickle", bool, False),
    # Pool lifecycle (conveyor.worker.lifecycle; its AUTOSCALE_IDLE is the default here).
    Setting("max_tasks_per_child", int, None, check=_positive, rule="at least 1"),
    Setting("max_memory_per_child", int, None, check=_positive, rule="at least 1"),
    Setting("autoscale", str, None),
    Setting("autoscale_idle", float, 30.0, check=_positive, rule="positive"),
    *_COMMON,
    *_LOGS,
)}

SCHEMAS: dict[str, dict[str, Setting]] = {"master": MASTER, "worker": WORKER}


def config_path(flag: str | None, env: Mapping[str, str] | None = None) -> str | None:
    """The configuration file to read: ``--config``, else ``$CONVEYOR_CONFIG``, else none."""
    if flag:
        return flag
    return (os.environ if env is None else env).get(ENV_CONFIG) or None


def load_file(path: str) -> dict[str, dict[str, Any]]:
    """Read and check a configuration file: ``{"master": {...}, "worker": {...}}``.

    Unknown tables or keys, and values of the wrong type, raise ConfigError
    naming them; an unreadable file or bad TOML raises ConfigError too.
    """
    try:
        with open(path, "rb") as f:
            doc = tomllib.load(f)
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
    out: dict[str, dict[str, Any]] = {}
    for section, table in doc.items():
        if section not in SCHEMAS:
            raise ConfigError(f"config file {path}: unknown table [{section}] "
                              f"(expected {' or '.join(f'[{s}]' for s in SECTIONS)})")
        if not isinstance(table, dict):
            raise ConfigError(f"config file {path}: {section} must be a table [{section}]")
        schema = SCHEMAS[section]
        checked = {}
        for key, value in table.items():
            if key not in schema:
                raise ConfigError(f"config file {path}: unknown key {key!r} in [{section}] "
                                  f"(known: {', '.join(sorted(schema))})")
            checked[key] = schema[key].validate(value, f"config file {path} [{section}]")
        out[section] = checked
    return out


def resolve(section: str, flags: Mapping[str, Any], file: Mapping[str, Any],
            env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Every setting of ``section``: flag (not None) > environment > file > default.

    ``flags`` holds the command line's values, None where a flag was not given.
    """
    environ = os.environ if env is None else env
    out: dict[str, Any] = {}
    for name, setting in SCHEMAS[section].items():
        value = flags.get(name)
        if value is None and setting.env and environ.get(setting.env):
            value = environ[setting.env]
        if value is None:
            value = file.get(name)
        if value is None:
            value = setting.default
        out[name] = value
    return out


def authkey_source(flag_file: str | None, file_setting: str | None,
                   env: Mapping[str, str] | None = None) -> str | None:
    """The authkey file to read, keeping the order flag > environment > file.

    ``$CONVEYOR_AUTHKEY`` holds the key itself, so when it is set (and no
    ``--authkey-file`` is given) the file's ``authkey_file`` is not read: None
    tells :func:`conveyor.auth.load_authkey` to take the environment.
    """
    if flag_file:
        return flag_file
    if (os.environ if env is None else env).get(ENV_AUTHKEY):
        return None
    return file_setting
