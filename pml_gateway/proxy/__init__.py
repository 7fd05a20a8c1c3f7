"""The MCP proxy: one MCP server upstream (``server``, with its ``fast_path``), the downstream
servers it aggregates (``downstream/``), the name registry (``registry``), traces of proxied calls
(``traces``), and the gateway's own tools and workflows (``tools``, ``workflows``). ``gateway``
ties them into the app as the ``/mcp`` extension."""

from pml_gateway.proxy.downstream import ConfigError
from pml_gateway.proxy.gateway import Gateway

__all__ = ["ConfigError", "Gateway"]
