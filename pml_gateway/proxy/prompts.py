"""Downstream prompts under ``<server>__<prompt>``: the naming rule of tools (``registry.expose_names``).

The catalog holds each connected server's prompts as listed; ``prompts/get`` and prompt
completions go to the owning server under the prompt's own name. Listeners hear about every
change of the exposed set (``notifications/prompts/list_changed``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import mcp.types as types

from pml_gateway.proxy.registry import expose_names, log_renames

__all__ = ["PromptCatalog", "RegisteredPrompt"]


@dataclass(frozen=True, slots=True)
class RegisteredPrompt:
    name: str  #: exposed name
    server: str
    original_name: str
    prompt: types.Prompt  #: the downstream definition with ``name`` replaced


class PromptCatalog:
    """Prompts per downstream server, exposed under one name each."""

    def __init__(self) -> None:
        self._by_server: dict[str, list[types.Prompt]] = {}
        self._by_name: dict[str, RegisteredPrompt] = {}
        self._listeners: list[Callable[[], None]] = []

    def on_change(self, listener: Callable[[], None]) -> None:
        self._listeners.append(listener)

    def get(self, name: str) -> RegisteredPrompt | None:
        return self._by_name.get(name)

    def prompts(self) -> list[RegisteredPrompt]:
        return [self._by_name[name] for name in sorted(self._by_name)]

    def set_server(self, server: str, prompts: Iterable[types.Prompt]) -> None:
        prompts = list(prompts)
        if self._by_server.get(server) == prompts:
            return
        self._by_server[server] = prompts
        self._rebuild()

    def remove_server(self, server: str) -> None:
        if self._by_server.pop(server, None) is not None:
            self._rebuild()

    def _rebuild(self) -> None:
        names = expose_names((server, p.name) for server, prompts in self._by_server.items() for p in prompts)
        by_name: dict[str, RegisteredPrompt] = {}
        for server, prompts in self._by_server.items():
            for prompt in prompts:
                final = names[(server, prompt.name)]
                by_name[final] = RegisteredPrompt(final, server, prompt.name, prompt.model_copy(update={"name": final}))
        if by_name == self._by_name:
            return
        self._by_name = by_name
        log_renames(names, "prompt")
        for listener in list(self._listeners):
            listener()
