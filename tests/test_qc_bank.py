"""QC bank on disk, the stage classes called directly, image sources, and two Ray runs: the
`syncxr qc-bank` command end to end, and dedup giving the same kept set whatever the batch order."""
from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from actors.degrade import clean_phantoms, degrade
from engine.core.config import IndexConfig, load_config
from engine.core.errors import UserError
from engine.images.pipeline import encode_png
from engine.qc.bank import load_bank, save_bank
from engine.qc.image_files import read_images_local
from engine.qc.stages import (EmbedStage, JudgeStage, ReferenceFilterStage, dedup_table, embed_verdict, judge_verdict,
                              privacy_reference, reference_verdict)

PIXELS = {"backend": "pixels", "model": None, "options": {}}


@pytest.fixture(scope="module")
def phantoms():
    return clean_phantoms(8, seed=51)


def unit_rows(n, d, seed=0):
    x = np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def write_bank(path, n=5, d=8):
    items = [{"id": f"bad-{i}", "flags": ["blank"]} for i in range(n)]
    return save_bank(path, unit_rows(n, d) * 3.0, items, PIXELS, IndexConfig())


# ------------------------------------------------------------ bank files

def test_bank_round_trip(tmp_path):
    meta = write_bank(tmp_path / "bank")
    assert meta["count"] == 5 and meta["dim"] == 8 and meta["index_kind"] == "flat"
    assert sorted(p.name for p in (tmp_path / "bank").iterdir()) == ["embeddings.npy", "index.faiss", "metadata.json"]
    bank = load_bank(tmp_path / "bank", IndexConfig(), expect_embedder=PIXELS)
    np.testing.assert_allclose(np.linalg.norm(bank.embeddings, axis=1), 1.0, atol=1e-6)
    assert bank.index.ntotal == 5 and bank.item_id(3) == "bad-3"


def test_bank_errors(tmp_path):
    cfg = IndexConfig()
    with pytest.raises(UserError, match="QC bank not found .*syncxr qc-bank"):
        load_bank(tmp_path / "missing", cfg)
    (tmp_path / "file").write_text("x")
    with pytest.raises(UserError, match="a QC bank is a directory"):
        load_bank(tmp_path / "file", cfg)
    (tmp_path / "nometa").mkdir()
    with pytest.raises(UserError, match="metadata.json: missing"):
        load_bank(tmp_path / "nometa", cfg)

    write_bank(tmp_path / "b")
    with pytest.raises(UserError, match="embedded with .*hf-vision.*not comparable"):
        load_bank(tmp_path / "b", cfg, expect_embedder={"backend": "hf-vision", "model": "microsoft/rad-dino"})
    # runtime options do not change the embedding space
    load_bank(tmp_path / "b", cfg, expect_embedder={"backend": "pixels", "options": {"batch_size": 8}})

    meta = json.loads((tmp_path / "b" / "metadata.json").read_text())
    (tmp_path / "b" / "metadata.json").write_text(json.dumps({**meta, "dim": 16}))
    with pytest.raises(UserError, match="dimension 8 but metadata.json says 16"):
        load_bank(tmp_path / "b", cfg)
    (tmp_path / "b" / "metadata.json").write_text("{not json")
    with pytest.raises(UserError, match="malformed JSON at line 1"):
        load_bank(tmp_path / "b", cfg)

    write_bank(tmp_path / "empty")
    np.save(tmp_path / "empty" / "embeddings.npy", np.zeros((0, 8), np.float32))
    with pytest.raises(UserError, match="the QC bank is empty"):
        load_bank(tmp_path / "empty", cfg)

    write_bank(tmp_path / "zero")
    np.save(tmp_path / "zero" / "embeddings.npy", np.zeros((5, 8), np.float32))
    with pytest.raises(UserError, match="row 0 is a zero vector"):
        load_bank(tmp_path / "zero", cfg)

    write_bank(tmp_path / "noemb")
    (tmp_path / "noemb" / "embeddings.npy").unlink()
    with pytest.raises(UserError, match="no embeddings.npy or embeddings.parquet"):
        load_bank(tmp_path / "noemb", cfg)

    with pytest.raises(UserError, match="refusing to write an empty QC bank"):
        save_bank(tmp_path / "none", np.zeros((0, 8)), [], PIXELS, cfg)


def test_parquet_embeddings_and_a_missing_index_are_fine(tmp_path):
    write_bank(tmp_path / "b", n=4)
    emb = np.load(tmp_path / "b" / "embeddings.npy")
    (tmp_path / "b" / "embeddings.npy").unlink()
    (tmp_path / "b" / "index.faiss").unlink()
    pq.write_table(pa.table({"embedding": [list(map(float, r)) for r in emb]}), tmp_path / "b" / "embeddings.parquet")
    bank = load_bank(tmp_path / "b", IndexConfig())
    assert bank.index.ntotal == 4
    np.testing.assert_allclose(bank.embeddings, emb, atol=1e-6)


# ------------------------------------------------------------ stages without Ray

