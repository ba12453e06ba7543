"""Draw docs/phantom_grid.png: a normal phantom and one per finding (4 x 4 tiles), each finding
outlined by its mask, labelled with the entities that drew it.

    .venv/bin/python -m benchmarks.phantom_grid [--size 256] [--seed 0] [--clean] [--out PATH]
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

OUT = Path(__file__).resolve().parent.parent / "docs" / "phantom_grid.png"


def _ab(t):
    return {"text": t, "type": "ABNORMALITY"}


def _dis(t):
    return {"text": t, "type": "DISEASE"}


def _an(t):
    return {"text": t, "type": "ANATOMY"}


CASES = [
    ("normal", []),
    ("left pleural effusion", [_ab("pleural effusion"), _an("left costophrenic angle")]),
    ("RLL pneumonia", [_dis("pneumonia"), _an("right lower lobe")]),
    ("left basal atelectasis", [_ab("atelectasis"), _an("left lung base")]),
    ("right pneumothorax", [_ab("large pneumothorax"), _an("right lung")]),
    ("cardiomegaly", [_ab("cardiomegaly")]),
    ("pulmonary edema", [_ab("pulmonary edema")]),
    ("RUL nodule", [_ab("nodule"), _an("right upper lobe")]),
    ("left upper lobe mass", [_ab("mass"), _an("left upper lobe")]),
    ("right IJ central line", [_ab("central venous catheter"), _an("right")]),
    ("left rib fracture", [_ab("rib fracture"), _an("left ribs")]),
    ("hiatal hernia", [_ab("hiatal hernia")]),
    ("emphysema", [_dis("emphysema")]),
    ("ET tube + NG tube", [_ab("endotracheal tube"), _ab("nasogastric tube")]),
    ("pacemaker", [_ab("pacemaker")]),
    ("interstitial fibrosis", [_dis("pulmonary fibrosis"), _an("lung bases")]),
]
NOTES = """# Phantom grid: what a radiologist would still find wrong

![grid](../../docs/phantom_grid.png)

`.venv/bin/python -m benchmarks.phantom_grid` (256 px, seed 0; mask outlines in colour).
A layperson sees chest X-rays; a radiologist would still object to:

- Heart and mediastinum: one smooth, evenly dense silhouette with sharp borders; no distinct aortic
  arch / pulmonary trunk / left atrial appendage contours, no cardiophrenic fat pads, no
  descending aorta or paraspinal lines seen through the heart.
- Abdomen: a flat bright wedge under the diaphragm; no liver/spleen edge, no bowel gas beyond the
  gastric bubble. Lung shapes come from COVID-19 lung masks (v7labs, via torchxrayvision), some of
  them AP/portable with flattened or irregular bases.
- Bones: ribs are evenly spaced parametric arcs, anterior and posterior ends alike, no costal
  cartilage calcification, no scapulae or humeral heads; the spine is a regular ladder.
- Lungs: vessels are a synthetic branching tree plus band-passed noise; no fissures, no
  well-formed hila, no breast or pectoral soft-tissue shadows.
- Findings are textbook caricatures: consolidation without air bronchograms, edema without
  cephalisation or peribronchial cuffing, a crisp pneumothorax line, a fracture that is only a
  gap and a step (subtle at 256 px), devices as idealised paths (ETT tip only roughly placed).
- One projection only (upright PA, small rotation); no AP/supine/portable look, no markers,
  collimation or grid lines; Gaussian detector noise.
"""
COLOURS = [(255, 70, 70), (70, 200, 255), (255, 210, 0), (120, 255, 120)]


def tile(name: str, entities: list, seed: int, size: int, outline: bool) -> np.ndarray:
    from PIL import Image, ImageDraw
    from scipy import ndimage

    from actors.phantom import render_phantom

    res = render_phantom(entities, seed, size)
    im = Image.fromarray(res.image).convert("RGB")
    if outline:
        arr = np.asarray(im).copy()
        for k, m in enumerate(res.masks):
            edge = m["mask"] & ~ndimage.binary_erosion(m["mask"])
            arr[edge] = COLOURS[k % len(COLOURS)]
        im = Image.fromarray(arr)
    draw = ImageDraw.Draw(im)
    draw.rectangle([0, 0, size, 13], fill=(0, 0, 0))
    draw.text((3, 1), name, fill=(255, 255, 0))
    return np.asarray(im)


def make_grid(size: int = 256, seed: int = 0, outline: bool = True) -> np.ndarray:
    tiles = [tile(name, ents, seed + i, size, outline) for i, (name, ents) in enumerate(CASES)]
    rows = [np.concatenate(tiles[r * 4:(r + 1) * 4], axis=1) for r in range(len(tiles) // 4)]
    return np.concatenate(rows, axis=0)


def main(argv=None) -> int:
    from PIL import Image

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--clean", action="store_true", help="no mask outlines")
    ap.add_argument("--out", default=str(OUT))
    args = ap.parse_args(argv)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(make_grid(args.size, args.seed, not args.clean)).save(out)
    notes = Path(__file__).parent / "results" / "phantom_grid.md"
    notes.parent.mkdir(parents=True, exist_ok=True)
    notes.write_text(NOTES)
    print(f"wrote {out} and {notes}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
