"""`syncxr images`: draw an image for every accepted report (DIR/images.parquet);
`syncxr phantom`: draw one phantom from an entity list, to look at."""
from __future__ import annotations

import json
from pathlib import Path

from engine.cli.args import backend_overrides, command_parser
from engine.core.arg_types import nonneg_int, positive_int
from engine.core.config import load_config
from engine.core.errors import UserError


def register(sub) -> None:
    p = command_parser(sub, "images", "draw a chest X-ray per accepted report (images.parquet)",
                       'Draws one image per accepted report of a reports.parquet (or per plan row for the phantom) with the configured image backend. Writes OUT/images.parquet (sample_id, image PNG, masks, provenance), OUT/images_rejected.parquet (rows with reasons) and OUT/images_summary.json.',
                       out_help='output directory')
    p.add_argument("--reports", required=True, help="reports.parquet from `syncxr reports` (a plan.parquet works for phantom)")
    backend_overrides(p, "images", "phantom, diffusers", "diffusers: pipeline directory or hub id")
    p.add_argument("--size", type=positive_int, default=None, help="override images.size")
    p.add_argument("--limit", type=positive_int, default=None, help="only the first N rows")
    p.set_defaults(func=run_images_command)

    q = sub.add_parser("phantom", help="draw one phantom CXR from an entity list",
                       description='Draws one entity-conditioned phantom chest X-ray (no weights) and writes it as a PNG, with one PNG mask per drawn finding beside it; prints the provenance and masks as JSON.')
    q.add_argument("--entities", required=True,
                   help='JSON list, e.g. \'[{"text": "pleural effusion", "type": "ABNORMALITY"}, '
                        '{"text": "left lung base", "type": "ANATOMY"}]\'')
    q.add_argument("--seed", type=nonneg_int, default=0)
    q.add_argument("--size", type=positive_int, default=256)
    q.add_argument("--out", required=True, help="PNG file to write")
    q.add_argument("--overlay", action="store_true", help="also write <out>.overlay.png with mask outlines")
    q.set_defaults(func=run_phantom_command)


def format_summary(s: dict) -> str:
    line = (f"images ({s['backend']}{', ' + str(s['model']) if s['model'] else ''}, {s['size']} px): "
            f"{s['rows']} rows, {s['images']} drawn, {s['rejected']} rejected in {s['seconds']}s")
    if s["rejected_by"]:
        line += "\nrejected: " + ", ".join(f"{k} x{v}" for k, v in list(s["rejected_by"].items())[:6])
    return line


def run_images_command(args) -> int:
    from engine.images.pipeline import run_images

    overrides = {k: v for k, v in (("backend", args.backend), ("model", args.model), ("size", args.size))
                 if v is not None}
    cfg = load_config(args.config, overrides={"images": overrides} if overrides else None)
    summary = run_images(cfg, Path(args.reports), Path(args.out), limit=args.limit, verbose=args.verbose)
    (Path(args.out) / "images_summary.json").write_text(json.dumps(summary, indent=2))
    print(format_summary(summary))
    print(f"wrote {summary['path']}")
    return 0


def parse_entities(text: str) -> list[dict]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UserError(f"--entities: not valid JSON ({exc.msg} at column {exc.colno})") from None
    if not isinstance(value, list):
        raise UserError(f"--entities: expected a JSON list of {{text, type}} objects, got {type(value).__name__}")
    return value


def run_phantom_command(args) -> int:
    from PIL import Image

    from actors.phantom import render_phantom
    from engine.images.pipeline import encode_png

    entities = parse_entities(args.entities)
    if args.size < 32:
        raise UserError(f"--size must be >= 32, got {args.size}")
    try:
        res = render_phantom(entities, args.seed, args.size)
    except ValueError as exc:
        raise UserError(f"--entities: {exc}") from None
    out = Path(args.out)
    if out.parent and not out.parent.exists():
        raise UserError(f"{out.parent}: directory does not exist")
    out.write_bytes(encode_png(res.image))
    if args.overlay:
        im = Image.fromarray(res.image).convert("RGB")
        colours = [(255, 64, 64), (64, 200, 255), (255, 200, 0), (120, 255, 120), (255, 120, 255)]
        px = im.load()
        for k, m in enumerate(res.masks):
            edge = m["mask"] ^ _erode(m["mask"])
            for y, x in zip(*edge.nonzero()):
                px[int(x), int(y)] = colours[k % len(colours)]
        im.save(out.with_suffix(".overlay.png"))
    print(json.dumps({**res.provenance, "masks": [{k: m[k] for k in ("finding", "entity", "side", "zone", "bbox")}
                                                  for m in res.masks]}, indent=2))
    print(f"wrote {out}")
    return 0


def _erode(mask):
    from scipy import ndimage

    return ndimage.binary_erosion(mask)
