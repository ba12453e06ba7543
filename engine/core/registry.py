"""One small registry per stage kind. Entries are import paths, resolved on first use, so a GPU
backend (vllm, faiss-gpu) is only imported when a config actually names it."""
from __future__ import annotations

import importlib
from typing import Any

from engine.core.errors import ConfigError


class Registry:
    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, str] = {}

    def register(self, name: str, target: str) -> None:
        """Register `name` -> "package.module:Attribute"."""
        if name in self._entries and self._entries[name] != target:
            raise ValueError(f"{self.kind} backend {name!r} registered twice")
        self._entries[name] = target

    def names(self) -> list[str]:
        return sorted(self._entries)

    def entries(self) -> dict[str, str]:
        """name -> import path: what another process registers to see this registry as it is here."""
        return dict(self._entries)

    def get(self, name: str) -> Any:
        if name not in self._entries:
            raise ConfigError(
                f"unknown {self.kind} backend {name!r}; known: {', '.join(self.names())}"
            )
        module_name, _, attr = self._entries[name].partition(":")
        return getattr(importlib.import_module(module_name), attr)

    def __contains__(self, name: str) -> bool:
        return name in self._entries
