"""Training data: adapters over real layouts (synthetic dataset, MIMIC-CXR-JPG, Open-i, a table),
mixing (exact counts, determinism), Ray Data preprocessing (fixed-size arrays, undecodable images
counted), retrieval recall, resource checks and the metrics log. No Ray Train here.

The `make_*` helpers build small files in each real layout; the other train test files import them.
"""
from __future__ import annotations

import csv
import gzip
import io
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from engine.core.errors import ConfigError, UserError
from engine.dataset import FORMAT, MASK, DatasetError

# A model small enough to train in seconds here (overrides of convirt-resnet18-smallbert)
TINY_MODEL = {"image": {"image_size": 32, "resize_to": 36},
              "text_encoder": {"vocab_size": 300, "hidden_size": 32, "num_hidden_layers": 1,
                               "num_attention_heads": 2, "intermediate_size": 64},
              "text": {"max_tokens": 12}, "head": {"embed_dim": 32, "hidden_dim": 32}}
# The same size over the CPU default's bag-of-words tower: for Ray Train runs whose subject is not
# the text tower (a BERT tower costs each process that builds or loads it seconds of imports)
TINY_BOW = ("convirt-resnet18-bow", {"image": {"image_size": 32, "resize_to": 36},
                                     "text_encoder": {"vocab_size": 300, "hidden_size": 32},
                                     "text": {"max_tokens": 12}, "head": {"embed_dim": 32, "hidden_dim": 32}})

FINDINGS = ["pleural effusion", "pneumothorax", "cardiomegaly", "consolidation", "atelectasis", "edema",
            "nodule", "fracture of the rib"]
SIDES = ["left", "right", "bilateral"]


def report_for(i: int) -> tuple[str, str]:
    f = FINDINGS[i % len(FINDINGS)]
    side = SIDES[(i // len(FINDINGS)) % len(SIDES)]
    findings = f"There is a {side} {f}. The heart size is normal. No acute bony abnormality."
    impression = f"{side.capitalize()} {f}."
    return findings, impression


def png_bytes(i: int, size: int = 48) -> bytes:
    """A generated grey image whose bright blob position depends on i."""
    rng = np.random.default_rng(i)
    img = rng.integers(0, 60, (size, size)).astype(np.uint8)
    y, x = (i * 7) % (size - 12), (i * 13) % (size - 12)
    img[y:y + 12, x:x + 12] = 220
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    return buf.getvalue()


def make_synthetic_dataset(root: Path, n: int, bad: tuple[int, ...] = (), fmt: str = FORMAT) -> Path:
    """A dataset directory in the published schema (engine/dataset.py): manifest + data/part-0.parquet."""
    root = Path(root)
    (root / "data").mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        findings, impression = report_for(i)
        rows.append({
            "sample_id": f"syn-{i:05d}",
            "entities": [{"text": FINDINGS[i % len(FINDINGS)], "type": "ABNORMALITY"}],
            "findings": findings, "impression": impression,
            "image": {"bytes": b"not a png" if i in bad else png_bytes(i), "path": f"syn-{i:05d}.png"},
            "masks": [], "seed": i, "attempts": {"round": 0, "report_candidates": 1},
            "qc": {"judge_flags": [], "judge_scores": [], "reference_similarity": 0.0, "reference_match": False},
            "provenance": {"backend": "test"},
        })
    schema = pa.schema([
        ("sample_id", pa.string()), ("entities", pa.list_(pa.struct([("text", pa.string()), ("type", pa.string())]))),
        ("findings", pa.string()), ("impression", pa.string()),
        ("image", pa.struct([("bytes", pa.binary()), ("path", pa.string())])), ("masks", pa.list_(MASK)),
        ("seed", pa.int64()), ("attempts", pa.struct([("round", pa.int64()), ("report_candidates", pa.int64())])),
        ("qc", pa.struct([("judge_flags", pa.list_(pa.string())), ("judge_scores", pa.list_(pa.float64())),
                          ("reference_similarity", pa.float64()), ("reference_match", pa.bool_())])),
        ("provenance", pa.struct([("backend", pa.string())])),
    ])
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), root / "data" / "part-00000.parquet")
    (root / "manifest.json").write_text(json.dumps({"syncxr_format": fmt, "complete": True, "planned": n, "kept": n}))
    return root


