"""Shared fixtures. Helpers to run the app on a real uvicorn live in tests/server_helpers.py."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from postgres_support import Cluster

# Test modules import their helpers as plain modules (``from server_helpers import ...``).
sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[Cluster]:
    """One throwaway PostgreSQL cluster for the session (fsync off), stopped at the end; started
    only when a test asks for it. Skipped without PostgreSQL, except in CI (``$CI``): there it fails."""
    from postgres_support import new_cluster

    cluster = new_cluster()
    try:
        yield cluster
    finally:
        cluster.stop()
        cluster.remove()


@pytest.fixture
def pg_url(pg_cluster: Cluster) -> str:
    """A fresh, empty database on the session's cluster."""
    return pg_cluster.create_database()
