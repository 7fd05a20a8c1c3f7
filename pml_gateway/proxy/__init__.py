"""The MCP proxy: one MCP server upstream (``server``, with its ``fast_path``), the downstream
servers it aggregates (``downstream/``), the name registry that maps exposed names both ways
(``registry``), traces of proxied calls (``traces``), and the gateway's own tools and workflows
(``tools``, ``workflows``). ``gateway`` ties them into the app as the ``/mcp`` extension.

A ``tools/call`` takes one path whichever way it comes in: ``UpstreamServer.call`` ->
``DownstreamPool.call`` -> ``Downstream.call_tool`` -> its ``DownstreamLink``; results stay wire
dicts and every failure is worded by ``downstream/errors.py``. The MCP SDK's private internals
are touched in ``sdk_compat`` only, and its stdio process handling in ``downstream/stdio_transport``."""

from pml_gateway.proxy.downstream import ConfigError
from pml_gateway.proxy.gateway import Gateway

__all__ = ["ConfigError", "Gateway"]
