"""Zero-shot, grounding, linear probe, segmentation and `syncxr eval` on tiny random models
(real train.models at 64 px) and on a fixture model whose similarities are known."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from engine.cli import main
from engine.core.errors import UserError
from eval.datasets import build_dataset
from eval.evaluate import evaluate
from eval.grounding import choose_threshold, grounding_metrics, zero_shot_grounding
from train.models.frame import to_input
from eval.linear_probe import linear_probe, pooled_features, subset_indices
from eval.loading import load_rows, row_class
from eval.segmentation import build_unet, train_segmentation
from eval.zero_shot import zero_shot_classification

CORPUS = ["small left pleural effusion", "mild cardiomegaly", "no pulmonary edema", "bibasilar atelectasis",
          "right lower lobe consolidation", "no pneumothorax"] * 4
TINY = {"image": {"image_size": 64, "resize_to": 72},
        "text_encoder": {"hidden_size": 64, "num_hidden_layers": 1, "intermediate_size": 128, "num_attention_heads": 2}}


@pytest.fixture(scope="module")
def models():
    from train.models import create_model

    torch.manual_seed(0)
    return {m: create_model(f"{m}-resnet18-smallbert", text_corpus=CORPUS, overrides=TINY) for m in ("convirt", "gloria")}


@pytest.fixture(scope="module")
def phantom():
    ds = build_dataset("phantom-5x200", n=2, size=96)
    data = {}
    for split in ("train", "valid", "test"):
        rows = ds.split(split)
        frames, masks, _ = load_rows(ds, rows, None, 64, 72, with_masks=True)
        data[split] = (rows, to_input(frames), masks)
    return ds, data


class BrightnessModel(torch.nn.Module):
    """Fixture: similarity = mean image brightness x (+1 for texts with 'bright', -1 otherwise;
    negated by a leading "no "), so the right zero-shot answer is known in advance."""

    method, name, image_size, resize_to = "convirt", "brightness", 8, 8

    def tokenize(self, texts):
        sign = torch.tensor([[(1.0 if "bright" in t else -1.0) * (-1.0 if t.startswith("no ") else 1.0)]
                             for t in texts])
        return {"input_ids": sign, "attention_mask": torch.ones_like(sign), "truncated": torch.zeros(len(texts))}

    def similarity(self, images, ids, mask):
        return images.mean(dim=(1, 2, 3))[:, None] * ids[:, 0][None, :]


def test_zero_shot_known_answer_on_the_fixture_model():
    x = np.zeros((6, 1, 8, 8), np.float32)
    x[:3] += np.array([0.9, 0.7, 0.8])[:, None, None, None]  # the three "bright" images
    x[3:] -= np.array([0.9, 0.7, 0.8])[:, None, None, None]
    labels = np.array([[1, 0]] * 3 + [[0, 1]] * 3)
    prompts = {"bright": ["bright lung"], "dark": ["dark lung"]}
    r = zero_shot_classification(BrightnessModel(), x, labels, ["bright", "dark"], "multiclass", prompts, batch_size=4)
    assert r["mean_auc"] == 1.0 and r["per_class"]["dark"]["auc"] == 1.0 and r["skipped"] == []
    assert r["multiclass_accuracy"] == 1.0 and r["per_class"]["bright"]["f1"] == 1.0
    flipped = zero_shot_classification(BrightnessModel(), x, labels[:, ::-1], ["bright", "dark"], "multiclass", prompts)
    assert flipped["mean_auc"] == 0.0


class OffsetModel(BrightnessModel):
    """Fixture: every text scores the dark images higher than the bright ones by an offset, as an
    opaque image scores every finding's prompt high; within each image the right class still wins."""

    def similarity(self, images, ids, mask):
        b = images.mean(dim=(1, 2, 3))[:, None]
        return 0.1 * b * ids[:, 0][None, :] - b  # bright images: all scores lower


def test_multiclass_auc_ranks_each_images_class_probability_not_raw_scores_across_images():
    """A class's score ranked across images fails when one kind of image scores every prompt high
    (AUC 0 here); the softmax over each image's class scores (CLIP's multi-class rule) asks which
    class the image belongs to and gets every image right (AUC 1), with the raw rule kept beside it."""
    x = np.zeros((6, 1, 8, 8), np.float32)
    x[:3] += np.array([0.9, 0.7, 0.8])[:, None, None, None]
    x[3:] -= np.array([0.9, 0.7, 0.8])[:, None, None, None]
    labels = np.array([[1, 0]] * 3 + [[0, 1]] * 3)
    prompts = {"bright": ["bright lung"], "dark": ["dark lung"]}
    r = zero_shot_classification(OffsetModel(), x, labels, ["bright", "dark"], "multiclass", prompts)
    assert r["mean_auc"] == 1.0 and r["multiclass_accuracy"] == 1.0
    assert r["mean_auc_raw_score"] == 0.5 and r["per_class"]["bright"]["auc"] == 1.0
    logp = r["scores"]
    assert np.allclose(np.exp(logp).sum(axis=1), 1.0) and (logp <= 0).all()


