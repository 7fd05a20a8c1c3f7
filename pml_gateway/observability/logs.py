"""Logs a machine can read, and downstream output that says which server it came from.

- ``configure_logging(level, format)``: ``text`` (``LEVEL logger: message``) or ``json`` (one
  object per line: ``time``, ``level``, ``logger``, ``message``, the record's extras such as
  ``server``, and ``exc_info`` as text when there is one).
- ``named_stderr(server)``: the stderr a stdio downstream is started with. The MCP SDK hands its
  ``errlog`` to the child process as a file descriptor, so it cannot be a Python wrapper: it is
  the write end of a pipe, and a thread reads the other end line by line and logs each line to
  ``pml_gateway.downstream`` with the server's name (in the text and as ``server``).
  A line longer than ``STDERR_LINE_CHARS`` is logged cut, with the rest of it skipped, so a
  server cannot make the gateway hold an unbounded line in memory.

A downstream's stdout (the protocol) is read by proxy/downstream/stdio_transport.py, which bounds
its lines and logs what is not JSON-RPC itself, naming the server.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import IO, Any, Literal

__all__ = [
    "JsonFormatter",
    "LogFormat",
    "configure_logging",
    "named_stderr",
]

LogFormat = Literal["text", "json"]
DOWNSTREAM_LOGGER = "pml_gateway.downstream"
TEXT_FORMAT = "%(levelname)s %(name)s: %(message)s"
#: Longest stderr line of a downstream logged as it is; the rest of a longer one is skipped.
STDERR_LINE_CHARS = 16 * 1024

# Attributes every LogRecord has: whatever else is on a record came in through ``extra=``
# (uvicorn's ``color_message`` repeats the message with terminal colours: left out).
_STANDARD = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {
    "message",
    "asctime",
    "taskName",
    "color_message",
}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time (UTC, ISO 8601), level, logger, message, then the extras."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exc_info"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str, ensure_ascii=False)


def configure_logging(level: str, log_format: LogFormat = "text", *, stream: IO[str] | None = None) -> None:
    """The process's logging: level and format."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel("DEBUG" if level == "trace" else level.upper())


@contextmanager
def named_stderr(server: str, *, copy_to: IO[str] | None = None) -> Iterator[IO[str]]:
    """A file to start a downstream with as its stderr: each line it writes is logged with ``server``.

    ``copy_to`` also receives each line, prefixed with ``[server]`` (tests capture output there).
    The reader thread ends when every writer (the child, and this process's end, closed on exit)
    has closed the pipe.
    """
    read_fd, write_fd = os.pipe()
    writer = os.fdopen(write_fd, "w", buffering=1, encoding="utf-8", errors="replace")
    thread = threading.Thread(
        target=_pump, args=(read_fd, server, copy_to), name=f"stderr of {server}", daemon=True
    )
    thread.start()
    try:
        yield writer
    finally:
        writer.close()  # the child holds its own copy; EOF comes when it exits


def _pump(read_fd: int, server: str, copy_to: IO[str] | None) -> None:
    log = logging.getLogger(DOWNSTREAM_LOGGER)
    cut = False  # inside the rest of an overlong line
    with os.fdopen(read_fd, "r", encoding="utf-8", errors="replace") as lines:
        while chunk := lines.readline(STDERR_LINE_CHARS):
            complete = chunk.endswith("\n")
            if cut:
                cut = not complete
                continue
            text = chunk.rstrip("\r\n")
            if not complete and len(chunk) == STDERR_LINE_CHARS:
                text, cut = f"{text}... (line cut at {STDERR_LINE_CHARS} characters)", True
            if not text:
                continue
            log.info("[%s] %s", server, text, extra={"server": server, "stream": "stderr"})
            if copy_to is not None:
                try:
                    copy_to.write(f"[{server}] {text}\n")
                    copy_to.flush()
                except (OSError, ValueError):  # closed under us at shutdown
                    copy_to = None
