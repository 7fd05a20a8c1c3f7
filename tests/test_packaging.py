"""The package as users get it: a wheel, installed in a fresh venv, runs the demo and the README's setup.

The wheel is built from this checkout (``pip wheel . --no-deps``) and installed into a new venv the
way ``pipx install`` does it (a venv of its own, the console script in its ``bin``). Its
dependencies are not downloaded again: a ``.pth`` line puts the project venv's site-packages
after the fresh venv's own, as a plain path (so the project venv's editable install of
``pml_gateway`` is not activated: the code that runs is the wheel's, which the test checks).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

from server_helpers import interrupt
from mcp import ClientSession, StdioServerParameters, stdio_client

from gateway_support import ROOT, free_port, wait_for, wait_listening

pytestmark = pytest.mark.anyio

README = ROOT / "README.md"


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps", "--quiet", "-w", str(out)],
        check=True,
        timeout=120,
    )
    (built,) = out.glob("pml_gateway-*.whl")
    return built


@pytest.fixture(scope="module")
def installed(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv with the wheel installed; returns its ``bin`` directory."""
    venv = tmp_path_factory.mktemp("fresh") / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=60)
    python = venv / "bin" / "python"
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--quiet", str(wheel)],
        check=True,
        timeout=120,
        env=fresh_env(),  # with the checkout on PYTHONPATH, pip would find it "already installed"
    )
    purelib = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True, capture_output=True, text=True, timeout=30,
    ).stdout.strip()
    project_site = Path(sysconfig.get_paths()["purelib"]).resolve()
    (Path(purelib) / "project_deps.pth").write_text(f"{project_site}\n")
    return venv / "bin"


def fresh_env() -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith(("PML_", "OTEL_"))}
    env.pop("PYTHONPATH", None)  # the wheel's code, not the checkout's
    return env


def test_the_wheel_holds_every_package_of_the_checkout(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    for init in [*ROOT.glob("graphrag/**/__init__.py"), *ROOT.glob("pml_gateway/**/__init__.py")]:
        package = init.relative_to(ROOT).as_posix()
        assert package in names, f"{package} is missing from the wheel: add it to [tool.setuptools] packages"
    assert "pml_gateway/examples/mcp.json" in names and "pml_gateway/examples/workload.py" in names
    assert any(name.startswith("pml_gateway/static/") and name.endswith(".html") for name in names)
    assert "pml_gateway/proxy/minilm/tokenizer.json.gz" in names  # the search model's tokenizer (semantic extra)


def test_version_comes_from_the_installed_metadata(installed: Path, tmp_path: Path) -> None:
    out = subprocess.run(
        [str(installed / "pml-gateway"), "--version"], capture_output=True, text=True, env=fresh_env(), cwd=tmp_path, timeout=30
    )
    assert out.returncode == 0, out.stderr
    version = re.search(r'^version = "([^"]+)"', (ROOT / "pyproject.toml").read_text(), re.M).group(1)
    assert out.stdout.strip() == f"pml-gateway {version}"
    where = subprocess.run(
        [str(installed / "python"), "-c", "import pml_gateway; print(pml_gateway.__file__)"],
        capture_output=True, text=True, env=fresh_env(), cwd=tmp_path, timeout=30,
    ).stdout
    assert where.startswith(str(installed.parent)), where  # the wheel's copy, not the checkout


async def test_demo_runs_from_the_wheel(installed: Path, tmp_path: Path) -> None:
    port = free_port()
    command = [str(installed / "pml-gateway"), "demo", "--port", str(port), "--db", str(tmp_path / "demo.db")]
    process = subprocess.Popen(
        command, env=fresh_env(), cwd=tmp_path, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        await wait_listening(port, timeout=30)
        base = f"http://127.0.0.1:{port}"
        async with httpx.AsyncClient(timeout=10) as http:

            async def connected() -> bool:
                downstreams = (await http.get(f"{base}/health")).json()["downstreams"]
                return set(downstreams) == {"notes", "text", "math"} and all(
                    d["state"] == "connected" for d in downstreams.values()
                )

            assert await wait_for(connected, timeout=30)

            async def learned() -> bool:  # the workload's workflows reach the graph
                stats = (await http.get(f"{base}/events/stats")).json()
                graph = (await http.get(f"{base}/graph")).json()
                return stats["events_published"] > 1 and len(graph["edges"]) > 0

            assert await wait_for(learned, timeout=40, interval=0.2)
            metrics = (await http.get(f"{base}/metrics")).text
            assert 'pml_downstream_up{server="notes"} 1.0' in metrics
    finally:
        interrupt(process, timeout=15)


def readme_json_blocks() -> list[Any]:
    return [json.loads(block) for block in re.findall(r"```json\n(.*?)```", README.read_text(), re.S)]


async def test_the_readme_claude_desktop_setup_works(installed: Path, tmp_path: Path) -> None:
    """What the README says: ``pipx install .`` gives the ``command`` its Claude Desktop example names."""
    readme = README.read_text()
    assert "pipx install ." in readme
    assert ".venv/bin/pml-gateway" in readme  # the absolute-path alternative after `make install`
    entry = readme_claude_entry()
    executable = installed / entry["command"]  # pipx links the venv's console script onto PATH
    assert executable.is_file(), f"{entry['command']} is not what the package installs"
    if (ROOT / ".venv").is_dir():  # a checkout set up with `make install`: its absolute path exists
        assert (ROOT / ".venv" / "bin" / entry["command"]).is_file()
    args = list(entry["args"])
    config = next(Path(p) for p in installed.parent.glob("lib/python*/site-packages/pml_gateway/examples/mcp.json"))
    args[args.index("/path/to/mcp.json")] = str(config)
    args += ["--db", str(tmp_path / "graph.db")]
    params = StdioServerParameters(command=str(executable), args=args, env=fresh_env(), cwd=str(config.parent))
    with anyio.fail_after(60):
        async with stdio_client(params, errlog=_devnull()) as (read, write), ClientSession(read, write) as session:
            await session.initialize()

            async def tool_names() -> set[str]:
                return {tool.name for tool in (await session.list_tools()).tools}

            names = await wait_for(lambda: _having(tool_names, "notes__"), timeout=30)
            assert "pml_execute_workflow" in names


def readme_claude_entry() -> dict[str, Any]:
    """The README's Claude Desktop example (the one config that names the gateway as ``pml``)."""
    examples = [block for block in readme_json_blocks() if "pml" in block.get("mcpServers", {})]
    assert len(examples) == 1, "the README's Claude Desktop example"
    return examples[0]["mcpServers"]["pml"]  # type: ignore[no-any-return]


async def _having(names: Any, prefix: str) -> set[str] | None:
    found = await names()
    return found if any(name.startswith(prefix) for name in found) else None


def _devnull() -> Any:
    return open(os.devnull, "w")  # noqa: SIM115 (closed with the process)
