"""The gateway's version, read once from the installed distribution's metadata.

One source (pyproject.toml's ``version``) for ``--version``, the ``serverInfo`` upstream clients
see, the ``clientInfo`` downstream servers see and the HTTP ``User-Agent``. Reading the metadata
costs a few milliseconds, so the CLI imports this module only when it needs the value.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

__all__ = ["VERSION"]

try:
    VERSION: str = version("pml-gateway")
except PackageNotFoundError:  # a bare checkout run with PYTHONPATH, not installed
    VERSION = "0+unknown"