def make_table(root: Path, n: int, bad: tuple[int, ...] = (), kind: str = "csv", start: int = 1000) -> Path:
    """A generic table: images/<id>.png beside table.csv (or .parquet), paths relative to it."""
    root = Path(root)
    (root / "images").mkdir(parents=True, exist_ok=True)
    rows = []
    for j in range(n):
        i = start + j
        (root / "images" / f"r{i}.png").write_bytes(b"\x89PNG broken" if j in bad else png_bytes(i))
        findings, impression = report_for(i)
        rows.append({"sample_id": f"real-{i}", "image_path": f"images/r{i}.png", "report": f"{findings} {impression}"})
    if kind == "parquet":
        path = root / "table.parquet"
        pq.write_table(pa.Table.from_pylist(rows), path)
    else:
        path = root / "table.csv"
        with path.open("w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)
    return path


def make_mimic(root: Path) -> Path:
    """MIMIC-CXR-JPG layout: 2 subjects, 3 studies; frontal and lateral images; split and
    metadata CSVs (gzipped); one study's report has neither FINDINGS nor IMPRESSION."""
    root = Path(root)
    studies = {  # study -> (subject, [(dicom, view)], split, report text)
        "50000001": ("10000032", [("d1", "PA"), ("d2", "LATERAL")], "train",
                     "WET READ: x\n FINAL REPORT\n EXAMINATION: CHEST\n\n FINDINGS: Left pleural effusion.\n\n"
                     " IMPRESSION: Small left effusion."),
        "50000002": ("10000032", [("d3", "AP")], "test", "FINDINGS: Normal.\nIMPRESSION: No acute process."),
        "50000003": ("11000011", [("d4", "AP"), ("d5", "PA")], "train",
                     "FINDINGS:\nThere is mild cardiomegaly.\n\nIMPRESSION:\nCardiomegaly."),
        "50000004": ("11000011", [("d6", "PA")], "train", "INDICATION: cough. COMPARISON: none."),
    }
    split_rows, meta_rows = [], []
    for study, (subject, images, split, text) in studies.items():
        folder = root / "files" / f"p{subject[:2]}" / f"p{subject}"
        (folder / f"s{study}").mkdir(parents=True, exist_ok=True)
        (folder / f"s{study}.txt").write_text(text)
        for n, (dicom, view) in enumerate(images):
            buf = io.BytesIO()
            Image.fromarray(np.full((40, 32), 30 + 20 * n, np.uint8)).save(buf, format="JPEG")
            (folder / f"s{study}" / f"{dicom}.jpg").write_bytes(buf.getvalue())
            split_rows.append({"dicom_id": dicom, "study_id": study, "subject_id": subject, "split": split})
            meta_rows.append({"dicom_id": dicom, "subject_id": subject, "study_id": study, "ViewPosition": view})
    for name, rows in (("split", split_rows), ("metadata", meta_rows)):
        with gzip.open(root / f"mimic-cxr-2.0.0-{name}.csv.gz", "wt", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)
    return root


# --- mixing ---------------------------------------------------------------------------------

from train.data.mixing import choose_mix, max_total, seeded_sample, split_validation  # noqa: E402

SYN = [f"s{i:03d}" for i in range(100)]
REAL = [f"r{i:03d}" for i in range(60)]


@pytest.mark.parametrize("ratio,total,n_syn", [(0.0, 50, 0), (0.3, 50, 15), (0.5, 50, 25), (1.0, 50, 50), (0.25, 7, 2)])
def test_ratio_mix_has_exact_counts(ratio, total, n_syn):
    syn, real = choose_mix(SYN, REAL, "ratio", ratio, total, seed=3)
    assert (len(syn), len(real)) == (n_syn, total - n_syn)
    assert set(syn) <= set(SYN) and set(real) <= set(REAL) and len(set(syn)) == len(syn)


def test_mix_is_deterministic_and_seeded_independently_of_input_order():
    a = choose_mix(SYN, REAL, "ratio", 0.5, 40, seed=1)
    b = choose_mix(list(reversed(SYN)), list(reversed(REAL)), "ratio", 0.5, 40, seed=1)
    c = choose_mix(SYN, REAL, "ratio", 0.5, 40, seed=2)
    assert a == b and a != c


def test_concat_and_single_source_modes():
    assert choose_mix(SYN, REAL, "concat") == (sorted(SYN), sorted(REAL))
    assert choose_mix(SYN, [], "synthetic") == (sorted(SYN), [])
    assert choose_mix([], REAL, "real") == ([], sorted(REAL))
    with pytest.raises(ConfigError, match="needs real pairs"):
        choose_mix(SYN, [], "concat")


def test_ratio_without_total_takes_the_largest_fitting_size_and_refuses_too_large():
    assert max_total(100, 60, 0.5) == 120
    syn, real = choose_mix(SYN, REAL, "ratio", 0.5)
    assert (len(syn), len(real)) == (60, 60)
    assert max_total(100, 60, 0.0) == 60 and max_total(100, 60, 1.0) == 100
    with pytest.raises(ConfigError, match="needs 0 synthetic and 70 real"):
        choose_mix(SYN, REAL, "ratio", 0.0, 70)


def test_validation_split_is_fixed_disjoint_and_complete():
    train, val = split_validation(SYN, 20, seed=0)
    assert len(val) == 20 and len(train) == 80 and not set(train) & set(val)
    assert split_validation(SYN, 20, seed=0) == (train, val)
    assert split_validation(SYN, 20, seed=1)[1] != val
    with pytest.raises(ConfigError):
        split_validation(SYN[:5], 5, 0)
    assert seeded_sample(SYN, 0, 0, "x") == []


# --- retrieval ------------------------------------------------------------------------------

from train.retrieval import recall_at_k, retrieval_metrics  # noqa: E402


def test_recall_at_k_on_known_similarities():
    assert recall_at_k(np.eye(20), (1, 5)) == {1: 1.0, 5: 1.0}
    assert recall_at_k(np.ones((20, 20)), (1, 10)) == {1: 0.0, 10: 0.0}  # ties count against
    sim = np.zeros((4, 4))
    sim[0] = [0.1, 0.9, 0.5, 0.0]  # pair 0 ranks third
    sim[1, 1] = sim[2, 2] = sim[3, 3] = 1.0
    assert recall_at_k(sim, (1, 2, 3)) == {1: 0.75, 2: 0.75, 3: 1.0}


def test_retrieval_metrics_both_directions():
    rng = np.random.default_rng(0)
    img = rng.normal(size=(50, 8))
    img /= np.linalg.norm(img, axis=1, keepdims=True)
    m = retrieval_metrics(img, img)
    assert m["val_i2t_r1"] == 1.0 and m["val_t2i_r10"] == 1.0
    shuffled = retrieval_metrics(img, img[::-1])
    assert shuffled["val_i2t_r1"] <= 0.04  # only the middle row can match itself


# --- adapters -------------------------------------------------------------------------------

from train.data.sources import mimic_source, openi_source, real_source, synthetic_source, table_source  # noqa: E402


def test_synthetic_source_reads_reports_and_refuses_other_schema_versions(tmp_path):
    make_synthetic_dataset(tmp_path / "ok", 6)
    src = synthetic_source(tmp_path / "ok")
    assert src.ids == [f"syn-{i:05d}" for i in range(6)]
    f, imp = report_for(2)
    assert src.reports[2] == f"{f} {imp}"
    rows = src.to_arrow(["syn-00001", "syn-00004"])
    assert rows.column("sample_id").to_pylist() == ["syn-00001", "syn-00004"]
    assert rows.column("image_bytes")[0].as_py() == png_bytes(1)
    make_synthetic_dataset(tmp_path / "v0", 2, fmt="syncxr-dataset/0")
    with pytest.raises(DatasetError, match="format 'syncxr-dataset/0'"):
        synthetic_source(tmp_path / "v0")


@pytest.mark.parametrize("kind", ["csv", "parquet"])
def test_table_source_resolves_paths_relative_to_the_table(tmp_path, kind):
    path = make_table(tmp_path / "t", 4, kind=kind)
    src = real_source(f"table:{path}")
    assert src.name == "table" and src.ids == ["real-1000", "real-1001", "real-1002", "real-1003"]
    assert src.image_paths[0] == str(tmp_path / "t" / "images" / "r1000.png")
    assert "There is a" in src.reports[0]


def test_table_source_names_a_missing_column(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("file,text\na.png,hello\n")
    with pytest.raises(UserError, match=r"t.csv: no column 'image_path' \(columns: file, text\)"):
        table_source(path)
    with pytest.raises(UserError, match="expected one of table:PATH"):
        real_source("csv:whatever")


def test_mimic_source_keeps_frontal_train_images_with_findings_or_impression(tmp_path):
    src = mimic_source(make_mimic(tmp_path / "mimic"))
    assert src.ids == ["d1", "d4", "d5"]  # d2 lateral, d3 test split, d6 no findings/impression
    assert src.reports[0] == "Left pleural effusion. Small left effusion."
    assert src.reports[1] == src.reports[2] == "There is mild cardiomegaly. Cardiomegaly."
    assert src.image_paths[0].endswith("files/p10/p10000032/s50000001/d1.jpg")
    assert src.skipped == {"not_frontal": 1, "no_findings_or_impression": 1}
    with pytest.raises(UserError, match="no files/ folder"):
        mimic_source(tmp_path)


def test_openi_source_matches_pngs_to_the_shipped_reports_by_parent_image_id(tmp_path):
    from train.data.sources import iu_reports_by_image, iu_views

    reports, views = iu_reports_by_image(), iu_views()
    frontal = [i for i in sorted(reports) if reports[i] and views.get(i) == "PA"][:3]
    lateral = next(i for i in sorted(reports) if reports[i] and views.get(i) == "LATERAL")
    png_dir = tmp_path / "openi"
    png_dir.mkdir()
    for k, image_id in enumerate(frontal + [lateral, "CXR0_not_an_image"]):
        (png_dir / f"{image_id}.png").write_bytes(png_bytes(k))
    src = openi_source(png_dir)
    assert src.ids == frontal
    assert src.reports == [reports[i] for i in frontal] and all(src.reports)
    assert src.skipped == {"not_frontal": 1, "no_matching_report": 1}


# --- decoding once, the in-memory cache -----------------------------------------------------

from train.data.cache import collect, epoch_batches  # noqa: E402
from train.data.preprocess import decode_batch  # noqa: E402


def test_decoding_gives_frames_and_names_undecodable_images(tmp_path):
    path = tmp_path / "a.png"
    path.write_bytes(png_bytes(5, size=70))
    batch = {"sample_id": ["a", "b", "c", "d"], "image_bytes": [png_bytes(1), b"garbage", None, None],
             "image_path": [None, None, str(path), None], "report": ["One. Two.", "Three.", "Four five.", "Six."]}
    out = decode_batch(batch, resize_to=36)
    assert out["frame"].shape == (4, 36, 36) and out["frame"].dtype == np.uint8
    assert out["valid"].tolist() == [True, False, True, False]
    assert out["error"][0] == "" and out["error"][1].startswith("b: image bytes cannot be decoded")
    assert "no image bytes and no image path" in out["error"][3]
    assert np.all(out["frame"][1] == 0) and out["frame"][0].max() > 0
    cache = collect([out], 36)
    assert list(cache.sample_ids) == ["a", "c"] and cache.skipped == 2 and cache.reports == ["One. Two.", "Four five."]
    images, texts = cache.batch(np.array([1, 0]), 32)
    assert images.shape == (2, 1, 32, 32) and texts == ["Four five.", "One. Two."]
    _, sentences = cache.batch(np.array([0]), 32, sentence_rng=np.random.default_rng(0))
    assert sentences[0] in ("One.", "Two.")


def test_cache_does_not_depend_on_block_order_and_epochs_are_seeded_permutations():
    batch = {"sample_id": ["b", "a", "c"], "image_bytes": [png_bytes(i) for i in range(3)],
             "image_path": [None] * 3, "report": ["B.", "A.", "C."]}
    one = collect([decode_batch(batch, 20)], 20)
    halves = [decode_batch({k: v[2:] for k, v in batch.items()}, 20), decode_batch({k: v[:2] for k, v in batch.items()}, 20)]
    two = collect(halves, 20)
    assert list(one.sample_ids) == list(two.sample_ids) == ["a", "b", "c"]
    assert np.array_equal(one.frames, two.frames) and one.reports == two.reports == ["A.", "B.", "C."]
    a = epoch_batches(10, 3, 3, seed=0, epoch=1)
    assert [x.tolist() for x in a] == [x.tolist() for x in epoch_batches(10, 3, 3, seed=0, epoch=1)]
    assert len(set(np.concatenate(a).tolist())) == 9  # a permutation, cut into batches
    assert [x.tolist() for x in a] != [x.tolist() for x in epoch_batches(10, 3, 3, seed=0, epoch=2)]
    with pytest.raises(ValueError, match="need 12 rows"):
        epoch_batches(10, 3, 4, seed=0, epoch=0)


# --- the Ray Data pipeline ------------------------------------------------------------------

@pytest.mark.ray
def test_pipeline_mixes_sources_decodes_once_and_counts_undecodable_images(ray_session, tmp_path):
    from train.config import TrainConfig
    from train.data.pipeline import build_datasets, load_sources, plan_data, training_texts

    syn = make_synthetic_dataset(tmp_path / "syn", 30, bad=(3,))
    table = make_table(tmp_path / "real", 20, bad=(0, 1))
    cfg = TrainConfig.model_validate({"data": {"mix": {"mode": "ratio", "ratio": 0.5, "total": 20}, "batch_size": 8},
                                      "validation": {"size": 6}, "scaling": {"num_workers": 2}})
    sources = load_sources(cfg.data, str(syn), f"table:{table}")
    plan = plan_data(cfg, sources)
    assert {k: len(v) for k, v in plan.train.items()} == {"synthetic": 10, "real": 10}
    assert list(plan.val) == ["real"] and len(plan.val["real"]) == 6  # auto: held out from the real side
    assert not set(plan.val["real"]) & set(plan.train["real"])
    assert plan_data(cfg, sources).train == plan.train  # deterministic
    assert len(training_texts(sources, plan)) == 20
    decoded = {}
    for inline_max_rows in (0, 1000):  # Ray Data tasks, then in the driver: the same rows
        cfg.data.inline_max_rows = inline_max_rows
        data = build_datasets(cfg, sources, plan, resize_to=28)
        assert len(data.train) == 2 and [s.count() for s in data.train] == [10, 10]  # one fixed shard per worker
        rows = [r for shard in data.train for r in shard.take_all()]
        assert len(rows) == 20 and {r["frame"].shape for r in rows} == {(28, 28)}
        bad_ids = {r["sample_id"] for r in rows if not r["valid"]}
        expected_bad = {"syn-00003"} & set(plan.train["synthetic"]) | {"real-1000", "real-1001"} & set(plan.train["real"])
        assert bad_ids == expected_bad and data.n_invalid == len(expected_bad) and data.n_valid == 20 - len(expected_bad)
        assert data.first_error.startswith(sorted(expected_bad)[0])
        assert sorted(r["sample_id"] for r in data.val.take_all()) == plan.val["real"]
        decoded[inline_max_rows] = {r["sample_id"]: (r["frame"].tobytes(), r["report"], r["error"]) for r in rows}
    assert decoded[0] == decoded[1000]


def test_data_that_cannot_train_stops_before_any_worker_starts():
    from train.data.pipeline import DecodedData
    from train.driver import check_decoded

    none = DecodedData(train=[], val=None, n_valid=0, n_invalid=7, first_error="syn-1: image bytes cannot be decoded",
                       val_invalid=0)
    with pytest.raises(UserError, match=r"no training image decodes \(7 of 7 rows\); first: syn-1: image bytes"):
        check_decoded(none, batch_size=4, world=1)
    few = DecodedData(train=[], val=None, n_valid=5, n_invalid=2, first_error="x", val_invalid=0)
    with pytest.raises(UserError, match="5 of 7 training images decode, fewer than one batch of 3 x 2"):
        check_decoded(few, batch_size=3, world=2)
    check_decoded(few, batch_size=5, world=1)


# --- resources, metrics log, progress -------------------------------------------------------

def test_workers_the_cluster_cannot_place_are_refused():
    from train.config import TrainConfig
    from train.driver import check_resources

    cfg = TrainConfig.model_validate({"scaling": {"num_workers": 3, "cpus_per_worker": 1}})
    with pytest.raises(UserError, match="3 workers x 1 CPU = 3 CPU, the cluster has 2"):
        check_resources(cfg, {"CPU": 2.0})
    gpu = TrainConfig.model_validate({"scaling": {"num_workers": 8, "use_gpu": True, "cpus_per_worker": 1}})
    with pytest.raises(UserError, match="8 workers x 1 GPU = 8 GPU, the cluster has 0"):
        check_resources(gpu, {"CPU": 64.0})
    # images decode before the workers start: the workers may take every CPU
    check_resources(TrainConfig.model_validate({"scaling": {"num_workers": 2, "cpus_per_worker": 1}}), {"CPU": 2.0})
    whole = TrainConfig.model_validate({"scaling": {"num_workers": 1, "cpus_per_worker": 2}})
    with pytest.raises(UserError, match=r"1 workers x 2 CPU \(\+ 0.01 reserved\) = 2.01 CPU"):  # a Tune trial's driver
        check_resources(whole, {"CPU": 2.0}, reserved_cpus=0.01)
    with pytest.raises(UserError, match="data.num_cpus 4: more than the 2 CPU"):
        check_resources(TrainConfig.model_validate({"data": {"num_cpus": 4}}), {"CPU": 2.0})


def test_metrics_log_drops_records_of_a_killed_attempt(tmp_path):
    from train.progress import format_record, plot_metrics, read_records
    from train.run_log import MetricsLog

    path = tmp_path / "metrics.jsonl"
    recs = [{"kind": "epoch", "epoch": 1, "step": 5, "train_loss": 2.0, "val_loss": 2.1, "val_i2t_r10": 0.2},
            {"kind": "step", "epoch": 2, "step": 8, "loss": 1.9, "lr": 1e-4}]
    path.write_text("".join(json.dumps(r) + "\n" for r in recs))
    log = MetricsLog(str(tmp_path), restored_step=5)
    assert read_records(path) == recs[:1]
    log.after_report(None, [{**recs[1], "placement_group_id": "ab12"}, {"kind": "step", "step": 8}], None)
    assert read_records(path) == recs  # rank 0's record, without the bookkeeping key
    assert "epoch 1/3, step 5/15, train_loss 2.0000, val_loss 2.1000, i2t_r10 0.200" in format_record(recs[0], 3, 15)
    assert plot_metrics(read_records(path), tmp_path / "m.png", chance=0.05).stat().st_size > 1000


def test_train_config_refuses_unknown_fields(tmp_path):
    from train.config import load_train_config

    bad = tmp_path / "bad.yaml"
    bad.write_text("epochs: 2\nscaling: {num_worker: 2}\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: field 'scaling.num_worker'"):
        load_train_config(bad)
    cfg, _ = load_train_config("configs/train-local.yaml")
    assert cfg.model.name == "convirt-resnet18-bow" and cfg.validation.size == 200


@pytest.mark.parametrize("name", ["train-local.yaml", "train-gloria-local.yaml", "train-demo.yaml",
                                  "train-convirt-paper.yaml", "train-gloria-paper.yaml"])
def test_shipped_training_configs_load_and_name_known_models(name):
    from train.config import load_train_config
    from train.models import list_models

    cfg, _ = load_train_config(f"configs/{name}")
    assert cfg.model.name in list_models()
    if "paper" in name:
        assert cfg.scaling.num_workers == 8 and cfg.scaling.use_gpu
    else:  # the CPU recipe that learns from scratch in minutes (docs/training.md)
        assert not cfg.data.augment and not cfg.data.random_sentence
        assert cfg.validation.zero_shot == "phantom"
    if "gloria" in name and "paper" in name:
        assert cfg.batch_size == 48 and cfg.optim.lr == 5e-5 and cfg.optim.optimizer == "adam"


@pytest.mark.parametrize("name", ["tune-local.yaml", "tune-paper.yaml"])
def test_shipped_tune_configs_load_over_their_training_config(name):
    from workflows.tune import load_tune_config

    tcfg, cfg, _ = load_tune_config(f"configs/{name}")
    assert len(tcfg.search.ratios) >= 3 and cfg.epochs >= 2
    if name == "tune-local.yaml":
        assert cfg.scaling.cpus_per_worker == 1.99 and cfg.data.limit == 800 and cfg.model.name == "convirt-resnet18-bow"


def test_validation_hook_and_metric_are_checked_when_the_config_is_read(tmp_path):
    from train.config import load_train_config

    cases = {
        "metric: val_i2t_r100": r"metric 'val_i2t_r100' is not reported \(known: val_loss, val_i2t_r1",
        "zero_shot: phantm": r"unknown validation.zero_shot backend 'phantm'; known: (.*, )?phantom",
        # an import path is not a hook name: configs never import code by themselves
        "zero_shot: 'eval.validation:phantom_zero_shot'": r"unknown validation.zero_shot backend 'eval.validation:",
        "metric: val_zero_shot_auc": r"metric 'val_zero_shot_auc' is not reported",  # no hook, no such metric
    }
    for line, message in cases.items():
        bad = tmp_path / "bad.yaml"
        bad.write_text(f"validation: {{{line}}}\n")
        with pytest.raises(ConfigError, match=r"bad.yaml: field 'validation'.*" + message):
            load_train_config(bad)
    ok = tmp_path / "ok.yaml"
    ok.write_text("validation: {zero_shot: phantom, metric: val_zero_shot_auc}\n")
    assert load_train_config(ok)[0].validation.metric == "val_zero_shot_auc"
