"""How big ``tools/list`` is for the five real servers: ``tool_exposure=all`` against ``lean``.

    .venv/bin/python bench/tool_exposure.py     # about 10 s: starts the five servers twice

Size in tokens estimated as characters / 4 of the tools' JSON as it goes on the wire (camelCase,
no nulls). tiktoken's cl100k would be the standard tokenizer, but its encoding file is downloaded
at run time, which this environment does not allow; characters / 4 is the usual rule of thumb for
English and JSON. Servers: server-everything, memory, filesystem (npm), time, git (PyPI).
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import anyio
from mcp import Client

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE.parent / "tests"))
sys.path.insert(0, str(HERE))

from gateway_support import health, run_gateway, wait_for  # noqa: E402
from real_servers import real_servers  # noqa: E402


async def listed(exposure: str) -> list[dict[str, Any]]:
    with tempfile.TemporaryDirectory() as tmp:
        async with run_gateway(Path(tmp), real_servers(Path(tmp)), tool_exposure=exposure) as gw:

            async def ready() -> bool:
                states = (await health(gw.url))["downstreams"]
                return all(s["state"] == "connected" for s in states.values())

            await wait_for(ready, timeout=60)
            async with Client(gw.mcp_url, mode="legacy", cache=None) as client:
                tools = (await client.list_tools()).tools
    return [t.model_dump(mode="json", by_alias=True, exclude_none=True) for t in tools]


async def main() -> None:
    rows = []
    sizes = {}
    for exposure in ("all", "lean"):
        tools = await listed(exposure)
        own = [t for t in tools if t["name"].startswith("pml_")]
        chars = len(json.dumps(tools, separators=(",", ":")))
        own_chars = len(json.dumps(own, separators=(",", ":")))
        sizes[exposure] = chars
        rows.append((exposure, len(tools), chars, chars // 4, own_chars // 4))
    print("\n**tools/list for the five real servers (tokens = characters / 4)**\n")
    print("| tool_exposure | tools listed | characters | tokens | of which pml_* tools |")
    print("|---|---|---|---|---|")
    for exposure, count, chars, tokens, own in rows:
        print(f"| {exposure} | {count} | {chars:,} | {tokens:,} | {own:,} |")
    print(f"\nlean is {1 - sizes['lean'] / sizes['all']:.1%} smaller")


if __name__ == "__main__":
    anyio.run(main)
