"""The diffusers backend on a tiny random-weight StableDiffusionPipeline built from configs and
saved to a temp directory, then loaded through load_pipeline exactly as a RoentGen checkout."""
from __future__ import annotations

import json

import numpy as np
import pytest

from actors.diffusers_sd import DiffusersStage, check_pipeline_source, load_pipeline, prepare_prompt
from actors.testing.tiny_diffusion import save_tiny_pipeline
from engine.core.errors import UserError
from engine.images.pipeline import decode_png

SIZE = 32
LONG = "There is a large left pleural effusion with adjacent atelectasis and no pneumothorax. " * 8


@pytest.fixture(scope="module")
def tiny_sd(tmp_path_factory):
    return save_tiny_pipeline(tmp_path_factory.mktemp("tiny-sd") / "pipe", sample_size=SIZE)


@pytest.fixture(scope="module")
def stage(tiny_sd):
    return DiffusersStage({"backend": "diffusers", "model": str(tiny_sd), "size": SIZE, "steps": 2,
                           "guidance": 4.0})


def batch(impressions, seeds):
    ids = np.empty(len(seeds), dtype=object)
    ids[:] = [f"s{i}" for i in range(len(seeds))]
    imp = np.empty(len(impressions), dtype=object)
    imp[:] = impressions
    return {"sample_id": ids, "impression": imp, "seed": np.array(seeds, dtype=np.int64)}


