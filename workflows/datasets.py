"""The training sets the experiment and the Tune sweep build for themselves, through the engine's
public API: synthetic (the balanced plan, full QC; optionally restricted to what the image
backend draws) and real-like (the corpus's own reports drawn from their own entities, then
spoilt the way real archives are). And the card of what each set contains, in numbers."""
from __future__ import annotations

import csv
from collections import Counter
from pathlib import Path

import numpy as np
import yaml
from pydantic import Field

from engine.core.config import Section, deep_merge, find_config_file, load_config
from engine.core.files import write_text
from engine.dataset import open_dataset, report_text


class RealLikeSection(Section):
    unpaired_share: float = Field(0.1, ge=0, le=1)  # pairs whose report belongs to another image
    low_quality_share: float = Field(0.1, ge=0, le=1)  # images degraded (lateral, cropped, noise, ...)
    seed: int = 0


def synth(config: Path, n: int, out: Path) -> Path:
    """A dataset of n pairs by the function `syncxr synth` runs: a rerun resumes an unfinished run,
    reuses a finished one and refuses a directory of other settings."""
    from engine.synth.run import run_synth

    run_synth(load_config(config), n, out)  # fewer kept than planned (QC never accepted some): usable
    return out


def variant_config(synth_config: str, out: Path, name: str, changes: dict) -> Path:
    """The engine config with `changes` (nested settings) merged on top, written as out/<name>.yaml
    so the run's own record names it."""
    data = deep_merge(yaml.safe_load(find_config_file(synth_config).read_text()) or {}, changes)
    path = out / f"{name}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text(path, yaml.safe_dump(data, sort_keys=False))
    return path


def real_like_config(synth_config: str, out: Path) -> Path:
    """The engine config with the corpus plan and the corpus report writer."""
    corpus = (yaml.safe_load(find_config_file(synth_config).read_text()) or {}).get("corpus", {})
    return variant_config(synth_config, out, "real-like", {
        "plan": {"mode": "corpus"}, "reports": {"backend": "corpus", "options": {"corpus": corpus}}})


def drawable_config(synth_config: str, out: Path) -> Path:
    """The engine config whose balanced plan keeps only the findings the image backend draws."""
    return variant_config(synth_config, out, "synthetic-drawable", {"plan": {"drawable_only": True}})


def real_like(synth_config: str, n: int, out: Path, settings: RealLikeSection) -> tuple[Path, Path]:
    """(the engine run, the spoilt table) of n real-like pairs under out/data, configs in
    out/configs: what the experiment's real arm and a sweep's real side train on."""
    engine_run = synth(real_like_config(synth_config, out / "configs"), n, out / "data" / "real-like-drawn")
    table = write_real_like_table(engine_run, out / "data" / "real-like", settings.unpaired_share,
                                  settings.low_quality_share, settings.seed)
    return engine_run, table


def spoil_plan(n: int, unpaired_share: float, low_quality_share: float, seed: int) -> tuple[np.ndarray, dict[int, str]]:
    """(report index for each image, {image index: degradation}) for n pairs: a share of reports
    moved to other images (a cycle, so none keeps its own), a share of images degraded."""
    from actors.degrade import DEGRADATIONS

    rng = np.random.default_rng(seed)
    report_of = np.arange(n)
    moved = rng.choice(n, size=int(round(unpaired_share * n)), replace=False)
    if len(moved) > 1:
        report_of[moved] = np.roll(moved, 1)
    spoilt = rng.choice(n, size=int(round(low_quality_share * n)), replace=False)
    kinds = {int(i): DEGRADATIONS[int(rng.integers(len(DEGRADATIONS)))] for i in spoilt}
    return report_of, kinds


def write_real_like_table(dataset_dir: Path, out: Path, unpaired_share: float, low_quality_share: float,
                          seed: int) -> Path:
    """The real-like pairs as a generic table (image_path, report, paired, quality), images as PNG files."""
    from PIL import Image

    from actors.degrade import degrade
    from train.models.frame import decode

    table_path = out / "pairs.csv"
    if table_path.is_file():
        return table_path
    rows = open_dataset(dataset_dir).to_arrow(["sample_id", "findings", "impression", "image"]).to_pylist()
    report_of, kinds = spoil_plan(len(rows), unpaired_share, low_quality_share, seed)
    (out / "images").mkdir(parents=True, exist_ok=True)
    lines = []
    for i, row in enumerate(rows):
        image = decode(row["image"]["bytes"])
        if i in kinds:
            image = degrade(image, kinds[i], seed + i)
        name = f"images/{row['sample_id']}.png"
        Image.fromarray(image).save(out / name)
        source = rows[int(report_of[i])]
        lines.append({"sample_id": f"real-{row['sample_id']}", "image_path": name,
                      "report": report_text(source["findings"], source["impression"]),
                      "paired": bool(report_of[i] == i), "quality": kinds.get(i, "ok")})
    tmp = table_path.with_name(".pairs.csv.tmp")
    with tmp.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(lines[0]))
        writer.writeheader()
        writer.writerows(lines)
    tmp.replace(table_path)
    return table_path


# ---------------------------------------------------------------- what a training set contains

def card_of_rows(provenance: list[dict], paired: list[bool] | None = None, quality: list[str] | None = None) -> dict:
    """The numbers that say what a training set's pairs are (pure; the provenance of each image as
    the engine records it):
    - drawn_pairs_share: pairs whose every present finding the phantom drew (no undrawable one);
    - undrawable_mentions_share: present-finding mentions the image does not show;
    - findings, max_min_ratio: distinct present findings and the long tail (most / least frequent);
    - unpaired_share, degraded_share: reports of another image, images of low quality."""
    per_finding, drawn_pairs, drawn, missing = Counter(), 0, 0, 0
    for p in provenance:
        d, u = p.get("drawn") or [], p.get("undrawable") or []
        drawn, missing = drawn + len(d), missing + len(u)
        drawn_pairs += not u
        per_finding.update(x.split(" -> ")[0] for x in d)
        per_finding.update(u)
    n = len(provenance)
    counts = list(per_finding.values())
    share = lambda k, total: round(k / total, 4) if total else None  # noqa: E731
    return {"pairs": n, "drawn_pairs_share": share(drawn_pairs, n),
            "undrawable_mentions_share": share(missing, drawn + missing),
            "findings": len(counts), "max_min_ratio": round(max(counts) / min(counts), 1) if counts else None,
            "unpaired_share": share(sum(not p for p in paired), n) if paired is not None else 0.0,
            "degraded_share": share(sum(q != "ok" for q in quality), n) if quality is not None else 0.0}


def data_card(dataset_dir: Path, table: Path | None = None) -> dict:
    """card_of_rows of an engine dataset, with the pairing and quality of its real-like table."""
    prov = open_dataset(dataset_dir).to_arrow(["provenance"]).column("provenance").to_pylist()
    if table is None:
        return card_of_rows(prov)
    with Path(table).open() as fh:
        rows = list(csv.DictReader(fh))
    return card_of_rows(prov, [r["paired"] == "True" for r in rows], [r["quality"] for r in rows])


def mixed_card(a: dict, b: dict, share_a: float) -> dict:
    """The card of a mix that takes share_a of its pairs from a and the rest from b (expected
    shares; the counts of findings are those of the two sets together)."""
    out = {}
    for key, va in a.items():
        vb = b.get(key)
        if key.endswith("_share") and va is not None and vb is not None:
            out[key] = round(share_a * va + (1 - share_a) * vb, 4)
        else:
            out[key] = None
    out["pairs"] = None
    return out
