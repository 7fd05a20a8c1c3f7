"""Downstream MCP servers: their config (``config``), one supervisor each (``supervisor``), and the
links calls travel over (the SDK's client, or the lean HTTP link in ``http_link``)."""

from pml_gateway.proxy.downstream.config import ConfigError, HttpServerConfig, StdioServerConfig, load_config
from pml_gateway.proxy.downstream.supervisor import Downstream, DownstreamPool, DownstreamState, SupervisionTiming

__all__ = [
    "ConfigError",
    "Downstream",
    "DownstreamPool",
    "DownstreamState",
    "HttpServerConfig",
    "StdioServerConfig",
    "SupervisionTiming",
    "load_config",
]
