"""The experiment's own logic: how the real-like pairs are spoilt, what each arm trains on, how
seeds are summarised, and the zero-shot validation hook (the end-to-end run is `syncxr experiment`)."""
from __future__ import annotations

import numpy as np
import yaml

from workflows.datasets import real_like_config, spoil_plan
from workflows.experiment import (ExperimentConfig, arm_overrides, comparisons, load_experiment_config, markdown,
                                  plot, plot_scale, scale_summary, summarise)
from workflows.scoring import save_scores


def test_spoiling_moves_the_asked_share_of_reports_and_degrades_the_asked_share_of_images():
    report_of, kinds = spoil_plan(200, 0.1, 0.15, seed=3)
    moved = np.flatnonzero(report_of != np.arange(200))
    assert len(moved) == 20  # every chosen report lands on another image (a cycle)
    assert sorted(report_of) == list(range(200))  # a permutation: no report lost or doubled
    assert len(kinds) == 30 and set(kinds.values()) <= {"lateral", "inverted", "overexposed", "underexposed",
                                                       "cropped", "rotated", "blank", "noise", "text"}
    again = spoil_plan(200, 0.1, 0.15, seed=3)
    assert (again[0] == report_of).all() and again[1] == kinds
    assert (spoil_plan(50, 0.0, 0.0, 1)[0] == np.arange(50)).all()


def test_arms_share_one_step_budget():
    real, syn_used, real_used = arm_overrides("real", 1, 500, 4)
    assert real["data"]["mix"] == {"mode": "real"} and (syn_used, real_used) == (False, True)
    concat = arm_overrides("mixed-concat", 1, 500, 4)[0]
    assert concat["epochs"] == 2  # twice the pairs, half the epochs
    ratio, syn_used, real_used = arm_overrides("mixed-ratio", 2, 500, 4)
    assert ratio["data"]["mix"] == {"mode": "ratio", "ratio": 0.5, "total": 500} and ratio["seed"] == 2
    assert syn_used and real_used


def _run(arm, seed, common, rare, **extra):
    return {"arm": arm, "seed": seed, "common": common, "rare": rare,
            "per_class": {"common": {"edema": common}, "rare": {"mass": rare}}, **extra}


def test_summary_gives_mean_spread_per_class_and_card_per_arm():
    runs = [_run("real", 0, 0.6, 0.5), _run("real", 1, 0.8, 0.7), _run("synthetic", 0, 0.9, 0.8)]
    rows = summarise(runs, ["real", "synthetic"], {"real": {"unpaired_share": 0.1}})
    assert rows[0]["common_mean"] == 0.7 and abs(rows[0]["common_std"] - np.std([0.6, 0.8], ddof=1)) < 1e-12
    assert rows[0]["common_per_class"] == {"edema": 0.7} and rows[0]["card"] == {"unpaired_share": 0.1}
    assert rows[1]["seeds"] == 1 and rows[1]["rare_std"] == 0.0 and rows[1]["card"] == {}
    scale = scale_summary(runs + [_run("synthetic", 0, 0.7, 0.6, size=50), _run("synthetic", 1, 0.8, 0.6, size=50)], 100)
    assert [(r["size"], r["seeds"]) for r in scale] == [(50, 2), (100, 1)] and scale[0]["common_mean"] == 0.75


