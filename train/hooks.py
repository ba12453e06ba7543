"""Validation hooks a training config names (`validation.zero_shot: phantom`), one registry of them.
A hook is called on rank 0 after validation as hook(model, device, train_config) -> {metric: value}
and lists the metrics it reports in its `metrics` attribute. Entries are import paths, so the
trainer names eval's hook without importing eval. The driver's registry is the one that counts:
the Tune trials and Ray Train workers it starts register its entries before reading the config."""
from __future__ import annotations

from typing import Callable, Optional

from engine.core.registry import Registry

VALIDATION_HOOKS = Registry("validation.zero_shot")
VALIDATION_HOOKS.register("phantom", "eval.validation:phantom_zero_shot")


def resolve_hook(name: Optional[str]) -> Optional[Callable]:
    return VALIDATION_HOOKS.get(name) if name else None


def register_hooks(entries: dict[str, str]) -> None:
    for name, target in entries.items():
        VALIDATION_HOOKS.register(name, target)
