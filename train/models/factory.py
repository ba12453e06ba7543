"""create_model / load_model: models by name from their JSON config, or from a saved directory."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable

import torch

from engine.core.errors import UserError
from train.models.base import FORMAT, MODEL_FILE, WEIGHTS_FILE, ContrastiveModel
from train.models.configs import load_config
from train.models.convirt import ConvirtModel
from train.models.gloria import GloriaModel

CLASSES = {"convirt": ConvirtModel, "gloria": GloriaModel}


def create_model(name: str, text_corpus: Iterable[str] | None = None, tokenizer_dir: str | None = None,
                 overrides: dict | None = None) -> ContrastiveModel:
    """A new model (random heads; encoders as their config says). smallbert text encoders train
    their vocabulary on text_corpus unless tokenizer_dir already holds a tokenizer."""
    config = load_config(name, overrides)
    return CLASSES[config["method"]](name, config, text_corpus=text_corpus, tokenizer_dir=tokenizer_dir)


def model_dir(path: str | Path, flag: str = "--checkpoint") -> Path:
    """The saved model a user points at: a `syncxr train` run directory (its model/) or the model
    directory itself."""
    p = Path(path).expanduser()
    if (p / "model" / MODEL_FILE).is_file():
        return p / "model"
    if (p / MODEL_FILE).is_file():
        return p
    if not p.exists():
        raise UserError(f"{flag} {p}: not found")
    raise UserError(f"{flag} {p}: neither a run directory with model/ nor a saved model ({MODEL_FILE} missing)")


def load_model(path, expect_name: str | None = None) -> ContrastiveModel:
    """A model saved by `save_pretrained`; with expect_name, a directory of another model is refused."""
    path = Path(path)
    meta_file = path / MODEL_FILE
    if not meta_file.is_file():
        raise UserError(f"{path}: not a saved syncxr model (no {MODEL_FILE})")
    try:
        meta = json.loads(meta_file.read_text())
    except ValueError as exc:
        raise UserError(f"{meta_file}: not valid JSON ({exc})") from None
    if meta.get("format") != FORMAT:
        raise UserError(f"{meta_file}: format {meta.get('format')!r} is not {FORMAT!r}")
    name, method = meta.get("name"), meta.get("method")
    if expect_name is not None and name != expect_name:
        raise UserError(f"{path}: holds model {name!r} ({method}), expected {expect_name!r}")
    if method not in CLASSES:
        raise UserError(f"{meta_file}: unknown method {method!r}")
    model = CLASSES[method](name, meta["config"], from_dir=str(path))
    try:
        state = torch.load(path / WEIGHTS_FILE, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise UserError(f"{path}: no {WEIGHTS_FILE}") from None
    except Exception as exc:  # truncated, random bytes, a pickle of something else: torch's own words mislead
        raise UserError(f"{path / WEIGHTS_FILE}: not a readable weights file (truncated or not saved by syncxr: "
                        f"{type(exc).__name__})") from None
    if not isinstance(state, dict) or not all(torch.is_tensor(v) for v in state.values()):
        raise UserError(f"{path / WEIGHTS_FILE}: not a state dict of tensors")
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # same keys, other shapes
        raise UserError(f"{path / WEIGHTS_FILE}: weights do not fit model {name!r}: "
                        f"{str(exc).splitlines()[1].strip() if len(str(exc).splitlines()) > 1 else exc}") from None
    if missing or unexpected:
        raise UserError(f"{path / WEIGHTS_FILE}: weights do not fit model {name!r} "
                        f"({len(missing)} missing, e.g. {missing[:2]}; {len(unexpected)} unexpected, "
                        f"e.g. {unexpected[:2]})")
    return model
