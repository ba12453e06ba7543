"""Finding drawers of the CXR phantom, and the keyword rules that pick one for an entity text.

A drawer paints one finding into a Canvas (per-sample layers over the cached base anatomy, in
the canonical frame) and returns its boolean mask: the ground truth for grounding/segmentation.
Keyword rules are ours, not the lexicon's, so the phantom works with any extractor's output.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Callable, Optional

import numpy as np
from scipy import ndimage as ndi

from actors.anatomy_model import LEFT, RIB_DENSITY, RIGHT, SIDE_IDS, SIDE_SIGN, Base, polyline, smoothstep, splat

SIDE_NAMES = {RIGHT: "right", LEFT: "left"}


@dataclass
class Canvas:
    """Per-sample layers; actors.phantom composes them with the base into one image."""
    base: Base
    add: np.ndarray  # extra density (lesions, devices, pleural lines)
    fill: np.ndarray  # 0..1: fraction of lung air replaced by fluid/cells
    air_add: np.ndarray  # extra air (pneumothorax, bullae, hernia gas, free air)
    keep: np.ndarray  # multiplier on lung markings
    bones_delta: np.ndarray
    heart: dict = field(default_factory=dict)  # ctr (set by cardiomegaly), measured ctr, mask
    heart_soft: Optional[np.ndarray] = None  # cardiomediastinal silhouette, once drawn

    def behind_heart(self) -> np.ndarray:
        """1 where the heart/mediastinum already hides the lung (extra density there would
        show as a bright patch on the heart), 0 elsewhere."""
        return self.heart_soft if self.heart_soft is not None else np.zeros_like(self.add)

    @classmethod
    def new(cls, base: Base) -> "Canvas":
        z = lambda: np.zeros((base.size, base.size), np.float32)  # noqa: E731
        return cls(base, z(), z(), z(), np.ones((base.size, base.size), np.float32), z())

    @property
    def px(self) -> float:
        """One pixel in normalised units."""
        return 1.0 / self.base.size


@dataclass(frozen=True)
class Where:
    side: Optional[str]  # "left", "right", "bilateral" or None (the drawer decides)
    zone: Optional[str]  # apex, upper, middle, lower, base, costophrenic, hilum, retrocardiac


# ---------------------------------------------------------------- geometry helpers

_ZONE_ROWS = {  # fraction of the lung's height, from its apex
    "apex": (0.0, 0.2), "upper": (0.08, 0.4), "middle": (0.38, 0.64), "lower": (0.6, 0.88),
    "base": (0.7, 0.95), "costophrenic": (0.78, 1.0), "hilum": (0.28, 0.55), "retrocardiac": (0.6, 0.92),
}
_ZONE_COLS = {"costophrenic": "lateral", "hilum": "medial", "retrocardiac": "medial"}


def side_ids(side: Optional[str], rng: np.random.Generator, p_bilateral: float = 0.0) -> list[int]:
    if side == "bilateral":
        return [RIGHT, LEFT]
    if side in SIDE_IDS:
        return [SIDE_IDS[side]]
    if rng.random() < p_bilateral:
        return [RIGHT, LEFT]
    return [RIGHT if rng.random() < 0.5 else LEFT]


def side_label(sids: list[int]) -> str:
    return "bilateral" if len(sids) == 2 else SIDE_NAMES[sids[0]]


def zone_point(cv: Canvas, sid: int, zone: Optional[str], rng, margin: float = 0.02,
               cols: Optional[str] = None) -> tuple[float, float]:
    """A random point inside the `sid` lung, in the rows (and columns) that `zone` names."""
    b = cv.base
    x0, y0, x1, y1 = b.boxes[sid]
    r0, r1 = _ZONE_ROWS.get(zone or "middle", (0.1, 0.9))
    cols = cols or _ZONE_COLS.get(zone or "")
    ok = (b.side == sid) & (b.Y > y0 + r0 * (y1 - y0)) & (b.Y < y0 + r1 * (y1 - y0))
    # distance from the midline as a fraction of the lung's width (0 = medial edge)
    inner, outer = sorted((abs(x0 - 0.5), abs(x1 - 0.5)))
    lat = (np.abs(b.X - 0.5) - inner) / (outer - inner)
    if cols == "medial":
        ok &= lat < 0.5
    elif cols == "lateral":
        ok &= lat > 0.5
    else:  # keep clear of the heart and mediastinum, where a lesion would not show
        ok &= lat > 0.3
        if cv.heart_soft is not None:
            ok &= cv.heart_soft < 0.1
    deep = ok & (b.dist > margin * b.size)
    ys, xs = np.nonzero(deep if deep.any() else ok if ok.any() else b.side == sid)
    i = rng.integers(len(ys))
    return (xs[i] + 0.5) / b.size, (ys[i] + 0.5) / b.size


def blob(cv: Canvas, cx: float, cy: float, rx: float, ry: float, rng, rough: float = 0.35,
         angle: float = 0.0) -> np.ndarray:
    """Soft irregular patch (0..1): an ellipse whose edge is perturbed by smooth noise."""
    b = cv.base
    c, s = np.cos(angle), np.sin(angle)
    dx, dy = b.X - cx, b.Y - cy
    r = np.sqrt(((c * dx + s * dy) / rx) ** 2 + ((-s * dx + c * dy) / ry) ** 2)
    coarse = rng.standard_normal((12, 12)).astype(np.float32)
    noise = ndi.zoom(coarse, b.size / 12, order=3, grid_mode=True, mode="grid-mirror")[: b.size, : b.size]
    fine = rng.standard_normal((40, 40)).astype(np.float32)
    noise += 0.5 * ndi.zoom(fine, b.size / 40, order=3, grid_mode=True, mode="grid-mirror")[: b.size, : b.size]
    field_ = 1.0 - r + rough * noise
    return smoothstep(-0.25, 0.45, field_).astype(np.float32)


def sphere(cv: Canvas, cx, cy, r, lobes: float = 0.0, rng=None) -> tuple[np.ndarray, np.ndarray]:
    """Projected density of a (lobulated) sphere and its hard mask."""
    b = cv.base
    dx, dy = b.X - cx, b.Y - cy
    rr = np.sqrt(dx ** 2 + dy ** 2)
    if lobes:
        th = np.arctan2(dy, dx)
        ph = rng.random(2) * 2 * np.pi
        r = r * (1 + lobes * np.sin(3 * th + ph[0]) + 0.6 * lobes * np.sin(5 * th + ph[1]))
    q = np.clip(1 - (rr / r) ** 2, 0, 1)
    dens = np.sqrt(q) * smoothstep(0.0, 0.25, q) ** 0.3
    aa = cv.px
    return dens.astype(np.float32), rr < r - 0.5 * aa


def stroke(cv: Canvas, points, width_px: float, many: bool = False) -> np.ndarray:
    """A line of about `width_px` through control points (or several lines, `many`), peak ~1."""
    size = cv.base.size
    pts = np.vstack([polyline(p, 0.4, size) for p in points]) if many else polyline(points, 0.4, size)
    img = splat(size, pts, 0.4)
    sigma = max(0.5, 0.45 * width_px * size / 256 * 1.0)
    img = ndi.gaussian_filter(img, sigma)
    return np.clip(img * sigma * 2.5, 0, 1).astype(np.float32)


# ---------------------------------------------------------------- drawers

def draw_effusion(cv: Canvas, where: Where, rng, text: str) -> tuple[np.ndarray, str]:
    """Dependent fluid: the costophrenic angle fills first; a meniscus climbs the lateral wall."""
    b = cv.base
    sids = side_ids(where.side, rng, p_bilateral=0.25)
    mask = np.zeros_like(b.lung, bool)
    large = bool(re.search(r"\b(large|massive|moderate)\b", text))
    for sid in sids:
        x0, y0, x1, y1 = b.boxes[sid]
        h, w = y1 - y0, x1 - x0
        frac = rng.uniform(0.35, 0.55) if large else rng.uniform(0.2, 0.38)
        level = y1 - frac * h
        lateral = np.clip(((b.X - 0.5) * SIDE_SIGN[sid] - (min(abs(x0 - 0.5), abs(x1 - 0.5)))) / w, 0, 1)
        meniscus = level - 1.1 * frac * h * lateral ** 2.5
        region = (b.side == sid) & (b.Y > meniscus)
        soft = smoothstep(-0.012, 0.018, b.Y - meniscus) * b.lung * (b.side == sid)
        # fluid density fades upward only a little: its top is sharp against the lung
        cv.fill = np.maximum(cv.fill, soft * 0.97)
        cv.add += 0.2 * soft * (1 - cv.behind_heart())  # layering fluid adds to the tissue in the beam
        cv.keep *= 1 - soft
        mask |= region
    return mask, side_label(sids)


def draw_consolidation(cv: Canvas, where: Where, rng, text: str, density: float = 0.85) -> tuple[np.ndarray, str]:
    """Patchy airspace opacity with air bronchograms; lobar ones stop at a fissure."""
    b = cv.base
    sids = side_ids(where.side, rng, p_bilateral=0.15)
    mask = np.zeros_like(b.lung, bool)
    zone = where.zone or rng.choice(["lower", "lower", "middle", "upper"])
    for sid in sids:
        x0, y0, x1, y1 = b.boxes[sid]
        cx, cy = zone_point(cv, sid, zone, rng, margin=0.04)
        rx, ry = (x1 - x0) * rng.uniform(0.22, 0.34), (y1 - y0) * rng.uniform(0.12, 0.2)
        patch = blob(cv, cx, cy, rx, ry, rng, rough=0.45) * b.lung * (b.side == sid)
        if sid == RIGHT and zone in ("upper", "apex"):  # minor fissure: a sharp lower edge
            patch *= 1 - smoothstep(-0.004, 0.004, b.Y - (y0 + 0.42 * (y1 - y0)))
        # fluffy: denser core, hazier edges; a little extra density where it is not behind the heart
        patch_d = patch * density * (0.75 + 0.25 * smoothstep(0.3, 0.9, patch))
        cv.fill = np.maximum(cv.fill, patch_d)
        cv.add += 0.08 * patch_d * (1 - cv.behind_heart())
        cv.keep *= 1 - 0.8 * patch
        mask |= patch > 0.5
    return mask, side_label(sids)


def draw_opacity(cv, where, rng, text):
    return draw_consolidation(cv, where, rng, text, density=0.55)


def draw_atelectasis(cv: Canvas, where: Where, rng, text: str) -> tuple[np.ndarray, str]:
    """Plate-like (discoid) atelectasis: a thin, slightly oblique band in the lower zone."""
    b = cv.base
    sids = side_ids(where.side, rng, p_bilateral=0.2)
    mask = np.zeros_like(b.lung, bool)
    for sid in sids:
        x0, y0, x1, y1 = b.boxes[sid]
        cx, cy = zone_point(cv, sid, where.zone or "lower", rng, margin=0.05)
        length = (x1 - x0) * rng.uniform(0.45, 0.6)
        thick = rng.uniform(0.014, 0.02)
        ang = rng.uniform(-0.25, 0.25)
        c, s = np.cos(ang), np.sin(ang)
        dx, dy = b.X - cx, b.Y - cy
        along, across = c * dx + s * dy, -s * dx + c * dy
        band = (1 - smoothstep(0.5 * length * 0.7, 0.5 * length, np.abs(along))) \
            * (1 - smoothstep(thick * 0.35, thick * 0.6, np.abs(across)))
        band = band * b.lung * (b.side == sid)
        cv.fill = np.maximum(cv.fill, band * 0.95)
        cv.add += 0.05 * band
        # some volume loss: a hazier zone under the band
        haze = blob(cv, cx, cy + 0.03, length * 0.5, 0.04, rng, rough=0.2) * b.lung * (b.side == sid)
        cv.fill = np.maximum(cv.fill, 0.2 * haze)
        mask |= (band > 0.5) | (haze > 0.35)
    return mask, side_label(sids)


def draw_pneumothorax(cv: Canvas, where: Where, rng, text: str) -> tuple[np.ndarray, str]:
    """The lung falls toward its hilum: a lucent apico-lateral rim without markings, bounded by
    the thin white visceral pleural line."""
    b = cv.base
    sids = side_ids(where.side, rng, p_bilateral=0.0)
    mask = np.zeros_like(b.lung, bool)
    large = bool(re.search(r"\b(large|tension|moderate)\b", text))
    for sid in sids:
        hx, hy = b.hila[sid]
        x0, y0, x1, y1 = b.boxes[sid]
        f = rng.uniform(0.62, 0.72) if large else rng.uniform(0.8, 0.88)
        # collapsed lung: the lung mask scaled by f about the hilum (sampled back by 1/f)
        src = (b.side == sid).astype(np.float32)
        cy_px, cx_px = hy * b.size - 0.5, hx * b.size - 0.5
        collapsed = ndi.affine_transform(src, [1 / f, 1 / f], offset=[cy_px - cy_px / f, cx_px - cx_px / f],
                                         order=1) > 0.5
        rim = (b.side == sid) & ~collapsed
        reach = y0 + (0.95 if large else 0.7) * (y1 - y0)
        rim &= b.Y < reach  # an upright pneumothorax collects at the apex and lateral wall
        rim_s = ndi.gaussian_filter(rim.astype(np.float32), 0.6)
        cv.keep *= 1 - rim_s
        cv.air_add += 0.10 * rim_s
        edge = collapsed & ~ndi.binary_erosion(collapsed) & ndi.binary_dilation(rim, iterations=2)
        cv.add += 0.16 * ndi.gaussian_filter(edge.astype(np.float32), 0.5) * 2.0
        mask |= rim
    return mask, side_label(sids)


def draw_cardiomegaly(cv: Canvas, where: Where, rng, text: str) -> tuple[np.ndarray, str]:
    """An enlarged heart: cardiothoracic ratio 0.56-0.66 (normal phantoms draw 0.40-0.48)."""
    cv.heart["ctr"] = float(rng.uniform(0.56, 0.66))
    cv.heart["enlarged"] = True
    return None, "midline"  # the mask is the heart, known once the heart is drawn


def draw_edema(cv: Canvas, where: Where, rng, text: str) -> tuple[np.ndarray, str]:
    """Bilateral perihilar ('bat wing') haze, indistinct vessels and Kerley B lines at the bases."""
    b = cv.base
    mask = np.zeros_like(b.lung, bool)
    mild = bool(re.search(r"mild|congestion|interstitial", text))
    for sid in (RIGHT, LEFT):
        hx, hy = b.hila[sid]
        x0, y0, x1, y1 = b.boxes[sid]
        bump = np.exp(-(((b.X - hx - SIDE_SIGN[sid] * 0.04) / ((x1 - x0) * 0.42)) ** 2
                        + ((b.Y - hy - 0.04) / ((y1 - y0) * 0.36)) ** 2))
        noise = ndi.zoom(rng.standard_normal((12, 12)).astype(np.float32), b.size / 12, order=1)[: b.size, : b.size]
        haze = np.clip(bump * (0.9 + 0.25 * noise), 0, 1) * b.lung * (b.side == sid)
        cv.fill = np.maximum(cv.fill, haze * (0.45 if mild else 0.7))
        cv.keep *= 1 - 0.5 * haze
        # Kerley B: short horizontal lines reaching the lateral pleura in the lower zone
        lines = []
        for _ in range(rng.integers(5, 9)):
            yk = y0 + rng.uniform(0.62, 0.9) * (y1 - y0)
            row = (b.side[int(yk * b.size)] == sid).nonzero()[0]
            if len(row) == 0:
                continue
            xl = ((row.min() if sid == RIGHT else row.max()) + 0.5) / b.size
            lines.append([(xl, yk), (xl - SIDE_SIGN[sid] * rng.uniform(0.015, 0.03), yk)])
        if lines:
            cv.add += 0.09 * stroke(cv, lines, 1.0, many=True) * b.lung
        mask |= haze > 0.35
    return mask, "bilateral"


def draw_nodule(cv: Canvas, where: Where, rng, text: str, radius=(0.011, 0.018), density=0.22,
                calcified: bool = False) -> tuple[np.ndarray, str]:
    b = cv.base
    count = int(rng.integers(3, 6)) if re.search(r"nodules|metastas|multiple", text) else 1
    sids_all = side_ids(where.side, rng, p_bilateral=0.0 if count == 1 else 1.0)
    mask = np.zeros_like(b.lung, bool)
    for i in range(count):
        sid = sids_all[i % len(sids_all)]
        r = rng.uniform(*radius)
        cx, cy = zone_point(cv, sid, where.zone, rng, margin=r + 0.015)
        dens, hard = sphere(cv, cx, cy, r)
        cv.add += density * dens
        cv.fill = np.maximum(cv.fill, (0.0 if calcified else 0.6) * dens)
        mask |= hard
    return mask, side_label(sorted(set(sids_all)))


def draw_granuloma(cv, where, rng, text):
    return draw_nodule(cv, where, rng, text, radius=(0.009, 0.014), density=0.5, calcified=True)


def draw_mass(cv: Canvas, where: Where, rng, text: str) -> tuple[np.ndarray, str]:
    b = cv.base
    sids = side_ids(where.side, rng)
    sid = sids[0]
    r = rng.uniform(0.04, 0.065)
    cx, cy = zone_point(cv, sid, where.zone or rng.choice(["upper", "middle", "hilum"]), rng, margin=r * 0.8)
    dens, hard = sphere(cv, cx, cy, r, lobes=0.1, rng=rng)
    hard &= b.lung > 0.3
    cv.add += 0.16 * dens * b.lung
    cv.fill = np.maximum(cv.fill, 0.9 * np.clip(dens * 1.5, 0, 1) * (b.side == sid))
    cv.keep *= 1 - np.clip(dens * 2, 0, 1)
    return hard, SIDE_NAMES[sid]


def draw_fracture(cv: Canvas, where: Where, rng, text: str) -> tuple[np.ndarray, str]:
    """A displaced rib fracture: a lucent gap across a rib, the lateral fragment stepped off."""
    b = cv.base
    sids = side_ids(where.side if where.side != "bilateral" else None, rng)
    sid = sids[0]
    zone = where.zone or rng.choice(["middle", "lower", "upper"])
    first = {"apex": 1, "upper": 2, "middle": 4, "hilum": 4, "lower": 6, "base": 7, "costophrenic": 7}.get(zone, 4)
    k = int(np.clip(first + rng.integers(0, 2), 1, 9))
    rib = next(r for r in b.ribs if r.side == sid and r.kind == "posterior" and r.index == k)
    t = rng.uniform(0.35, 0.6)  # over the lung, where a step in the cortex shows
    xf = 0.5 + SIDE_SIGN[sid] * (rib.x_med + t * (rib.x_lat - rib.x_med))
    yf = float(rib.centre(np.array([xf]))[0][0])
    lateral = (b.X - xf) * SIDE_SIGN[sid] > 0
    near = np.abs(b.X - xf) < 0.05
    seg = lateral & near
    th = rib.thick[0] + (rib.thick[1] - rib.thick[0]) * t
    dy = rng.choice([-1, 1]) * rng.uniform(0.9, 1.3) * th
    orig = rib.band(b.Y, b.X) * RIB_DENSITY
    moved = rib.band(b.Y, b.X, dy=dy) * RIB_DENSITY
    gap = 1 - smoothstep(1.8, 3.2, np.abs(b.X - xf) / cv.px * 256 / b.size)
    piece = np.where(seg, moved, orig)
    delta = piece - orig - gap * piece
    cv.bones_delta += delta
    # the ground truth is the fracture's footprint: the gap and the displaced fragment
    mask = ndi.binary_dilation(np.abs(delta) > 0.1 * RIB_DENSITY, iterations=1)
    mask |= (np.abs(b.X - xf) < 0.015) & (np.abs(b.Y - yf - dy / 2) < th)
    return mask, SIDE_NAMES[sid]


def draw_hiatal_hernia(cv: Canvas, where: Where, rng, text: str) -> tuple[np.ndarray, str]:
    """A retrocardiac round density with a gas bubble over an air-fluid level."""
    b = cv.base
    dia = b.dia
    cx, cy = 0.5 + rng.uniform(0.0, 0.04), dia - rng.uniform(0.045, 0.065)
    rx, ry = rng.uniform(0.055, 0.075), rng.uniform(0.04, 0.055)
    e = ((b.X - cx) / rx) ** 2 + ((b.Y - cy) / ry) ** 2
    inside = e < 1
    level = cy + rng.uniform(-0.2, 0.25) * ry
    gas = inside & (b.Y < level)
    wall = smoothstep(0.75, 0.95, e) * (1 - smoothstep(1.0, 1.15, e))
    cv.air_add += 0.45 * ndi.gaussian_filter(gas.astype(np.float32), 0.8)
    cv.add += 0.06 * wall + 0.03 * inside * (b.Y >= level)
    return inside, "midline"


def draw_emphysema(cv: Canvas, where: Where, rng, text: str) -> tuple[np.ndarray, str]:
    """Hyperinflation (flat, low hemidiaphragms: the inflated base), hyperlucency, pruned
    peripheral markings, and upper-zone bullae."""
    b = cv.base
    periph = smoothstep(0.0, 0.08 * b.size, b.dist)
    cv.keep *= 0.45 + 0.55 * (1 - periph) ** 0.5
    cv.air_add += 0.06 * b.lung
    if not re.search(r"hyperinflat|hyperexpan|overinflat", text):
        for _ in range(rng.integers(1, 4)):
            sid = RIGHT if rng.random() < 0.5 else LEFT
            r = rng.uniform(0.025, 0.05)
            cx, cy = zone_point(cv, sid, rng.choice(["apex", "upper"]), rng, margin=r * 0.7)
            rr = np.sqrt((b.X - cx) ** 2 + (b.Y - cy) ** 2) / r
            inside = (rr < 1) * b.lung
            cv.keep *= 1 - inside
            cv.air_add += 0.07 * inside
            cv.add += 0.05 * (1 - smoothstep(0.0, 1.2, np.abs(rr - 1) * r / cv.px)) * b.lung
    return b.side > 0, "bilateral"


def draw_interstitial(cv: Canvas, where: Where, rng, text: str) -> tuple[np.ndarray, str]:
    """Reticular (net-like) opacities, basal and peripheral: fibrosis/interstitial disease."""
    b = cv.base
    sids = side_ids(where.side, rng, p_bilateral=0.85)
    noise = rng.standard_normal((b.size, b.size)).astype(np.float32)
    s = b.size / 256
    band = ndi.gaussian_filter(noise, 1.4 * s) - ndi.gaussian_filter(noise, 3.0 * s)
    net = 1 - smoothstep(0.0, 0.05, np.abs(band) / (band.std() + 1e-6) * 0.12)
    mask = np.zeros_like(b.lung, bool)
    for sid in sids:
        x0, y0, x1, y1 = b.boxes[sid]
        r0, r1 = _ZONE_ROWS.get(where.zone or "lower", (0.45, 1.0))
        rows = smoothstep(y0 + (r0 - 0.1) * (y1 - y0), y0 + r0 * (y1 - y0), b.Y) \
            * (1 - smoothstep(y0 + r1 * (y1 - y0), y0 + (r1 + 0.1) * (y1 - y0), b.Y))
        periph = 1 - smoothstep(0.03 * b.size, 0.12 * b.size, b.dist)
        w = rows * (0.4 + 0.6 * periph) * b.lung * (b.side == sid)
        cv.add += 0.07 * net * w
        cv.fill = np.maximum(cv.fill, 0.18 * w)
        mask |= w > 0.35
    return mask, side_label(sids)


def draw_pleural_thickening(cv: Canvas, where: Where, rng, text: str) -> tuple[np.ndarray, str]:
    """A smooth soft-tissue band along the apex or the lateral chest wall."""
    b = cv.base
    sids = side_ids(where.side, rng, p_bilateral=0.3)
    zone = where.zone or "apex"
    mask = np.zeros_like(b.lung, bool)
    for sid in sids:
        x0, y0, x1, y1 = b.boxes[sid]
        r0, r1 = _ZONE_ROWS.get(zone, (0.0, 0.3))
        rows = (b.Y > y0 + r0 * (y1 - y0)) & (b.Y < y0 + max(r1, 0.25) * (y1 - y0))
        lateral = (b.X - 0.5) * SIDE_SIGN[sid] > abs(0.5 * (x0 + x1) - 0.5)
        th = rng.uniform(0.008, 0.014) * b.size
        band = (b.side == sid) & (b.dist < th) & rows & (lateral | (zone == "apex"))
        soft = ndi.gaussian_filter(band.astype(np.float32), 0.8)
        cv.fill = np.maximum(cv.fill, soft)
        mask |= band
    return mask, side_label(sids)


def draw_pneumoperitoneum(cv: Canvas, where: Where, rng, text: str) -> tuple[np.ndarray, str]:
    """Free air: a lucent crescent under the right hemidiaphragm."""
    b = cv.base
    x0, y0, x1, y1 = b.boxes[RIGHT]
    cols = (b.X > x0 + 0.1 * (x1 - x0)) & (b.X < x1 - 0.15 * (x1 - x0))
    bot = np.nan_to_num(b.bottom, nan=2.0)[None, :]
    gap = rng.uniform(0.008, 0.012)
    depth = rng.uniform(0.012, 0.02)
    crescent = cols & (b.Y > bot + gap) & (b.Y < bot + gap + depth * np.sin(
        np.pi * np.clip((b.X - x0) / (x1 - x0), 0, 1)))
    cv.air_add += 0.3 * ndi.gaussian_filter(crescent.astype(np.float32), 0.7)
    return crescent, "right"


def draw_hilar(cv: Canvas, where: Where, rng, text: str) -> tuple[np.ndarray, str]:
    """Enlarged, lobulated hila (adenopathy)."""
    b = cv.base
    sids = side_ids(where.side, rng, p_bilateral=0.6)
    mask = np.zeros_like(b.lung, bool)
    for sid in sids:
        hx, hy = b.hila[sid]
        for _ in range(3):
            cx = hx + SIDE_SIGN[sid] * rng.uniform(0.0, 0.03)
            cy = hy + rng.uniform(-0.04, 0.04)
            dens, hard = sphere(cv, cx, cy, rng.uniform(0.02, 0.03))
            cv.add += 0.12 * dens
            cv.fill = np.maximum(cv.fill, dens * (b.side == sid))
            mask |= hard
    return mask, side_label(sids)


def draw_widened_mediastinum(cv: Canvas, where: Where, rng, text: str) -> tuple[np.ndarray, str]:
    b = cv.base
    w = rng.uniform(0.09, 0.12)
    region = (np.abs(b.X - 0.5) < w * (1 - ((b.Y - 0.24) / 0.13) ** 2).clip(0) ** 0.3) & (b.Y > 0.12) & (b.Y < 0.37)
    soft = ndi.gaussian_filter(region.astype(np.float32), 1.0)
    cv.fill = np.maximum(cv.fill, soft)
    cv.add += 0.04 * soft
    return region, "midline"


def draw_elevated_diaphragm(cv: Canvas, where: Where, rng, text: str) -> tuple[np.ndarray, str]:
    """The hemidiaphragm sits higher (low lung volumes when bilateral): the lung base becomes
    soft tissue."""
    b = cv.base
    both = bool(re.search(r"low lung volume|hypoinflat|poor inspiration|bilateral", text))
    sids = [RIGHT, LEFT] if both else side_ids(where.side, rng)
    mask = np.zeros_like(b.lung, bool)
    bot = np.nan_to_num(b.bottom, nan=0.0)[None, :]
    for sid in sids:
        x0, y0, x1, y1 = b.boxes[sid]
        lift = rng.uniform(0.06, 0.1) * (y1 - y0)
        region = (b.side == sid) & (b.Y > bot - lift)
        soft = ndi.gaussian_filter(region.astype(np.float32), 1.0) * (b.side == sid)
        cv.fill = np.maximum(cv.fill, soft)
        cv.keep *= 1 - soft
        mask |= region
    return mask, side_label(sids)


# Lines and tubes: each a path of control points (normalised, patient right = image left).
def _device_paths(cv: Canvas, kind: str, side: str, rng) -> tuple[list, float, float, list]:
    b = cv.base
    s = SIDE_SIGN[SIDE_IDS[side]]
    jit = lambda: rng.uniform(-0.01, 0.01)  # noqa: E731
    carina = 0.31
    if kind == "endotracheal tube":
        tip = carina - rng.uniform(0.04, 0.07)
        return [[(0.503, 0.0), (0.503 + jit() * 0.3, tip * 0.5), (0.504, tip)]], 3.5, 0.14, []
    if kind == "enteric tube":
        gx, gy = b.boxes[LEFT][0] + 0.5 * (b.boxes[LEFT][2] - b.boxes[LEFT][0]), np.nanmax(b.bottom) + 0.04
        return [[(0.49, 0.0), (0.51, 0.3), (0.525, 0.6), (0.55, gy - 0.02), (gx, gy + 0.02), (gx + 0.04, gy)]], 1.8, 0.32, []
    if kind == "chest tube":
        x0, y0, x1, y1 = b.boxes[SIDE_IDS[side]]
        lat = x1 if s > 0 else x0
        return [[(lat + s * 0.08, y1 - 0.05), (lat - s * 0.02, y1 - 0.12), (lat - s * 0.07, 0.5 * (y0 + y1)),
                 (0.5 + s * 0.2, y0 + 0.06)]], 3.0, 0.2, []
    if kind == "pacemaker":
        gx, gy = 0.5 + s * rng.uniform(0.22, 0.27), rng.uniform(0.15, 0.19)
        leads = [[(gx, gy), (0.5 + s * 0.12, 0.13), (0.47, 0.2), (0.46, 0.33), (0.45, 0.5), (0.47, 0.6)],
                 [(gx, gy), (0.5 + s * 0.13, 0.14), (0.475, 0.22), (0.47, 0.4), (0.52, 0.6), (0.58, 0.68)]]
        return leads, 1.8, 0.45, [("box", gx, gy, 0.045, 0.03)]
    if kind == "sternotomy wires":
        return [], 0.0, 0.0, [("loop", 0.5 + jit() * 0.2, y, 0.012, 0.007) for y in np.linspace(0.25, 0.56, 6)]
    if kind == "surgical clips":
        return [], 0.0, 0.0, [("clip", 0.5 + rng.uniform(-0.08, 0.1), rng.uniform(0.2, 0.6), 0.008, 0.0)
                              for _ in range(rng.integers(2, 5))]
    # central venous catheter: internal jugular (default) or subclavian/PICC from the arm
    tip = (0.475, rng.uniform(0.33, 0.4))
    if kind == "picc":
        return [[(0.5 + s * 0.5, 0.2), (0.5 + s * 0.35, 0.15), (0.5 + s * 0.15, 0.16), (0.47, 0.22), tip]], 1.8, 0.35, []
    if kind == "port":
        px, py = 0.5 + s * 0.22, 0.2
        return [[(px, py), (0.5 + s * 0.12, 0.13), (0.47, 0.2), tip]], 1.8, 0.35, [("port", px, py, 0.02, 0.0)]
    return [[(0.5 + s * 0.11, 0.0), (0.5 + s * 0.09, 0.1), (0.48, 0.2), tip]], 1.8, 0.35, []


_DEVICE_KINDS = [
    (r"endotracheal|\bet tube|\bett\b|intubat", "endotracheal tube", "midline"),
    (r"nasogastric|orogastric|enteric|feeding|\bng tube|\bog tube|dobhoff|gastric tube", "enteric tube", "midline"),
    (r"chest tube|thoracostomy|pigtail|pleural (catheter|drain)|\bdrain", "chest tube", None),
    (r"pacemaker|pacer|defibrillator|\bicd\b|cardiac device|generator|\bleads?\b", "pacemaker", "left"),
    (r"sternotomy|sternal wire|cabg", "sternotomy wires", "midline"),
    (r"\bclips?\b|surgical clip|staple", "surgical clips", "midline"),
    (r"\bpicc\b|peripherally inserted", "picc", None),
    (r"\bport\b|port-a-cath|portacath", "port", None),
]


def draw_device(cv: Canvas, where: Where, rng, text: str) -> tuple[np.ndarray, str]:
    b = cv.base
    kind, default_side = "central venous catheter", None
    for pat, k, ds in _DEVICE_KINDS:
        if re.search(pat, text):
            kind, default_side = k, ds
            break
    side = where.side if where.side in ("left", "right") else default_side
    if side in (None, "midline"):
        side = "right" if default_side is None and rng.random() < 0.7 else "left"
    paths, width, dens, parts = _device_paths(cv, kind, side, rng)
    img = np.zeros_like(b.lung)
    for path in paths:
        img = np.maximum(img, stroke(cv, path, width))
    if kind in ("endotracheal tube", "chest tube"):  # radiopaque stripe along a fainter tube
        for path in paths:
            img = np.maximum(img * 0.55, stroke(cv, path, 1.0))
    out = img * dens
    for shape, x, y, rx, ry in parts:
        if shape in ("box", "port"):
            ry = ry or rx
            e = np.maximum(np.abs(b.X - x) / rx, np.abs(b.Y - y) / ry) if shape == "box" else \
                np.sqrt(((b.X - x) / rx) ** 2 + ((b.Y - y) / ry) ** 2)
            out = np.maximum(out, 0.75 * (1 - smoothstep(0.85, 1.0, e)))
        elif shape == "loop":
            e = np.sqrt(((b.X - x) / rx) ** 2 + ((b.Y - y) / ry) ** 2)
            out = np.maximum(out, 0.7 * (1 - smoothstep(0.0, 0.35, np.abs(e - 1))))
        else:  # clip: a short bright dash
            ang = rng.uniform(0, np.pi)
            out = np.maximum(out, 0.7 * stroke(cv, [(x, y), (x + rx * np.cos(ang), y + rx * np.sin(ang))], 1.6))
    cv.add += out
    mask = ndi.binary_dilation(out > 0.08, iterations=max(1, b.size // 128))
    return mask, side if kind not in ("endotracheal tube", "enteric tube", "sternotomy wires", "surgical clips") else "midline"


# ---------------------------------------------------------------- keyword rules

@dataclass(frozen=True)
class Drawer:
    name: str  # canonical finding name written into masks/provenance
    fn: Callable
    lateral: bool  # takes a side from anatomy entities
    default_zone: Optional[str] = None


DRAWERS = {d.name: d for d in [
    Drawer("pleural effusion", draw_effusion, True, "base"),
    Drawer("consolidation", draw_consolidation, True),
    Drawer("opacity", draw_opacity, True),
    Drawer("atelectasis", draw_atelectasis, True, "lower"),
    Drawer("pneumothorax", draw_pneumothorax, True, "apex"),
    Drawer("cardiomegaly", draw_cardiomegaly, False),
    Drawer("pulmonary edema", draw_edema, False),
    Drawer("nodule", draw_nodule, True),
    Drawer("calcified granuloma", draw_granuloma, True),
    Drawer("mass", draw_mass, True),
    Drawer("fracture", draw_fracture, True),
    Drawer("hiatal hernia", draw_hiatal_hernia, False),
    Drawer("emphysema", draw_emphysema, False),
    Drawer("interstitial opacities", draw_interstitial, True, "lower"),
    Drawer("pleural thickening", draw_pleural_thickening, True, "apex"),
    Drawer("pneumoperitoneum", draw_pneumoperitoneum, False),
    Drawer("hilar enlargement", draw_hilar, True, "hilum"),
    Drawer("widened mediastinum", draw_widened_mediastinum, False),
    Drawer("elevated hemidiaphragm", draw_elevated_diaphragm, True, "base"),
    Drawer("support device", draw_device, True),
]}

# First match wins: specific phrases before the general words they contain.
KEYWORD_RULES: list[tuple[str, str]] = [
    (r"kerley|septal line|vascular congestion|pulmonary (vascular )?congestion|\bedema|oedema|\bchf\b|heart failure|fluid overload", "pulmonary edema"),
    (r"pneumoperitoneum|free (intraperitoneal |sub ?diaphragmatic )?air", "pneumoperitoneum"),
    (r"pneumothora|\bptx\b", "pneumothorax"),
    (r"pleural thicken|apical cap|pleural plaque|pleural scar", "pleural thickening"),
    (r"effusion|hydrothorax|hemothorax|haemothorax|blunt(ing|ed) of the costophrenic|costophrenic (angle )?blunting|pleural fluid", "pleural effusion"),
    (r"cardiomegaly|cardiac enlargement|enlarged (heart|cardiac)|heart (size )?(is )?enlarged|cardiomyopathy", "cardiomegaly"),
    (r"hiatal|hiatus hernia|hiatal hernia", "hiatal hernia"),
    (r"emphysema|copd|chronic obstructive|hyperinflat|hyperexpan|overinflat|bulla|bullous|bleb", "emphysema"),
    (r"low lung volume|hypoinflat|poor inspiration|elevat(ed|ion) (of the )?(right |left )?(hemi)?diaphragm", "elevated hemidiaphragm"),
    (r"fractur|\bfx\b", "fracture"),
    (r"granulom|calcified (nodule|lymph|node)", "calcified granuloma"),
    (r"interstitial|reticul|fibros|honeycomb|\bild\b", "interstitial opacities"),
    (r"lymphadenopathy|adenopathy|hilar (enlargement|prominence|fullness|mass)|(enlarged|prominent) hil", "hilar enlargement"),
    (r"widen(ed|ing) (of the )?(superior )?mediastin|mediastinal widening", "widened mediastinum"),
    (r"atelecta|collapse|volume loss|scar", "atelectasis"),
    (r"pneumonia|consolidat|infection|bronchopneumonia|aspiration|tuberculosis|\btb\b", "consolidation"),
    (r"opacit|opacificat|infiltrat|airspace|air space|density|densities", "opacity"),
    (r"nodul|metastas|\bnodes?\b", "nodule"),
    (r"\bmass|tumou?r|neoplasm|carcinoma|cancer|malignan|lesion", "mass"),
    (r"catheter|\bline\b|\btube\b|\bpicc\b|\bport\b|pacemaker|pacer|defibrillator|\bicd\b|\bleads?\b"
     r"|sternotomy|wires?|\bclips?\b|drain|support(ing)? device|device|hardware|stent", "support device"),
]
_COMPILED = [(re.compile(p, re.I), name) for p, name in KEYWORD_RULES]


def finding_for(text: str) -> Optional[str]:
    """Canonical drawer name for an entity text, or None (undrawable)."""
    for rx, name in _COMPILED:
        if rx.search(text):
            return name
    return None


_SIDE_BI = re.compile(r"\b(bilateral|bilaterally|both|bibasilar|bibasal|biapical|lungs|bases|apices|hila|lung fields)\b", re.I)
_ZONES = [
    ("costophrenic", re.compile(r"costophrenic|\bcp angle", re.I)),
    ("retrocardiac", re.compile(r"retrocardiac", re.I)),
    ("hilum", re.compile(r"hil(um|ar|a)\b|perihilar", re.I)),
    ("apex", re.compile(r"apex|apical|apices|biapical", re.I)),
    ("upper", re.compile(r"upper", re.I)),
    ("middle", re.compile(r"middle|\bmid\b|mid-|lingula", re.I)),
    ("lower", re.compile(r"lower|\bbases?\b|basal|basilar|bibasilar|bibasal|infrahilar", re.I)),
]


def parse_location(text: str) -> Where:
    """Side and zone named by a text (an ANATOMY entity, or a finding like 'left effusion')."""
    t = text.lower()
    left, right = bool(re.search(r"\bleft\b", t)), bool(re.search(r"\bright\b", t))
    side = "bilateral" if (left and right) or _SIDE_BI.search(t) else "left" if left else "right" if right else None
    if re.search(r"lingula|retrocardiac", t) and side is None:
        side = "left"
    zone = next((z for z, rx in _ZONES if rx.search(t)), None)
    return Where(side, zone)