def image_batch(images, extra_cells=()):
    cells = [{"bytes": encode_png(im), "path": None} for im in images] + list(extra_cells)
    col = np.empty(len(cells), dtype=object)
    col[:] = cells
    return {"sample_id": np.array([f"s{i}" for i in range(len(cells))], dtype=object), "image": col}


def test_embed_stage_turns_a_bad_row_into_an_error(phantoms, tmp_path):
    png = tmp_path / "on-disk.png"
    png.write_bytes(encode_png(phantoms[1]))
    batch = image_batch(phantoms[:2], [{"bytes": b"not a png", "path": None}, {"bytes": None, "path": str(png)}])
    out = EmbedStage("pixels")(batch)
    assert out["embedding"].shape == (4, 1280)
    assert [bool(e) for e in out["embed_error"]] == [False, False, True, False]
    assert "image not decodable" in out["embed_error"][2]
    assert not out["embedding"][2].any()
    np.testing.assert_allclose(out["embedding"][3], out["embedding"][1])  # read from its path
    ok, reasons = embed_verdict(out)
    assert ok.tolist() == [True, True, False, True] and reasons[2].startswith("embed: image not decodable")


def test_judge_stage_flags_and_verdict(phantoms):
    batch = image_batch([phantoms[0], degrade(phantoms[1], "lateral", 1), degrade(phantoms[2], "text", 2)],
                        [{"bytes": b"", "path": None}])
    out = JudgeStage("rules")(batch)
    assert [list(f) for f in out["judge_flags"]] == [[], ["lateral"], ["text"], []]
    assert out["judge_problematic"].tolist() == [False, True, True, False]
    assert json.loads(out["judge_scores"][0])["contrast"] > 10
    ok, reasons = judge_verdict(out)
    assert ok.tolist() == [True, False, False, False]
    assert reasons[1] == "judge: lateral" and reasons[3].startswith("judge: error: image not decodable")


def test_reference_filter_stage(phantoms, tmp_path):
    bad = [degrade(p, "blank", i) for i, p in enumerate(phantoms[:3])]
    emb = EmbedStage("pixels")(image_batch(bad))["embedding"]
    save_bank(tmp_path / "bank", emb, [{"id": f"blank-{i}", "flags": ["blank"]} for i in range(3)], PIXELS, IndexConfig())
    stage = ReferenceFilterStage(str(tmp_path / "bank"), 0.9, IndexConfig().model_dump(), PIXELS)
    batch = EmbedStage("pixels")(image_batch([phantoms[4], degrade(phantoms[5], "blank", 9)],
                                             [{"bytes": b"x", "path": None}]))
    out = stage(batch)
    assert out["reference_reject"].tolist() == [False, True, False]
    assert out["reference_match"][1].startswith("blank-")
    ok, reasons = reference_verdict(0.9)(out)
    assert ok.tolist() == [True, False, True]
    assert reasons[1].startswith("reference: cosine 1.000 > 0.9 to problematic image blank-")


