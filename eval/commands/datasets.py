"""`syncxr datasets`: write an evaluation split as CSV so a user sees which files it needs."""
from __future__ import annotations

from pathlib import Path


def register(sub) -> None:
    from eval.datasets import DATASETS

    names = "; ".join(f"{k}: {v[3]}" for k, v in DATASETS.items())
    p = sub.add_parser(
        "datasets", help="write an evaluation dataset's split (paths, labels, targets) as CSV",
        description="Writes FILE.csv: one row per image with its path relative to the dataset root (the "
                    "dataset's published layout), split, one 0/1 column per class, and boxes / masks where "
                    "the dataset has them. With --imgpath, checks that every image is there (public sets) "
                    f"or writes the phantom images and masks as PNG into it. Datasets: {names}.")
    p.exit_codes = {0: "written", 2: "bad input (unknown dataset, images missing)"}
    p.add_argument("name", help="dataset name: " + ", ".join(DATASETS))
    p.add_argument("--out", required=True, help="CSV file to write")
    p.add_argument("--imgpath", default=None, help="dataset root to check (public) or to draw into (phantom)")
    p.add_argument("--n", type=int, default=None, help="at most N rows per split (phantom: N per class and split)")
    p.add_argument("--seed", type=int, default=0, help="split and sampling seed (default 0)")
    p.add_argument("--size", type=int, default=256, help="phantom image size in pixels (default 256)")
    p.set_defaults(func=run)


def run(args) -> int:
    from engine.core.errors import UserError
    from eval.datasets import build_dataset
    from eval.datasets.base import image_paths

    if args.n is not None and args.n < 1:
        raise UserError(f"--n must be at least 1, got {args.n}")
    options = {"size": args.size} if args.name.startswith("phantom") else {}
    ds = build_dataset(args.name, n=args.n, seed=args.seed, **options)
    note = ""
    if args.imgpath and ds.render is not None:
        note = f"; images and masks drawn into {write_phantom(ds, Path(args.imgpath))}"
    elif args.imgpath:
        image_paths(ds, ds.table, args.imgpath)  # one error line when any is missing
        note = f"; all {len(ds.table)} images found under {args.imgpath}"
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    ds.table.to_csv(out, index=False)
    counts = ds.table["split"].value_counts()
    split_text = ", ".join(f"{s} {int(counts.get(s, 0))}" for s in ("train", "valid", "test") if counts.get(s))
    print(f"{ds.name}: {len(ds.table)} rows ({split_text}), classes: {', '.join(ds.classes)} -> {out}{note}")
    return 0


def write_phantom(ds, root: Path) -> Path:
    """Phantom images as root/<path> and the target masks as root/<path minus .png>_mask.png."""
    import numpy as np
    from PIL import Image

    from eval.loading import row_class

    for _, row in ds.table.iterrows():
        img, masks = ds.render(row)
        path = root / row["path"]
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(path)
        mask = masks.get(row_class(ds, row), np.zeros(img.shape, bool))
        Image.fromarray(mask.astype(np.uint8) * 255).save(path.with_name(path.stem + "_mask.png"))
    return root
