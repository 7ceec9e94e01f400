"""Logging for the master and the worker: text or JSON lines, to stderr or a file, with
the running task's id and name on every record logged inside a task.

:func:`setup_logging` is called once per process: by the CLI in the master and
the worker, and by each pool child with the worker's settings (the child writes
to the same stderr or file, so a task's log lines appear where the worker's do).
Inside a task, :func:`install_task_context` gives each record ``task_id`` and
``task_name`` (read from ``current_task()``), and :func:`capture_output` copies
what the task logs and prints into its attempt's output ring, which travels to
the master with the outcome.

Formats:

- ``text``: ``2026-12-02 12:00:00,123 INFO conveyor.worker.tasks: Task tasks.add[ID] succeeded in 0.001s: 4``;
  a record logged inside a task names it: ``INFO myapp [tasks.add(ID)]: ...``.
- ``json``: one object per line with ``time`` (ISO 8601, UTC), ``level``,
  ``logger``, ``message``, ``task_id`` and ``task_name`` when known, and
  ``exception`` (the formatted traceback) when there is one.
"""

from __future__ import annotations

import io
import json
import logging
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TextIO

from .context import current_output, peek_current

if TYPE_CHECKING:
    import argparse

__all__ = ["LogConfig", "setup_logging", "current_config", "TextFormatter", "JsonFormatter",
           "install_task_context", "capture_output", "add_log_arguments", "log_lines", "LogLine",
           "LOG_FORMATS", "LOG_LEVELS"]

LOG_FORMATS = ("text", "json")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s%(task_label)s: %(message)s"


@dataclass(frozen=True, slots=True)
class LogConfig:
    """How a process logs: passed to pool children so they log as their worker does."""

    level: str = "INFO"
    format: str = "text"
    file: str | None = None

    def to_list(self) -> list[Any]:
        """A msgpack- and pickle-friendly form (a child's start arguments)."""
        return [self.level, self.format, self.file]

    @classmethod
    def from_list(cls, data: list[Any]) -> LogConfig:
        return cls(str(data[0]), str(data[1]), data[2])


_active: LogConfig | None = None
_installed: list[logging.Handler] = []  # the handler setup_logging added last


def current_config() -> LogConfig | None:
    """The settings :func:`setup_logging` last applied in this process (None if never)."""
    return _active


