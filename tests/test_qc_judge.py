"""Degradation generator, the `rules` judge against it, and the `mllm` judge's prompt, parser and
processor config (building the processor itself needs vllm)."""
from __future__ import annotations

import base64
import io

import numpy as np
import pytest
from PIL import Image

from actors.degrade import DEGRADATIONS, clean_phantoms, degrade, labelled_bank
from actors.judge_mllm import (build_judge_processor, build_messages, parse_answer, processor_config,
                               vllm_missing_reason)
from actors.judge_rules import KINDS, RulesJudge, corner_tilt, judge_image, text_glyphs
from engine.core.config import StageBackend, StageResources
from engine.core.errors import ConfigError, UserError


@pytest.fixture(scope="module")
def clean():
    # seed 11: neither a calibration (1, 2) nor the benchmark's evaluation seed (7)
    return clean_phantoms(6, seed=11)


# ------------------------------------------------------------ degradations

def test_degradations_are_deterministic_and_keep_shape(clean):
    img = clean[0]
    for kind in DEGRADATIONS:
        a, b = degrade(img, kind, 5), degrade(img, kind, 5)
        assert a.shape == img.shape and a.dtype == np.uint8
        assert np.array_equal(a, b), kind
        assert not np.array_equal(a, img), kind
    assert not np.array_equal(degrade(img, "text", 5), degrade(img, "text", 6))


def test_degradation_properties(clean):
    img = clean[1]
    assert np.array_equal(degrade(img, "inverted", 0), 255 - img)
    assert degrade(img, "blank", 0).std() < 3
    assert degrade(img, "overexposed", 0).mean() < img.mean() - 30  # radiographic: too dark
    assert degrade(img, "underexposed", 0).mean() > img.mean() + 20  # washed out
    rot = degrade(img, "rotated", 0)
    assert rot[0, 0] == 0 and rot[-1, -1] == 0  # fill triangles in the corners


def test_unknown_kind_and_bad_image():
    with pytest.raises(ValueError, match="unknown degradation 'sideways'"):
        degrade(np.zeros((64, 64), np.uint8), "sideways", 0)
    with pytest.raises(ValueError, match="2-d uint8"):
        degrade(np.zeros((64, 64, 3), np.uint8), "blank", 0)


def test_labelled_bank_labels_every_kind(clean):
    bank = labelled_bank(clean[:2], seed=3)
    assert [b["label"] for b in bank[:len(DEGRADATIONS)]] == DEGRADATIONS
    assert len(bank) == 2 * len(DEGRADATIONS)
    assert {b["source"] for b in bank} == {0, 1}


# ------------------------------------------------------------ rules judge

def test_clean_phantoms_are_not_flagged(clean):
    for img in clean:
        assert judge_image(img)["flags"] == []


@pytest.mark.parametrize("kind", DEGRADATIONS)
def test_each_degradation_gets_its_own_flag(clean, kind):
    for i, img in enumerate(clean):
        flags = judge_image(degrade(img, kind, 900 + i))["flags"]
        assert flags == [kind], (i, flags)


def test_rotation_detector_measures_the_angle(clean):
    img = clean[2]
    rot = np.asarray(Image.fromarray(img).rotate(20, resample=Image.Resampling.BILINEAR, fillcolor=0))
    assert corner_tilt(rot) == pytest.approx(20, abs=1.5)
    assert corner_tilt(img) == 0.0


def test_a_single_bright_spot_is_not_text():
    img = np.full((256, 256), 100, np.uint8)
    img[100:106, 100:106] = 250  # one calcified nodule-like spot
    assert text_glyphs(img) < 4


def test_judge_options(clean):
    judge = RulesJudge(options={"kinds": ["blank"], "limits": {"contrast_min": 1000}})
    assert judge.judge(clean[0])["flags"] == ["blank"]
    assert RulesJudge(options={"kinds": ["noise"]}).judge(degrade(clean[0], "text", 1))["flags"] == []
    with pytest.raises(ValueError, match="unknown limits"):
        RulesJudge(options={"limits": {"nope": 1}})
    with pytest.raises(ValueError, match="unknown kinds"):
        RulesJudge(options={"kinds": ["sideways"]})
    assert set(KINDS) == set(DEGRADATIONS)


