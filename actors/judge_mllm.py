"""`mllm` quality judge: a multimodal LLM on vLLM through ray.data.llm.

The model sees one image and a question about view, exposure and artefacts and is asked for a
JSON object. Models do not always comply, so `parse_answer` accepts strict JSON, JSON-ish text
(code fences, single quotes, Python literals, trailing commas), `key: value` lines, and as a last
resort plain sentences scanned for the flag words with a simple negation check. The flags share
the vocabulary of engine/qc/flags.py plus `other_view`, `artefact`, `unusable`.

Runs only where vllm is installed (the `gpu` extra); elsewhere building the processor raises a
UserError that says so. The prompt, the parser and the processor config are plain functions.
"""
from __future__ import annotations

import ast
import base64
import importlib.util
import json
import re
from typing import Any, Optional

from engine.core.errors import ConfigError, UserError
from engine.core.stage import Backend
from engine.qc.flags import IMAGE_PROBLEMS, MLLM_ONLY_PROBLEMS

FLAGS = list(IMAGE_PROBLEMS + MLLM_ONLY_PROBLEMS)
OUTPUT_COLUMNS = ("judge_flags", "judge_problematic", "judge_scores", "judge_error")

SYSTEM_PROMPT = ("You are a radiographer doing quality control of images for a dataset of frontal "
                 "(PA or AP) chest radiographs. Judge only image quality and view, not disease.")

USER_PROMPT = """Assess this image and answer with one JSON object and nothing else:
{"view": "frontal" | "lateral" | "other" | "none",
 "exposure": "ok" | "overexposed" | "underexposed",
 "inverted": true | false,
 "cropped": true | false,
 "rotated": true | false,
 "blank": true | false,
 "noise": true | false,
 "text": true | false,
 "other_artefacts": [],
 "usable": true | false}
Meanings: overexposed = too dark, lungs burnt out; underexposed = washed out, too light;
inverted = bones dark and lungs light; cropped = part of the thorax cut off by the frame;
rotated = the image frame is tilted; blank = no anatomy; noise = heavy noise or grain;
text = burnt-in text beyond a small laterality marker; other_artefacts = short names of any
other artefact (e.g. "motion blur", "grid lines")."""

_TRUE = {"true", "yes", "y", "1", "present", "positive", "detected"}
_FALSE = {"false", "no", "n", "0", "absent", "negative", "none", "not detected", "null", ""}
_FRONTAL = {"frontal", "pa", "ap", "posteroanterior", "anteroposterior", "frontal (pa)", "frontal (ap)"}
_KEY_ALIASES = {"projection": "view", "orientation": "view", "over_exposed": "overexposed",
                "under_exposed": "underexposed", "exposure_quality": "exposure", "noisy": "noise",
                "burnt_in_text": "text", "burned_in_text": "text", "text_overlay": "text",
                "artefacts": "other_artefacts", "artifacts": "other_artefacts",
                "other_artifacts": "other_artefacts", "is_usable": "usable", "cut_off": "cropped",
                "tilted": "rotated", "empty": "blank"}
_BOOL_FLAGS = ("inverted", "cropped", "rotated", "blank", "noise", "text", "overexposed", "underexposed")


def build_messages(png: bytes, mime: str = "image/png") -> list[dict]:
    """OpenAI-format chat messages with the image as a data URL (what vLLM's parser reads)."""
    url = f"data:{mime};base64,{base64.b64encode(png).decode('ascii')}"
    return [{"role": "system", "content": SYSTEM_PROMPT},
            {"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}},
                                         {"type": "text", "text": USER_PROMPT}]}]


def _norm_key(key: str) -> str:
    k = re.sub(r"[\s\-]+", "_", str(key).strip().strip("\"'").lower())
    return _KEY_ALIASES.get(k, k)


def _as_bool(value: Any) -> Optional[bool]:
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)):
        return bool(value)
    if value is None:
        return False
    s = str(value).strip().strip("\"'.").lower()
    if s in _TRUE:
        return True
    if s in _FALSE:
        return False
    if s.startswith(("yes", "true", "present")):
        return True
    if s.startswith(("no", "false", "absent", "not")):
        return False
    return None


