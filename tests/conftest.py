"""Shared fixtures. Helpers to run the app on a real uvicorn live in tests/server_helpers.py."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

# Test modules import their helpers as plain modules (``from server_helpers import ...``).
sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"
