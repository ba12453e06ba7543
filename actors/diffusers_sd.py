"""The `diffusers` image backend: RoentGen (a Stable Diffusion 1.x fine-tune on MIMIC-CXR) or
any StableDiffusionPipeline, loaded from a local directory or hub id once per actor.

Settings (images.*): model, size (RoentGen: 512), steps (75), guidance (4.0); images.options:
device ("auto": cuda when available), dtype ("auto": float16 on cuda, float32 on cpu),
micro_batch (rows per pipeline call; default: the whole Ray batch), negative_prompt.
The prompt is the report's IMPRESSION, truncated to the text encoder's token limit (counted in
provenance); the safety checker is off (it blanks chest X-rays). Each row has its own seeded
generator, so a row's noise does not depend on its batch-mates.
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Optional

import numpy as np

from engine.core.errors import UserError
from engine.core.gate import call_isolating
from engine.images.pipeline import (ImageBackend, empty_output, encode_result, finish_output, reject_row,
                                    row_reason, stage_settings)

PIPELINE_PARTS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def check_pipeline_source(path_or_id: str) -> str:
    """A local pipeline directory (checked for the diffusers layout) or a hub id; UserError else."""
    text = str(path_or_id)
    path = Path(text).expanduser()
    if path.exists():
        if not path.is_dir():
            raise UserError(f"{path}: not a directory; expected a diffusers pipeline directory "
                            f"(model_index.json, {', '.join(p + '/' for p in PIPELINE_PARTS)})")
        index = path / "model_index.json"
        if not index.is_file():
            raise UserError(f"{path}: not a diffusers pipeline directory (no model_index.json); expected the "
                            f"layout StableDiffusionPipeline.save_pretrained writes")
        try:
            spec = json.loads(index.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise UserError(f"{index}: not valid JSON ({exc})") from None
        missing = [p for p in PIPELINE_PARTS if p not in spec or not (path / p).is_dir()]
        if missing:
            raise UserError(f"{path}: pipeline directory lacks {', '.join(missing)} "
                            f"(model_index.json lists: {', '.join(k for k in spec if not k.startswith('_'))})")
        return str(path.resolve())
    if _HUB_ID.match(text) and not text.startswith((".", "/", "~")):
        return text
    raise UserError(f"{text}: no such directory, and not a hub model id (owner/name)")


def resolve_device(device: str = "auto") -> str:
    import torch

    if device in (None, "", "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"images.options.device={device!r} but no CUDA device is available")
    return device


def resolve_dtype(dtype: Optional[str], device: str):
    import torch

    if dtype in (None, "", "auto"):
        return torch.float16 if device.startswith("cuda") else torch.float32
    table = {"float16": torch.float16, "fp16": torch.float16, "bfloat16": torch.bfloat16,
             "float32": torch.float32, "fp32": torch.float32}
    if dtype not in table:
        raise UserError(f"images.options.dtype={dtype!r}; expected auto, {', '.join(table)}")
    return table[dtype]


def load_pipeline(path_or_id: str, device: str = "auto", dtype=None):
    """StableDiffusionPipeline.from_pretrained exactly as for a RoentGen checkout, safety checker
    off, moved to `device`; UserError for anything that is not a loadable pipeline."""
    from diffusers import StableDiffusionPipeline
    from diffusers.utils import logging as dlogging

    dlogging.disable_progress_bar()  # actors log to files; per-component bars are noise there
    source = check_pipeline_source(path_or_id)
    device = resolve_device(device)
    if dtype is None or isinstance(dtype, str):
        dtype = resolve_dtype(dtype, device)
    try:
        pipe = StableDiffusionPipeline.from_pretrained(source, safety_checker=None, requires_safety_checker=False,
                                                       **{_dtype_kwarg(): dtype})
    except Exception as exc:  # noqa: BLE001 - whatever diffusers raises, the user needs one line
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise UserError(f"{source}: could not load a StableDiffusionPipeline ({type(exc).__name__}: {first[:300]})") from None
    pipe = pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _dtype_kwarg() -> str:
    """diffusers renamed from_pretrained's `torch_dtype` to `dtype` (the old name warns)."""
    try:
        from diffusers.utils import deprecation_utils

        return "dtype" if hasattr(deprecation_utils, "_resolve_dtype") else "torch_dtype"
    except ImportError:
        return "torch_dtype"


def prepare_prompt(tokenizer, text) -> tuple[str, int, bool]:
    """(prompt, token count, truncated): whitespace normalised; cut to the encoder's limit
    (BOS/EOS included) on token boundaries, so the pipeline's own silent cut never happens."""
    prompt = " ".join(str(text or "").split())
    ids = tokenizer(prompt, truncation=False, add_special_tokens=True)["input_ids"]
    limit = int(tokenizer.model_max_length)
    if len(ids) <= limit:
        return prompt, len(ids), False
    body = ids[1:limit - 1]
    return tokenizer.decode(body, skip_special_tokens=True).strip(), len(ids), True


