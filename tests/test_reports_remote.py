"""Report stage, remote LLM backends: the OpenAI-compatible path against a real local HTTP server
(answering, failing with 500, refusing connections), and the vLLM path's pre/postprocess on
realistic rows plus processor construction."""
from __future__ import annotations

import asyncio
import json
import re
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from actors.report_openai import (
    FailSoftSession,
    OpenAIReportWriter,
    chat_payload,
    openai_postprocess,
    parse_completion,
    request_body,
)
from actors.report_vllm import VLLMReportWriter, processor_config, vllm_postprocess, vllm_preprocess
from engine.core.config import parse_config
from engine.core.errors import ConfigError, UserError
from engine.reports.prompts import load_prompt
from engine.reports.pipeline import explode_candidates, normalise_llm_row, prompt_to_kwargs, regroup_candidates
from engine.core.stage import object_column

PROMPT = prompt_to_kwargs(load_prompt("configs/prompts/report_v1.yaml"))
SAMPLING = {"temperature": 0.7, "top_p": 0.9, "max_tokens": 256}
ENTS = [{"text": "cardiomegaly", "type": "ABNORMALITY"}, {"text": "pleural effusion", "type": "NON-ABNORMALITY"},
        {"text": "heart", "type": "ANATOMY"}]
REPORT = "FINDINGS: There is cardiomegaly. No pleural effusion.\n\nIMPRESSION: Cardiomegaly."


def completion(contents, finish=None, model="llama-3.1-70b-instruct"):
    """A chat-completion body as OpenAI and vLLM's server return it."""
    finish = finish or ["stop"] * len(contents)
    return {
        "id": "chatcmpl-9f2c1e", "object": "chat.completion", "created": 1733000000, "model": model,
        "choices": [{"index": i, "message": {"role": "assistant", "content": c, "tool_calls": []},
                     "logprobs": None, "finish_reason": f} for i, (c, f) in enumerate(zip(contents, finish))],
        "usage": {"prompt_tokens": 230, "completion_tokens": 41, "total_tokens": 271},
    }


# --- OpenAI: pure functions ---------------------------------------------------------------------

def test_chat_payload_and_parse_completion():
    row = {"sample_id": "r0-00000001", "entities": ENTS, "seed": 42}
    payload = chat_payload(row, PROMPT, SAMPLING, model="meta-llama/Llama-3.1-70B-Instruct", n=3,
                           extra_body={"top_k": 50})["payload"]
    assert payload["model"] == "meta-llama/Llama-3.1-70B-Instruct" and payload["n"] == 3
    assert payload["max_tokens"] == 256 and payload["top_k"] == 50 and isinstance(payload["seed"], int)
    assert "- cardiomegaly: present finding\n- pleural effusion: absent finding" in payload["messages"][1]["content"]
    json.dumps(payload)  # what the HTTP stage sends
    assert payload["syncxr_skip"] == ""
    skipped = chat_payload({**row, "entities": []}, PROMPT, SAMPLING, "m", 3)["payload"]
    assert skipped["syncxr_skip"] == "empty entity list" and set(skipped) == set(payload) - {"top_k"}
    # What goes on the wire: no skip key, integers as integers (Arrow may have made them floats).
    body, skip = request_body(json.dumps({**payload, "n": 3.0, "max_tokens": 256.0}))
    sent = json.loads(body)
    assert skip == "" and "syncxr_skip" not in sent and sent["n"] == 3 and isinstance(sent["max_tokens"], int)

    # Choices out of order, one cut at the token limit.
    body = completion([REPORT, "FINDINGS: There is cardio"], finish=["stop", "length"])
    body["choices"].reverse()
    texts, cut, err = parse_completion(body)
    assert texts == [REPORT, "FINDINGS: There is cardio"] and cut == [False, True] and err == ""
    assert parse_completion({"error": {"message": "Rate limit reached", "type": "requests"}})[2] == \
        "endpoint error: Rate limit reached"
    assert parse_completion({"choices": []})[2] == "endpoint error: response has no choices"
    assert parse_completion("<html>bad gateway</html>")[2].startswith("endpoint error: unexpected response")

    out = openai_postprocess({**row, "attempt": 1, "payload": payload, "http_response": completion([REPORT])})
    assert out["candidates"] == [REPORT] and out["gen_error"] == "" and out["attempt"] == 1
    assert "payload" not in out and "http_response" not in out


