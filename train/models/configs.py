"""Model configurations: one JSON file per model name in train/model_configs/, holding every value
(dimensions, temperatures, loss weights, image size, token limit, encoder sources). Overrides are
nested dicts merged over it; a key the JSON does not have is a typo and is refused."""
from __future__ import annotations

import json
from pathlib import Path

from engine.core.config import deep_merge
from engine.core.errors import ConfigError, UserError

CONFIG_DIR = Path(__file__).resolve().parent.parent / "model_configs"
METHODS = ("convirt", "gloria")


def list_models() -> list[str]:
    return sorted(p.stem for p in CONFIG_DIR.glob("*.json"))


def load_config(name: str, overrides: dict | None = None) -> dict:
    if name not in list_models():
        raise UserError(f"unknown model {name!r}; known models: {', '.join(list_models())}")
    path = CONFIG_DIR / f"{name}.json"
    with open(path) as f:
        base = json.load(f)
    config = deep_merge(base, overrides, strict=True, where="overrides")
    if config.get("method") not in METHODS:
        raise ConfigError(f"{path.name}: method must be one of {', '.join(METHODS)}, got {config.get('method')!r}")
    image = config["image"]
    if not (0 < int(image["image_size"]) <= int(image["resize_to"])):
        raise ConfigError(f"model {name}: image.image_size ({image['image_size']}) must be positive and "
                          f"at most image.resize_to ({image['resize_to']})")
    return config
