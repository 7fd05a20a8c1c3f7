"""docs/api/operations.md, section "Replicas", says what the code does: the tables the PostgreSQL
store creates, its channel, its bounds, the 503 body and the SQLite polling interval."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from graphrag import postgres_store, sqlite_store
from graphrag.store import is_postgres_url

DOC = Path(__file__).parent.parent / "docs" / "api" / "operations.md"


def replicas_section() -> str:
    text = DOC.read_text()
    match = re.search(r"^## Replicas\n(.*?)(?=^## |\Z)", text, flags=re.MULTILINE | re.DOTALL)
    assert match, "docs/api/operations.md has no '## Replicas' section"
    return match.group(1)


def test_every_table_the_store_creates_is_named() -> None:
    tables = (re.search(r"CREATE TABLE IF NOT EXISTS (\w+)", s) for s in postgres_store._SCHEMA)
    created = {table.group(1) for table in tables if table is not None}  # indexes are not tables
    assert "pml_search_labels" in created
    named = set(re.findall(r"`(pml_\w+)`", replicas_section()))
    assert created <= named, f"tables not documented: {sorted(created - named)}"


def test_channel_bounds_and_intervals_match_the_code() -> None:
    section = replicas_section()
    assert f"LISTEN {postgres_store.CHANNEL}" in section
    assert f"connect {postgres_store.CONNECT_TIMEOUT} s" in section
    for setting in ("lock_timeout", "statement_timeout", "idle_in_transaction_session_timeout"):
        value = re.search(rf"{setting}=(\d+)s", postgres_store.SESSION_OPTIONS).group(1)  # type: ignore[union-attr]
        assert f"{value} s" in section, setting
    assert f"every {postgres_store.WATCH_TICK:g} s" in section
    assert f"to {postgres_store.WATCH_BACKOFF_MAX:g} s" in section
    assert f"every {sqlite_store.POLL_SECONDS * 1000:g} ms" in section


@pytest.mark.parametrize("example", ["postgresql://user@host/dbname", "postgresql://postgres@/pml?host=/var/run/postgresql"])
def test_documented_urls_select_postgres(example: str) -> None:
    assert example in replicas_section()
    assert is_postgres_url(example)


def test_the_503_body_is_the_one_the_api_sends() -> None:
    import inspect

    from pml_gateway import http_api

    prefix = re.search(r'f"(Store unavailable[^{]*)\{', inspect.getsource(http_api.store_unavailable)).group(1)  # type: ignore[union-attr]
    assert f'{{"error": "{prefix}db: PostgreSQL unavailable: ' in replicas_section()


def test_the_python_example_runs(pg_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    code = re.search(r"### From Python.*?```python\n(.*?)```", replicas_section(), flags=re.DOTALL)
    assert code, "no Python example in the Replicas section"
    exec(code.group(1).replace("postgresql://pml@db.internal/pml", pg_url), {"__name__": "__main__"})  # noqa: S102
    printed = [line.split()[1] for line in capsys.readouterr().out.splitlines()]
    assert printed == ["graph_synced", "edge_created", "workflow_executed"]