def _json_candidates(text: str):
    body = re.sub(r"```(?:json)?", "", text)
    start, end = body.find("{"), body.rfind("}")
    if start < 0 or end <= start:
        return
    blob = body[start:end + 1]
    yield blob
    fixed = re.sub(r",\s*([}\]])", r"\1", blob)  # trailing commas
    yield fixed
    yield re.sub(r"\bTrue\b", "true", re.sub(r"\bFalse\b", "false", re.sub(r"\bNone\b", "null", fixed)))
    yield fixed.replace("'", '"')
    py = re.sub(r"\btrue\b", "True", re.sub(r"\bfalse\b", "False", re.sub(r"\bnull\b", "None", fixed)))
    yield py


def _parse_json(text: str) -> Optional[dict]:
    for cand in _json_candidates(text):
        for loader in (json.loads, ast.literal_eval):
            try:
                obj = loader(cand)
            except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
                continue
            if isinstance(obj, dict):
                return obj
    return None


def _parse_lines(text: str) -> dict:
    fields = {}
    for line in text.splitlines():
        m = re.match(r"^\s*[-*\d.)\s]*\**([A-Za-z][\w \-]{0,40}?)\**\s*[:=]\s*(.+?)\s*$", line)
        if m:
            fields[_norm_key(m.group(1))] = m.group(2).strip().rstrip(",")
    return fields


_KEYWORDS = {"lateral": r"lateral", "inverted": r"invert(?:ed|ion)|negative image",
             "overexposed": r"over-?exposed|over-?penetrated|too dark",
             "underexposed": r"under-?exposed|under-?penetrated|washed[- ]out|too light",
             "cropped": r"cropped|cut off|truncated", "rotated": r"rotated|tilted",
             "blank": r"blank|empty image|no anatomy", "noise": r"nois[ey]|grainy",
             "text": r"burn(?:t|ed)[- ]in text|text overlay|annotations?"}
_NEGATION = re.compile(r"\b(no|not|without|absent|neither|nor)\b[\w ,]{0,25}$")


def _scan_sentences(text: str) -> list[str]:
    flags = []
    low = text.lower()
    for flag, pattern in _KEYWORDS.items():
        for m in re.finditer(pattern, low):
            if not _NEGATION.search(low[max(0, m.start() - 30):m.start()]):
                flags.append(flag)
                break
    return flags


def _flags_from_fields(fields: dict) -> tuple[list[str], Optional[bool]]:
    fields = {_norm_key(k): v for k, v in fields.items()}
    flags: list[str] = []
    view = str(fields.get("view", "frontal")).strip().strip("\"'").lower()
    if "lateral" in view:
        flags.append("lateral")
    elif view in ("none", "blank", "no image"):
        flags.append("blank")
    elif not any(f in view for f in _FRONTAL) and view:
        flags.append("other_view")
    exposure = str(fields.get("exposure", "ok")).lower()
    if "over" in exposure:
        flags.append("overexposed")
    elif "under" in exposure:
        flags.append("underexposed")
    for key in _BOOL_FLAGS:
        if _as_bool(fields.get(key, False)) and key not in flags:
            flags.append(key)
    others = fields.get("other_artefacts")
    if isinstance(others, str):
        others = [] if _as_bool(others) is False else [x for x in re.split(r"[,;]", others.strip("[] ")) if x.strip()]
    if others and any(str(x).strip().strip("\"'") for x in others):
        flags.append("artefact")
    usable = _as_bool(fields["usable"]) if "usable" in fields else None
    if usable is False and not flags:
        flags.append("unusable")
    return [f for f in FLAGS if f in flags], usable


def parse_answer(text: Optional[str]) -> dict:
    """A judge answer as {flags, problematic, parsed, error}.

    parsed: "json", "fields" (key: value lines), "sentences" (keyword scan) or "none";
    problematic is None only when nothing could be read from the answer."""
    text = (text or "").strip()
    if not text:
        return {"flags": [], "problematic": None, "parsed": "none", "error": "empty judge answer"}
    obj = _parse_json(text)
    if obj is not None:
        flags, usable = _flags_from_fields(obj)
        return {"flags": flags, "problematic": bool(flags) or usable is False, "parsed": "json", "error": ""}
    fields = _parse_lines(text)
    known = set(fields) & ({"view", "exposure", "usable", "other_artefacts"} | set(_BOOL_FLAGS))
    if known:
        flags, usable = _flags_from_fields({k: fields[k] for k in known})
        return {"flags": flags, "problematic": bool(flags) or usable is False, "parsed": "fields", "error": ""}
    flags = _scan_sentences(text)
    if flags:
        return {"flags": flags, "problematic": True, "parsed": "sentences", "error": ""}
    if re.search(r"\b(acceptable|adequate|good|diagnostic|no (?:issues|problems|artefacts|artifacts))\b", text.lower()):
        return {"flags": [], "problematic": False, "parsed": "sentences", "error": ""}
    return {"flags": [], "problematic": None, "parsed": "none",
            "error": f"unparseable judge answer: {text[:80]!r}"}


