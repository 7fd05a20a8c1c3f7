"""Who may do what: API keys, JWTs (OAuth 2.1 resource server), stream tokens, profiles, audit.

What the rest of the process uses (DESIGN.md "Who may do what"; docs/api/auth.md):

- ``AuthPolicy(settings, profiles)``: on or off, its middleware and routes (``app.py``);
- ``Profile`` and ``PROFILE_SCOPE_KEY``: the profile that limits a request, put in its ASGI
  scope by the gate, applied by the MCP server and the event stream;
- ``request_caller`` / ``Caller``, ``calling_as`` / ``caller_in_context``, ``current_principal``,
  ``profile_name``: who is calling;
- ``record_tool_call`` / ``configure_audit``: the audit lines;
- ``shows_details``: whether ``/health`` may say more than its status;
- ``KeyStore``, ``KeysFileError``: the keys file (``pml-gateway keys``).

Names are loaded on first use (PEP 562), so ``pml-gateway keys`` reads the keys file without
loading the MCP SDK and Starlette (bench/auth.py (c): as fast as ``--help``).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pml_gateway.auth.audit import configure_audit, outcome_of, record_tool_call
    from pml_gateway.auth.guard import AuthPolicy, is_loopback, shows_details
    from pml_gateway.auth.keys import KeysFileError, KeyStore
    from pml_gateway.auth.principal import (
        PROFILE_SCOPE_KEY,
        Caller,
        caller_in_context,
        calling_as,
        current_principal,
        profile_name,
        request_caller,
    )
    from pml_gateway.auth.profiles import Profile

_HOMES = {
    "configure_audit": "audit",
    "record_tool_call": "audit",
    "outcome_of": "audit",
    "AuthPolicy": "guard",
    "shows_details": "guard",
    "is_loopback": "guard",
    "KeysFileError": "keys",
    "KeyStore": "keys",
    "PROFILE_SCOPE_KEY": "principal",
    "Caller": "principal",
    "current_principal": "principal",
    "profile_name": "principal",
    "request_caller": "principal",
    "calling_as": "principal",
    "caller_in_context": "principal",
    "Profile": "profiles",
}
__all__ = sorted(_HOMES)


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{home}"), name)
