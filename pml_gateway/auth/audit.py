"""The audit trail: one JSON line per tool call, never its arguments or its result.

``{"time", "principal", "profile", "tool", "duration_ms", "outcome"}`` goes to the
``pml_gateway.audit`` logger, at INFO, as the message itself (so any handler or log shipper sees
plain JSON). With the ``audit_log`` setting, the lines go to that file (appended, one line each,
flushed per line by ``logging.FileHandler``) instead of the process log. ``outcome`` is ``ok``,
``error`` (a tool error result, the gateway's own failures included) or ``denied`` (outside the
caller's profile).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel

from pml_gateway.auth.principal import Caller

LOGGER_NAME = "pml_gateway.audit"
logger = logging.getLogger(LOGGER_NAME)

Outcome = Literal["ok", "error", "denied"]


class AuditRecord(BaseModel):
    time: str
    principal: str | None
    profile: str | None
    tool: str
    duration_ms: float
    outcome: Outcome


def outcome_of(result: Mapping[str, Any]) -> Outcome:
    """A tool result's outcome (wire form): a tool error is ``error``, anything else ``ok``."""
    return "error" if result.get("isError") is True else "ok"


def record_tool_call(caller: Caller, tool: str, started: float, outcome: Outcome) -> None:
    """One line for a call of ``tool`` by ``caller`` that began at ``started`` (``time.monotonic()``)."""
    if not logger.isEnabledFor(logging.INFO):
        return
    line = AuditRecord(
        time=datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        principal=caller.principal,
        profile=caller.profile_name,
        tool=tool,
        duration_ms=round((time.monotonic() - started) * 1000, 3),
        outcome=outcome,
    )
    logger.info(json.dumps(line.model_dump(), separators=(",", ":")))


_file_handler: logging.Handler | None = None


def configure_audit(audit_log: Path | None) -> None:
    """Send the audit lines to ``audit_log`` (only there), or back to the process log (None)."""
    global _file_handler
    if _file_handler is not None:
        logger.removeHandler(_file_handler)
        _file_handler.close()
        _file_handler = None
    logger.propagate = audit_log is None
    if audit_log is not None:
        path = audit_log.expanduser()
        path.parent.mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(path, encoding="utf-8")
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        _file_handler = handler
