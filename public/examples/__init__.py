"""Example MCP servers, config and workload for `pml-gateway demo` (shipped as pml_gateway.examples)."""
