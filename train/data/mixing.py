"""Which sample ids a run trains and validates on. Pure functions (no Ray) so the mix can be a Tune
hyperparameter: each trial chooses its ids from the ratio in its own config."""
from __future__ import annotations

import hashlib
from typing import Optional, Sequence

import numpy as np

from engine.core.errors import ConfigError


def _rng(seed: int, salt: str) -> np.random.Generator:
    digest = hashlib.sha256(f"{seed}:{salt}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def seeded_sample(ids: Sequence[str], n: int, seed: int, salt: str) -> list[str]:
    """Exactly `n` of `ids`, chosen by `seed` alone, independent of the input order, returned sorted."""
    pool = sorted(ids)
    if n > len(pool):
        raise ConfigError(f"asked for {n} {salt} pairs, only {len(pool)} available")
    pick = _rng(seed, salt).choice(len(pool), size=n, replace=False) if n else []
    return sorted(pool[i] for i in pick)


def split_validation(ids: Sequence[str], size: int, seed: int, salt: str = "validation") -> tuple[list[str], list[str]]:
    """(train ids, validation ids): `size` held out with a fixed seed; the rest, sorted."""
    if size >= len(ids):
        raise ConfigError(f"validation.size {size} leaves no training pairs (only {len(ids)} available)")
    val = seeded_sample(ids, size, seed, salt)
    held = set(val)
    return sorted(i for i in ids if i not in held), val


def choose_mix(synthetic: Sequence[str], real: Sequence[str], mode: str, ratio: float = 1.0,
               total: Optional[int] = None, seed: int = 0) -> tuple[list[str], list[str]]:
    """(synthetic ids, real ids) to train on.

    synthetic / real: all of that source. concat: all of both (the paper's mixed set).
    ratio: `total` pairs (default: the largest the two pools allow at this ratio) of which exactly
    round(ratio * total) are synthetic, each side a seeded sample.
    """
    if mode == "synthetic":
        _need(synthetic, "synthetic", mode)
        return sorted(synthetic), []
    if mode == "real":
        _need(real, "real", mode)
        return [], sorted(real)
    if mode == "concat":
        _need(synthetic, "synthetic", mode)
        _need(real, "real", mode)
        return sorted(synthetic), sorted(real)
    if mode != "ratio":
        raise ConfigError(f"data.mix.mode: unknown {mode!r}")
    if total is None:
        total = max_total(len(synthetic), len(real), ratio)
    n_syn = int(round(ratio * total))
    n_real = total - n_syn
    if n_syn > len(synthetic) or n_real > len(real):
        raise ConfigError(f"data.mix: ratio {ratio} of total {total} needs {n_syn} synthetic and {n_real} real "
                          f"pairs, have {len(synthetic)} and {len(real)}")
    return seeded_sample(synthetic, n_syn, seed, "synthetic"), seeded_sample(real, n_real, seed, "real")


def max_total(n_synthetic: int, n_real: int, ratio: float) -> int:
    """The largest total whose ratio split fits both pools."""
    if ratio <= 0:
        return n_real
    if ratio >= 1:
        return n_synthetic
    total = int(min(n_synthetic / ratio, n_real / (1 - ratio)))
    while total > 0 and (round(ratio * total) > n_synthetic or total - round(ratio * total) > n_real):
        total -= 1
    return total


def _need(ids, name, mode):
    if not ids:
        raise ConfigError(f"data.mix.mode {mode!r} needs {name} pairs (give --{name})")
