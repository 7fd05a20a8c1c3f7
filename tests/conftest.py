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


@pytest.fixture(scope="session")
def pg_cluster():
    """One throwaway PostgreSQL cluster for the session (fsync off), stopped at the end."""
    from postgres_support import new_cluster

    cluster = new_cluster()
    try:
        yield cluster
    finally:
        cluster.stop()
        cluster.remove()


@pytest.fixture
def pg_url(pg_cluster) -> str:
    """A fresh, empty database on the session's cluster."""
    return pg_cluster.create_database()
