"""Report stage, local LLM backends: the transformers backend on a tiny random Llama (built from a
config, with a tokenizer trained here with `tokenizers` and a chat template), directly and inside
a real Ray Data pipeline; the vLLM processor built from the same model directory."""
from __future__ import annotations

import importlib.util

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from actors.report_transformers import TransformersReportWriter, prompt_text
from engine.core.config import parse_config
from engine.text.entities import build_extractor
from engine.core.errors import UserError
from engine.plan.sampler import PLAN_SCHEMA
from engine.reports.prompts import load_prompt, render_messages
from engine.reports.qc import choose_candidates
from engine.reports.pipeline import run_reports

CORPUS = [
    "FINDINGS: There is cardiomegaly. No pleural effusion or pneumothorax. IMPRESSION: Cardiomegaly.",
    "FINDINGS: Opacity is seen in the right lower lobe. IMPRESSION: Findings consistent with pneumonia.",
    "FINDINGS: The lungs are clear. The heart size is normal. IMPRESSION: No acute cardiopulmonary abnormality.",
    "Write a chest X-ray report that describes exactly the following entities: present finding, absent finding.",
]
CHAT_TEMPLATE = ("{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}\n{% endfor %}"
                 "{% if add_generation_prompt %}<|assistant|>\n{% endif %}")