class TextFormatter(logging.Formatter):
    """One line per record; a record logged inside a task names the task."""

    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)

    def format(self, record: logging.LogRecord) -> str:
        # Only records logged inside a task: the worker's own task lines name it already.
        inside = getattr(record, "in_task", False)
        record.task_label = (f" [{getattr(record, 'task_name', '?')}({getattr(record, 'task_id', '?')})]"
                             if inside else "")
        return super().format(record)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, task_id/task_name when known."""

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        task_id = getattr(record, "task_id", None)
        if task_id:
            doc["task_id"] = task_id
            doc["task_name"] = getattr(record, "task_name", None)
        if record.exc_info:
            doc["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            doc["exception"] = record.exc_text
        return json.dumps(doc, default=str)


def make_formatter(fmt: str) -> logging.Formatter:
    """The formatter for ``fmt`` ("text" or "json"); ValueError for anything else."""
    if fmt == "text":
        return TextFormatter()
    if fmt == "json":
        return JsonFormatter()
    raise ValueError(f"unknown log format {fmt!r}: choose one of {', '.join(LOG_FORMATS)}")


def setup_logging(level: str = "INFO", fmt: str = "text", file: str | None = None) -> LogConfig:
    """Send this process's log records to stderr (or append them to ``file``) as ``fmt``.

    Replaces the handlers this function installed before (not other ones), and
    installs :func:`install_task_context`. ValueError (one line) for a bad level
    or format, or a log file that cannot be opened.
    """
    global _active
    if level not in LOG_LEVELS:
        raise ValueError(f"unknown log level {level!r}: choose one of {', '.join(LOG_LEVELS)}")
    formatter = make_formatter(fmt)
    handler: logging.Handler
    if file:
        try:
            handler = logging.FileHandler(file, mode="a", encoding="utf-8")
        except OSError as exc:
            raise ValueError(f"cannot open log file {file}: {exc.strerror or exc}") from None
    else:
        handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    for old in _installed:  # ours from an earlier call; other handlers stay
        root.removeHandler(old)
        old.close()
    _installed[:] = [handler]
    root.addHandler(handler)
    root.setLevel(getattr(logging, level))
    install_task_context()
    _active = LogConfig(level, fmt, file)
    return _active


_base_factory: Any = None
_capture: logging.Formatter | None = None  # set by capture_output: how records enter the ring


def _task_record_factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
    record: logging.LogRecord = _base_factory(*args, **kwargs)
    task = peek_current()
    if task is not None:  # only inside a task: elsewhere `extra={"task_id": ...}` stays usable
        record.task_id = task.id
        record.task_name = task.name
        record.in_task = True
        ring = task.output
        if ring is not None and _capture is not None:
            # Captured here, not by a handler: a handler on the root logger would silence
            # logging's last-resort stderr output in processes that configured none.
            try:
                ring.write(_capture.format(record) + "\n")
            except Exception:
                pass  # a record that cannot be formatted fails again, visibly, in its handler
    return record


def install_task_context() -> None:
    """Give every record logged inside a task its ``task_id`` and ``task_name`` (idempotent)."""
    global _base_factory
    factory = logging.getLogRecordFactory()
    if factory is _task_record_factory:
        return
    _base_factory = factory
    logging.setLogRecordFactory(_task_record_factory)


#: One line for :func:`log_lines`: (level, message format, its arguments, task id, task name).
LogLine = tuple[int, str, tuple[Any, ...], str, str]


def _direct_handler(logger: logging.Logger) -> logging.StreamHandler[Any] | None:
    """The one handler :func:`setup_logging` installed, if a record of ``logger`` would reach
    it and nothing else, unchanged on the way: no other handler, filter, logger or record
    class, record factory or formatter of anyone else's, and no task running in this thread
    (a record made inside a task carries it and is copied into its output). None otherwise."""
    if len(_installed) != 1 or _base_factory is not logging.LogRecord \
            or logging.getLogRecordFactory() is not _task_record_factory or peek_current() is not None:
        return None
    handler = _installed[0]
    root = logging.root
    node: logging.Logger | None = logger
    while node is not None and node is not root:
        if node.handlers or node.filters or not node.propagate or type(node) is not logging.Logger:
            return None
        node = node.parent
    if node is not root or root.handlers != [handler] or root.filters or handler.filters:
        return None
    if type(handler) not in (logging.StreamHandler, logging.FileHandler) \
            or type(handler.formatter) not in (TextFormatter, JsonFormatter):
        return None
    assert isinstance(handler, logging.StreamHandler)
    return handler if handler.stream is not None else None


def log_lines(logger: logging.Logger, lines: Sequence[LogLine]) -> None:
    """Log ``lines`` under ``logger`` (each with ``extra={"task_id": ..., "task_name": ...}``)
    exactly as ``logger.log`` would, in order.

    When they would reach only the handler :func:`setup_logging` installed (the worker
    as the CLI starts it), the lines are formatted here and written with one write and
    one flush, with one timestamp for the lot: the same text or JSON, at a fraction of
    the cost of a LogRecord and a handler call per line (the worker logs two lines per
    task at INFO). Anything else (another handler, a filter, a custom record factory,
    pytest's log capture) takes logging's own path, line by line.
    """
    enabled = [line for line in lines if logger.isEnabledFor(line[0])]
    if not enabled:
        return
    handler = _direct_handler(logger)
    if handler is None or any(line[0] < handler.level for line in enabled):
        for level, msg, args, task_id, task_name in enabled:
            logger.log(level, msg, *args, extra={"task_id": task_id, "task_name": task_name})
        return
    # One real record, for the time and so that a failed write is reported as logging would.
    record = logging.LogRecord(logger.name, enabled[0][0], __file__, 0, "", None, None)
    formatter = handler.formatter
    out: list[str] = []
    end = handler.terminator
    if type(formatter) is TextFormatter:
        when = formatter.formatTime(record)
        for level, msg, args, _task_id, _task_name in enabled:
            out.append(f"{when} {logging.getLevelName(level)} {logger.name}: {msg % args if args else msg}{end}")
    else:
        when = datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds")
        for level, msg, args, task_id, task_name in enabled:
            doc: dict[str, Any] = {"time": when, "level": logging.getLevelName(level),
                                   "logger": logger.name, "message": msg % args if args else msg}
            if task_id:
                doc["task_id"] = task_id
                doc["task_name"] = task_name
            out.append(json.dumps(doc, default=str) + end)
    handler.acquire()
    try:
        handler.stream.write("".join(out))
        handler.flush()
    except RecursionError:
        raise
    except Exception:
        handler.handleError(record)
    finally:
        handler.release()


class _Tee(io.TextIOBase):
    """A stdout/stderr stand-in: writes go through, and into the running task's ring."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream

    def write(self, text: str) -> int:
        ring = current_output()
        if ring is not None:
            ring.write(text)
        return self._stream.write(text)

    def flush(self) -> None:
        self._stream.flush()

    def fileno(self) -> int:
        return self._stream.fileno()

    def isatty(self) -> bool:
        return self._stream.isatty()

    def writable(self) -> bool:
        return True

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return self._stream.encoding

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


_capturing = False


def capture_output(streams: bool) -> None:
    """Copy what tasks log (records that pass their logger's level) and, if ``streams``,
    print to stdout/stderr into their attempt's output ring (idempotent). Streams are teed only in pool children: the
    thread pool shares the worker's process, whose stdout is not the tasks' alone."""
    global _capturing, _capture
    if _capturing:
        return
    _capturing = True
    install_task_context()
    _capture = TextFormatter()  # records enter the ring as they are made, whatever the handlers
    if streams:
        sys.stdout = _Tee(sys.stdout)
        sys.stderr = _Tee(sys.stderr)


def add_log_arguments(parser: argparse.ArgumentParser) -> None:
    """The master's and worker's ``--log-file`` and ``--log-format`` flags (``--log-level``
    is common to every command)."""
    parser.add_argument("--log-file", metavar="PATH", default=None,
                        help="append log lines to PATH instead of stderr")
    parser.add_argument("--log-format", choices=LOG_FORMATS, default=None,
                        help="text (default) or json: one object per line with time, level, logger, "
                             "message, and task_id/task_name when known")
