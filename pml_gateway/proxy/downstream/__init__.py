"""Downstream MCP servers: their config (``config``), one supervisor each (``supervisor``), the one
seam calls travel over (``link``: the SDK's client in ``sdk_link``, or the lean HTTP link in
``http_link``, chosen once per connection), and the wording of every tool error (``errors``)."""

from pml_gateway.proxy.downstream.config import ConfigError, HttpServerConfig, ServerConfig, StdioServerConfig, load_config
from pml_gateway.proxy.downstream.supervisor import Downstream, DownstreamPool, DownstreamState, SupervisionTiming

__all__ = [
    "ConfigError",
    "Downstream",
    "DownstreamPool",
    "DownstreamState",
    "HttpServerConfig",
    "ServerConfig",
    "StdioServerConfig",
    "SupervisionTiming",
    "load_config",
]