def test_saved_layout_is_a_roentgen_style_checkout(tiny_sd):
    index = json.loads((tiny_sd / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionPipeline"
    assert index["safety_checker"] == [None, None]
    assert {p.name for p in (tiny_sd / "tokenizer").iterdir()} >= {"vocab.json", "merges.txt"}


def test_load_pipeline_cpu_float32_safety_off(tiny_sd):
    import torch

    pipe = load_pipeline(str(tiny_sd), "cpu")
    assert pipe.safety_checker is None
    assert pipe.unet.dtype == torch.float32 and pipe.device.type == "cpu"
    assert pipe.tokenizer.model_max_length == 77


def test_same_seed_same_bytes_other_seed_differs(stage):
    a = stage(batch(["No acute cardiopulmonary process.", "Small left pleural effusion."], [7, 8]))
    b = stage(batch(["No acute cardiopulmonary process.", "Small left pleural effusion."], [7, 8]))
    assert a["ok"].all() and b["ok"].all()
    assert a["image"][0]["bytes"] == b["image"][0]["bytes"]
    assert a["image"][0]["bytes"] != a["image"][1]["bytes"]
    img = decode_png(a["image"][0]["bytes"])
    assert img.shape == (SIZE, SIZE) and img.dtype == np.uint8
    prov = a["provenance"][0]
    assert (prov["backend"], prov["seed"], prov["size"], prov["steps"], prov["dtype"]) == ("diffusers", 7, SIZE, 2, "float32")
    assert a["masks"][0] == []


def test_row_noise_does_not_depend_on_batch_mates(stage):
    alone = stage(batch(["Small left pleural effusion."], [8]))
    together = stage(batch(["No acute cardiopulmonary process.", "Small left pleural effusion."], [7, 8]))
    x = decode_png(alone["image"][0]["bytes"]).astype(int)
    y = decode_png(together["image"][1]["bytes"]).astype(int)
    assert np.abs(x - y).max() <= 1  # same generator; only float batching noise may differ


def test_empty_impression_is_a_recorded_skip_and_long_prompts_are_cut_and_counted(stage):
    out = stage(batch(["", None, LONG, "No pneumothorax."], [1, 2, 3, 4]))
    assert out["ok"].tolist() == [False, False, True, True]
    assert out["reasons"][0] == ["diffusers: skipped: empty impression (no prompt)"]
    assert out["image"][0] is None
    long_prov = out["provenance"][2]
    assert long_prov["prompt_truncated"] is True and long_prov["prompt_tokens"] > 77
    short = out["provenance"][3]
    assert short["prompt_truncated"] is False and short["prompt"] == "No pneumothorax."


def test_prepare_prompt_fits_the_encoder(stage):
    tok = stage.pipe.tokenizer
    prompt, n, cut = prepare_prompt(tok, LONG)
    assert cut and n > 77
    assert len(tok(prompt)["input_ids"]) <= 77
    assert prepare_prompt(tok, "  No   effusion. ") == ("No effusion.", len(tok("No effusion.")["input_ids"]), False)


def test_not_a_pipeline_is_a_clear_error(tmp_path, tiny_sd):
    with pytest.raises(UserError, match="no model_index.json"):
        check_pipeline_source(str(tmp_path))
    (tmp_path / "weights.bin").write_bytes(b"x")
    with pytest.raises(UserError, match="not a directory"):
        check_pipeline_source(str(tmp_path / "weights.bin"))
    (tmp_path / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline", "unet": []}))
    with pytest.raises(UserError, match="lacks unet, vae, text_encoder, tokenizer, scheduler"):
        check_pipeline_source(str(tmp_path))
    with pytest.raises(UserError, match="no such directory, and not a hub model id"):
        check_pipeline_source("./does/not/exist")
    assert check_pipeline_source("stanfordmimi/roentgen") == "stanfordmimi/roentgen"
    with pytest.raises(UserError, match="could not load a StableDiffusionPipeline"):
        broken = tmp_path / "broken"
        broken.mkdir()
        (broken / "model_index.json").write_text((tiny_sd / "model_index.json").read_text())
        for part in ("unet", "vae", "text_encoder", "tokenizer", "scheduler"):
            (broken / part).mkdir()
        load_pipeline(str(broken), "cpu")


@pytest.mark.ray
def test_diffusers_actor_inside_a_ray_data_pipeline(ray_session, tiny_sd, tmp_path):
    """run_images: read_parquet -> the actor pool (model loaded once per actor) -> images.parquet."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from engine.core.config import load_config
    from engine.images.pipeline import run_images

    reports = tmp_path / "reports.parquet"
    pq.write_table(pa.table({
        "sample_id": ["r0", "r1", "r2", "r3", "r4"],
        "seed": pa.array([10, 11, 12, 13, 14], pa.int64()),
        "impression": ["No acute cardiopulmonary process.", "", LONG, "Small left pleural effusion.", "x"],
        "accepted": [True, True, True, True, False],
    }), reports)
    cfg = load_config(None, overrides={"images": {
        "backend": "diffusers", "model": str(tiny_sd), "size": SIZE, "steps": 2,
        "resources": {"num_cpus": 0.5, "batch_size": 2, "min_actors": 1, "max_actors": 1}}})
    summary = run_images(cfg, reports, tmp_path / "out")
    assert (summary["rows"], summary["images"], summary["rejected"]) == (4, 3, 1)
    assert summary["prompts_truncated"] == 1
    assert summary["rejected_by"] == {"skipped: empty impression (no prompt)": 1}
    images = pq.read_table(tmp_path / "out" / "images.parquet").to_pylist()
    assert [r["sample_id"] for r in images] == ["r0", "r2", "r3"]
    assert all(decode_png(r["image"]["bytes"]).shape == (SIZE, SIZE) for r in images)
    assert images[0]["image"]["path"] == "r0.png"
    # the actor's image equals the same stage run in this process (same seed, same bytes)
    direct = DiffusersStage(cfg.images.model_dump())(batch(["No acute cardiopulmonary process."], [10]))
    assert direct["image"][0]["bytes"] == images[0]["image"]["bytes"]
    rejected = pq.read_table(tmp_path / "out" / "images_rejected.parquet").to_pylist()
    assert [(r["sample_id"], r["reasons"]) for r in rejected] == [("r1", ["diffusers: skipped: empty impression (no prompt)"])]
