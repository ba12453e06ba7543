"""The `rules` quality judge against the labelled degradations.

Clean images are phantoms (actors.phantom, 0-3 random findings each: pathology is not a quality
problem). Each clean image is degraded once per kind (actors.degrade). The judge's limits were
set on calibration seeds (1 and 2, the ones looked at while designing the rules); the evaluation
here uses a different phantom seed and different degradation seeds.

Figures: per kind, precision and recall of the flag of that kind over the whole evaluation set
(clean + every kind), and the false-flag rate on clean phantoms. Baseline in the same run, for
"is this image problematic at all": a generic outlier detector on the image mean and standard
deviation (|z| > 3 against the calibration clean phantoms). Stress rows: clean phantoms at 512
px, and clean phantoms lightly denoised (the resampling cue of "cropped" is known to be fragile).

    python -m benchmarks.bench_judge [--quick] [--calibrate]
"""
from __future__ import annotations

import argparse
import time
from collections import Counter
from pathlib import Path

import numpy as np
from scipy import ndimage

from benchmarks import write_results
from actors.degrade import DEGRADATIONS, clean_phantoms, degrade
from actors.judge_rules import features, judge_features

RESULTS = Path(__file__).parent / "results" / "judge.md"
CALIBRATION_SEEDS = (1, 2)
EVAL_SEED = 7


def labelled_set(n: int, phantom_seed: int, degrade_seed: int, size: int = 256):
    clean = clean_phantoms(n, phantom_seed, size)
    out = [("clean", im) for im in clean]
    for kind in DEGRADATIONS:
        out += [(kind, degrade(im, kind, degrade_seed * 100_000 + i)) for i, im in enumerate(clean)]
    return out