def test_openai_config_errors(monkeypatch):
    def rcfg(**reports):
        return parse_config({"reports": {"backend": "openai", "model": "m", **reports}}).reports

    with pytest.raises(ConfigError, match="reports.options.url: Field required"):
        OpenAIReportWriter.check(rcfg(options={}))
    with pytest.raises(ConfigError, match="expected an http"):
        OpenAIReportWriter.check(rcfg(options={"url": "localhost:8000", "api_key_env": None}))
    with pytest.raises(ConfigError, match="reports.options.qpss: Extra inputs"):
        OpenAIReportWriter.check(rcfg(options={"url": "http://x/v1/chat/completions", "qpss": 3}))
    monkeypatch.delenv("SYNCXR_TEST_KEY", raising=False)
    with pytest.raises(ConfigError, match="environment variable SYNCXR_TEST_KEY is not set"):
        OpenAIReportWriter.check(rcfg(options={"url": "http://x/v1/chat/completions", "api_key_env": "SYNCXR_TEST_KEY"}))
    monkeypatch.setenv("SYNCXR_TEST_KEY", "sk-test")
    OpenAIReportWriter.check(rcfg(options={"url": "http://x/v1/chat/completions", "api_key_env": "SYNCXR_TEST_KEY"}))


# --- OpenAI: a real local endpoint ----------------------------------------------------------------

class _Endpoint(BaseHTTPRequestHandler):
    """Answers chat completions with one report per requested candidate; a prompt that mentions
    "trigger failure" gets an HTML 500, like a crashed gateway."""

    requests: list = []

    def do_POST(self):  # noqa: N802 (http.server API)
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).requests.append({"auth": self.headers.get("Authorization"), "body": body})
        user = body["messages"][-1]["content"]
        if "trigger failure" in user:
            self._send(500, b"<html><body>Internal Server Error</body></html>", "text/html")
            return
        names = re.findall(r"^- (.+?): present finding", user, flags=re.M)
        content = f"FINDINGS: There is {names[0]}.\nIMPRESSION: {names[0].capitalize()}." if names else "FINDINGS: ."
        self._send(200, json.dumps(completion([content] * body.get("n", 1), model=body["model"])).encode(),
                   "application/json")

    def _send(self, status, data, ctype):
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def endpoint():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Endpoint)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1/chat/completions"
    server.shutdown()
    server.server_close()


def _refusing_url() -> str:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()  # nothing listens there now: connections are refused
    return f"http://127.0.0.1:{port}/v1/chat/completions"


def test_fail_soft_session_answers_every_request(endpoint):
    async def post(url, payload, **kw):
        async with FailSoftSession(retry_wait_s=0.01, timeout_s=5, **kw) as session:
            async with await session.post(url, headers={"Content-Type": "application/json"},
                                          data=json.dumps(payload)) as resp:
                return resp.status, await resp.json()

    ok_payload = chat_payload({"entities": ENTS, "seed": 1}, PROMPT, SAMPLING, "m", 2)["payload"]
    status, body = asyncio.run(post(endpoint, ok_payload))
    assert status == 200 and parse_completion(body)[0] == ["FINDINGS: There is cardiomegaly.\nIMPRESSION: Cardiomegaly."] * 2

    failing = chat_payload({"entities": [{"text": "trigger failure", "type": "ABNORMALITY"}], "seed": 1},
                           PROMPT, SAMPLING, "m", 1)["payload"]
    before = len(_Endpoint.requests)
    _, body = asyncio.run(post(endpoint, failing, max_retries=2))
    assert len(_Endpoint.requests) - before == 3  # 500 is retried
    err = parse_completion(body)[2]
    assert err.startswith("endpoint error: HTTP 500 Internal Server Error") and "after 3 attempts" in err

    start = time.time()
    _, body = asyncio.run(post(_refusing_url(), ok_payload, max_retries=1))
    err = parse_completion(body)[2]
    assert "ClientConnectorError" in err and "after 2 attempts" in err, err
    assert time.time() - start < 5

    before = len(_Endpoint.requests)
    _, body = asyncio.run(post(endpoint, {**ok_payload, "syncxr_skip": "empty entity list"}))
    assert parse_completion(body)[2] == "endpoint error: not sent: empty entity list"
    assert len(_Endpoint.requests) == before  # never sent


