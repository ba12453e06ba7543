"""Labelled image degradations for the quality-control bank and for testing the judges.

`degrade(image, kind, seed)` turns a clean frontal chest image (2-d uint8) into one problematic
image of a named kind, deterministically from the seed. The kinds mirror what an image QC step
should catch: a wrong (lateral) view, inverted greys, over- and under-exposure (in
the radiographic sense: overexposed films are too dark, underexposed ones washed out), a crop that cuts
anatomy off, a rotated frame, a blank frame, heavy noise and burnt-in text.

`labelled_bank(clean, kinds, seed)` makes one degraded image per (clean image, kind) with its
label: the phantom "problematic" set that `syncxr qc-bank` can be run on, and the evaluation set
of bench_judge.
"""
from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from scipy import ndimage

from engine.qc.flags import IMAGE_PROBLEMS

DEGRADATIONS = list(IMAGE_PROBLEMS)


def _rng(seed: int, kind: str) -> np.random.Generator:
    # one stream per (seed, kind), so adding a kind never changes the others
    return np.random.default_rng([int(seed) & 0xFFFFFFFF, DEGRADATIONS.index(kind)])


def _u8(x: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def _grid(h: int, w: int):
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    return yy / h, xx / w


def _ellipse(yy, xx, cy, cx, ry, rx, soft: float):
    d = np.sqrt(((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2)
    return np.clip((1.0 - d) / soft + 0.5, 0.0, 1.0)


def _lateral(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A synthetic lateral projection: one lucent lung field, the spine as a bright column near
    the back, the heart in front and low, no left/right symmetry. Grey levels follow the source
    image's percentiles and its pixel noise is carried over, so exposure and noise statistics
    stay those of the source and only the view is wrong."""
    h, w = img.shape
    yy, xx = _grid(h, w)
    back = 1 if rng.random() < 0.5 else -1  # which side the patient's back is on
    sx = lambda x: 0.5 + back * (x - 0.5)  # noqa: E731  mirror x when the back is on the left
    body = _ellipse(yy, xx, 0.62 + rng.uniform(-0.03, 0.03), 0.5, 0.75, rng.uniform(0.50, 0.60), 0.15)
    lung = _ellipse(yy, xx, rng.uniform(0.42, 0.50), sx(rng.uniform(0.50, 0.56)),
                    rng.uniform(0.27, 0.33), rng.uniform(0.25, 0.30), 0.3)
    spine_c = sx(rng.uniform(0.78, 0.84)) + rng.uniform(-0.03, 0.03) * np.sin(np.pi * yy)
    bodies = 0.6 + 0.4 * (np.sin(yy * rng.uniform(38, 48)) > -0.3)  # vertebral bodies and discs
    spine = np.exp(-((xx - spine_c) / 0.045) ** 2) * bodies
    heart = _ellipse(yy, xx, rng.uniform(0.60, 0.68), sx(rng.uniform(0.36, 0.44)),
                     rng.uniform(0.14, 0.18), rng.uniform(0.15, 0.20), 0.4)
    ribs = 0.5 + 0.5 * np.sin((yy - 0.25 * back * (xx - 0.5)) * rng.uniform(45, 60))
    dia = np.clip((yy - (0.74 + 0.06 * (xx - 0.5) * back)) / 0.03, 0, 1)
    dens = (0.6 * body + 0.45 * spine * body + 0.3 * heart + 0.35 * dia * body
            - 0.45 * lung * (1 - dia) * (0.9 + 0.1 * ribs))
    dens = ndimage.gaussian_filter(dens, sigma=h / 256)
    lo, hi = np.percentile(img, [2, 98])
    d_lo, d_hi = np.percentile(dens, [2, 98])
    out = lo + (dens - d_lo) / max(d_hi - d_lo, 1e-6) * (hi - lo)
    # the source's fine-grain noise (its residual from a light blur), carried over as it is
    residual = img.astype(np.float32) - ndimage.gaussian_filter(img.astype(np.float32), 1.0)
    return _u8(out + residual)


def _inverted(img, rng):
    return 255 - img


def _overexposed(img, rng):
    """Radiographic sense: too much dose reached the detector, so the film is too dark and the
    lungs burn out to black while bone keeps some grey."""
    x = img.astype(np.float32) / 255.0
    return _u8(255.0 * rng.uniform(0.55, 0.85) * x ** rng.uniform(2.2, 3.5))


def _underexposed(img, rng):
    """Too little dose: a washed-out, light, low-contrast film with quantum mottle."""
    x = img.astype(np.float32) / 255.0
    lift = rng.uniform(0.45, 0.65)
    out = 255.0 * (lift + (1 - lift) * x ** rng.uniform(0.5, 0.8))
    return _u8(out + rng.normal(0, rng.uniform(3, 8), img.shape))


def _cropped(img, rng):
    """Zoom onto an off-centre window so part of the thorax falls outside the frame."""
    h, w = img.shape
    frac = rng.uniform(0.45, 0.65)
    ch, cw = int(h * frac), int(w * frac)
    y0 = int(rng.integers(0, h - ch + 1))
    x0 = int(rng.choice([rng.integers(0, max(1, (w - cw) // 4) + 1), rng.integers(3 * (w - cw) // 4, w - cw + 1)]))
    window = Image.fromarray(img[y0:y0 + ch, x0:x0 + cw])
    return np.asarray(window.resize((w, h), Image.Resampling.BILINEAR))


def _rotated(img, rng):
    angle = float(rng.uniform(12, 35) * rng.choice([-1, 1]))
    out = Image.fromarray(img).rotate(angle, resample=Image.Resampling.BILINEAR, fillcolor=0)
    return np.asarray(out)


def _blank(img, rng):
    level = rng.uniform(0, 255)
    return _u8(level + rng.normal(0, rng.uniform(0, 2.0), img.shape))


def _noise(img, rng):
    out = img.astype(np.float32) + rng.normal(0, rng.uniform(35, 70), img.shape)
    salt = rng.random(img.shape)
    p = rng.uniform(0.01, 0.06)
    out[salt < p / 2] = 0
    out[salt > 1 - p / 2] = 255
    return _u8(out)


_WORDS = ["PORTABLE", "AP", "SUPINE", "UPRIGHT", "L", "R", "ER", "ICU", "CHEST", "1 VIEW", "SEMI-ERECT",
          "MRN", "DOB", "ACC#", "STAT", "TRAUMA"]


def _text(img, rng):
    """Burnt-in annotation lines (view, location, IDs). White text; where the frame under a line
    is bright, the line gets a dark backing box, as scanner overlays do, so it stays legible."""
    h, w = img.shape
    pil = Image.fromarray(img.copy())
    draw = ImageDraw.Draw(pil)
    for k in range(int(rng.integers(3, 7))):
        size = int(h * rng.uniform(0.045, 0.09))
        font = ImageFont.load_default(size=size)
        words = [str(_WORDS[int(i)]) for i in rng.integers(0, len(_WORDS), int(rng.integers(1, 3)))]
        if k == 0 or rng.random() < 0.5:  # at least one ID-like run of digits: more than a marker
            words.append(f"{int(rng.integers(1000000, 9999999))}")
        text = " ".join(words)
        x = int(rng.integers(0, max(1, int(w * 0.6))))
        y = int(rng.integers(0, max(1, h - size - 2)))
        x0, y0, x1, y1 = draw.textbbox((x, y), text, font=font)
        under = np.asarray(pil)[max(y0, 0):max(y1, 1), max(x0, 0):max(x1, 1)]
        if under.size and under.mean() > 150:
            draw.rectangle((x0 - 2, y0 - 2, x1 + 2, y1 + 2), fill=int(rng.integers(0, 40)))
        draw.text((x, y), text, fill=int(rng.integers(225, 256)), font=font)
    return np.asarray(pil)


_FUNCS = {"lateral": _lateral, "inverted": _inverted, "overexposed": _overexposed,
          "underexposed": _underexposed, "cropped": _cropped, "rotated": _rotated, "blank": _blank,
          "noise": _noise, "text": _text}


def degrade(image: np.ndarray, kind: str, seed: int) -> np.ndarray:
    """A degraded copy of a clean frontal grayscale image (2-d uint8), same shape."""
    if kind not in _FUNCS:
        raise ValueError(f"unknown degradation {kind!r}; known: {', '.join(DEGRADATIONS)}")
    img = np.asarray(image)
    if img.ndim != 2 or img.dtype != np.uint8:
        raise ValueError(f"degrade expects a 2-d uint8 image, got shape {img.shape} dtype {img.dtype}")
    out = _FUNCS[kind](img, _rng(seed, kind))
    assert out.shape == img.shape and out.dtype == np.uint8
    return out


def labelled_bank(clean: list[np.ndarray], kinds: list[str] | None = None, seed: int = 0) -> list[dict]:
    """One degraded image per (clean image, kind): dicts {image, label, source, seed}."""
    kinds = list(kinds or DEGRADATIONS)
    out = []
    for i, img in enumerate(clean):
        for kind in kinds:
            s = int(seed) * 1_000_003 + i
            out.append({"image": degrade(img, kind, s), "label": kind, "source": i, "seed": s})
    return out


def clean_phantoms(n: int, seed: int = 0, size: int = 256, max_findings: int = 3) -> list[np.ndarray]:
    """`n` clean (well-taken) frontal phantoms from actors.phantom, each with 0..max_findings
    random findings: pathology is not a quality problem and the judges must not flag it."""
    from actors.phantom import render_phantom
    from actors.phantom_findings import DRAWERS

    names = sorted(DRAWERS)
    rng = np.random.default_rng([int(seed) & 0xFFFFFFFF, 104729])
    out = []
    for i in range(n):
        k = int(rng.integers(0, max_findings + 1))
        ents = [{"text": names[int(j)], "type": "ABNORMALITY"} for j in rng.choice(len(names), k, replace=False)]
        out.append(render_phantom(ents, int(seed) * 100_003 + i, size).image)
    return out


def toy_frontal(seed: int, size: int = 256) -> np.ndarray:
    """A simple frontal chest-like image (body, two lungs, mediastinum, ribs, clavicles, noise):
    a clean input for tests when no phantom renderer is at hand."""
    rng = np.random.default_rng([int(seed) & 0xFFFFFFFF, 7919])
    yy, xx = _grid(size, size)
    body = _ellipse(yy, xx, 0.58, 0.5, 0.55, rng.uniform(0.40, 0.47), 0.1)
    lungs = sum(_ellipse(yy, xx, rng.uniform(0.42, 0.47), 0.5 + side * rng.uniform(0.17, 0.21),
                         rng.uniform(0.24, 0.30), rng.uniform(0.11, 0.14), 0.35) for side in (-1, 1))
    media = np.exp(-((xx - 0.5) / 0.06) ** 2) * (yy > 0.12) * (yy < 0.8)
    heart = _ellipse(yy, xx, rng.uniform(0.60, 0.66), rng.uniform(0.52, 0.57), 0.13, rng.uniform(0.12, 0.16), 0.4)
    ribs = (np.sin((yy + 0.15 * np.abs(xx - 0.5)) * rng.uniform(55, 65)) > 0.7) * lungs
    clav = sum(np.exp(-((yy - (0.17 + 0.1 * np.abs(xx - 0.5))) / 0.01) ** 2) * (np.abs(xx - 0.5) < 0.3)
               for _ in range(1))
    dens = 0.5 * body + 0.45 * media + 0.3 * heart + 0.12 * ribs + 0.2 * clav * body - 0.4 * lungs
    dens = ndimage.gaussian_filter(dens, sigma=size / 200)
    out = 15 + 220 * np.clip(dens, 0, 1) + rng.normal(0, rng.uniform(1.5, 4.0), dens.shape)
    return _u8(out)
