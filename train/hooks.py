"""Validation hooks named in a training config ("package.module:function"), resolved once when
the config is read and again in each worker."""
from __future__ import annotations

import importlib
from typing import Callable, Optional


def resolve_hook(spec: Optional[str]) -> Optional[Callable]:
    """"package.module:function" (or the last dot as separator) -> the callable. The hook is
    called on rank 0 after validation as hook(model, device, train_config) -> {metric: value}."""
    if not spec:
        return None
    module, sep, name = spec.partition(":") if ":" in spec else spec.rpartition(".")
    if not module or not name:
        raise ValueError(f"validation.zero_shot {spec!r}: expected 'module:function'")
    return getattr(importlib.import_module(module), name)