ROWS = [
    {"sample_id": "r0-00000000", "seed": 5, "entities": [
        {"text": "cardiomegaly", "type": "ABNORMALITY"}, {"text": "pleural effusion", "type": "NON-ABNORMALITY"},
        {"text": "heart", "type": "ANATOMY"}]},
    {"sample_id": "r0-00000001", "seed": 6, "entities": [{"text": "pneumonia", "type": "DISEASE"}]},
    {"sample_id": "r0-00000002", "seed": 7, "entities": []},
]


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory):
    """A random 2-layer Llama with a byte-level BPE tokenizer trained on report text."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(CORPUS * 5, trainers.BpeTrainer(
        vocab_size=400, special_tokens=["<unk>", "<pad>", "<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", pad_token="<pad>",
                                   bos_token="<s>", eos_token="</s>")
    fast.chat_template = CHAT_TEMPLATE
    config = LlamaConfig(vocab_size=len(fast), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                         bos_token_id=fast.bos_token_id, eos_token_id=fast.eos_token_id,
                         pad_token_id=fast.pad_token_id)
    path = tmp_path_factory.mktemp("tiny-llama")
    LlamaForCausalLM(config).save_pretrained(path)
    fast.save_pretrained(path)
    return path


def _rcfg(model, **extra):
    return parse_config({"reports": {"backend": "transformers", "model": str(model), "num_candidates": 2,
                                     "sampling": {"max_tokens": 16}, **extra}}).reports


def test_transformers_writer_generates_and_qc_rejects_garbage(tiny_llama):
    prompt = load_prompt("configs/prompts/report_v1.yaml")
    TransformersReportWriter.check(_rcfg(tiny_llama))
    writer = TransformersReportWriter(**TransformersReportWriter.constructor_kwargs(_rcfg(tiny_llama), prompt))
    text, special = prompt_text(writer.tokenizer, render_messages(prompt, ROWS[0]["entities"]))
    assert text.startswith("<s><|system|>") and text.endswith("<|assistant|>\n") and not special

    out = writer.generate(ROWS[:2])
    assert len(out) == 2 and all(len(texts) == 2 and len(cut) == 2 for texts, cut in out)
    assert writer.generate(ROWS[:2]) == out  # seeded from the rows' plan seeds

    # Random weights write garbage: QC rejects it with reasons, nothing raises.
    extractor = build_extractor(parse_config({}).extractor)
    decisions = choose_candidates([r["entities"] for r in ROWS[:2]], [o[0] for o in out], extractor.extract,
                                  truncated=[o[1] for o in out])
    for d in decisions:
        assert not d.accepted and d.attempts == 2
        assert any("section missing" in r for r in d.reasons) and all(r.startswith("candidate ") for r in d.reasons)

    # The stage call: the empty row is rejected by itself, the others generate.
    batch = writer({"sample_id": pa.array([r["sample_id"] for r in ROWS]).to_numpy(zero_copy_only=False),
                    "entities": pa.array([r["entities"] for r in ROWS]).to_numpy(zero_copy_only=False),
                    "seed": pa.array([r["seed"] for r in ROWS]).to_numpy()})
    assert list(batch["gen_error"]) == ["", "", "empty entity list"]
    assert [len(c) for c in batch["candidates"]] == [2, 2, 0]


def test_transformers_model_errors(tmp_path):
    with pytest.raises(UserError, match="model directory .*absent-model not found"):
        TransformersReportWriter.check(_rcfg(tmp_path / "absent-model"))
    with pytest.raises(UserError, match="cannot load 'no-such-org/no-such-model' as a local model directory or hub id"):
        TransformersReportWriter.check(_rcfg("no-such-org/no-such-model"))
    empty = tmp_path / "empty-model"
    empty.mkdir()
    with pytest.raises(UserError, match="cannot load"):
        TransformersReportWriter.check(_rcfg(empty))


@pytest.mark.ray
def test_transformers_backend_in_ray_pipeline(ray_session, tiny_llama, tmp_path):
    plan = tmp_path / "plan.parquet"
    pq.write_table(pa.Table.from_pylist(ROWS, schema=PLAN_SCHEMA), plan)
    cfg = parse_config({"reports": {"backend": "transformers", "model": str(tiny_llama), "num_candidates": 2,
                                    "sampling": {"max_tokens": 16},
                                    "resources": {"batch_size": 2, "num_cpus": 0.5}}})
    summary = run_reports(cfg, plan, tmp_path / "out")
    assert summary["rows"] == 3 and summary["accepted"] == 0 and summary["backend"] == "transformers"
    rows = pq.read_table(tmp_path / "out" / "reports.parquet").to_pylist()
    assert [r["sample_id"] for r in rows] == [r["sample_id"] for r in ROWS]
    assert [r["attempts"] for r in rows] == [2, 2, 0]
    assert rows[2]["reasons"] == ["empty entity list"]
    for r in rows[:2]:
        assert not r["accepted"] and r["reasons"] and r["reasons"][0].startswith("candidate 1: ")


@pytest.mark.ray
def test_vllm_processor_builds_from_config(ray_session, tiny_llama):
    """build_processor needs no vllm on the driver; the engine stage itself needs vllm and a GPU."""
    from actors.report_vllm import build_report_processor

    rcfg = parse_config({"reports": {"backend": "vllm", "model": str(tiny_llama), "num_candidates": 3,
                                     "resources": {"batch_size": 16, "min_actors": 1, "max_actors": 2},
                                     "options": {"tensor_parallel_size": 1, "max_model_len": 512}}}).reports
    processor = build_report_processor(rcfg, load_prompt("configs/prompts/report_v1.yaml"))
    assert processor.list_stage_names() == ["ChatTemplateStage", "TokenizeStage", "vLLMEngineStage", "DetokenizeStage"]
    engine = processor.get_stage_by_name("vLLMEngineStage")
    assert engine.fn_constructor_kwargs["engine_kwargs"]["max_model_len"] == 512
    assert engine.fn_constructor_kwargs["should_continue_on_error"] is True
    assert engine.map_batches_kwargs["num_gpus"] == 1  # one GPU per replica at tensor_parallel_size 1


@pytest.mark.ray
@pytest.mark.skipif(importlib.util.find_spec("vllm") is None,
                    reason="vllm is not installed here (CPU machine); the vLLM path is covered by its "
                           "pre/postprocess tests and the processor build test")
def test_vllm_backend_generates(ray_session, tiny_llama, tmp_path):
    import torch

    if not torch.cuda.is_available():
        pytest.skip("vllm is installed but no GPU is visible")
    plan = tmp_path / "plan.parquet"
    pq.write_table(pa.Table.from_pylist(ROWS, schema=PLAN_SCHEMA), plan)
    cfg = parse_config({"reports": {"backend": "vllm", "model": str(tiny_llama), "num_candidates": 2,
                                    "sampling": {"max_tokens": 16},
                                    "options": {"max_model_len": 512, "gpu_memory_utilization": 0.3}}})
    summary = run_reports(cfg, plan, tmp_path / "out")
    rows = pq.read_table(tmp_path / "out" / "reports.parquet").to_pylist()
    assert summary["rows"] == 3 and [r["attempts"] for r in rows] == [2, 2, 0]