@pytest.mark.ray
def test_openai_backend_in_ray_data(ray_session, endpoint, monkeypatch):
    """HttpRequestProcessor in a real Ray Data pipeline: a failing row and an empty row become
    errors of their own rows; the other rows of the same batch get their candidates."""
    import pyarrow as pa

    monkeypatch.setenv("SYNCXR_TEST_KEY", "sk-local")
    cfg = parse_config({"reports": {
        "backend": "openai", "model": "llama-3.1-70b-instruct", "num_candidates": 2,
        "options": {"url": endpoint, "api_key_env": "SYNCXR_TEST_KEY", "max_retries": 1, "retry_wait_s": 0.01},
        "resources": {"batch_size": 8, "num_cpus": 0.5},
    }})
    rows = [
        {"sample_id": "r0-0", "entities": ENTS, "seed": 1},
        {"sample_id": "r0-1", "entities": [{"text": "trigger failure", "type": "ABNORMALITY"}], "seed": 2},
        {"sample_id": "r0-2", "entities": [], "seed": 3},
        {"sample_id": "r0-3", "entities": [{"text": "opacity", "type": "ABNORMALITY"}], "seed": 4},
    ]
    ds = ray_session.data.from_arrow(pa.Table.from_pylist(rows))
    OpenAIReportWriter.check(cfg.reports)
    out = {r["sample_id"]: r for r in OpenAIReportWriter.attach(ds, cfg.reports, load_prompt(
        "configs/prompts/report_v1.yaml")).take_all()}
    assert list(out["r0-0"]["candidates"]) == ["FINDINGS: There is cardiomegaly.\nIMPRESSION: Cardiomegaly."] * 2
    assert out["r0-0"]["gen_error"] == "" and list(out["r0-0"]["truncated"]) == [False, False]
    assert out["r0-1"]["gen_error"].startswith("endpoint error: HTTP 500") and len(out["r0-1"]["candidates"]) == 0
    assert out["r0-2"]["gen_error"] == "endpoint error: not sent: empty entity list"
    assert list(out["r0-3"]["candidates"])[0].startswith("FINDINGS: There is opacity.")
    sent = [r for r in _Endpoint.requests if r["body"].get("model") == "llama-3.1-70b-instruct"]
    assert sent and all(r["auth"] == "Bearer sk-local" for r in sent)
    assert all(r["body"]["n"] == 2 and "syncxr_skip" not in r["body"] for r in sent)


# --- vLLM ---------------------------------------------------------------------------------------

def _vllm_output_row(row, text, n_tokens):
    """A row as ray.data.llm's vLLM processor hands it to postprocess: the preprocessed columns
    plus the chat-template, tokenize, engine and detokenize outputs."""
    return {**row, "prompt": "<|begin_of_text|><|start_header_id|>system<|end_header_id|>...",
            "tokenized_prompt": [128000, 128006, 9125], "num_input_tokens": 231,
            "generated_tokens": list(range(n_tokens)), "generated_text": text, "num_generated_tokens": n_tokens,
            "embeddings": None, "metrics": {"arrival_time": 1.7e9}, "logprobs": None, "prompt_logprobs": None,
            "request_id": 7, "batch_uuid": "5d1e", "time_taken_llm": 1.93, "params": "SamplingParams(n=1, ...)",
            "__inference_error__": ""}


