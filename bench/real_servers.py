"""The five real MCP servers the tests and benchmarks use, as an ``mcpServers`` config.

server-everything, memory and filesystem from npm (``.tools/node_modules``), time and git from
PyPI (``.tools/py``). Used by bench/search.py (the tool snapshot) and bench/tool_exposure.py.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
NODE_BIN = ROOT / ".tools" / "node_modules" / ".bin"
PY_BIN = ROOT / ".tools" / "py" / "bin"
SERVER_NAMES = ("everything", "memory", "filesystem", "time", "git")


def real_servers(workdir: Path | None = None) -> dict[str, Any]:
    """``mcpServers`` entries for the five servers; filesystem and git get a scratch directory."""
    scratch = workdir or Path(tempfile.mkdtemp(prefix="pml-real-servers-"))
    return {
        "everything": {"command": str(NODE_BIN / "mcp-server-everything")},
        "memory": {"command": str(NODE_BIN / "mcp-server-memory"), "env": {"MEMORY_FILE_PATH": str(scratch / "memory.jsonl")}},
        "filesystem": {"command": str(NODE_BIN / "mcp-server-filesystem"), "args": [str(scratch)]},
        "time": {"command": str(PY_BIN / "mcp-server-time")},
        "git": {"command": str(PY_BIN / "mcp-server-git"), "args": ["--repository", str(ROOT)]},
    }