def processor_config(judge_cfg):
    """The vLLMEngineProcessorConfig for a qc.judge section (backend mllm).

    qc.judge.options: engine_kwargs (merged over the defaults below), max_tokens, temperature."""
    from ray.data.llm import vLLMEngineProcessorConfig

    if not judge_cfg.model:
        raise ConfigError("qc.judge: backend 'mllm' needs `model` (a local directory or hub id of a "
                          "vision-language model vLLM supports)")
    opts = dict(judge_cfg.options)
    unknown = set(opts) - {"engine_kwargs", "max_tokens", "temperature"}
    if unknown:
        raise ConfigError(f"qc.judge.options: unknown keys {sorted(unknown)} for mllm "
                          "(known: engine_kwargs, max_tokens, temperature)")
    res = judge_cfg.resources
    engine_kwargs = {"max_model_len": 4096, "limit_mm_per_prompt": {"image": 1},
                     **opts.get("engine_kwargs", {})}
    return vLLMEngineProcessorConfig(
        model_source=judge_cfg.model,
        engine_kwargs=engine_kwargs,
        batch_size=res.batch_size,
        concurrency=(res.min_actors, res.max_actors),
        accelerator_type=res.accelerator_type,
        prepare_multimodal_stage={"enabled": True},
        chat_template_stage=True,
        tokenize_stage=True,
        detokenize_stage=True,
        should_continue_on_error=True,  # a failed row becomes a judge_error, not a failed job
    )


def sampling_params(judge_cfg) -> dict:
    opts = judge_cfg.options
    return {"temperature": float(opts.get("temperature", 0.0)), "max_tokens": int(opts.get("max_tokens", 256))}


def image_png(cell) -> bytes:
    if isinstance(cell, dict):
        data = cell.get("bytes")
        if not data and cell.get("path"):
            with open(cell["path"], "rb") as fh:
                data = fh.read()
        return bytes(data or b"")
    return bytes(cell or b"")


def vllm_missing_reason() -> Optional[str]:
    if importlib.util.find_spec("vllm") is None:
        return "vllm is not installed (install the gpu extra: pip install 'syncxr[gpu]')"
    return None


def build_judge_processor(judge_cfg, keep_columns: list[str]):
    """A ray.data.llm Processor: image rows in, rows with the judge columns out."""
    reason = vllm_missing_reason()
    if reason:
        raise UserError(f"qc.judge backend 'mllm': {reason}")
    from ray.data.llm import build_processor

    params = sampling_params(judge_cfg)
    keep = [c for c in keep_columns if c not in OUTPUT_COLUMNS]

    def preprocess(row: dict) -> dict:
        return {**row, "messages": build_messages(image_png(row["image"])), "sampling_params": params}

    def postprocess(row: dict) -> dict:
        answer = row.get("generated_text") or ""
        err = row.get("__inference_error__") or ""
        verdict = parse_answer(answer) if not err else {"flags": [], "problematic": None, "parsed": "none",
                                                        "error": f"inference failed: {err}"}
        return {**{c: row[c] for c in keep},
                "judge_flags": verdict["flags"],
                "judge_problematic": bool(verdict["problematic"]),
                "judge_scores": json.dumps({"answer": answer, "parsed": verdict["parsed"]}),
                "judge_error": verdict["error"]}

    return build_processor(processor_config(judge_cfg), preprocess=preprocess, postprocess=postprocess)


class MLLMJudge(Backend):
    """Registry entry: a dataset-level judge (ray.data.llm runs its own actor pools)."""

    name, section, attach_mode = "mllm", "qc.judge", "dataset"
    reads, writes = ("image",), ("judge_flags", "judge_problematic", "judge_scores", "judge_error")

    @classmethod
    def check(cls, section, cfg=None) -> None:
        processor_config(section)
        if vllm_missing_reason():
            raise UserError(f"qc.judge backend 'mllm': {vllm_missing_reason()}")

    @staticmethod
    def apply(ds, judge_cfg, keep_columns=None):
        """`keep_columns`: the columns to carry through (default: the dataset's, which makes Ray
        compute its schema; a pipeline that knows them passes them)."""
        return build_judge_processor(judge_cfg, keep_columns=list(keep_columns or ds.columns()))(ds)
