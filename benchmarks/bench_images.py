"""Image stage speed.

1. Phantom, one core: images per second at 256 and 512 px for a normal chest and for realistic
   entity lists (0-4 findings + anatomy), render only and render + PNG encoding (what the stage
   does per row); base anatomy warm (it is built once per template and size, cold cost shown).
   Baseline: the normal 256 px render.
2. Diffusers actor vs a raw pipeline call, same tiny random-weight pipeline, same prompts and
   seeds: the raw `pipe(prompt=[...], generator=[...])` call is the baseline; the actor adds
   prompt truncation, per-row generators, grayscale PNG encoding and provenance; the Ray Data
   run adds reading, the actor pool (model load included) and writing images.parquet.
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks import write_results

RESULTS = Path(__file__).parent / "results" / "images.md"

FINDINGS = ["pleural effusion", "pneumonia", "atelectasis", "pneumothorax", "cardiomegaly", "pulmonary edema",
            "nodule", "mass", "central venous catheter", "rib fracture", "hiatal hernia", "emphysema",
            "endotracheal tube", "calcified granuloma", "tortuous aorta"]
ANATOMY = ["left lower lobe", "right lung", "left costophrenic angle", "lung bases", "right upper lobe", "heart"]
IMPRESSIONS = ["No acute cardiopulmonary process.", "Small left pleural effusion with adjacent atelectasis.",
               "Right lower lobe pneumonia. No pneumothorax.", "Cardiomegaly with mild pulmonary edema."]


def entity_lists(n: int, seed: int = 0) -> list[list[dict]]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        k = int(rng.integers(0, 5))
        ents = [{"text": str(t), "type": "ABNORMALITY" if rng.random() < 0.7 else "NON-ABNORMALITY"}
                for t in rng.choice(FINDINGS, k, replace=False)]
        ents += [{"text": str(t), "type": "ANATOMY"} for t in rng.choice(ANATOMY, int(rng.integers(0, 3)), replace=False)]
        out.append(ents)
    return out


def time_phantom(size: int, lists: list, encode: bool, repeats: int = 3) -> float:
    """Seconds per image, best of `repeats` passes (the machine is shared: the best pass is the
    least disturbed one)."""
    from actors.phantom import render_phantom
    from engine.images.pipeline import encode_png

    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for i, ents in enumerate(lists):
            res = render_phantom(ents, i, size)
            if encode:
                encode_png(res.image)
                for m in res.masks:
                    encode_png(m["mask"])
        best = min(best, (time.perf_counter() - start) / len(lists))
    return best


def bench_phantom(n: int) -> list[str]:
    from actors.anatomy_model import N_TEMPLATES, build_base, lung_templates

    lung_templates()
    lines = ["## Phantom, one process (one core)", "",
             "| size | workload | ms / image | images / s | vs normal 256 px |", "|---|---|---|---|---|"]
    normal = [[] for _ in range(n)]
    mixed = entity_lists(n)
    base_line = None
    cold = {}
    for size in (256, 512):
        t0 = time.perf_counter()
        for t in range(N_TEMPLATES):
            build_base(size, t, False)
        cold[size] = (time.perf_counter() - t0) / N_TEMPLATES
        for t in range(N_TEMPLATES):
            build_base(size, t, True)  # the hyperinflated variant emphysema uses
        for label, lists, enc in (("normal, render", normal, False), ("mixed findings, render", mixed, False),
                                  ("mixed findings, render + PNG (stage)", mixed, True)):
            per = time_phantom(size, lists, enc)
            if base_line is None:
                base_line = per
            lines.append(f"| {size} | {label} | {per * 1e3:.1f} | {1 / per:.1f} | {base_line / per:.2f}x |")
    lines += ["", "Cold start (base anatomy per template, built once per actor and size, 24 templates): "
              + ", ".join(f"{s} px {v * 1e3:.0f} ms" for s, v in cold.items()), ""]
    return lines


def bench_diffusers(n: int, ray_rows: int) -> list[str]:
    import torch

    from actors.diffusers_sd import DiffusersStage
    from actors.testing.tiny_diffusion import save_tiny_pipeline
    from engine.core.stage import object_column

    tmp = Path(tempfile.mkdtemp(prefix="bench-sd-"))
    size, steps = 64, 4
    save_tiny_pipeline(tmp / "pipe", sample_size=size)
    settings = {"backend": "diffusers", "model": str(tmp / "pipe"), "size": size, "steps": steps, "guidance": 4.0}
    stage = DiffusersStage(settings)
    pipe = stage.pipe
    prompts = [IMPRESSIONS[i % len(IMPRESSIONS)] for i in range(n)]
    seeds = list(range(n))

    def raw():
        gens = [torch.Generator("cpu").manual_seed(s) for s in seeds]
        with torch.inference_mode():
            pipe(prompt=prompts, height=size, width=size, num_inference_steps=steps, guidance_scale=4.0,
                 generator=gens, output_type="np")

    batch = {"sample_id": object_column([f"s{i}" for i in range(n)]), "impression": object_column(prompts),
             "seed": np.array(seeds, dtype=np.int64)}
    raw()  # warm-up
    stage(batch)
    reps = 3
    t0 = time.perf_counter()
    for _ in range(reps):
        raw()
    t_raw = (time.perf_counter() - t0) / reps / n
    t0 = time.perf_counter()
    for _ in range(reps):
        stage(batch)
    t_stage = (time.perf_counter() - t0) / reps / n
    lines = [f"## Diffusers actor vs raw pipeline call (tiny random pipeline, {size} px, {steps} steps, "
             f"guidance 4, batch {n}, torch threads {torch.get_num_threads()})", "",
             "| path | ms / image | vs raw call |", "|---|---|---|",
             f"| raw `pipe(prompt=[...], generator=[...])` | {t_raw * 1e3:.1f} | 1.00x |",
             f"| DiffusersStage.__call__ (prompt prep, PNG, provenance) | {t_stage * 1e3:.1f} | {t_stage / t_raw:.2f}x |"]
    if ray_rows:
        import pyarrow as pa
        import pyarrow.parquet as pq
        import ray

        from engine.core.config import load_config
        from engine.images.pipeline import run_images
        from engine.core.ray_session import init_ray

        cfg = load_config(None, overrides={"images": {**settings, "resources": {
            "num_cpus": 1, "batch_size": n, "min_actors": 1, "max_actors": 1}}, "engine": {"num_cpus": 2}})
        init_ray(cfg.engine)
        ray.data.DataContext.get_current().enable_progress_bars = False
        seconds = {}
        for rows in (ray_rows, 2 * ray_rows):  # the difference removes actor start and model load
            reports = tmp / f"reports-{rows}.parquet"
            pq.write_table(pa.table({"sample_id": [f"r{i}" for i in range(rows)],
                                     "seed": pa.array(range(rows), pa.int64()),
                                     "impression": [IMPRESSIONS[i % len(IMPRESSIONS)] for i in range(rows)]}), reports)
            seconds[rows] = run_images(cfg, reports, tmp / f"out-{rows}")["seconds"]
        t_ray = seconds[ray_rows] / ray_rows
        t_steady = (seconds[2 * ray_rows] - seconds[ray_rows]) / ray_rows
        lines.append(f"| Ray Data run_images, {ray_rows} rows, 1 actor (incl. actor start + model load) | "
                     f"{t_ray * 1e3:.1f} | {t_ray / t_raw:.2f}x |")
        lines.append(f"| Ray Data, marginal cost per row ({2 * ray_rows} rows minus {ray_rows}) | "
                     f"{t_steady * 1e3:.1f} | {t_steady / t_raw:.2f}x |")
        ray.shutdown()
    lines.append("")
    return lines


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer images, no Ray run")
    args = ap.parse_args(argv)
    os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
    import torch

    torch.set_num_threads(1)  # "per core": one thread for numpy-free torch work too
    n = 30 if args.quick else 120
    lines = ["# Image stage benchmark", ""]
    lines += bench_phantom(n)
    lines += bench_diffusers(4 if args.quick else 8, 0 if args.quick else 24)
    text = "\n".join(lines)
    write_results(RESULTS, text)
    print(f"wrote {RESULTS}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
