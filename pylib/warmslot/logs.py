"""Log output of ``warmslot run`` and ``warmslot demo``: text or JSON lines, one level for the
Python and the Rust messages.

Every warmslot logger is under ``warmslot``: the Python modules log to ``warmslot``, the Rust
core to ``warmslot.core`` and below (``warmslot.core.state.sqlite`` for the Rust module
``warmslot_core::state::sqlite``), so configuring ``warmslot`` governs both.

A message about one execution carries ``pipeline``, ``execution_id`` and ``key`` (when there is
one) as attributes of its ``LogRecord``: ``extra=`` on the Python side, key-values of the ``log``
macros on the Rust side. :class:`JsonFormatter` writes them as fields.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from typing import IO, Any, Dict, Optional

from . import _core

LEVELS = ("debug", "info", "warning", "error")
FORMATS = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

#: The fields about an execution, written first after the message when a record has them.
CONTEXT_FIELDS = ("pipeline", "execution_id", "key")
#: What every LogRecord has; any other attribute came from ``extra=`` or Rust key-values.
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime", "taskName"}


class TextFormatter(logging.Formatter):
    """``TIME LEVEL LOGGER: MESSAGE``; the traceback of a record with ``exc_info`` only when
    `tracebacks` (``--log-level debug``), else its exception's ``Type: message`` once."""

    def __init__(self, tracebacks: bool = False) -> None:
        super().__init__(TEXT_FORMAT)
        self.tracebacks = tracebacks

    def format(self, record: logging.LogRecord) -> str:
        if self.tracebacks:
            return super().format(record)
        text = super().format(_without_traceback(record))
        summary = _exception_summary(record)
        if summary and summary not in text:
            text = f"{text} ({summary})"
        return text


class JsonFormatter(logging.Formatter):
    """One JSON object a line: ``time`` (UTC, RFC 3339, ms), ``level``, ``logger``, ``message``,
    then ``pipeline``, ``execution_id`` and ``key`` where the record has them, any other
    ``extra=``/key-value field, and ``exception`` (``Type: message``) for a record with
    ``exc_info``, plus ``traceback`` when `tracebacks`."""

    def __init__(self, tracebacks: bool = False) -> None:
        super().__init__()
        self.tracebacks = tracebacks

    def format(self, record: logging.LogRecord) -> str:
        created = time.gmtime(record.created)
        out: Dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", created) + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        fields = record.__dict__
        for name in CONTEXT_FIELDS:
            value = fields.get(name)
            if value is not None:
                out[name] = _plain(value)
        for name, value in fields.items():
            if name not in _STANDARD and name not in out and not name.startswith("_") and value is not None:
                out[name] = _plain(value)
        summary = _exception_summary(record)
        if summary:
            out["exception"] = summary
            if self.tracebacks and record.exc_info:
                out["traceback"] = self.formatException(record.exc_info)
        if self.tracebacks and record.stack_info:
            out["stack"] = self.formatStack(record.stack_info)
        return (
            json.dumps(out, ensure_ascii=False, separators=(",", ":"), default=str)
            .encode("utf-8", "backslashreplace")
            .decode("utf-8")
        )


def _plain(value: Any) -> Any:
    return value if isinstance(value, (str, int, float, bool)) else str(value)


def _without_traceback(record: logging.LogRecord) -> logging.LogRecord:
    if record.exc_info is None and record.exc_text is None and record.stack_info is None:
        return record
    copy = logging.makeLogRecord(record.__dict__)
    copy.exc_info, copy.exc_text, copy.stack_info = None, None, None
    return copy


def _exception_summary(record: logging.LogRecord) -> Optional[str]:
    """``Type: message`` of the record's exception, or None."""
    info = record.exc_info
    if not info or info[1] is None:
        return None
    exc = info[1]
    try:
        text = str(exc)
    except Exception:
        text = "<unprintable exception>"
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def refresh() -> None:
    """Makes the Rust core re-read the levels of its loggers (it caches them at their first
    message): call it after changing the level of a ``warmslot`` logger while a server runs.
    Every server start does it."""
    _core.refresh_logging()


def configure(level: str = "warning", fmt: str = "text", stream: Optional[IO[str]] = None) -> logging.Handler:
    """Sends every log record at `level` or above (``debug``, ``info``, ``warning``, ``error``)
    to `stream` (stderr) as `fmt` (``text`` or ``json``), replacing the root logger's handlers;
    tracebacks only at ``debug``. Returns the handler."""
    if level not in LEVELS:
        raise ValueError(f"log level must be one of {', '.join(LEVELS)}, got {level!r}")
    if fmt not in FORMATS:
        raise ValueError(f"log format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    debug = level == "debug"
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(JsonFormatter(debug) if fmt == "json" else TextFormatter(debug))
    logging.basicConfig(level=getattr(logging, level.upper()), handlers=[handler], force=True)
    # Worker processes (process slots) started from here on log the same way (`configure_worker`).
    os.environ[LEVEL_ENV], os.environ[FORMAT_ENV] = level, fmt
    refresh()
    return handler


#: How `configure` tells the worker processes of process slots its level and format.
LEVEL_ENV, FORMAT_ENV = "WARMSLOT_LOG_LEVEL", "WARMSLOT_LOG_FORMAT"


class _WorkerField(logging.Filter):
    """Adds ``worker`` (the process id) to each record of a worker process."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.worker = os.getpid()
        return True


def configure_worker(pipeline: str) -> None:
    """A worker process's logging: the level and format its server was configured with (warning
    and text when it was not), JSON lines with a ``worker`` field, or text lines that name the
    worker and its pipeline."""
    level = os.environ.get(LEVEL_ENV, "warning")
    fmt = os.environ.get(FORMAT_ENV, "text")
    level = level if level in LEVELS else "warning"
    if fmt == "json":
        configure(level, "json").addFilter(_WorkerField())
        return
    logging.basicConfig(
        level=getattr(logging, level.upper()),
        format=f"warmslot worker {os.getpid()} [{pipeline}]: %(message)s",
        force=True,
    )
    refresh()
