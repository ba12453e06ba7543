"""`rules` quality judge (CPU default, no weights): a few image statistics, each with a limit.

Each rule targets one kind of problem the image stage or an archive can produce (the kinds of
actors/degrade.py). Geometry is read in the canonical frontal frame: two dark lung bands either
side of a bright mediastinum, patient centred, air above the shoulders.

- blank: almost no grey-level spread.
- noise: robust per-pixel noise level (median absolute response of a Laplacian-type kernel,
  after Immerkaer 1996), which edges and text barely move.
- rotated: constant-valued fill triangles in the corners whose hypotenuse is a straight line at
  more than a few degrees (what rotating a frame leaves behind).
- inverted: the mediastinum darker than the lungs and the top corners (air above the shoulders)
  brighter than the image median.
- cropped (zoomed onto part of the thorax): the frame was resampled, so the finest scale holds
  far less energy than the next one (fine_ratio), and the layout is off-centre (no bright
  midline between two lung bands, or no left/right symmetry). The resampling cue assumes the
  pixel noise of a radiograph; a denoised or very smooth image that is also off-centre would be
  flagged too.
- lateral: no bright midline between two lung bands, in a frame that is not cropped or inverted.
- overexposed / underexposed, in the radiographic sense: a film too dark (even the brightest
  structures dim: p95 low) or washed out (no dark pixels left: p01 high).
- text: a run of at least four glyph-sized bright strokes (white top-hat) along one line.

Precedence: a blank frame is only "blank"; heavy noise hides fine strokes, so text is not judged
on a noisy frame; exposure is not judged on a lateral, inverted or cropped frame (its statistics
assume a whole frontal layout); rotation explains off-centre resampled frames, so it excludes "cropped".
LIMITS were set from the feature distributions of clean vs degraded phantoms of calibration seeds
(`python -m benchmarks.bench_judge --calibrate`) and are evaluated on other seeds.
"""
from __future__ import annotations

from typing import Optional

import numpy as np
from PIL import Image
from scipy import ndimage
from pydantic import BaseModel, ConfigDict, Field

from engine.core.errors import ConfigError
from engine.core.stage import Backend
from engine.qc.flags import IMAGE_PROBLEMS

THUMB = 128
KINDS = list(IMAGE_PROBLEMS)

LIMITS = {
    "contrast_min": 6.0,  # blank below (grey-level std of the 128px thumbnail)
    "noise_max": 14.0,  # noise above (grey levels)
    "tilt_max": 9.0,  # rotated above (degrees; the phantom itself tilts up to 4)
    "inverted_corners_min": 1.0,  # inverted: top corners above median by this many std ...
    "midline_min": 0.5,  # ... and midline below this (std units); lateral below it too
    "fine_ratio_min": 1.1,  # cropped (resampled) below ...
    "cropped_midline_max": 1.0,  # ... with the midline below this ...
    "cropped_symmetry_max": 0.4,  # ... or left/right correlation below this
    "p95_min": 175.0,  # overexposed (too dark) below
    "p01_max": 60.0,  # underexposed (washed out) above
    "glyphs_min": 4,  # text at or above
}


def _thumb(img: np.ndarray) -> np.ndarray:
    return np.asarray(Image.fromarray(img.astype(np.float32), mode="F").resize((THUMB, THUMB), Image.Resampling.BOX),
                      dtype=np.float32)


def noise_sigma(img: np.ndarray) -> float:
    """Robust Gaussian-noise level in grey levels: the kernel below cancels smooth structure up to
    second order; for white noise its response has std 6 sigma."""
    k = np.array([[1, -2, 1], [-2, 4, -2], [1, -2, 1]], dtype=np.float32)
    r = ndimage.convolve(img.astype(np.float32), k, mode="reflect")[1:-1, 1:-1]
    return float(np.median(np.abs(r)) / (0.6745 * 6.0))


def fine_ratio(img: np.ndarray) -> float:
    """Energy of the finest scale over the next one (median absolute band-pass responses).
    Upsampling (a zoomed crop) empties the finest scale."""
    f = img.astype(np.float32)
    g1 = ndimage.gaussian_filter(f, 0.8)
    g2 = ndimage.gaussian_filter(f, 1.6)
    return float(np.median(np.abs(f - g1)) / max(float(np.median(np.abs(g1 - g2))), 1e-3))


