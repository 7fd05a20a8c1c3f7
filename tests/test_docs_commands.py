"""Every shell command in the README and docs/ runs as written, or is listed here with why not.

Commands come from ```sh / ```bash blocks (each line) and ```console blocks (each ``$ `` line,
with ``\\`` continuations). ``curl`` commands run against a real gateway (their
``127.0.0.1:8000`` pointed at its port); when the docs show a JSON answer, the real answer must
have the same keys. ``pml-gateway`` commands run for real in a scratch directory: servers until
they listen, then stopped.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from gateway_support import free_port

ROOT = Path(__file__).parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
VENV_BIN = Path(sys.executable).parent
EXAMPLES = ROOT / "public" / "examples"

#: Commands not run here, each with the reason. Matched as regular expressions from the start.
NOT_RUN: dict[str, str] = {
    r"make (demo|test)\b": "the quick start itself: CI runs `make test`, and `make demo` serves until Ctrl+C "
    "(tests/test_gateway_demo.py runs the demo)",
    r"make (install|servers|postgres|browser)\b": "installs into the checkout: run by `make test` itself",
    r"pipx install": "installs into the user's environment: tests/test_packaging.py installs the wheel instead",
    r"npx ": "downloads from npm at run time: the tests use the servers `make servers` installed",
    r"pip install 'pml-gateway\[postgres\]'": "installs into the user's environment: the test venv has the extra",
    r"export PML_DB='postgresql://": "the reader's PostgreSQL server: tests/test_replicas.py runs replicas on a "
    "throwaway cluster (tests/postgres_support.py)",
    r"pml-gateway admin ": "deletes learned history in an existing database: tests/test_cli_admin.py runs both "
    "commands, and their errors, against a running gateway's database (SQLite and PostgreSQL)",
    r"pml-gateway serve --host 0\.0\.0\.0 --port 800\d &": "a replica on the reader's PostgreSQL (the export above): "
    "tests/test_replicas.py starts real `serve` replicas",
}


#: Whole files whose commands are not run here, with the reason.
FILES_NOT_RUN: dict[str, str] = {
    "docs/api/auth.md": "a walk-through with credentials made in earlier steps (keys, JWTs from an issuer): "
    "tests/test_auth.py and tests/test_auth_http.py run the same flows (keys CLI, tokens, metadata, profiles) for real",
}


@dataclass(frozen=True)
class Command:
    source: str  # file:line
    text: str
    expected: str  # the output shown under it in a console block ("" if none)


def commands() -> list[Command]:
    found: list[Command] = []
    for path in DOCS:
        lines = path.read_text().splitlines()
        index = 0
        while index < len(lines):
            match = re.match(r"^```(sh|bash|shell|console)\s*$", lines[index])
            index += 1
            if not match:
                continue
            start = index
            while index < len(lines) and not lines[index].startswith("```"):
                index += 1
            block = lines[start:index]
            index += 1
            found.extend(_block_commands(path, start, block, console=match.group(1) == "console"))
    return found


def _block_commands(path: Path, start: int, block: list[str], *, console: bool) -> list[Command]:
    result: list[Command] = []
    i = 0
    while i < len(block):
        line = block[i]
        if (console or line.startswith("$ ")) and not line.startswith("$ "):
            i += 1
            continue
        console = console or line.startswith("$ ")  # a sh block written as a session
        text = line[2:] if line.startswith("$ ") else line
        first = i
        while text.rstrip().endswith("\\") and i + 1 < len(block):
            i += 1
            text = text.rstrip()[:-1] + " " + block[i].strip()
        i += 1
        expected: list[str] = []
        while console and i < len(block) and not block[i].startswith("$ "):
            expected.append(block[i])
            i += 1
        text = _strip_comment(text).strip()
        if text:
            source = f"{path.relative_to(ROOT)}:{start + first + 1}"
            result.append(Command(source, text, "\n".join(expected).strip()))
    return result


def _strip_comment(text: str) -> str:
    # A comment starts at " #" outside quotes.
    quote = None
    for position, char in enumerate(text):
        if char in "'\"" and quote in (None, char):
            quote = None if quote else char
        elif char == "#" and quote is None and (position == 0 or text[position - 1] == " "):
            return text[:position]
    return text


def reason_not_run(command: Command) -> str | None:
    if command.source.rsplit(":", 1)[0] in FILES_NOT_RUN:
        return FILES_NOT_RUN[command.source.rsplit(":", 1)[0]]
    for pattern, reason in NOT_RUN.items():
        if re.match(pattern, command.text):
            return reason
    return None


ALL = commands()


def test_the_docs_have_commands() -> None:
    assert len(ALL) >= 10


@pytest.mark.parametrize("command", ALL, ids=[c.source for c in ALL])
def test_command_runs_as_written(command: Command, docs_gateway: str, tmp_path: Path) -> None:
    if reason_not_run(command):
        pytest.skip(reason_not_run(command))
    port = docs_gateway.rsplit(":", 1)[1]
    text = command.text.replace("127.0.0.1:8000", f"127.0.0.1:{port}")
    words = shlex.split(text)
    env = {**os.environ, "PATH": f"{VENV_BIN}{os.pathsep}{os.environ['PATH']}", "PYTHONPATH": str(ROOT)}
    while words and re.match(r"^[A-Z_][A-Z0-9_]*=", words[0]):  # VAR=value prefixes
        name, _, value = words.pop(0).partition("=")
        env[name] = value
    program = words[0]
    if program in ("pml-gateway", "python") and ("serve" in words or "demo" in words):
        _run_server(words, env, tmp_path)
    elif program in ("pml-gateway", "python") and "stdio" in words:
        _run_stdio(words, env, tmp_path)
    elif program == "pml-gateway":
        _run_once(words, env, tmp_path)
    elif program == "curl":
        _run_curl(words, env, command, text)
    elif program == "python":
        _run_streaming(words, env)
    else:
        pytest.fail(f"{command.source}: no way to run `{command.text}`: run it here or list it in NOT_RUN with why")


def _scratch(tmp_path: Path) -> None:
    (tmp_path / "mcp.json").write_text('{"mcpServers": {}}')


def _run_server(words: list[str], env: dict[str, str], tmp_path: Path) -> None:
    _scratch(tmp_path)
    port = str(free_port())  # the documented 8000 (flag or env var), or the default, becomes a free one
    words = [port if word == "8000" else word for word in words]
    env = {**env, "PML_PORT": port}
    env.setdefault("PML_DB", str(tmp_path / "graph.db"))
    argv = [sys.executable, "-m", "pml_gateway", *words[1:]] if words[0] == "pml-gateway" else [sys.executable, *words[1:]]
    process = subprocess.Popen(argv, cwd=tmp_path, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        seen = []
        assert process.stderr is not None
        while time.monotonic() < deadline:
            line = process.stderr.readline()
            seen.append(line)
            if "listening on" in line:
                return
            if not line and process.poll() is not None:
                break
        pytest.fail("did not start:\n" + "".join(seen))
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=20)


def _run_stdio(words: list[str], env: dict[str, str], tmp_path: Path) -> None:
    _scratch(tmp_path)
    words = [str(free_port()) if word == "8000" else word for word in words]
    argv = [sys.executable, "-m", "pml_gateway", *words[1:]] if words[0] == "pml-gateway" else [sys.executable, *words[1:]]
    env = {**env, "PML_DB": str(tmp_path / "graph.db")}
    answer = subprocess.run(argv, cwd=tmp_path, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60)
    assert answer.returncode == 0, answer.stderr  # stdin at its end: the stdio server stops cleanly
    assert "Traceback" not in answer.stderr


def _run_once(words: list[str], env: dict[str, str], tmp_path: Path) -> None:
    _scratch(tmp_path)
    env = {**env, "PML_DB": str(tmp_path / "graph.db"), "PML_KEYS_FILE": str(tmp_path / "keys.json")}
    answer = subprocess.run([sys.executable, "-m", "pml_gateway", *words[1:]], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert answer.returncode == 0, answer.stderr
    assert "Traceback" not in answer.stderr


def _run_curl(words: list[str], env: dict[str, str], command: Command, text: str) -> None:
    streaming = "-N" in words
    limit = "--max-time 2" if streaming else "--max-time 20"
    # Through the shell, as a reader would paste it (pipes included); every curl time-limited.
    script = "set -o pipefail; " + re.sub(r"(^|\| *)curl ", rf"\1curl {limit} ", text)
    answer = subprocess.run(["bash", "-c", script], env=env, capture_output=True, text=True, timeout=30)
    assert answer.returncode in ((0, 28) if streaming else (0,)), answer.stderr
    assert answer.stdout
    if command.expected.startswith("{"):
        documented = json.loads(command.expected.replace("\n", ""))
        real = json.loads(answer.stdout)
        assert set(real) == set(documented), f"{command.source}: keys {sorted(real)} vs documented {sorted(documented)}"


def _run_streaming(words: list[str], env: dict[str, str]) -> None:
    argv = [sys.executable, *words[1:]]
    try:
        answer = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=3)
    except subprocess.TimeoutExpired:
        return  # still running after 3 s without an error: a client that follows a stream
    assert answer.returncode == 0, answer.stderr


@pytest.fixture(scope="module")
def docs_gateway(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A real gateway process for the curl commands: the example servers, a little learned graph."""
    port = free_port()
    scratch = tmp_path_factory.mktemp("docs")
    process = subprocess.Popen(
        [sys.executable, "-m", "pml_gateway", "serve", "--port", str(port), "--db", str(scratch / "graph.db"), "--config", str(EXAMPLES / "mcp.json")],
        cwd=scratch,
        env={**os.environ, "PYTHONPATH": str(ROOT), "PML_HEARTBEAT_SECONDS": "0.5"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stderr is not None
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and "listening on" not in process.stderr.readline():
        pass
    base = f"http://127.0.0.1:{port}"
    subprocess.run(
        ["curl", "-s", "-X", "POST", f"{base}/executions", "-H", "content-type: application/json", "-d", '{"tool_ids":["files__read","text__summarize"]}'],
        check=True,
        capture_output=True,
        timeout=20,
    )
    time.sleep(1.2)  # metrics computed once
    yield base
    process.send_signal(signal.SIGTERM)
    process.wait(timeout=20)