def test_image_source_errors(tmp_path):
    with pytest.raises(UserError, match="image source not found"):
        read_images_local(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no PNG or JPEG files"):
        read_images_local(tmp_path / "empty")
    (tmp_path / "x.txt").write_text("hi")
    with pytest.raises(UserError, match="expected a directory of PNG/JPEG files or a .parquet"):
        read_images_local(tmp_path / "x.txt")
    pq.write_table(pa.table({"pixels": [b"x"]}), tmp_path / "noimg.parquet")
    with pytest.raises(UserError, match="no `image` column"):
        read_images_local(tmp_path / "noimg.parquet")
    pq.write_table(pa.table({"image": [b"garbage"], "sample_id": ["a"]}), tmp_path / "bad.parquet")
    with pytest.raises(UserError, match="image 'a' is not decodable"):
        read_images_local(tmp_path / "bad.parquet")


def test_privacy_reference_from_images_or_a_bank(phantoms, tmp_path):
    real = tmp_path / "real"
    real.mkdir()
    for i, im in enumerate(phantoms[:4]):
        (real / f"r{i}.png").write_bytes(encode_png(im))
    cfg = load_config(overrides={"qc": {"privacy_images": str(real)}})
    index = privacy_reference(cfg)
    assert index.ntotal == 4
    copy = EmbedStage("pixels")(image_batch([phantoms[2], phantoms[6]]))["embedding"]
    from engine.qc.stages import privacy_table
    table = privacy_table(["x", "y"], copy, index, cfg.qc)
    assert table.column("privacy_reject").to_pylist() == [True, False]
    assert table.column("privacy_match").to_pylist()[0] == 2


def test_dedup_table():
    x = unit_rows(4, 6)
    x[3] = x[1]
    table = dedup_table(["d", "b", "c", "a"], x, load_config().qc)
    # "a" comes first in sample_id order, so the copy at "b" is the duplicate
    assert table.column("kept").to_pylist() == [True, False, True, True]
    assert table.column("duplicate_of").to_pylist() == [None, "a", None, None]
    assert table.column("similarity").to_pylist()[1] == pytest.approx(1.0)


# ------------------------------------------------------------ with Ray

@pytest.mark.ray
def test_qc_bank_command(ray_session, phantoms, tmp_path, capsys):
    from engine.cli import main

    src = tmp_path / "images"
    (src / "sub").mkdir(parents=True)
    for i, im in enumerate(phantoms[:4]):
        (src / f"clean-{i}.png").write_bytes(encode_png(im))
    kinds = ["lateral", "blank", "noise", "text", "rotated"]
    for i, kind in enumerate(kinds):
        (src / "sub" / f"{kind}.png").write_bytes(encode_png(degrade(phantoms[4 + i % 4], kind, i)))
    (src / "broken.png").write_bytes(b"not an image")
    out = tmp_path / "bank"
    assert main(["qc-bank", "--images", str(src), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "judged problematic 5" in printed and "broken.png" in printed
    meta = json.loads((out / "metadata.json").read_text())
    assert sorted(it["id"] for it in meta["items"]) == sorted(f"sub/{k}.png" for k in kinds)
    assert {it["id"]: it["flags"] for it in meta["items"]}["sub/text.png"] == ["text"]
    assert meta["stats"]["images"] == 10 and meta["stats"]["embed_errors"] == 1
    bank = load_bank(out, IndexConfig(), expect_embedder=PIXELS)
    assert bank.embeddings.shape == (5, 1280)

    # bad input: one line, exit code 2
    assert main(["qc-bank", "--images", str(src), "--out", str(out)]) == 2
    assert "already exists" in capsys.readouterr().err
    assert main(["qc-bank", "--images", str(tmp_path / "nope"), "--out", str(tmp_path / "b2")]) == 2
    assert "image source not found" in capsys.readouterr().err

    # --keep all from a parquet source: every decodable image, unjudged
    pq.write_table(pa.table({"sample_id": [f"p{i}" for i in range(3)],
                             "image": [{"bytes": encode_png(im), "path": None} for im in phantoms[:3]]}),
                   tmp_path / "images.parquet")
    assert main(["qc-bank", "--images", str(tmp_path / "images.parquet"), "--out", str(tmp_path / "all"),
                 "--keep", "all"]) == 0
    meta = json.loads((tmp_path / "all" / "metadata.json").read_text())
    assert [it["id"] for it in meta["items"]] == ["p0", "p1", "p2"] and meta["judge"] is None


@pytest.mark.ray
def test_dedup_kept_set_does_not_depend_on_batch_order(ray_session, phantoms):
    import ray

    from engine.core.config import StageBackend, StageResources
    from engine.qc.stages import embed_dataset

    rng = np.random.default_rng(0)
    rows = [{"sample_id": f"p{i:02d}", "image": {"bytes": encode_png(im), "path": None}}
            for i, im in enumerate(phantoms)]
    # near-duplicates: noisy copies and an exact copy, some with ids before their originals
    for j, src in enumerate([0, 3, 3, 6]):
        noisy = np.clip(phantoms[src] + rng.normal(0, 4, phantoms[src].shape), 0, 255).astype(np.uint8)
        rows.append({"sample_id": f"{'a' if j % 2 else 'q'}{j}", "image": {"bytes": encode_png(noisy), "path": None}})
    rows.append({"sample_id": "p00-copy", "image": rows[0]["image"]})
    cfg = load_config().qc
    kept_sets = []
    for seed, batch_size in [(1, 2), (2, 5), (3, 64)]:
        ds = ray.data.from_items(rows).random_shuffle(seed=seed)
        section = StageBackend(backend="pixels", resources=StageResources(batch_size=batch_size))
        got = embed_dataset(ds, section).select_columns(["sample_id", "embedding"]).to_pandas()
        ids, emb = got["sample_id"].tolist(), np.stack(got["embedding"].to_numpy()).astype(np.float32)
        table = dedup_table(ids, emb, cfg)
        kept_sets.append({s for s, k in zip(table.column("sample_id").to_pylist(), table.column("kept").to_pylist()) if k})
    assert kept_sets[0] == kept_sets[1] == kept_sets[2]
    # every copy is dropped and the smallest sample_id of each group stays:
    # {p00, p00-copy, q0} -> p00, {p03, a1, q2} -> a1, {p06, a3} -> a3
    assert kept_sets[0] == {"p00", "p01", "p02", "a1", "p04", "p05", "a3", "p07"}


def test_backends_are_checked_on_the_driver(tmp_path):
    from engine.core.errors import ConfigError
    from engine.qc.stages import check_backends

    check_backends(load_config().qc)
    bad = [({"judge": {"backend": "oracle"}}, ConfigError, "unknown qc.judge backend 'oracle'"),
           ({"judge": {"backend": "rules", "options": {"limits": {"nope": 1}}}}, ConfigError, "qc.judge.options: .*unknown limits"),
           ({"embedder": {"backend": "pixels", "options": {"size": 1}}}, ConfigError, "qc.embedder.options.size: .*greater than or equal to 4"),
           ({"embedder": {"backend": "hf-vision", "model": str(tmp_path / "rad-dino")}}, UserError, "directory .* not found"),
           ({"judge": {"backend": "mllm"}}, ConfigError, "needs `model`")]
    for qc, exc, message in bad:
        with pytest.raises(exc, match=message):
            check_backends(load_config(overrides={"qc": qc}).qc)
