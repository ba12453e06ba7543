"""Evaluation datasets from the real label files torchxrayvision ships, phantom sets, image
reading (16-bit PNG, DICOM) and the `syncxr datasets` command."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from engine.cli import main
from engine.core.errors import UserError
from eval.datasets import build_dataset, check_task
from eval.datasets import chexpert
from eval.datasets.base import image_paths
from train.models.frame import decode
from eval.loading import load_rows


def write_dicom(path, arr: np.ndarray, photometric: str = "MONOCHROME2") -> None:
    import pydicom
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Rows, ds.Columns = arr.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = arr.astype(np.uint16).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)


def test_chexpert_5x200_from_the_shipped_csv():
    ds = chexpert.build()
    t = ds.table
    assert len(t) == 1000 and t["path"].is_unique
    assert t[chexpert.CLASSES].sum().tolist() == [200] * 5
    assert (t[chexpert.CLASSES].sum(axis=1) == 1).all()
    csv = chexpert.read_train_csv().set_index("Path")
    src = csv.loc[chexpert.PREFIX + t["path"]]
    assert (src["Frontal/Lateral"] == "Frontal").all()
    five = src[chexpert.CLASSES]
    assert (five.eq(1).sum(axis=1) == 1).all()  # exactly one positive ...
    assert (five.eq(1) | five.eq(0) | five.isna()).all().all()  # ... and the others 0 or blank, never -1
    for cls in chexpert.CLASSES:  # each row's label is its positive column
        assert (five.loc[t[cls].to_numpy() == 1, cls] == 1).all()
    assert ds.table.equals(chexpert.build().table)  # reproducible with the seed
    assert not ds.table["path"].equals(chexpert.build(seed=1).table["path"])
    excluded = chexpert.excluded_paths()
    assert excluded == set(chexpert.PREFIX + t["path"]) and len(excluded) == 1000
    assert excluded <= set(csv.index)


@pytest.mark.slow
def test_public_splits_keep_patients_apart():
    nih = build_dataset("chestxray14")
    per_patient = nih.table.groupby("patient")["split"].nunique()
    assert (per_patient == 1).all() and nih.table["view"].isin(["PA", "AP"]).all()
    assert len(nih.table) > 100_000  # every image of a patient, not one per patient
    rsna = build_dataset("rsna-pneumonia")
    frac = rsna.table["split"].value_counts(normalize=True)
    assert frac["train"] == pytest.approx(0.7, abs=0.01) and frac["test"] == pytest.approx(0.15, abs=0.01)
    pos = rsna.table[rsna.table["Pneumonia"] == 1]
    assert all(len(json.loads(b)) >= 1 for b in pos["boxes"])
    siim = build_dataset("siim-pneumothorax")
    assert siim.table["image_id"].is_unique
    assert ((siim.table["mask_rle"] != "[]") == (siim.table["Pneumothorax"] == 1)).all()


def test_phantom_sets_have_masks_and_right_labels():
    ds = build_dataset("phantom-5x200", n=2, size=96)
    assert ds.classes == ["Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Pleural Effusion"]
    assert len(ds.table) == 3 * 5 * 2 and (ds.labels(ds.table).sum(axis=1) == 1).all()
    test = ds.split("test")
    frames, masks, _ = load_rows(ds, test, None, 64, 72, with_masks=True)
    assert frames.shape == (10, 64, 64) and frames.dtype == np.uint8
    assert masks.reshape(10, -1).any(axis=1).all()
    for (_, row), m in zip(test.iterrows(), masks):  # each image draws its own class's entity
        cls = [c for c in ds.classes if row[c] == 1][0]
        assert json.loads(row["entities"])[0]["text"] == {"Edema": "pulmonary edema"}.get(cls, cls.lower())
    again = build_dataset("phantom-5x200", n=2, size=96)
    np.testing.assert_array_equal(load_rows(again, again.split("test"), None, 64, 72)[0], frames)
    rare = build_dataset("phantom-rare", n=1, size=128)
    assert "Pneumothorax" in rare.classes and "Cardiomegaly" not in rare.classes
    _, rmask, _ = load_rows(rare, rare.split("test"), None, 64, 72, with_masks=True)
    assert rmask.reshape(len(rmask), -1).any(axis=1).sum() >= 4  # most rare findings land in frame


def test_read_16bit_png_and_dicom(tmp_path):
    arr = np.linspace(1000, 4000, 64 * 32).reshape(32, 64).astype(np.uint16)
    Image.fromarray(arr).save(tmp_path / "p.png")
    img = decode(tmp_path / "p.png")
    assert img.dtype == np.uint8 and img.shape == (32, 64) and img.min() == 0 and img.max() == 255
    write_dicom(tmp_path / "a.dcm", arr)
    np.testing.assert_array_equal(decode(tmp_path / "a.dcm"), img)
    write_dicom(tmp_path / "b.dcm", arr, "MONOCHROME1")  # inverted display
    inverted = decode(tmp_path / "b.dcm").astype(int)
    assert np.abs(inverted - (255 - img.astype(int))).max() <= 1  # rounding only
    (tmp_path / "bad.png").write_bytes(b"not a png")
    with pytest.raises(UserError, match="bad.png cannot be decoded"):
        decode(tmp_path / "bad.png")


@pytest.mark.slow
def test_rsna_and_siim_targets_from_images_at_real_paths(tmp_path):
    rsna = build_dataset("rsna-pneumonia", n=40)
    rows = rsna.split("test")
    rows = rows[rows["Pneumonia"] == 1].head(2).reset_index(drop=True)
    for rel in rows["path"]:
        write_dicom(tmp_path / "rsna" / rel, np.full((1024, 1024), 500, np.uint16))
    _, masks, _ = load_rows(rsna, rows, tmp_path / "rsna", 64, 64, with_masks=True)
    boxes = json.loads(rows["boxes"][0])
    union = np.zeros((1024, 1024), bool)
    for x, y, w, h in boxes:
        union[int(y):int(np.ceil(y + h)), int(x):int(np.ceil(x + w))] = True
    assert masks[0].sum() == pytest.approx(union.sum() / 256, rel=0.15)  # 1024 -> 64: area / 16^2
    siim = build_dataset("siim-pneumothorax", n=40)
    rows = siim.split("valid")
    rows = rows[rows["Pneumothorax"] == 1].head(1).reset_index(drop=True)
    write_dicom(tmp_path / "siim" / "1.2.3" / "1.2.3.4" / rows["path"][0], np.zeros((1024, 1024), np.uint16))
    _, masks, _ = load_rows(siim, rows, tmp_path / "siim", 64, 64, with_masks=True)
    from eval.rle import decode_relative_rle

    full = np.zeros((1024, 1024), bool)
    for code in json.loads(rows["mask_rle"][0]):
        full |= decode_relative_rle(code, 1024, 1024)[0]
    assert masks[0].sum() == pytest.approx(full.sum() / 256, rel=0.2)


def test_missing_images_one_line(tmp_path):
    ds = chexpert.build(n=1)
    for rel in ds.table["path"][1:]:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / rel)
    with pytest.raises(UserError) as err:
        image_paths(ds, ds.table, tmp_path)
    msg = str(err.value)
    assert "\n" not in msg and "1 of 5 images missing" in msg and ds.table["path"][0] in msg
    with pytest.raises(UserError, match="needs --imgpath"):
        image_paths(ds, ds.table, None)
    with pytest.raises(UserError, match="does not support task 'segmentation'"):
        check_task("chexpert-5x200", "segmentation")


def test_datasets_cli_writes_the_split(tmp_path, capsys):
    out = tmp_path / "s.csv"
    assert main(["datasets", "siim-pneumothorax", "--n", "3", "--out", str(out)]) == 0
    t = pd.read_csv(out)
    assert len(t) == 9 and set(t["split"]) == {"train", "valid", "test"}
    assert {"path", "Pneumothorax", "mask_rle"} <= set(t.columns) and t["path"].str.endswith(".dcm").all()
    assert "siim-pneumothorax: 9 rows" in capsys.readouterr().out
    assert main(["datasets", "chexpert-5x200", "--out", str(tmp_path / "c.csv"), "--imgpath", str(tmp_path)]) == 2
    assert "1000 of 1000 images missing" in capsys.readouterr().err
    assert main(["datasets", "nope", "--out", str(out)]) == 2
    assert main(["datasets", "phantom-rare", "--n", "1", "--size", "64", "--out", str(tmp_path / "p.csv"),
                 "--imgpath", str(tmp_path / "ph")]) == 0
    assert (tmp_path / "ph" / "test" / "00000.png").is_file() and (tmp_path / "ph" / "test" / "00000_mask.png").is_file()


def test_targets_outside_the_image_are_clipped_and_counted(tmp_path):
    from eval.datasets.base import EvalSet

    Image.fromarray(np.zeros((32, 32), np.uint8)).save(tmp_path / "a.png")
    table = pd.DataFrame({"path": ["a.png"], "split": ["test"], "X": [1], "height": [32], "width": [32],
                          "boxes": [json.dumps([[24, 24, 16, 16], [0, 0, 8, 8]])]})
    ds = EvalSet("toy", ["X"], "multilabel", table, layout="flat", target="X", localisation="boxes")
    _, masks, stats = load_rows(ds, table, tmp_path, 32, 32, with_masks=True)
    assert stats["clipped"] == 1 and masks[0].sum() == 8 * 8 + 8 * 8