def calibration_table(n: int) -> str:
    """Feature distributions (min / median / max) per kind on the calibration seeds."""
    rows = []
    for seed in CALIBRATION_SEEDS:
        rows += [(k, features(im)) for k, im in labelled_set(n, seed, seed)]
    names = list(rows[0][1])
    lines = ["| kind | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for kind in ["clean"] + DEGRADATIONS:
        vals = [f for k, f in rows if k == kind]
        cells = []
        for name in names:
            v = np.array([f[name] for f in vals])
            cells.append(f"{v.min():.2f} / {np.median(v):.2f} / {v.max():.2f}")
        lines.append(f"| {kind} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def baseline_flags(images, ref_stats):
    (mu_m, sd_m), (mu_s, sd_s) = ref_stats
    out = []
    for im in images:
        m, s = float(im.mean()), float(im.std())
        out.append(abs(m - mu_m) / sd_m > 3 or abs(s - mu_s) / sd_s > 3)
    return np.array(out)


def prf(pred: np.ndarray, truth: np.ndarray) -> tuple[float, float]:
    tp = int((pred & truth).sum())
    return (tp / max(int(pred.sum()), 1), tp / max(int(truth.sum()), 1))


def reference_filter_section(data, n: int) -> list[str]:
    """What the paper's reference filter does with the `pixels` embedder: a bank of degraded
    phantoms (other seeds), the evaluation set as queries, rejection rates per threshold."""
    from actors.embed_pixels import PixelEmbedder
    from engine.core.config import IndexConfig
    from engine.qc.filters import reference_filter

    emb = PixelEmbedder()
    bank_src = clean_phantoms(max(10, n // 4), seed=31)
    bank = emb.embed([degrade(im, k, 31_000 + i) for i, im in enumerate(bank_src) for k in DEGRADATIONS])
    queries = emb.embed([im for _, im in data])
    kinds = np.array([k for k, _ in data])
    thresholds = [0.5, 0.9, 0.95, 0.97]
    sims = reference_filter(queries, bank, thresholds[0], IndexConfig()).similarity
    out = [f"Reference filter with the `pixels` embedder: bank of {len(bank)} degraded phantoms (other seeds, every kind); "
           "share of each evaluation group rejected (best cosine to the bank above the threshold):", "",
           "| group | best cosine median | " + " | ".join(f"rejected at {t}" for t in thresholds) + " |",
           "|---|---|" + "---|" * len(thresholds)]
    for kind in ["clean"] + DEGRADATIONS:
        s = sims[kinds == kind]
        out.append(f"| {kind} | {np.median(s):.3f} | " + " | ".join(f"{(s > t).mean():.2f}" for t in thresholds) + " |")
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="40 clean phantoms instead of 200")
    ap.add_argument("--n", type=int, default=None)
    ap.add_argument("--calibrate", action="store_true", help="print feature distributions on the calibration seeds")
    args = ap.parse_args(argv)
    n = args.n or (40 if args.quick else 200)
    if args.calibrate:
        print(calibration_table(max(20, n // 4)))
        return 0

    t0 = time.perf_counter()
    data = labelled_set(n, EVAL_SEED, EVAL_SEED)
    t_make = time.perf_counter() - t0
    t0 = time.perf_counter()
    flags = [judge_features(features(im)) for _, im in data]
    t_judge = (time.perf_counter() - t0) / len(data)
    kinds = np.array([k for k, _ in data])

    lines = ["# rules judge vs labelled degradations", "",
             f"{n} clean phantoms (seed {EVAL_SEED}, 0-3 random findings each) and {n} degraded copies per kind, "
             f"256 px; limits set on calibration seeds {CALIBRATION_SEEDS}. Judge: {t_judge * 1000:.1f} ms/image "
             f"on one core (set built in {t_make:.0f} s).", "",
             "| kind | precision | recall | flagged / images of the kind | other flags on images of the kind |",
             "|---|---|---|---|---|"]
    for kind in DEGRADATIONS:
        pred = np.array([kind in f for f in flags])
        p, r = prf(pred, kinds == kind)
        others = Counter(x for f, k in zip(flags, kinds) if k == kind for x in f if x != kind)
        lines.append(f"| {kind} | {p:.3f} | {r:.3f} | {int((pred & (kinds == kind)).sum())} / {int((kinds == kind).sum())} | "
                     f"{', '.join(f'{a} {b}' for a, b in sorted(others.items())) or '-'} |")
    clean_mask = kinds == "clean"
    any_flag = np.array([bool(f) for f in flags])
    clean_ff = any_flag[clean_mask].mean()
    lines += ["", f"False-flag rate on clean phantoms: {clean_ff:.3f} ({int(any_flag[clean_mask].sum())} / {int(clean_mask.sum())}).", ""]

    # baseline: generic outlier detection on image mean/std, fitted on the calibration clean set
    cal = clean_phantoms(n, CALIBRATION_SEEDS[0])
    ms, ss = np.array([im.mean() for im in cal]), np.array([im.std() for im in cal])
    ref = ((ms.mean(), ms.std()), (ss.mean(), ss.std()))
    base = baseline_flags([im for _, im in data], ref)
    truth = ~clean_mask
    p_r, r_r = prf(any_flag, truth)
    p_b, r_b = prf(base, truth)
    lines += ["Any problem (flagged at all) vs the baseline outlier detector (|z| > 3 on image mean or std):", "",
              "| judge | precision | recall | false flags on clean | recall ratio vs baseline |", "|---|---|---|---|---|",
              f"| rules | {p_r:.3f} | {r_r:.3f} | {any_flag[clean_mask].mean():.3f} | {r_r / max(r_b, 1e-9):.2f}x |",
              f"| baseline mean/std outlier | {p_b:.3f} | {r_b:.3f} | {base[clean_mask].mean():.3f} | 1.00x |", ""]

    # stress: other resolutions and denoised clean images
    stress = [("clean, 512 px", clean_phantoms(max(10, n // 4), EVAL_SEED + 1, 512)),
              ("clean, 128 px", clean_phantoms(max(10, n // 4), EVAL_SEED + 2, 128)),
              ("clean, denoised (Gaussian 0.7 px)",
               [np.clip(ndimage.gaussian_filter(im.astype(np.float32), 0.7), 0, 255).astype(np.uint8)
                for im in clean_phantoms(max(10, n // 4), EVAL_SEED + 3)])]
    lines += ["Stress (clean images that should not be flagged):", "", "| set | images | false-flag rate | flags |", "|---|---|---|---|"]
    for name, ims in stress:
        fl = [judge_features(features(im)) for im in ims]
        c = Counter(x for f in fl for x in f)
        lines.append(f"| {name} | {len(ims)} | {np.mean([bool(f) for f in fl]):.3f} | "
                     f"{', '.join(f'{a} {b}' for a, b in sorted(c.items())) or '-'} |")
    lines += ["", *reference_filter_section(data, n)]
    text = "\n".join(lines) + "\n"
    write_results(RESULTS, text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