def test_softmax_temperature_is_the_models_training_temperature(models):
    from eval.zero_shot import class_log_probabilities, softmax_temperature

    assert softmax_temperature(models["convirt"]) == models["convirt"].config["loss"]["temperature"] == 0.1
    assert softmax_temperature(models["gloria"]) == 1.0 == softmax_temperature(BrightnessModel())
    s = np.array([[0.30, 0.20], [0.25, 0.24]])
    sharp, flat = class_log_probabilities(s, 0.01), class_log_probabilities(s, 10.0)
    assert sharp[0, 1] < -9.9 and abs(flat[1, 0] - np.log(0.5)) < 1e-3  # colder: surer; ranks unchanged
    assert (np.argsort(sharp[:, 0]) == np.argsort(flat[:, 0])).all()


def test_zero_shot_auc_on_random_models_is_finite_and_skips(models, phantom):
    ds, data = phantom
    rows, x, _ = data["test"]
    labels = np.c_[ds.labels(rows), np.zeros(len(rows), int)]  # a sixth class with no positives
    for method, model in models.items():
        r = zero_shot_classification(model, x, labels, ds.classes + ["Pneumothorax"], "multiclass", batch_size=4)
        assert r["skipped"] == ["Pneumothorax"] and set(r["per_class"]) == set(ds.classes)
        aucs = [v["auc"] for v in r["per_class"].values()]
        assert all(0.0 <= a <= 1.0 for a in aucs), method
        assert r["mean_auc"] == pytest.approx(np.mean(aucs))
    with pytest.raises(ValueError, match="labels must be"):
        zero_shot_classification(models["convirt"], x, labels[:, :2], ds.classes, "multiclass")


def test_linear_probe_learns_an_easy_task():
    rng = np.random.default_rng(0)

    def make(n):
        y = rng.integers(0, 2, n)
        return rng.normal(0, 1, (n, 16)) + 4.0 * y[:, None] * np.eye(16)[0], np.c_[y, 1 - y]

    train, valid, test = make(200), make(60), make(100)
    r = linear_probe(train, valid, test, ["a", "b"], "multilabel", fractions=(0.1, 1.0), seed=0)
    assert [r[k]["n_train"] for k in ("10%", "100%")] == [20, 200]
    assert r["100%"]["mean_auc"] > 0.9  # a 4-sigma shift along one feature: chance is 0.5
    assert r["100%"]["best_valid_loss"] < np.log(2)  # below the zero-initialised layer's loss
    np.testing.assert_array_equal(subset_indices(400, 0.1, 0), subset_indices(400, 0.1, 0))
    assert not np.array_equal(subset_indices(400, 0.1, 0), subset_indices(400, 0.1, 1))


def test_linear_probe_on_frozen_tiny_encoder(models, phantom):
    ds, data = phantom
    sets = [(pooled_features(models["convirt"], data[s][1]), ds.labels(data[s][0])) for s in ("train", "valid", "test")]
    assert sets[0][0].shape == (10, 512)
    r = linear_probe(*sets, ds.classes, ds.kind, fractions=(1.0,), max_epochs=30)
    assert 0.0 <= r["100%"]["mean_auc"] <= 1.0


@pytest.mark.slow
def test_segmentation_runs_on_the_pretrained_backbone(models, phantom):
    model = models["convirt"]
    unet = build_unet(model)
    backbone = model.backbone_state_dict()
    enc = unet.encoder.state_dict()
    assert set(enc) == set(backbone)
    assert all(torch.equal(enc[k], backbone[k]) for k in backbone)
    _, data = phantom
    r = train_segmentation(model, data["train"][1:], data["valid"][1:], data["test"][1:], epochs=1,
                           batch_size=4, max_steps=2)
    assert r["steps"] == 2 and 0.0 <= r["dice"] <= 1.0 and r["probs"].shape == (10, 64, 64)


def test_grounding_metrics_on_known_maps():
    masks = np.zeros((2, 8, 8), bool)
    masks[0, 2:4, 2:4] = True
    masks[1, 5:, 5:] = True
    maps = masks.astype(np.float32) * 0.8 + 0.1
    assert choose_threshold(maps, masks) <= 0.85
    r = grounding_metrics(maps, masks, 0.5)
    assert (r["pointing_game"], r["dice"], r["iou"], r["precision"], r["recall"]) == (1.0, 1.0, 1.0, 1.0, 1.0)
    inverted = np.concatenate([1.0 - maps, np.full((1, 8, 8), 0.5, np.float32)])
    r = grounding_metrics(inverted, np.concatenate([masks, np.zeros((1, 8, 8), bool)]), 0.5)
    assert r["n"] == 2 and r["n_without_target"] == 1 and r["pointing_game"] == 0.0 and r["dice"] == 0.0


