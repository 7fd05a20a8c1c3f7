"""Credentials never reach the log: URLs' ``user:pass@`` and secret-looking query parameters.

Downstream URLs may carry credentials (``https://user:pass@host/mcp``, ``?token=...``), and the
HTTP client logs every request URL at INFO. The client's loggers are kept at WARNING unless the
log level is debug, and every record that does reach a handler is redacted here.
"""

from __future__ import annotations

import logging
import re

__all__ = ["QUIET_LOGGERS", "RedactingFilter", "redact"]

#: Loggers that write request URLs at INFO: quiet unless debugging.
QUIET_LOGGERS = ("httpx", "httpx2", "httpcore", "httpcore2")

_USERINFO = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)[^/@\s:]+(?::[^/@\s]*)?@")
_SECRET_PARAM = re.compile(
    r"(?P<key>[?&](?:[a-z_]*token|key|api_key|apikey|secret|password|passwd|auth|signature|sig|access_token)=)[^&#\s\"']+",
    re.IGNORECASE,
)


def redact(text: str) -> str:
    """``https://u:p@h/x?token=abc`` -> ``https://***@h/x?token=***``."""
    text = _USERINFO.sub(r"\g<scheme>***@", text)
    return _SECRET_PARAM.sub(r"\g<key>***", text)


class RedactingFilter(logging.Filter):
    """Rewrites a record's message (its arguments merged in) without credentials."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = redact(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        return True
