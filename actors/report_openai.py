"""Report writing through any OpenAI-compatible chat-completions endpoint (OpenAI, a vLLM or
SGLang server, a gateway), with `ray.data.llm`'s HttpRequestProcessorConfig.

Ray's HTTP stage raises once a request has failed its retries (or got a body that is not JSON),
which fails the whole dataset. Its `session_factory` hook is used instead to answer every
request: a failed one gets an OpenAI-style {"error": ...} body, so it becomes that row's
rejection reason. Retries and the timeout therefore live in FailSoftSession."""
from __future__ import annotations

import asyncio
import json
import os
from functools import partial
from typing import Any, Optional

from pydantic import BaseModel, ConfigDict, Field

from engine.core.errors import ConfigError
from engine.core.stage import validate_options
from engine.reports.prompts import PromptTemplate, render_messages
from engine.reports.pipeline import (
    DatasetReportWriter,
    attach_per_candidate,
    candidate_seed,
    entity_problem,
    prompt_to_kwargs,
)
from engine.core.stage import entity_lists

SKIP_KEY = "syncxr_skip"  # a payload holding this is answered locally, never sent


class OpenAIOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: str  # the chat-completions URL, e.g. http://head:8000/v1/chat/completions
    api_key_env: Optional[str] = "OPENAI_API_KEY"  # null: send no Authorization header
    qps: Optional[int] = Field(None, ge=1)  # per actor
    max_retries: int = Field(3, ge=0)
    retry_wait_s: float = Field(1.0, ge=0)
    timeout_s: float = Field(120.0, gt=0)
    n_per_request: bool = True  # ask for all candidates with `n`; false: one request each
    extra_body: dict[str, Any] = Field(default_factory=dict)  # merged into every payload


# ---------------------------------------------------------------------------------------------
# Pure functions: payloads in, candidates out


def chat_payload(row: dict, prompt: dict, sampling: dict, model: str, n: int,
                 extra_body: Optional[dict] = None) -> dict:
    """The `payload` of one request: a chat completion asking for `n` candidates."""
    ents = entity_lists([row["entities"]])[0]
    problem = row.get("gen_error") or entity_problem(ents)
    messages = [] if problem else render_messages(PromptTemplate(**prompt), ents)
    # Every row carries the same keys: Ray stores payloads as one Arrow struct column, where a
    # key missing from some rows would turn the others' integers into floats.
    payload = {"model": model, "messages": messages,
               "temperature": float(sampling["temperature"]), "top_p": float(sampling["top_p"]),
               "max_tokens": int(sampling["max_tokens"]), "seed": candidate_seed(row["seed"], row.get("candidate", 0)),
               **(extra_body or {}), SKIP_KEY: problem}
    if n > 1:
        payload["n"] = n
    return {"payload": payload}


_INT_FIELDS = ("n", "max_tokens", "max_completion_tokens", "seed", "top_k", "logprobs", "top_logprobs")


def request_body(data: Any) -> tuple[Any, str]:
    """(body to send, skip reason) from the HTTP stage's serialised payload: drops our skip key
    and turns whole floats back into the integers the API expects."""
    if not isinstance(data, str):
        return data, ""
    try:
        payload = json.loads(data)
    except ValueError:
        return data, ""
    if not isinstance(payload, dict):
        return data, ""
    skip = str(payload.pop(SKIP_KEY, "") or "")
    for key in _INT_FIELDS:
        if isinstance(payload.get(key), float) and payload[key].is_integer():
            payload[key] = int(payload[key])
    return json.dumps(payload), skip


def parse_completion(response: Any) -> tuple[list[str], list[bool], str]:
    """An OpenAI chat-completion JSON -> (texts, truncated flags, error). Choices come back in
    `index` order; finish_reason "length" means the token limit cut the text."""
    if not isinstance(response, dict):
        return [], [], f"endpoint error: unexpected response {str(response)[:200]!r}"
    if response.get("error"):
        err = response["error"]
        msg = err.get("message") if isinstance(err, dict) else err
        return [], [], f"endpoint error: {str(msg)[:300]}"
    choices = response.get("choices")
    if not isinstance(choices, list) or not choices:
        return [], [], "endpoint error: response has no choices"
    texts, cut = [], []
    for choice in sorted(choices, key=lambda c: c.get("index", 0) if isinstance(c, dict) else 0):
        message = choice.get("message") if isinstance(choice, dict) else None
        content = message.get("content") if isinstance(message, dict) else None
        if content is None and isinstance(choice, dict):
            content = choice.get("text")  # completions-style servers
        texts.append(str(content or ""))
        cut.append(isinstance(choice, dict) and choice.get("finish_reason") == "length")
    return texts, cut, ""


def openai_postprocess(row: dict) -> dict:
    """One answered plan row -> the candidate columns (n_per_request mode)."""
    texts, cut, error = parse_completion(row.get("http_response"))
    out = {k: v for k, v in row.items() if k not in ("payload", "http_response")}  # plan columns and any extra
    out.update(entities=entity_lists([row["entities"]])[0], candidates=texts, truncated=cut, gen_error=error)
    return out


def openai_candidate_postprocess(row: dict) -> dict:
    """One answered candidate row -> LLM_ROW_KEYS (one-request-per-candidate mode)."""
    texts, cut, error = parse_completion(row.get("http_response"))
    return {"sample_id": row["sample_id"], "entities": row["entities"], "seed": row["seed"],
            "candidate": row["candidate"], "carry": row.get("carry", "{}"), "text": texts[0] if texts else "",
            "truncated": bool(cut and cut[0]), "gen_error": row.get("gen_error") or error}


