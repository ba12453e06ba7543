"""Schemas of the training (`syncxr train`) and sweep (`syncxr tune`) configs.

Both read YAML through `engine.core.config.load_yaml_model`, so a bad field is one line naming the
file and the dotted field. The `scaling` section's schema lives in engine.core.config, where the
cluster check reads it too.
"""
from __future__ import annotations

from typing import Any, Literal, Optional

from pydantic import Field, field_validator, model_validator

from engine.core.config import RaySection, ScalingSection, Section, deep_merge, load_yaml_model, validate_model
from engine.core.errors import ConfigError


class ModelSection(Section):
    name: str = "convirt-resnet18-smallbert"
    overrides: dict[str, Any] = Field(default_factory=dict)  # model config fields (tiny test models)
    tokenizer_dir: Optional[str] = None  # a pretrained tokenizer (BERT models)


class MixSection(Section):
    """How real and synthetic pairs are combined, inside the trial so Tune can vary it.

    - synthetic / real: that source alone
    - concat: every real and every synthetic pair (the paper's mixed set)
    - ratio: a fixed total with exactly round(ratio * total) synthetic pairs, seeded sample
    """

    mode: Literal["synthetic", "real", "concat", "ratio"] = "synthetic"
    ratio: float = Field(1.0, ge=0, le=1)  # synthetic fraction (mode: ratio)
    total: Optional[int] = Field(None, ge=1)  # None: the most the smaller side allows


class DataSection(Section):
    synthetic: Optional[str] = None  # a `syncxr synth` run directory (--synthetic overrides)
    real: Optional[str] = None  # "table:PATH", "mimic:ROOT", "openi:PNGDIR" (--real overrides)
    real_text_column: str = "report"  # table adapter: report text column
    real_image_column: str = "image_path"  # table adapter: image path column
    mix: MixSection = Field(default_factory=MixSection)
    limit: Optional[int] = Field(None, ge=1)  # at most this many training pairs (after mixing)
    augment: bool = True  # train/augment.py views of the training images (seeded)
    augment_settings: dict[str, Any] = Field(default_factory=dict)  # over the model config's "augment"
    random_sentence: bool = True  # ConVIRT/GLoRIA text view: one random sentence per image
    batch_size: int = Field(64, ge=1)  # rows per Ray Data decoding task
    num_cpus: float = Field(0.5, gt=0)  # per decoding task (they run before training starts)
    inline_max_rows: int = Field(2000, ge=0)  # a run this small decodes in the driver (no task start-up)
    seed: int = 0

    @field_validator("augment_settings")
    @classmethod
    def _known_augment_keys(cls, value: dict) -> dict:
        from train.augment import DEFAULT_AUGMENT

        unknown = sorted(set(value) - set(DEFAULT_AUGMENT))
        if unknown:
            raise ValueError(f"unknown key(s) {', '.join(unknown)} (known: {', '.join(DEFAULT_AUGMENT)})")
        return value


class ValidationSection(Section):
    size: int = Field(200, ge=2)  # held-out pairs, seeded
    source: Literal["auto", "synthetic", "real"] = "auto"  # auto: real when given, else synthetic
    batch_size: int = Field(50, ge=2)
    # a hook of train.hooks.VALIDATION_HOOKS (e.g. "phantom": zero-shot AUC on phantom images);
    # None: retrieval recall only
    zero_shot: Optional[str] = None
    metric: str = "val_i2t_r10"  # what Tune/ASHA and "best" use (zero_shot metric when set)

    @model_validator(mode="after")
    def _hook_and_metric_exist(self) -> "ValidationSection":
        from train.hooks import resolve_hook
        from train.retrieval import KS

        known = ["val_loss", *(f"val_{d}_r{k}" for d in ("i2t", "t2i") for k in KS)]
        if self.zero_shot:
            try:
                hook = resolve_hook(self.zero_shot)
            except ConfigError as exc:
                raise ValueError(str(exc)) from None
            known += list(getattr(hook, "metrics", ()))
        if self.metric not in known:
            raise ValueError(f"metric {self.metric!r} is not reported (known: {', '.join(known)})")
        return self


class OptimSection(Section):
    optimizer: Literal["adam", "adamw"] = "adam"
    lr: float = Field(1e-4, gt=0)
    weight_decay: float = Field(1e-6, ge=0)
    scheduler: Literal["cosine", "constant"] = "cosine"
    warmup_steps: int = Field(0, ge=0)
    grad_clip: Optional[float] = Field(None, gt=0)


class CheckpointSection(Section):
    num_to_keep: int = Field(2, ge=1)
    # Ray Train's storage_path: a directory every node mounts, or a URI pyarrow opens (s3://, gs://);
    # null keeps them in RUN/ray, which on a multi-node cluster needs RUN on a shared disk
    storage_path: Optional[str] = None


class TrainConfig(Section):
    model: ModelSection = Field(default_factory=ModelSection)
    data: DataSection = Field(default_factory=DataSection)
    validation: ValidationSection = Field(default_factory=ValidationSection)
    optim: OptimSection = Field(default_factory=OptimSection)
    checkpoint: CheckpointSection = Field(default_factory=CheckpointSection)
    scaling: ScalingSection = Field(default_factory=ScalingSection)
    engine: RaySection = Field(default_factory=RaySection)
    epochs: int = Field(1, ge=1)
    batch_size: int = Field(32, ge=2)  # per worker (contrastive: the negatives of one step)
    log_every_steps: int = Field(0, ge=0)  # progress line every N steps; 0: once per epoch
    seed: int = 0


def load_train_config(path, overrides: Optional[dict] = None, overrides_from: str = "overrides") -> tuple[TrainConfig, Any]:
    """The training config of a file, with `overrides` (from `overrides_from`, named in errors) on top."""
    cfg, found = load_yaml_model(path, TrainConfig, "training config")
    if overrides:
        cfg = validate_model(deep_merge(cfg.model_dump(), overrides), TrainConfig, f"{found} with {overrides_from}")
    return cfg, found


