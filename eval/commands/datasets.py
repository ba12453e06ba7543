"""`syncxr datasets`: write an evaluation split as CSV so a user sees which files it needs."""
from __future__ import annotations

from pathlib import Path

from engine.core.arg_types import nonneg_int, positive_int


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
    p.add_argument("--n", type=positive_int, default=None, help="at most N rows per split (phantom: N per class and split)")
    p.add_argument("--seed", type=nonneg_int, default=0, help="split and sampling seed (default 0)")
    p.add_argument("--size", type=positive_int, default=256, help="phantom image size in pixels (default 256)")
    p.add_argument("--overwrite", action="store_true", help="replace --out when it exists")
    p.set_defaults(func=run)


def run(args) -> int:
    from engine.core.ownership import check_file_out, claim
    from eval.datasets import build_dataset
    from eval.datasets.base import image_paths

    out = check_file_out(args.out, [], args.overwrite)  # a CSV beside the images it lists is fine
    options = {"size": args.size} if args.name.startswith("phantom") else {}
    ds = build_dataset(args.name, n=args.n, seed=args.seed, **options)
    note = ""
    if args.imgpath and ds.render is not None:  # drawn into a folder this command owns
        claim(args.imgpath, "datasets", {"name": args.name, "n": args.n, "seed": args.seed, "size": args.size})
        note = f"; images and masks drawn into {write_phantom(ds, Path(args.imgpath))}"
    elif args.imgpath:
        image_paths(ds, ds.table, args.imgpath)  # one error line when any is missing
        note = f"; all {len(ds.table)} images found under {args.imgpath}"
    tmp = out.with_name(f".{out.name}.tmp")
    ds.table.to_csv(tmp, index=False)
    tmp.replace(out)  # whole or absent
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