def corner_tilt(img: np.ndarray) -> float:
    """Angle (degrees) of straight-edged constant fill triangles in the corners; 0 when absent.

    In each corner, the run of pixels equal to the corner value is measured along every row; a
    rotated frame's fill makes these runs shrink linearly to zero (a triangle with a straight
    hypotenuse): a line fitted to the runs leaves residuals of about a pixel, and that line lies
    where the rotated frame's edge must, half the frame from the centre. A dark background clipped to 0 follows the body's
    curved, noisy outline instead. The angle atan(short leg / long leg) is the median over the
    matching corners, and needs at least two: a frame rotated about its centre leaves four."""
    h, w = img.shape
    angles = []
    for flip_y in (False, True):
        for flip_x in (False, True):
            c = img[::-1] if flip_y else img
            c = c[:, ::-1] if flip_x else c
            v = c[0, 0]
            same = c == v
            b = int(np.argmin(same[:, 0])) if not same[:, 0].all() else h
            a = int(np.argmin(same[0])) if not same[0].all() else w
            if a < 6 or b < 6 or a >= w // 2 or b >= h // 2:
                continue
            runs = np.argmin(same[:b, :a + 1], axis=1).astype(np.float64)  # leading run per row
            y = np.arange(b, dtype=np.float64)
            slope, icpt = np.polyfit(y, runs, 1)
            res = np.abs(runs - (slope * y + icpt))
            if slope >= 0 or np.median(res) > 1.0 or np.mean(res > 3) >= 0.1:
                continue
            # the line x = slope*y + icpt must be the rotated frame's edge: at half the frame's
            # height or width from the centre (a body outline clipped to black is not)
            cx, cy = (w - 1) / 2, (h - 1) / 2
            dist = abs(cx - slope * cy - icpt) / np.hypot(1.0, slope)
            if min(abs(dist - h / 2) / h, abs(dist - w / 2) / w) < 0.03:
                angles.append(np.degrees(np.arctan(min(-slope, -1.0 / slope))))
    return float(np.median(angles)) if len(angles) >= 2 else 0.0


def text_glyphs(img: np.ndarray) -> int:
    """Length of the longest run of glyph-like bright strokes along a horizontal line.

    Strokes: white top-hat (5px at 256) above 30 grey levels on a pixel brighter than 120. A
    glyph is a stroke component of at least 4 pixels, 1.2 to 10% of the height tall and at most
    10% wide. A run chains glyphs left to right whose centres are within half a glyph height
    vertically, whose heights are within a factor 2, and whose gap is under 1.5 glyph heights.
    A calcified nodule, a wire or a rib crossing gives one or two such pieces; a word gives a run."""
    f = img.astype(np.float32)
    h = img.shape[0]
    size = max(3, int(round(h / 51)) | 1)
    strokes = ((f - ndimage.grey_opening(f, size=(size, size))) > 30) & (f > 120)
    lab, n = ndimage.label(strokes, structure=np.ones((3, 3)))
    if n == 0:
        return 0
    sizes = np.bincount(lab.ravel())[1:]
    gmax, gmin = 0.1 * h, max(3, 0.012 * h)
    glyphs = sorted((sl[1].start, sl[1].stop, (sl[0].start + sl[0].stop) / 2, sl[0].stop - sl[0].start)
                    for i, sl in enumerate(ndimage.find_objects(lab))
                    if sizes[i] >= 4 and gmin <= sl[0].stop - sl[0].start <= gmax and sl[1].stop - sl[1].start <= gmax)
    best = [1] * len(glyphs)  # longest chain ending at each glyph (glyphs sorted by left edge)
    for j, (x0, _, cy, gh) in enumerate(glyphs):
        for i in range(j):
            px0, px1, pcy, ph = glyphs[i]
            if (abs(cy - pcy) < 0.5 * max(gh, ph) and 0.5 <= gh / ph <= 2.0
                    and -0.5 * ph <= x0 - px1 < 1.5 * max(gh, ph)):
                best[j] = max(best[j], best[i] + 1)
    return max(best, default=0)