@pytest.mark.slow
def test_grounding_on_a_tiny_model(models, phantom):
    ds, data = phantom
    parts = [(data[s][1], data[s][2], [row_class(ds, r) for _, r in data[s][0].iterrows()]) for s in ("valid", "test")]
    r = zero_shot_grounding(models["gloria"], *parts, batch_size=8)
    assert r["maps"].shape == (10, 64, 64) and r["maps"].min() >= 0 and r["maps"].max() <= 1
    assert r["n"] == 10 and all(0.0 <= r[k] <= 1.0 for k in ("pointing_game", "iou", "dice", "precision", "recall"))


@pytest.mark.slow
def test_eval_cli_side_by_side_and_wrong_architecture(models, tmp_path, capsys):
    run = tmp_path / "run"
    models["convirt"].save_pretrained(run / "model")
    gloria_dir = models["gloria"].save_pretrained(tmp_path / "gloria")
    out = tmp_path / "out"
    argv = ["eval", "--checkpoint", str(run), str(gloria_dir), "--dataset", "phantom-5x200", "--task", "zero-shot",
            "--n", "2", "--phantom-size", "64", "--out", str(out), "--batch-size", "8"]
    assert main(argv) == 0
    res = json.loads((out / "results.json").read_text())
    assert [r["method"] for r in res["checkpoints"]] == ["convirt", "gloria"]
    assert all(0.0 <= r["mean_auc"] <= 1.0 and (out / r["roc_png"]).is_file() for r in res["checkpoints"])
    table = (out / "results.md").read_text()
    assert str(run) in table and str(gloria_dir) in table and "mean AUC" in table
    # one checkpoint fewer into the same --out: another evaluation, refused unless --overwrite
    assert main(argv[:3] + argv[4:] + ["--expect-model", "convirt-resnet18-smallbert"]) == 2
    assert "holds a `syncxr eval` output of other inputs (checkpoints:" in capsys.readouterr().err
    assert main(argv[:3] + argv[4:] + ["--expect-model", "convirt-resnet18-smallbert", "--overwrite"]) == 0
    assert len(json.loads((out / "results.json").read_text())["checkpoints"]) == 1
    assert main(argv + ["--expect-model", "convirt-resnet18-smallbert"]) == 2
    assert "expected 'convirt-resnet18-smallbert'" in capsys.readouterr().err
    assert main(["eval", "--checkpoint", str(tmp_path), "--dataset", "phantom-5x200", "--task", "zero-shot",
                 "--out", str(out)]) == 2
    assert "syncxr eval: error:" in capsys.readouterr().err


@pytest.mark.slow
def test_evaluate_grounding_writes_overlays(models, tmp_path):
    res = evaluate([models["gloria"]], "phantom-rare", "grounding", tmp_path, n=1,
                   dataset_options={"size": 64}, batch_size=8)
    r = res["checkpoints"][0]
    assert (tmp_path / r["overlay_png"]).is_file() and r["n"] + r["n_without_target"] == 6
    assert "pointing game" in (tmp_path / "results.md").read_text()


@pytest.mark.slow
def test_evaluate_chexpert_from_images_at_real_paths(models, tmp_path):
    from PIL import Image

    from eval.datasets import chexpert

    ds = chexpert.build(n=1)
    for i, rel in enumerate(ds.table["path"]):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((80, 64), 40 * i, np.uint8)).save(tmp_path / rel)  # portrait JPEGs
    res = evaluate([models["convirt"]], "chexpert-5x200", "zero-shot", tmp_path / "out", imgpath=tmp_path, n=1)
    r = res["checkpoints"][0]
    assert r["n_eval"] == 5 and len(r["per_class"]) == 5 and 0.0 <= r["multiclass_accuracy"] <= 1.0
    with pytest.raises(UserError, match="does not support task 'grounding'"):
        evaluate([models["convirt"]], "chexpert-5x200", "grounding", tmp_path / "out", imgpath=tmp_path)


def test_multilabel_zero_shot_positive_against_negative_prompt():
    x = np.zeros((4, 1, 8, 8), np.float32)
    x[:2] += 0.5  # bright images: "findings consistent with bright" beats "no bright"
    x[2:] -= 0.5
    labels = np.array([[1, 0], [1, 0], [0, 1], [0, 1]])
    r = zero_shot_classification(BrightnessModel(), x, labels, ["bright", "dark"], "multilabel")
    # brightness b = +-0.5: "findings consistent with bright" scores b, "no bright" -b: log-odds 2b / 0.1
    np.testing.assert_allclose(r["scores"][:, 0], [10.0, 10.0, -10.0, -10.0], rtol=1e-5)
    np.testing.assert_allclose(r["scores"][:, 1], [-10.0, -10.0, 10.0, 10.0], rtol=1e-5)
    assert r["per_class"]["bright"]["auc"] == 1.0 and r["per_class"]["dark"]["auc"] == 1.0