def test_too_small_image_is_an_error():
    with pytest.raises(ValueError, match="at least 32x32"):
        judge_image(np.zeros((8, 8), np.uint8))


# ------------------------------------------------------------ mllm judge

@pytest.mark.parametrize("answer, flags, problematic, parsed", [
    ('{"view": "frontal", "exposure": "ok", "inverted": false, "text": false, "usable": true}', [], False, "json"),
    ("```json\n{'view': 'lateral', 'exposure': 'overexposed', 'usable': False,}\n```",
     ["lateral", "overexposed"], True, "json"),
    ('Sure! {"projection": "PA", "Burnt-in text": "Yes", "noisy": "no"}', ["text"], True, "json"),
    ("- View: frontal (AP)\n- Exposure: underexposed\n- Rotated: yes\n- Usable: no",
     ["underexposed", "rotated"], True, "fields"),
    ("This lateral radiograph has burnt-in text. There is no noise.", ["lateral", "text"], True, "sentences"),
    ("Image quality is adequate.", [], False, "sentences"),
    ('{"view": "AP", "usable": false}', ["unusable"], True, "json"),
    ('{"view": "frontal", "other_artefacts": ["motion blur"]}', ["artefact"], True, "json"),
    ('{"view": "abdomen"}', ["other_view"], True, "json"),
])
def test_parse_answer(answer, flags, problematic, parsed):
    out = parse_answer(answer)
    assert out["flags"] == flags
    assert out["problematic"] is problematic
    assert out["parsed"] == parsed
    assert out["error"] == ""


@pytest.mark.parametrize("answer", ["", None, "banana"])
def test_unparseable_answer_is_an_error_not_a_verdict(answer):
    out = parse_answer(answer)
    assert out["problematic"] is None and out["error"]


def test_messages_carry_the_image_as_a_data_url():
    png = io.BytesIO()
    Image.fromarray(np.arange(64 * 64, dtype=np.uint8).reshape(64, 64)).save(png, format="PNG")
    msgs = build_messages(png.getvalue())
    url = msgs[1]["content"][0]["image_url"]["url"]
    assert url.startswith("data:image/png;base64,")
    assert base64.b64decode(url.split(",", 1)[1]) == png.getvalue()
    assert "JSON" in msgs[1]["content"][1]["text"]


def test_processor_config_from_the_judge_section():
    cfg = StageBackend(backend="mllm", model="/models/qwen2-vl",
                       resources=StageResources(batch_size=8, min_actors=1, max_actors=2, num_gpus=1),
                       options={"engine_kwargs": {"max_model_len": 8192}, "max_tokens": 128})
    pc = processor_config(cfg)
    assert pc.model_source == "/models/qwen2-vl"
    assert pc.batch_size == 8 and tuple(pc.concurrency) == (1, 2)
    assert pc.engine_kwargs["max_model_len"] == 8192
    assert pc.engine_kwargs["limit_mm_per_prompt"] == {"image": 1}
    assert pc.should_continue_on_error is True
    with pytest.raises(ConfigError, match="needs `model`"):
        processor_config(StageBackend(backend="mllm"))
    with pytest.raises(ConfigError, match="unknown keys"):
        processor_config(StageBackend(backend="mllm", model="m", options={"temprature": 0}))


@pytest.mark.skipif(vllm_missing_reason() is None, reason="vllm is installed: the missing-vllm error cannot occur")
def test_building_the_processor_without_vllm_says_so():
    with pytest.raises(UserError, match="vllm is not installed"):
        build_judge_processor(StageBackend(backend="mllm", model="m"), ["sample_id", "image"])


@pytest.mark.skipif(vllm_missing_reason() is not None, reason=f"needs vllm and a GPU: {vllm_missing_reason()}")
def test_building_the_processor_with_vllm(tmp_path):  # pragma: no cover - runs on GPU machines only
    proc = build_judge_processor(StageBackend(backend="mllm", model="Qwen/Qwen2-VL-2B-Instruct"), ["sample_id", "image"])
    assert proc is not None
