"""Settings: the contract's names and defaults, PML_* env vars, flags winning, clear errors."""

from __future__ import annotations

from pathlib import Path

import platformdirs
import pytest

from pml_gateway.cli import build_parser, main
from pml_gateway.cli.common import settings_from_args
from pml_gateway.settings import Settings

CONTRACT_DEFAULTS = {
    "host": "127.0.0.1",
    "port": 8000,
    "heartbeat_seconds": 30.0,
    "max_clients": 100,
    "cors_origins": ["http://localhost:*", "http://127.0.0.1:*"],
    "replay_buffer": 10_000,
    "client_queue": 1_000,
    "metrics_interval_seconds": 1.0,
    "trace_idle_seconds": 30.0,
    "fast_path": True,
    "tool_exposure": "all",
}


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import os

    for name in list(os.environ):
        if name.startswith("PML_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)  # no ./mcp.json unless a test writes one


def parse(*argv: str) -> Settings:
    return settings_from_args(build_parser().parse_args(["serve", *argv]))


def test_defaults_are_the_contract() -> None:
    settings = Settings()
    assert {name: getattr(settings, name) for name in CONTRACT_DEFAULTS} == CONTRACT_DEFAULTS
    assert settings.config is None  # no ./mcp.json here: no downstreams
    assert Path(settings.db) == platformdirs.user_data_path("pml-gateway") / "graph.db"
    assert set(Settings.model_fields) == {*CONTRACT_DEFAULTS, "config", "db", "log_level"}


def test_config_defaults_to_mcp_json_when_present(tmp_path: Path) -> None:
    (tmp_path / "mcp.json").write_text('{"mcpServers": {}}')
    assert Settings().config == Path("mcp.json")


def test_env_vars_for_every_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PML_HOST", "0.0.0.0")
    monkeypatch.setenv("PML_PORT", "9100")
    monkeypatch.setenv("PML_CONFIG", "servers.json")
    monkeypatch.setenv("PML_DB", ":memory:")
    monkeypatch.setenv("PML_HEARTBEAT_SECONDS", "0.25")
    monkeypatch.setenv("PML_MAX_CLIENTS", "3")
    monkeypatch.setenv("PML_CORS_ORIGINS", "http://localhost:*, https://*.example.com")
    monkeypatch.setenv("PML_REPLAY_BUFFER", "50")
    monkeypatch.setenv("PML_CLIENT_QUEUE", "20")
    monkeypatch.setenv("PML_METRICS_INTERVAL_SECONDS", "0.5")
    monkeypatch.setenv("PML_TRACE_IDLE_SECONDS", "2.5")
    monkeypatch.setenv("PML_LOG_LEVEL", "DEBUG")
    monkeypatch.setenv("PML_FAST_PATH", "0")
    monkeypatch.setenv("PML_TOOL_EXPOSURE", "lean")
    settings = Settings()
    assert settings.model_dump() == {
        "host": "0.0.0.0",
        "port": 9100,
        "config": Path("servers.json"),
        "db": ":memory:",
        "heartbeat_seconds": 0.25,
        "max_clients": 3,
        "cors_origins": ["http://localhost:*", "https://*.example.com"],
        "replay_buffer": 50,
        "client_queue": 20,
        "metrics_interval_seconds": 0.5,
        "trace_idle_seconds": 2.5,
        "log_level": "debug",
        "fast_path": False,
        "tool_exposure": "lean",
    }
    assert settings.in_memory


def test_fast_path_keeps_its_old_env_var(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PML_GATEWAY_FAST_PATH", "0")
    assert Settings().fast_path is False
    assert parse("--fast-path", "1").fast_path is True  # the flag wins


def test_tool_exposure_flag_and_a_clear_error(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("PML_TOOL_EXPOSURE", "all")
    assert parse("--tool-exposure", "lean").tool_exposure == "lean"  # the flag wins
    assert main(["serve", "--tool-exposure", "some"]) == 2
    assert "tool_exposure" in capsys.readouterr().err


def test_flags_win_over_env_vars(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PML_PORT", "9100")
    monkeypatch.setenv("PML_HEARTBEAT_SECONDS", "5")
    monkeypatch.setenv("PML_MAX_CLIENTS", "3")
    settings = parse("--port", "9200", "--heartbeat-seconds", "0.2", "--cors-origins", "http://a.test:*")
    assert settings.port == 9200 and settings.heartbeat_seconds == 0.2
    assert settings.cors_origins == ["http://a.test:*"]
    assert settings.max_clients == 3  # not given as a flag: the env var stands


def test_every_setting_has_a_flag() -> None:
    help_text = build_parser()._subparsers._group_actions[0].choices["serve"].format_help()  # type: ignore[union-attr]
    for name in Settings.model_fields:
        assert "--" + name.replace("_", "-") in help_text
        assert "PML_" + name.upper() in help_text


def test_invalid_setting_names_the_flag_and_env_var_without_traceback(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("PML_MAX_CLIENTS", "lots")
    code = main(["serve", "--heartbeat-seconds", "-1"])
    err = capsys.readouterr().err
    assert code == 2
    assert "heartbeat_seconds (--heartbeat-seconds / PML_HEARTBEAT_SECONDS)" in err
    assert "max_clients (--max-clients / PML_MAX_CLIENTS)" in err
    assert "Traceback" not in err


def test_unusable_database_is_one_clear_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    not_a_db = tmp_path / "notes.txt"
    not_a_db.write_text("hello, this is not SQLite" * 100)
    code = main(["serve", "--db", str(not_a_db), "--port", "0"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("pml-gateway: error: db:") and str(not_a_db) in err
    assert "Traceback" not in err
