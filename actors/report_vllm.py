"""Report writing at cluster scale: vLLM through `ray.data.llm.build_processor` (Ray 2.60:
chat template -> tokenize -> vLLM engine -> detokenize, one engine replica per actor, tensor
parallel inside a replica). The engine answers a prompt with one text, so each plan row is
exploded into `num_candidates` rows with their own sampling seed and grouped back afterwards."""
from __future__ import annotations

from functools import partial
from typing import Any, Optional

from pydantic import BaseModel, ConfigDict, Field

from engine.reports.prompts import PromptTemplate, render_messages
from engine.core.stage import entity_lists, validate_options
from engine.reports.pipeline import (
    DatasetReportWriter,
    attach_per_candidate,
    candidate_seed,
    check_model_source,
    prompt_to_kwargs,
)

# Rows that cannot be written about (empty entity list) still pass through the engine, since the
# processor is one row in, one row out; they cost one token and their text is discarded.
_PLACEHOLDER_MESSAGES = [{"role": "user", "content": "."}]


class VLLMOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    tensor_parallel_size: int = Field(1, ge=1)  # GPUs per engine replica (70B: 4-8)
    pipeline_parallel_size: int = Field(1, ge=1)
    max_model_len: Optional[int] = Field(4096, ge=64)  # prompt + report fit easily
    gpu_memory_utilization: Optional[float] = Field(None, gt=0, le=1)
    enable_prefix_caching: bool = True  # every prompt shares the system message and rules
    max_concurrent_batches: int = Field(8, ge=1)
    continue_on_error: bool = True  # a failed request becomes a rejected row, not a failed job
    engine_kwargs: dict[str, Any] = Field(default_factory=dict)  # anything else vLLM takes
    runtime_env: Optional[dict[str, Any]] = None


def sampling_params(sampling: dict, seed: int) -> dict:
    """vLLM SamplingParams fields for one candidate."""
    return {"temperature": float(sampling["temperature"]), "top_p": float(sampling["top_p"]),
            "max_tokens": int(sampling["max_tokens"]), "seed": int(seed)}


def vllm_preprocess(row: dict, prompt: dict, sampling: dict) -> dict:
    """Exploded plan row -> the `messages` and `sampling_params` the processor needs."""
    if row.get("gen_error"):
        return {"messages": _PLACEHOLDER_MESSAGES, "sampling_params": {**sampling_params(sampling, 0), "max_tokens": 1}}
    messages = render_messages(PromptTemplate(**prompt), entity_lists([row["entities"]])[0])
    return {"messages": messages,
            "sampling_params": sampling_params(sampling, candidate_seed(row["seed"], row["candidate"]))}


def vllm_postprocess(row: dict, max_tokens: int) -> dict:
    """A finished vLLM row (generated_text, num_generated_tokens, ...) -> one candidate. Using
    the whole token budget means the text was cut off."""
    return {"sample_id": row["sample_id"], "entities": row["entities"], "seed": row["seed"],
            "candidate": row["candidate"], "carry": row.get("carry", "{}"), "gen_error": row.get("gen_error") or "",
            "text": str(row.get("generated_text") or ""),
            "truncated": int(row.get("num_generated_tokens") or 0) >= int(max_tokens)}


def processor_config(rcfg):
    """The vLLMEngineProcessorConfig a ReportsConfig describes."""
    from ray.data.llm import vLLMEngineProcessorConfig

    opts = validate_options(VLLMOptions, rcfg.options, "reports", rcfg.backend)
    res = rcfg.resources
    engine_kwargs = {"tensor_parallel_size": opts.tensor_parallel_size,
                     "pipeline_parallel_size": opts.pipeline_parallel_size,
                     "enable_prefix_caching": opts.enable_prefix_caching}
    if opts.max_model_len:
        engine_kwargs["max_model_len"] = opts.max_model_len
    if opts.gpu_memory_utilization:
        engine_kwargs["gpu_memory_utilization"] = opts.gpu_memory_utilization
    engine_kwargs.update(opts.engine_kwargs)
    return vLLMEngineProcessorConfig(
        model_source=rcfg.model,
        engine_kwargs=engine_kwargs,
        batch_size=res.batch_size,
        concurrency=(res.min_actors, res.max_actors),  # engine replicas
        accelerator_type=res.accelerator_type,
        max_concurrent_batches=opts.max_concurrent_batches,
        should_continue_on_error=opts.continue_on_error,
        runtime_env=opts.runtime_env,
    )


def build_report_processor(rcfg, prompt: PromptTemplate):
    from ray.data.llm import build_processor

    return build_processor(
        processor_config(rcfg),
        preprocess=partial(vllm_preprocess, prompt=prompt_to_kwargs(prompt), sampling=rcfg.sampling.model_dump()),
        postprocess=partial(vllm_postprocess, max_tokens=rcfg.sampling.max_tokens),
    )


class VLLMReportWriter(DatasetReportWriter):
    """Report writer on vLLM engine replicas (ray.data.llm)."""

    name, Options = "vllm", VLLMOptions

    @classmethod
    def check(cls, rcfg, cfg=None) -> None:
        cls.options_of(rcfg.options)
        check_model_source(rcfg)  # vllm itself need not be importable on the driver

    @classmethod
    def attach(cls, ds, rcfg, prompt: PromptTemplate):
        return attach_per_candidate(ds, build_report_processor(rcfg, prompt), rcfg.num_candidates)
