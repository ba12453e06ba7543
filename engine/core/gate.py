"""Run a stage only on the rows still alive, and never let one bad row take a batch down.

Rows carry `ok` (still in the running) and `reasons` (why a row was rejected, with the stage
name). `Gated` wraps any stage class: it calls the inner stage on the live rows; if the inner
stage raises, it retries row by row so only the offending rows are rejected (reason
"<stage>: error: ..."); a `verdict` function then turns the stage's own output into ok/reasons
(report QC rejections, judge flags, filter hits). It also records the stage's busy time per
row, which the data card turns into per-stage throughput.
"""
from __future__ import annotations

import time
from typing import Any, Callable, Optional

import numpy as np

from engine.core.stage import object_column

Verdict = Callable[[dict], tuple[np.ndarray, list[Optional[str]]]]


def call_isolating(fn: Callable[[list], list], items: list) -> tuple[list, list[Optional[BaseException]]]:
    """`fn(items)` gives one result per item. When the batch call raises (or returns the wrong
    count), each item is retried alone, so one bad item costs only itself.
    Returns (results, errors): results[i] is None where errors[i] holds that item's exception."""
    if not items:
        return [], []
    try:
        results = list(fn(items))
        if len(results) != len(items):
            raise RuntimeError(f"backend returned {len(results)} results for {len(items)} rows")
        return results, [None] * len(items)
    except Exception:  # noqa: BLE001 - retried below, item by item
        results, errors = [], []
        for item in items:
            try:
                results.append(list(fn([item]))[0])
                errors.append(None)
            except Exception as exc:  # noqa: BLE001 - this item's failure, nobody else's
                results.append(None)
                errors.append(exc)
        return results, errors


def isolate_by_key(fn: Callable[[list], list], keyed: dict) -> tuple[dict, dict]:
    """call_isolating over keyed items: ({key: result}, {key: exception}) for the keys that failed."""
    keys = list(keyed)
    results, errors = call_isolating(fn, [keyed[k] for k in keys])
    return ({k: r for k, r, e in zip(keys, results, errors) if e is None},
            {k: e for k, e in zip(keys, errors) if e is not None})


def take(batch: dict, index: np.ndarray) -> dict:
    return {k: v[index] for k, v in batch.items()}


def _fill(values: np.ndarray | list, n: int, where: np.ndarray) -> np.ndarray:
    """Scatter `values` (one per live row) into an object column of length n (None elsewhere)."""
    out = np.empty(n, dtype=object)
    out[:] = None
    for i, v in zip(where, values):
        out[i] = v
    return out


def error_reason(stage: str, exc: BaseException) -> str:
    line = f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
    return f"{stage}: error: {line}"


class Gated:
    def __init__(self, stage: str, inner_cls, inner_kwargs: dict | None = None,
                 verdict: Optional[Verdict] = None, drop: tuple[str, ...] = ()):
        self.stage = stage
        self.inner = inner_cls(**(inner_kwargs or {}))
        self.verdict = verdict
        self.drop = drop  # inner output columns not carried on (e.g. raw candidates)

    def _run(self, sub: dict) -> dict:
        return self.inner(sub)

    def _run_isolating(self, sub: dict) -> tuple[list[Optional[dict]], list[Optional[str]]]:
        """Row by row: (per-row outputs or None, per-row error reasons or None)."""
        def one_row(index: list[int]) -> list[dict]:
            out = self.inner(take(sub, np.array(index)))
            return [{k: v[0] for k, v in out.items()}]

        n = len(next(iter(sub.values())))
        outs, errors = [], []
        for i in range(n):  # row by row from the start: the whole batch has just failed
            row, err = call_isolating(one_row, [i])
            outs.append(row[0])
            errors.append(error_reason(self.stage, err[0]) if err[0] is not None else None)
        return outs, errors

    def __call__(self, batch: dict) -> dict:
        n = len(batch["sample_id"])
        ok = np.asarray(batch["ok"], dtype=bool).copy()
        reasons = [list(r) if r is not None else [] for r in batch["reasons"]]
        live = np.flatnonzero(ok)
        start = time.perf_counter()
        columns: dict[str, Any] = {}
        if live.size:
            sub = take(batch, live)
            try:
                out = self._run(sub)
                out_rows = None
            except Exception:  # noqa: BLE001
                out = None
                out_rows, errs = self._run_isolating(sub)
            if out is not None:
                for key, col in out.items():
                    if key in batch and key not in ("ok", "reasons"):
                        merged = np.array(batch[key], dtype=object)
                        merged[live] = list(col)
                        columns[key] = merged
                    elif key not in ("ok", "reasons"):
                        columns[key] = _fill(list(col), n, live)
                stage_ok, stage_reasons = self.verdict(out) if self.verdict else (np.ones(live.size, bool), [None] * live.size)
            else:
                keys = sorted({k for row in out_rows if row for k in row})
                for key in keys:
                    if key in batch and key not in ("ok", "reasons"):
                        # a failed row keeps its input values (its sample_id above all)
                        merged = np.array(batch[key], dtype=object)
                        for j, i in enumerate(live):
                            if out_rows[j] is not None:
                                merged[i] = out_rows[j].get(key)
                        columns[key] = merged
                    else:
                        columns[key] = _fill([row.get(key) if row else None for row in out_rows], n, live)
                good = np.array([row is not None for row in out_rows])
                stage_ok = good.copy()
                stage_reasons = list(errs)
                if good.any() and self.verdict:
                    v_ok, v_reasons = self.verdict({k: object_column([row[k] for row in out_rows if row]) for k in keys})
                    stage_ok[good] = v_ok
                    for j, r in zip(np.flatnonzero(good), v_reasons):
                        stage_reasons[j] = r
            for j, i in enumerate(live):
                if not stage_ok[j]:
                    ok[i] = False
                    reasons[i].append(stage_reasons[j] or f"{self.stage}: rejected")
        busy = time.perf_counter() - start
        result = {k: v for k, v in batch.items() if k not in ("ok", "reasons")}
        result.update({k: v for k, v in columns.items() if k not in self.drop})
        for key in self.drop:
            result.pop(key, None)
        result["ok"] = ok
        result["reasons"] = object_column(reasons)
        # the batch's busy time spread over its live rows: summing a column gives stage busy time
        busy_col = np.zeros(n)
        busy_col[live] = busy / max(live.size, 1)
        result[f"busy_{self.stage}"] = busy_col
        return result