def to_gray_uint8(images: np.ndarray) -> list[np.ndarray]:
    """Pipeline output (B, H, W, 3) floats in [0, 1] -> grayscale uint8 arrays."""
    arr = np.asarray(images, dtype=np.float32)
    gray = arr.mean(axis=-1) if arr.ndim == 4 else arr
    return [np.clip(g * 255 + 0.5, 0, 255).astype(np.uint8) for g in gray]


def _blank(value) -> bool:
    return value is None or (isinstance(value, float) and np.isnan(value)) or not str(value).strip()


class DiffusersStage(ImageBackend):
    """Ray Data stage: rows with sample_id, impression, seed -> image, provenance (no masks).
    An empty impression is a recorded skip; a failing row is a rejected row."""

    name = "diffusers"
    reads = ("sample_id", "impression", "seed")

    @classmethod
    def settings(cls, section, cfg) -> dict:
        if not section.model:
            raise UserError("images.model: the diffusers backend needs a pipeline directory or model id")
        if section.size % 8:
            raise UserError(f"images.size={section.size}: the diffusers backend needs a multiple of 8")
        resolved = cfg.resolve(section.model) if cfg is not None else Path(section.model)
        settings = section.model_dump()
        settings["model"] = check_pipeline_source(str(resolved) if resolved.exists() else section.model)
        return settings

    def __init__(self, config: Optional[dict] = None):
        s = stage_settings(config)
        opts = dict(s.get("options") or {})
        if not s.get("model"):
            raise UserError("images.model: the diffusers backend needs a pipeline directory or model id")
        self.model = str(s["model"])
        self.device = resolve_device(opts.get("device", "auto"))
        self.dtype = resolve_dtype(opts.get("dtype", "auto"), self.device)
        self.pipe = load_pipeline(self.model, self.device, self.dtype)
        self.size, self.steps, self.guidance = int(s["size"]), int(s["steps"]), float(s["guidance"])
        factor = int(getattr(self.pipe, "vae_scale_factor", 8))
        if self.size % factor:
            raise UserError(f"images.size={self.size} is not a multiple of the VAE scale factor {factor}")
        self.micro_batch = int(opts.get("micro_batch") or 0) or None
        self.negative_prompt = opts.get("negative_prompt")

    def _provenance(self, seed, prompt="", n_tokens=None, truncated=None) -> dict:
        return {"backend": "diffusers", "model": self.model, "seed": seed, "size": self.size,
                "prompt": prompt, "prompt_tokens": n_tokens, "prompt_truncated": truncated,
                "steps": self.steps, "guidance": self.guidance, "device": self.device,
                "dtype": str(self.dtype).replace("torch.", "")}

    def generate(self, prompts: list[str], seeds: list[int]) -> list[np.ndarray]:
        """One pipeline call: per-row CPU generators (reproducible across devices)."""
        import torch

        gens = [torch.Generator("cpu").manual_seed(int(s) & 0x7FFFFFFFFFFFFFFF) for s in seeds]
        kwargs = {}
        if self.negative_prompt:
            kwargs["negative_prompt"] = [self.negative_prompt] * len(prompts)
        with torch.inference_mode():
            result = self.pipe(prompt=prompts, height=self.size, width=self.size,
                               num_inference_steps=self.steps, guidance_scale=self.guidance,
                               generator=gens, output_type="np", **kwargs)
        return to_gray_uint8(result.images)

    def __call__(self, batch: dict) -> dict:
        n = len(batch["sample_id"])
        results: list = [None] * n  # per row: (image or None, reason or None, provenance)
        todo = []  # (row, seed, prompt, n_tokens, truncated)
        for i in range(n):
            seed, impression = batch["seed"][i], batch["impression"][i]
            try:
                seed = int(seed)
            except (TypeError, ValueError):
                results[i] = (None, row_reason("diffusers", "error", f"seed is not an integer: {seed!r}"),
                              self._provenance(None))
                continue
            if _blank(impression):
                results[i] = (None, row_reason("diffusers", "skipped", "empty impression (no prompt)"),
                              self._provenance(seed))
                continue
            try:
                prompt, n_tok, cut = prepare_prompt(self.pipe.tokenizer, impression)
            except Exception as exc:  # noqa: BLE001
                results[i] = (None, row_reason("diffusers", "error", f"{type(exc).__name__}: {exc}"),
                              self._provenance(seed))
                continue
            todo.append((i, seed, prompt, n_tok, cut))

        step = self.micro_batch or max(len(todo), 1)
        for start in range(0, len(todo), step):
            chunk = todo[start:start + step]
            images, failures = call_isolating(lambda rows: self.generate([r[2] for r in rows], [r[1] for r in rows]),
                                              chunk)
            for (i, seed, prompt, n_tok, cut), img, exc in zip(chunk, images, failures):
                prov = self._provenance(seed, prompt, n_tok, cut)
                if exc is not None:
                    results[i] = (None, row_reason("diffusers", "error", f"{type(exc).__name__}: {exc}"), prov)
                else:
                    results[i] = (img, None, prov)

        out = empty_output()  # rows leave in the order they came in
        for i, (img, reason, prov) in enumerate(results):
            sid = str(batch["sample_id"][i])
            if reason is None:
                encode_result(out, sid, img, [], prov)
            else:
                reject_row(out, sid, reason, prov)
        return finish_output(out)
