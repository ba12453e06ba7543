"""Report writing with a transformers causal LM (a local directory or a hub id): batched,
sampled generation of several candidates per plan row, through the tokenizer's chat template
when it has one."""
from __future__ import annotations

import hashlib
from typing import Optional

from pydantic import BaseModel, ConfigDict, Field

from engine.core.errors import UserError
from engine.reports.prompts import PromptTemplate, render_messages
from engine.reports.pipeline import CandidateStage, check_model_source, prompt_to_kwargs, short_error


class TransformersOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    device: str = "auto"  # auto: cuda when available
    dtype: str = "auto"  # auto | float32 | float16 | bfloat16
    trust_remote_code: bool = False
    max_prompt_tokens: Optional[int] = Field(None, ge=8)  # left-truncate longer prompts


def prompt_text(tokenizer, messages: list[dict]) -> tuple[str, bool]:
    """(text to tokenize, whether the tokenizer should add its special tokens): the chat template
    already holds BOS and role markers; without one, a plain system + user layout."""
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True), False
    body = "\n\n".join(m["content"] for m in messages)
    return f"{body}\n\n", True


def batch_seed(rows: list[dict]) -> int:
    """One sampling seed per batch, from its rows' plan seeds: reruns over the same batches
    reproduce their text (batched sampling cannot be seeded per row)."""
    digest = hashlib.sha256(",".join(str(r["seed"]) for r in rows).encode()).digest()
    return int.from_bytes(digest[:4], "little")


class TransformersReportWriter(CandidateStage):
    name, Options = "transformers", TransformersOptions

    @classmethod
    def check(cls, rcfg, cfg=None) -> None:
        opts = cls.options_of(rcfg.options)
        model = check_model_source(rcfg)
        from transformers import AutoConfig

        try:  # cheap (config only), and fails on the driver instead of in every actor
            AutoConfig.from_pretrained(model, trust_remote_code=opts.trust_remote_code)
        except Exception as exc:
            raise UserError(f"reports.model: cannot load {rcfg.model!r} as a local model directory "
                            f"or hub id: {short_error(exc, 200)}") from None

    @classmethod
    def constructor_kwargs(cls, rcfg, prompt: PromptTemplate) -> dict:
        return {"model": rcfg.model, "prompt": prompt_to_kwargs(prompt), "num_candidates": rcfg.num_candidates,
                "sampling": rcfg.sampling.model_dump(), "options": dict(rcfg.options)}

    def __init__(self, model: str, prompt: dict, num_candidates: int = 1, sampling: Optional[dict] = None,
                 options: Optional[dict] = None):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        opts = TransformersOptions.model_validate(options or {})
        self.prompt = PromptTemplate(**prompt)
        self.num_candidates = num_candidates
        self.sampling = {"temperature": 0.7, "top_p": 0.95, "max_tokens": 512, **(sampling or {})}
        self.opts = opts
        device = opts.device if opts.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
        dtype = opts.dtype if opts.dtype == "auto" else getattr(torch, opts.dtype)
        self.tokenizer = AutoTokenizer.from_pretrained(model, trust_remote_code=opts.trust_remote_code)
        self.tokenizer.padding_side = "left"  # decoder-only: pad before the prompt
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.model = AutoModelForCausalLM.from_pretrained(model, dtype=dtype,
                                                          trust_remote_code=opts.trust_remote_code)
        self.model.to(device).eval()
        self.device = device
        eos = self.model.generation_config.eos_token_id
        eos = eos if eos is not None else self.tokenizer.eos_token_id
        self.eos_ids = set(eos if isinstance(eos, (list, tuple)) else [eos]) - {None}

    def generate(self, rows: list[dict]) -> list[tuple[list[str], list[bool]]]:
        import torch

        texts, special = zip(*(prompt_text(self.tokenizer, render_messages(self.prompt, r["entities"]))
                               for r in rows))
        enc = self.tokenizer(list(texts), return_tensors="pt", padding=True, add_special_tokens=special[0],
                             truncation=self.opts.max_prompt_tokens is not None,
                             max_length=self.opts.max_prompt_tokens)
        enc = {k: v.to(self.device) for k, v in enc.items()}
        greedy = self.sampling["temperature"] == 0
        kwargs = dict(max_new_tokens=self.sampling["max_tokens"], num_return_sequences=self.num_candidates,
                      do_sample=not greedy, pad_token_id=self.tokenizer.pad_token_id)
        if not greedy:
            kwargs.update(temperature=self.sampling["temperature"], top_p=self.sampling["top_p"])
        elif self.num_candidates > 1:
            # Greedy decoding makes every candidate identical: beams give distinct ones.
            kwargs.update(num_beams=self.num_candidates)
        torch.manual_seed(batch_seed(rows))
        with torch.inference_mode():
            out = self.model.generate(**enc, **kwargs)
        new = out[:, enc["input_ids"].shape[1]:].tolist()
        decoded = self.tokenizer.batch_decode(new, skip_special_tokens=True)
        results = []
        for i in range(len(rows)):
            span = range(i * self.num_candidates, (i + 1) * self.num_candidates)
            # No end-of-sequence token among the new tokens: generation hit max_new_tokens.
            results.append(([decoded[j] for j in span], [not (self.eos_ids & set(new[j])) for j in span]))
        return results
