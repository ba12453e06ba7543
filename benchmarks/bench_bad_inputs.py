"""Bad-input campaign against the commands that write (train, embed, tune, eval, datasets,
experiment, dedup, check-cluster): each case is what a careless user types, run as its own
`syncxr` process, and classified by what came back:

  clear      exit 2 (130 / 143 for a signal) and one `syncxr CMD: ...` line on stderr
  traceback  a Python traceback on stderr
  silent     exit 0 (every case here must be refused or stopped)
  data loss  a file the user had (or an earlier run wrote) changed or vanished
  hang       no exit within the case's time limit
  other      anything else (an unexpected exit code, several lines)

    .venv/bin/python -m benchmarks.bench_bad_inputs            # every case, ~6 min here
    .venv/bin/python -m benchmarks.bench_bad_inputs --only dedup

writes benchmarks/results/bad_inputs.md (the table of cases and the counts per outcome).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from test_train_data import TINY_MODEL, make_synthetic_dataset, make_table  # noqa: E402

PYTHON = sys.executable
OUTCOMES = ("clear", "traceback", "silent", "data loss", "hang", "other")


@dataclass
class Case:
    name: str
    argv: list[str]
    protect: list[Path] = field(default_factory=list)  # files that must come back unchanged
    signal_after: tuple[str, int] | None = None  # (a file whose appearance starts the clock, signal)
    expect_rc: int = 2
    timeout_s: float = 240.0


def digest(path: Path) -> str | None:
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None


def run_case(case: Case, env: dict) -> dict:
    before = {p: digest(p) for p in case.protect}
    started = time.time()
    proc = subprocess.Popen([PYTHON, "-m", "engine.cli", *case.argv], cwd=ROOT, env=env, start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        if case.signal_after:
            watched, sig = case.signal_after
            deadline = time.time() + case.timeout_s
            while not Path(watched).exists() and proc.poll() is None and time.time() < deadline:
                time.sleep(0.2)
            time.sleep(1.0)
            if proc.poll() is None:
                proc.send_signal(sig)
        out, err = proc.communicate(timeout=case.timeout_s)
        rc = proc.returncode
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        rc = None
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    lost = [str(p) for p, d in before.items() if digest(p) != d]
    if rc is None:
        outcome = "hang"
    elif lost:
        outcome = "data loss"
    elif "Traceback" in err:
        outcome = "traceback"
    elif rc == 0:
        outcome = "silent"
    elif rc == case.expect_rc and len(lines) == 1 and lines[0].startswith(f"syncxr {case.argv[0]}: "):
        outcome = "clear"
    else:
        outcome = "other"
    return {"case": case.name, "command": case.argv[0], "rc": rc, "outcome": outcome, "lost": lost,
            "line": (lines or [""])[-1][:200], "seconds": round(time.time() - started, 1)}


def write_yaml(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data))
    return path


def marker(directory: Path, kind: str, inputs: dict, files: dict[str, str]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "run.json").write_text(json.dumps({"syncxr": "syncxr-run/1", "kind": kind, "inputs": inputs}))
    for name, text in files.items():
        (directory / name).write_text(text)
    return directory


def build_cases(work: Path) -> list[Case]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from train.models import create_model

    syn = make_synthetic_dataset(work / "syn", 40)
    table = make_table(work / "real", 20)
    tiny = {"model": {"name": "convirt-resnet18-smallbert", "overrides": TINY_MODEL},
            "data": {"batch_size": 20, "num_cpus": 0.5}, "validation": {"size": 8, "batch_size": 8},
            "batch_size": 8, "epochs": 1, "scaling": {"num_workers": 1, "cpus_per_worker": 1}}
    train_cfg = write_yaml(work / "train.yaml", tiny)
    long_cfg = write_yaml(work / "train-long.yaml", {**tiny, "epochs": 30, "log_every_steps": 1})
    model_dir = create_model("convirt-resnet18-smallbert", text_corpus=["no effusion", "mild edema"] * 5,
                             overrides=TINY_MODEL).save_pretrained(work / "model")
    truncated = work / "model-truncated"
    random_bytes = work / "model-random"
    for bad, content in ((truncated, lambda b: b[:200]), (random_bytes, lambda b: os.urandom(512))):
        shutil.copytree(model_dir, bad)
        (bad / "weights.pt").write_bytes(content((bad / "weights.pt").read_bytes()))
    # a finished-looking synth run, a tune sweep and a train run of other inputs, a user's folder
    synth_run = marker(work / "synth-run", "synth", {}, {"manifest.json": "{}"})
    (synth_run / "run.json").write_text(json.dumps({"syncxr": "syncxr-run/1", "kind": "synth",
                                                    "config_digest": "abc", "n": 40, "inputs": {}}))
    sweep = marker(work / "sweep", "tune", {"sweep": "an earlier grid"}, {"results.md": "| the earlier sweep |"})
    trained = marker(work / "trained", "train", {"config": "earlier", "synthetic": "earlier", "real": None},
                     {"metrics.jsonl": '{"step": 6}\n'})
    users = work / "users-dir"
    users.mkdir()
    (users / "summary.json").write_text('{"mine": true}')
    emb = work / "emb.parquet"
    pq.write_table(pa.table({"sample_id": ["a", "b"], "image_embedding": [[1.0, 0.0], [0.0, 1.0]]}), emb)
    empty = work / "empty.parquet"
    pq.write_table(pa.table({"sample_id": pa.array([], pa.string()), "embedding": pa.array([], pa.list_(pa.float32()))}),
                   empty)
    missing_images = work / "missing" / "pairs.csv"
    missing_images.parent.mkdir()
    missing_images.write_text("image_path,report\n" + "".join(f"nowhere/{i}.png,No effusion.\n" for i in range(20)))
    csv_out = work / "existing.csv"
    csv_out.write_text("the user's csv")
    bad_metric = write_yaml(work / "bad-metric.yaml", {**tiny, "validation": {"metric": "val_i2t_r100"}})
    typo = write_yaml(work / "typo.yaml", {**tiny, "data": {"augment_settings": {"rotaton_deg": 5}}})
    neg_tune = write_yaml(work / "tune-neg.yaml", {"train_config": str(train_cfg), "search": {"ratios": [0.5],
                                                                                              "lrs": [-1e-3]}})
    rep_tune = write_yaml(work / "tune-rep.yaml", {"train_config": str(train_cfg), "search": {"ratios": [0.5, 0.5]}})
    ok_tune = write_yaml(work / "tune-ok.yaml", {"train_config": str(long_cfg), "search": {"ratios": [0.5],
                                                                                            "lrs": [1e-3, 2e-3]}})
    exp = {name: write_yaml(work / f"exp-{name}.yaml", {"n": 20, **body}) for name, body in {
        "no-seeds": {"seeds": []}, "no-arms": {"arms": []}, "same-seed": {"seeds": [0, 0]},
        "bad-train-key": {"train": {"optim": {"lrr": 1}}}}.items()}
    real_only = write_yaml(work / "real-only.yaml", {**tiny, "data": {**tiny["data"], "mix": {"mode": "real"}}})
    rejected_train = write_yaml(work / "rejected-train.yaml", {**tiny, "optim": {"lr": -1}})
    syn_s, table_s = str(syn), f"table:{table}"
    t = ["train", "--config", str(train_cfg)]
    return [
        Case("embed --out is its --data table", ["embed", "--checkpoint", str(model_dir), "--data",
             f"table:{table}", "--out", str(table)], [table]),
        Case("embed --out inside the --data dataset", ["embed", "--checkpoint", str(model_dir), "--data", syn_s,
             "--out", str(syn / "data" / "emb.parquet")], [syn / "manifest.json"]),
        Case("embed --batch-size 0", ["embed", "--checkpoint", str(model_dir), "--data", syn_s, "--out",
             str(work / "e0.parquet"), "--batch-size", "0"]),
        Case("embed a model with random weight bytes", ["embed", "--checkpoint", str(random_bytes), "--data", syn_s,
             "--out", str(work / "e1.parquet")]),
        Case("train --out a synth run", [*t, "--synthetic", syn_s, "--out", str(synth_run)], [synth_run / "run.json"]),
        Case("train rerun into a run of other data", [*t, "--synthetic", syn_s, "--out", str(trained)],
             [trained / "run.json", trained / "metrics.jsonl"]),
        Case("train --out a user's folder", [*t, "--synthetic", syn_s, "--out", str(users)], [users / "summary.json"]),
        Case("train --real table whose images are all missing", ["train", "--config", str(real_only), "--real",
             f"table:{missing_images}",
             "--out", str(work / "r-missing")]),
        Case("train validation.metric val_i2t_r100", ["train", "--config", str(bad_metric), "--synthetic", syn_s,
             "--out", str(work / "r-metric")]),
        Case("train augment_settings typo", ["train", "--config", str(typo), "--synthetic", syn_s,
             "--out", str(work / "r-typo")]),
        Case("train --real with an unknown kind", [*t, "--real", "foo:bar", "--out", str(work / "r-kind")]),
        Case("SIGTERM during train", ["train", "--config", str(long_cfg), "--synthetic", syn_s, "--real", table_s,
             "--out", str(work / "r-term")], signal_after=(str(work / "r-term" / "metrics.jsonl"), signal.SIGTERM),
             expect_rc=143),
        Case("tune rerun into a sweep of another grid", ["tune", "--config", str(ok_tune),
             "--synthetic", syn_s, "--real", table_s, "--out", str(sweep)], [sweep / "results.md", sweep / "run.json"]),
        Case("tune with a negative lr", ["tune", "--config", str(neg_tune), "--synthetic", syn_s, "--real", table_s,
             "--out", str(work / "t-neg")]),
        Case("tune with a repeated ratio", ["tune", "--config", str(rep_tune), "--synthetic", syn_s, "--real",
             table_s, "--out", str(work / "t-rep")]),
        Case("Ctrl-C during tune", ["tune", "--config", str(ok_tune), "--synthetic", syn_s, "--real", table_s,
             "--out", str(work / "t-int")], signal_after=(str(work / "t-int" / "trials"), signal.SIGINT),
             expect_rc=130),
        Case("eval a truncated weights file", ["eval", "--checkpoint", str(truncated), "--dataset", "phantom-5x200",
             "--task", "zero-shot", "--n", "2", "--out", str(work / "ev1")]),
        Case("eval --imgpath that is not there", ["eval", "--checkpoint", str(model_dir), "--dataset",
             "phantom-5x200", "--task", "zero-shot", "--imgpath", str(work / "nowhere"), "--out", str(work / "ev2")]),
        Case("eval --epochs 0 for segmentation", ["eval", "--checkpoint", str(model_dir), "--dataset",
             "phantom-5x200", "--task", "segmentation", "--epochs", "0", "--out", str(work / "ev3")]),
        Case("eval --out a training run", ["eval", "--checkpoint", str(model_dir), "--dataset", "phantom-5x200",
             "--task", "zero-shot", "--n", "2", "--out", str(trained)], [trained / "run.json"]),
        Case("datasets --out an existing file", ["datasets", "phantom-5x200", "--n", "2", "--out", str(csv_out)],
             [csv_out]),
        Case("dedup --out a folder with the user's summary.json", ["dedup", "--embeddings", str(emb), "--column",
             "image_embedding", "--threshold", "0.9", "--out", str(users)], [users / "summary.json"]),
        Case("dedup an empty table", ["dedup", "--embeddings", str(empty), "--threshold", "0.9", "--out",
             str(work / "d-empty")]),
        Case("dedup an empty table with --ray", ["dedup", "--embeddings", str(empty), "--threshold", "0.9", "--ray",
             "--out", str(work / "d-empty-ray")]),
        Case("dedup embed's output without --column", ["dedup", "--embeddings", str(emb), "--threshold", "0.9",
             "--out", str(work / "d-col")]),
        Case("dedup --threshold 2", ["dedup", "--embeddings", str(emb), "--threshold", "2", "--out", str(work / "d2")]),
        *[Case(f"experiment {name}", ["experiment", "--config", str(path), "--out", str(work / f"x-{name}")])
          for name, path in exp.items()],
        Case("check-cluster a train config train rejects", ["check-cluster", "--config", str(rejected_train)]),
        Case("check-cluster --entrypoint-num-cpus -4", ["check-cluster", "--entrypoint-num-cpus", "-4"]),
        Case("check-cluster an experiment with a repeated seed", ["check-cluster", "--config",
             str(exp["same-seed"])]),
    ]


def markdown(rows: list[dict]) -> str:
    counts = Counter(r["outcome"] for r in rows)
    lines = ["# Bad-input campaign (benchmarks/bench_bad_inputs.py)", "",
             "| outcome | cases |", "|---|---|", *[f"| {o} | {counts.get(o, 0)} |" for o in OUTCOMES], "",
             "| case | command | exit | outcome | last stderr line |", "|---|---|---|---|---|"]
    lines += [f"| {r['case']} | {r['command']} | {r['rc']} | {r['outcome']} | {r['line'].replace('|', '/')} |"
              for r in rows]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", default="", help="run the cases whose command is this one")
    ap.add_argument("--results", default=str(ROOT / "benchmarks" / "results" / "bad_inputs.md"))
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="sxbad-", dir="/tmp") as tmp:
        work = Path(tmp)
        env = {**os.environ, "TMPDIR": str(work), "PYTHONPATH": str(ROOT)}
        env.pop("RAY_ADDRESS", None)
        rows = []
        for case in build_cases(work):
            if args.only and case.argv[0] != args.only:
                continue
            row = run_case(case, env)
            rows.append(row)
            print(f"{row['outcome']:>9}  {row['case']} (exit {row['rc']}, {row['seconds']} s): {row['line'][:120]}",
                  flush=True)
    Path(args.results).write_text(markdown(rows))
    counts = Counter(r["outcome"] for r in rows)
    print(", ".join(f"{o} {counts.get(o, 0)}" for o in OUTCOMES) + f" -> {args.results}")
    return 0 if counts.get("clear", 0) == len(rows) else 1


if __name__ == "__main__":
    sys.exit(main())