# ---------------------------------------------------------------------------------------------
# The HTTP session the processor uses


class _Answer:
    """What Ray's HTTP stage reads from a response: status, reason, json()."""

    status, reason = 200, "OK"

    def __init__(self, body: dict):
        self._body = body

    async def json(self, **_):
        return self._body

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc):
        return False


def _error(message: str) -> _Answer:
    return _Answer({"error": {"message": message, "type": "syncxr_request_failed"}})


class FailSoftSession:
    """An aiohttp session that never raises: retries with exponential backoff on connection
    errors, timeouts and 408/429/5xx, then answers with an error body."""

    RETRY_STATUS = frozenset({408, 429, 500, 502, 503, 504})

    def __init__(self, max_retries: int = 3, retry_wait_s: float = 1.0, timeout_s: float = 120.0):
        self.max_retries, self.retry_wait_s, self.timeout_s = max_retries, retry_wait_s, timeout_s
        self._session = None

    async def __aenter__(self):
        import aiohttp

        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.timeout_s))
        return self

    async def __aexit__(self, *exc):
        await self._session.close()
        return False

    def post(self, url: str, headers: Optional[dict] = None, data: Any = None):
        return self._post(url, headers, data)

    async def _post(self, url, headers, data) -> _Answer:
        import aiohttp

        data, skip = request_body(data)
        if skip:
            return _error(f"not sent: {skip}")
        last = "no attempt made"
        for attempt in range(self.max_retries + 1):
            if attempt:
                await asyncio.sleep(self.retry_wait_s * 2 ** (attempt - 1))
            try:
                async with self._session.post(url, headers=headers, data=data) as resp:
                    text = await resp.text()
                    if resp.status < 300:
                        try:
                            body = json.loads(text)
                        except ValueError:
                            return _error(f"HTTP {resp.status}: response is not JSON: {text[:200]!r}")
                        return _Answer(body) if isinstance(body, dict) and body else _error(
                            f"HTTP {resp.status}: unexpected body {text[:200]!r}")
                    last = f"HTTP {resp.status} {resp.reason}: {text[:200]!r}"
                    if resp.status not in self.RETRY_STATUS:
                        break
            except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
                last = f"{type(exc).__name__}: {str(exc)[:200]}"
        tries = attempt + 1
        return _error(f"{last} (after {tries} attempt{'s' if tries > 1 else ''})")


# ---------------------------------------------------------------------------------------------
# The backend


def api_headers(opts: OpenAIOptions) -> dict:
    if not opts.api_key_env:
        return {}
    key = os.environ.get(opts.api_key_env)
    if not key:
        raise ConfigError(f"reports.options.api_key_env: environment variable {opts.api_key_env} is not set "
                          "(set it, or api_key_env: null for an endpoint without a key)")
    return {"Authorization": f"Bearer {key}"}


def processor_config(rcfg):
    from ray.data.llm import HttpRequestProcessorConfig

    opts = validate_options(OpenAIOptions, rcfg.options, "reports", rcfg.backend)
    res = rcfg.resources
    return HttpRequestProcessorConfig(
        url=opts.url,
        headers=api_headers(opts),
        qps=opts.qps,
        max_retries=0,  # FailSoftSession retries; Ray's own retry loop raises at the end
        batch_size=res.batch_size,
        concurrency=(res.min_actors, res.max_actors),
        http_request_stage={"num_cpus": res.num_cpus},  # I/O bound: fractional CPUs are plenty
        session_factory=partial(FailSoftSession, max_retries=opts.max_retries,
                                retry_wait_s=opts.retry_wait_s, timeout_s=opts.timeout_s),
    )


def build_report_processor(rcfg, prompt: PromptTemplate):
    from ray.data.llm import build_processor

    opts = validate_options(OpenAIOptions, rcfg.options, "reports", rcfg.backend)
    n = rcfg.num_candidates if opts.n_per_request else 1
    pre = partial(chat_payload, prompt=prompt_to_kwargs(prompt), sampling=rcfg.sampling.model_dump(),
                  model=rcfg.model, n=n, extra_body=opts.extra_body)
    post = openai_postprocess if opts.n_per_request else openai_candidate_postprocess
    return build_processor(processor_config(rcfg), preprocess=pre, postprocess=post)


class OpenAIReportWriter(DatasetReportWriter):
    """Report writer over an OpenAI-compatible HTTP endpoint."""

    name, Options = "openai", OpenAIOptions

    @classmethod
    def check(cls, rcfg, cfg=None) -> None:
        opts = validate_options(OpenAIOptions, rcfg.options, "reports", rcfg.backend)
        if not opts.url.startswith(("http://", "https://")):
            raise ConfigError(f"reports.options.url: expected an http(s) URL, got {opts.url!r}")
        if not rcfg.model:
            raise ConfigError("reports.model: the 'openai' backend needs the model name the endpoint serves")
        api_headers(opts)

    @classmethod
    def attach(cls, ds, rcfg, prompt: PromptTemplate):
        processor = build_report_processor(rcfg, prompt)
        if validate_options(OpenAIOptions, rcfg.options, "reports", rcfg.backend).n_per_request:
            return processor(ds)
        return attach_per_candidate(ds, processor, rcfg.num_candidates)
