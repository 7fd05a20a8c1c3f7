"""Credentials in downstream URLs never reach the log."""

from __future__ import annotations

import logging

import pytest

from pml_gateway.cli.common import configure_logging
from pml_gateway.log_redaction import redact
from pml_gateway.settings import Settings


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("GET https://alice:s3cret@mcp.example/mcp", "GET https://***@mcp.example/mcp"),
        ("POST http://h/mcp?token=abc123&x=1", "POST http://h/mcp?token=***&x=1"),
        ("url http://h/mcp?x=1&api_key=k&access_token=t", "url http://h/mcp?x=1&api_key=***&access_token=***"),
        ("nothing secret http://h:8000/mcp?page=2", "nothing secret http://h:8000/mcp?page=2"),
    ],
)
def test_redact(text: str, expected: str) -> None:
    assert redact(text) == expected


def test_the_http_clients_info_lines_are_quiet_and_every_record_is_redacted(capfd: pytest.CaptureFixture[str]) -> None:
    root = logging.getLogger()
    saved = root.handlers[:]
    root.handlers.clear()
    try:
        configure_logging(Settings(db=":memory:", config=None, log_level="info"))
        logging.getLogger("httpx2").info("HTTP Request: POST https://u:p@h/mcp?token=abc")
        logging.getLogger("pml_gateway.test").warning("downstream %s failed", "https://u:p@h/mcp?token=abc")
        err = capfd.readouterr().err
        assert "abc" not in err and "u:p@" not in err
        assert "HTTP Request" not in err  # the client's INFO line is off by default
        assert "downstream https://***@h/mcp?token=*** failed" in err
    finally:
        root.handlers[:] = saved
        for name in ("httpx", "httpx2", "httpcore", "httpcore2"):
            logging.getLogger(name).setLevel(logging.NOTSET)