def test_vllm_pre_and_postprocess_on_realistic_rows():
    plan_row = {"sample_id": "r0-00000007", "entities": ENTS, "seed": 99, "attempt": 1}
    exploded = explode_candidates(plan_row, 3)
    assert [r["candidate"] for r in exploded] == [0, 1, 2] and json.loads(exploded[0]["carry"]) == {"attempt": 1}
    pre = [vllm_preprocess(r, PROMPT, SAMPLING) for r in exploded]
    seeds = {p["sampling_params"]["seed"] for p in pre}
    assert len(seeds) == 3  # each candidate samples differently
    assert pre[0]["sampling_params"]["max_tokens"] == 256 and pre[0]["messages"][0]["role"] == "system"

    done = [vllm_postprocess(_vllm_output_row({**r, **p}, REPORT, 40), max_tokens=256) for r, p in zip(exploded, pre)]
    done[1] = vllm_postprocess(_vllm_output_row({**exploded[1], **pre[1]}, "FINDINGS: There is card", 256), 256)
    # A failed request skips postprocess: ray.data.llm passes the whole row with the error.
    failed = {**_vllm_output_row({**exploded[2], **pre[2]}, "", 0), "__inference_error__": "ValueError: prompt too long"}
    rows = [normalise_llm_row(r) for r in (done[0], done[1], failed)]
    assert rows[1]["truncated"] and not rows[0]["truncated"]
    assert rows[2]["gen_error"] == "inference failed: ValueError: prompt too long"

    group = {k: (object_column([r[k] for r in rows[::-1]]) if k in ("entities",) else
                 __import__("numpy").array([r[k] for r in rows[::-1]], dtype=object)) for k in rows[0]}
    one = regroup_candidates(group)
    assert list(one["candidates"][0]) == [REPORT, "FINDINGS: There is card"]
    assert list(one["truncated"][0]) == [False, True] and one["gen_error"][0] == ""
    assert one["attempt"][0] == 1 and one["sample_id"][0] == "r0-00000007"

    empty = explode_candidates({"sample_id": "r0-8", "entities": [], "seed": 1}, 2)
    assert all(r["gen_error"] == "empty entity list" for r in empty)
    assert vllm_preprocess(empty[0], PROMPT, SAMPLING)["sampling_params"]["max_tokens"] == 1


def test_vllm_processor_config_from_reports_config(tmp_path):
    rcfg = parse_config({"reports": {
        "backend": "vllm", "model": "meta-llama/Llama-3.1-70B-Instruct", "num_candidates": 4,
        "sampling": {"temperature": 0.8, "max_tokens": 400},
        "resources": {"batch_size": 128, "min_actors": 2, "max_actors": 4, "accelerator_type": "H100"},
        "options": {"tensor_parallel_size": 8, "max_model_len": 8192, "engine_kwargs": {"enforce_eager": True}},
    }}).reports
    VLLMReportWriter.check(rcfg)
    pc = processor_config(rcfg)
    assert pc.model_source == "meta-llama/Llama-3.1-70B-Instruct"
    assert pc.engine_kwargs["tensor_parallel_size"] == 8 and pc.engine_kwargs["max_model_len"] == 8192
    assert pc.engine_kwargs["enforce_eager"] is True and pc.engine_kwargs["enable_prefix_caching"] is True
    assert pc.batch_size == 128 and pc.concurrency == (2, 4) and pc.accelerator_type == "H100"
    assert pc.should_continue_on_error

    missing = rcfg.model_copy(update={"model": str(tmp_path / "no-such-model")})
    with pytest.raises(UserError, match="model directory .*no-such-model not found"):
        VLLMReportWriter.check(missing)
    with pytest.raises(ConfigError, match="reports.options.tensor_parallel_size"):
        VLLMReportWriter.check(rcfg.model_copy(update={"options": {"tensor_parallel_size": 0}}))