def test_comparisons_pair_the_saved_scores_by_seed_and_say_what_they_show(tmp_path):
    rng = np.random.default_rng(0)
    labels = np.repeat(np.eye(3, dtype=np.int64), 40, axis=0)
    runs = []
    for seed in (0, 1, 2, 3):
        for arm, signal in (("real", 0.3), ("synthetic", 2.0), ("mixed-concat", 2.0)):
            run_dir = tmp_path / f"{arm}-{seed}"
            run_dir.mkdir()
            save_scores({key: {"scores": rng.normal(size=labels.shape) + signal * labels, "labels": labels}
                         for key in ("common", "rare")}, run_dir)
            runs.append(_run(arm, seed, 0.5, 0.5, run_dir=str(run_dir)))
    runs = [r for r in runs if not (r["arm"] == "real" and r["seed"] == 3)]  # a seed one arm lacks
    comps = comparisons(runs, ["real", "synthetic", "mixed-concat"], reps=100)
    names = [(c.arm_a, c.arm_b, c.findings) for c in comps]
    assert names == [("synthetic", "real", "common"), ("synthetic", "real", "rare"), ("mixed-concat", "real", "common"),
                     ("mixed-concat", "real", "rare"), ("synthetic", "mixed-concat", "common"),
                     ("synthetic", "mixed-concat", "rare")]
    assert [c.seeds for c in comps] == [3, 3, 3, 3, 4, 4]
    assert comps[0].t_low > 0.2 and comps[0].sentence().startswith("synthetic beats real on common findings")
    assert comps[4].t_low < 0 < comps[4].t_high
    cfg = ExperimentConfig(n=100, seeds=[0, 1, 2, 3], arms=["real", "synthetic", "mixed-concat"], scale=[50])
    rows = summarise(runs, list(cfg.arms), {})
    scale = scale_summary(runs, 100)
    text = markdown(rows, comps, scale, cfg)
    assert "| synthetic - real | common | 3 |" in text and f"- {comps[0].sentence()}" in text
    assert plot(rows, comps, tmp_path / "r.png").stat().st_size > 1000
    assert plot_scale(scale, tmp_path / "s.png").stat().st_size > 1000


def test_the_shipped_config_loads_and_the_real_like_config_mirrors_the_corpus(tmp_path):
    cfg, _ = load_experiment_config("configs/experiment-local.yaml")
    assert len(cfg.seeds) >= 5 and set(cfg.arms) == {"real", "synthetic", "synthetic-drawable", "mixed-concat",
                                                    "mixed-ratio"}
    assert cfg.scale and max(cfg.scale) < cfg.n and cfg.eval.per_class == 200
    data = yaml.safe_load(real_like_config(cfg.synth_config, tmp_path).read_text())
    assert data["plan"]["mode"] == "corpus" and data["reports"]["backend"] == "corpus"


def test_zero_shot_validation_hook_scores_a_model():
    from eval.validation import phantom_zero_shot
    from train.models import create_model

    model = create_model("convirt-resnet18-smallbert", text_corpus=["no pleural effusion", "mild cardiomegaly"] * 10,
                         overrides={"image": {"image_size": 64, "resize_to": 72}})
    out = phantom_zero_shot(model, "cpu", per_class=2)
    assert set(out) == {"val_zero_shot_auc", "val_zero_shot_acc"} and 0 <= out["val_zero_shot_auc"] <= 1


def test_a_bad_experiment_config_is_one_line_before_any_dataset_is_built(tmp_path, capsys):
    from engine.cli import main

    cases = {
        "seeds: [0, 0]": "field 'seeds': Value error, repeated: 0",
        "seeds: []": "field 'seeds': List should have at least 1 item",
        "arms: []": "field 'arms': List should have at least 1 item",
        "arms: [real, real]": "field 'arms': Value error, repeated: real",
        "scale: [20]": "scale size 20: sizes are training sets smaller than n = 20",
        "train: {optim: {lr: -1}}": "with {cfg}: train: field 'optim.lr': Input should be greater than 0",
        "train: {optim: {lrr: 1}}": "with {cfg}: train: field 'optim.lrr': Extra inputs are not permitted",
        "synth_config: nowhere.yaml": "nowhere.yaml",
    }
    for i, (line, message) in enumerate(cases.items()):
        cfg = tmp_path / f"exp{i}.yaml"
        cfg.write_text(f"n: 20\n{line}\n")
        out = tmp_path / f"out{i}"
        assert main(["experiment", "--config", str(cfg), "--out", str(out)]) == 2, line
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message.format(cfg=cfg) in err[0], (line, err)
        assert not out.exists()