def features(image: np.ndarray) -> dict:
    img = np.asarray(image)
    if img.ndim == 3:
        img = img.mean(axis=2)
    if img.ndim != 2 or min(img.shape) < 32:
        raise ValueError(f"rules judge needs a 2-d image of at least 32x32, got shape {np.asarray(image).shape}")
    img = np.clip(img, 0, 255).astype(np.uint8) if img.dtype != np.uint8 else img
    t = _thumb(img)
    n = THUMB
    p01, p50, p95 = np.percentile(t, [1, 50, 95])
    contrast = float(t.std())
    spread = max(contrast, 1.0)
    rows = slice(int(n * 0.25), int(n * 0.65))
    mid = t[rows, int(n * 0.45): int(n * 0.55)].mean()
    left = t[rows, int(n * 0.20): int(n * 0.33)].mean()
    right = t[rows, int(n * 0.67): int(n * 0.80)].mean()
    m = int(n * 0.1)
    corners = np.concatenate([t[:m, :m].ravel(), t[:m, -m:].ravel()]).mean()
    band = t[rows]
    sym = float(np.corrcoef(band.ravel(), band[:, ::-1].ravel())[0, 1]) if band.std() > 1e-3 else 1.0
    return {
        "contrast": contrast,
        "noise_sigma": noise_sigma(img),
        "fine_ratio": fine_ratio(img),
        "p01": float(p01), "p50": float(p50), "p95": float(p95),
        "midline": float((mid - (left + right) / 2) / spread),
        "symmetry": sym,
        "top_corners": float((corners - p50) / spread),
        "tilt_deg": corner_tilt(img),
        "text_glyphs": float(text_glyphs(img)),
    }


def judge_features(f: dict, limits: dict | None = None) -> list[str]:
    """The flags (engine/qc/flags.py) raised by one image's features."""
    L = LIMITS if limits is None else limits
    if f["contrast"] < L["contrast_min"]:
        return ["blank"]
    flags = set()
    if f["noise_sigma"] > L["noise_max"]:
        flags.add("noise")
    if f["tilt_deg"] > L["tilt_max"]:
        flags.add("rotated")
    if f["midline"] < L["midline_min"] and f["top_corners"] > L["inverted_corners_min"]:
        flags.add("inverted")
    if ("rotated" not in flags and f["fine_ratio"] < L["fine_ratio_min"]
            and (f["midline"] < L["cropped_midline_max"] or f["symmetry"] < L["cropped_symmetry_max"])):
        flags.add("cropped")
    if f["midline"] < L["midline_min"] and not flags & {"inverted", "cropped", "rotated"}:
        flags.add("lateral")
    if not flags & {"inverted", "lateral", "cropped"}:
        if f["p95"] < L["p95_min"]:
            flags.add("overexposed")
        if f["p01"] > L["p01_max"]:
            flags.add("underexposed")
    if "noise" not in flags and f["text_glyphs"] >= L["glyphs_min"]:
        flags.add("text")
    return [k for k in KINDS if k in flags]


def judge_image(image: np.ndarray, limits: dict | None = None) -> dict:
    """{flags: [kinds], scores: {feature: value}} for one grayscale image."""
    feats = features(image)
    return {"flags": judge_features(feats, limits), "scores": {k: round(v, 4) for k, v in feats.items()}}


class RulesOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    limits: dict[str, float] = Field(default_factory=dict)  # overrides of LIMITS by name
    kinds: Optional[list[str]] = None  # judge only these kinds (e.g. drop "cropped" on denoised images)


class RulesJudge(Backend):
    """Registry entry for qc.judge backend `rules`: per batch, image statistics against limits."""

    name, section, Options = "rules", "qc.judge", RulesOptions
    reads, writes = ("image",), ("judge_flags", "judge_problematic", "judge_scores", "judge_error")

    @classmethod
    def check(cls, section, cfg=None) -> None:
        try:
            cls(section.model, dict(section.options))
        except ValueError as exc:
            raise ConfigError(f"qc.judge.options: {exc}") from None

    def __init__(self, model: str | None = None, options: dict | None = None):
        opts = self.options_of(options)
        overrides, kinds = opts.limits, opts.kinds
        unknown = set(overrides) - set(LIMITS)
        if unknown:
            raise ValueError(f"rules judge: unknown limits {sorted(unknown)} (known: {', '.join(LIMITS)})")
        bad_kinds = set(kinds or []) - set(KINDS)
        if bad_kinds:
            raise ValueError(f"rules judge: unknown kinds {sorted(bad_kinds)} (known: {', '.join(KINDS)})")
        self.limits = {**LIMITS, **{k: float(v) for k, v in overrides.items()}}
        self.kinds = set(kinds) if kinds else set(KINDS)

    def judge(self, image: np.ndarray) -> dict:
        out = judge_image(image, self.limits)
        out["flags"] = [f for f in out["flags"] if f in self.kinds]
        return out
