"""Who may do what: API keys, JWTs (OAuth 2.1 resource server), stream tokens, profiles, audit.

What the rest of the process uses (DESIGN.md "Who may do what"; docs/api/auth.md):

- ``AuthPolicy(settings, profiles)``: on or off, its middleware and routes (``app.py``);
- ``Profile`` and ``PROFILE_SCOPE_KEY``: the profile that limits a request, put in its ASGI
  scope by the gate, applied by the MCP server and the event stream;
- ``current_principal``, ``profile_name``: who is calling;
- ``record_tool_call`` / ``configure_audit``: the audit lines;
- ``shows_details``: whether ``/health`` may say more than its status;
- ``KeyStore``: the keys file (``pml-gateway keys``).
"""

from pml_gateway.auth.audit import configure_audit, record_tool_call
from pml_gateway.auth.guard import AuthPolicy, shows_details
from pml_gateway.auth.keys import KeysFileError, KeyStore
from pml_gateway.auth.principal import PROFILE_SCOPE_KEY, Caller, current_principal, profile_name, request_caller
from pml_gateway.auth.profiles import Profile

__all__ = [
    "PROFILE_SCOPE_KEY",
    "AuthPolicy",
    "Caller",
    "KeyStore",
    "KeysFileError",
    "Profile",
    "configure_audit",
    "current_principal",
    "profile_name",
    "record_tool_call",
    "request_caller",
    "shows_details",
]
