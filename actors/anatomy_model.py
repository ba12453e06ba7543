"""Base anatomy of the CXR phantom, in a canonical frame (patient upright, PA, centred).

Everything here depends only on (size, template, inflated), so it is built once and cached; the
per-sample work (heart, findings, pose, exposure, noise) happens in actors.phantom.

Conventions: arrays are (rows, cols) = (y, x), y down. Radiological display: the patient's RIGHT
is on the image LEFT. Side ids: 1 = patient right (image left half), 2 = patient left.
Layers are "density" (brighter = more attenuating), summed then windowed by the renderer.

Lung shapes come from the 500-odd lung masks torchxrayvision ships (v7labs COVID-19 set,
semantic_masks_v7labs_lungs.zip); a fixed, quality-filtered subset is normalised to the canonical
lung box. Without that file a procedural lung pair is used instead, so the phantom never needs it.
"""
from __future__ import annotations

import functools
import hashlib
import importlib.util
import io
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

RIGHT, LEFT = 1, 2
SIDE_IDS = {"right": RIGHT, "left": LEFT}
SIDE_SIGN = {RIGHT: -1.0, LEFT: 1.0}  # direction of the patient's side on the image x axis

# Canonical lung box (normalised x0, y0, x1, y1): apices under the clavicles, costophrenic
# angles at 80% of the height, a thoracic width of about two thirds of the image.
LUNG_BOX = (0.16, 0.12, 0.84, 0.80)
TEMPLATE_RES = 160
RIB_DENSITY = 0.12
N_TEMPLATES = 24


# ---------------------------------------------------------------- lung templates

def _masks_zip() -> Path | None:
    # find_spec locates the package without importing it (importing pulls in torch: seconds)
    spec = importlib.util.find_spec("torchxrayvision")
    if spec is None or not spec.origin:
        return None
    path = Path(spec.origin).parent / "data" / "semantic_masks_v7labs_lungs.zip"
    return path if path.is_file() else None


def _normalise_pair(mask: np.ndarray) -> np.ndarray | None:
    """Two largest components -> a canonical TEMPLATE_RES^2 lung pair, or None if the mask is not
    a plausible frontal pair (one lung missing, cropped, merged, lopsided)."""
    lab, n = ndi.label(mask)
    if n < 2:
        return None
    sizes = ndi.sum(mask, lab, range(1, n + 1))
    order = np.argsort(sizes)[::-1][:2]
    if sizes[order[1]] < 0.6 * sizes[order[0]]:
        return None
    pair = np.isin(lab, order + 1)
    ys, xs = np.nonzero(pair)
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    h, w = y1 - y0, x1 - x0
    if h < 40 or w < 40 or not 0.7 < h / w < 1.4:
        return None
    if y0 == 0 or x0 == 0 or y1 == mask.shape[0] or x1 == mask.shape[1]:
        return None  # cropped by the image border
    fill = pair[y0:y1, x0:x1].mean()
    if not 0.45 < fill < 0.8:
        return None
    for comp in order + 1:  # each lung tall and on its own half
        cy, cx = np.nonzero(lab[y0:y1, x0:x1] == comp)
        if cy.max() - cy.min() < 0.7 * h or (cx.min() < w / 2 < cx.max()):
            return None
    crop = pair[y0:y1, x0:x1].astype(np.float32)
    zoom = (TEMPLATE_RES / h, TEMPLATE_RES / w)
    small = ndi.zoom(ndi.gaussian_filter(crop, max(h, w) / 300), zoom, order=1)[:TEMPLATE_RES, :TEMPLATE_RES]
    out = np.zeros((TEMPLATE_RES, TEMPLATE_RES), np.float32)
    out[: small.shape[0], : small.shape[1]] = small
    out = ndi.binary_fill_holes(ndi.gaussian_filter(out, 1.5) > 0.5)
    return out


def _procedural_pair(k: int) -> np.ndarray:
    """A plausible lung pair from a few seeded numbers (fallback without the mask file)."""
    rng = np.random.default_rng([7, k])
    n = TEMPLATE_RES
    y, x = np.mgrid[0:n, 0:n] / (n - 1)
    out = np.zeros((n, n), bool)
    for sgn in (-1, 1):
        u = (x - 0.5) * sgn  # distance from the midline, this side positive (0..0.5)
        heart = (0.12 if sgn > 0 else 0.04) * smoothstep(0.4, 0.8, y)  # the heart bulges left
        inner = 0.07 + 0.02 * rng.random() + heart
        outer = 0.5 - 0.2 * np.clip(1 - y / 0.4, 0, 1) ** 2
        top = 0.02 + 0.8 * ((u - 0.2) / 0.3) ** 2  # a dome over each apex
        bottom = 0.8 + 0.04 * rng.random() + 0.17 * smoothstep(0.1, 0.5, u)  # lowest at the CP angle
        out |= (u > inner) & (u < outer) & (y > top) & (y < bottom)
    return out


@functools.lru_cache(maxsize=1)
def lung_templates() -> tuple[tuple[str, np.ndarray], ...]:
    """A fixed set of (name, boolean TEMPLATE_RES^2 lung pair), identical on every machine."""
    path = _masks_zip()
    out: list[tuple[str, np.ndarray]] = []
    if path is not None:
        from PIL import Image

        with zipfile.ZipFile(path) as zf:
            names = [n for n in zf.namelist() if not n.endswith("/")]
            # A hash order mixes the sources (the zip groups them) and stays stable.
            names.sort(key=lambda n: hashlib.md5(n.encode()).hexdigest())
            for name in names:
                if len(out) == N_TEMPLATES:
                    break
                try:
                    im = Image.open(io.BytesIO(zf.read(name)))
                    im.draft("L", (320, 320))  # JPEG: decode at reduced scale (fast)
                    im = im.convert("L")
                    im.thumbnail((320, 320))
                except Exception:
                    continue
                pair = _normalise_pair(np.asarray(im) > 127)
                if pair is not None:
                    out.append((f"v7labs:{Path(name).name}", pair))
    k = 0
    while len(out) < N_TEMPLATES:
        out.append((f"procedural:{k}", _procedural_pair(k)))
        k += 1
    return tuple(out)


# ---------------------------------------------------------------- drawing helpers

@functools.lru_cache(maxsize=4)
def grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Normalised pixel-centre coordinates (Y, X) in [0, 1], shared read-only per size."""
    c = (np.arange(size, dtype=np.float32) + 0.5) / size
    Y, X = c[:, None] * np.ones((1, size), np.float32), np.ones((size, 1), np.float32) * c[None, :]
    Y.flags.writeable = X.flags.writeable = False
    return Y, X


def smoothstep(e0: float, e1: float, x):
    t = np.multiply(np.subtract(x, e0, dtype=np.float32), np.float32(1.0 / (e1 - e0)))
    t = np.clip(t, 0.0, 1.0, out=t if isinstance(t, np.ndarray) else None)  # float32, in place
    return t * t * (3 - 2 * t)


def splat(size: int, pts: np.ndarray, weights: np.ndarray | float = 1.0) -> np.ndarray:
    """Accumulate weighted points (N x 2, normalised x, y) into a size^2 image (bilinear)."""
    img = np.zeros((size + 2, size + 2), np.float32)
    if len(pts) == 0:
        return img[1:-1, 1:-1]
    px = pts[:, 0] * size - 0.5 + 1
    py = pts[:, 1] * size - 0.5 + 1
    keep = (px >= 0) & (px < size + 1) & (py >= 0) & (py < size + 1)
    px, py = px[keep], py[keep]
    w = np.broadcast_to(np.asarray(weights, np.float32), keep.shape)[keep]
    x0, y0 = np.floor(px).astype(int), np.floor(py).astype(int)
    fx, fy = px - x0, py - y0
    for dy, dx, ww in ((0, 0, (1 - fx) * (1 - fy)), (0, 1, fx * (1 - fy)), (1, 0, (1 - fx) * fy), (1, 1, fx * fy)):
        np.add.at(img, (np.clip(y0 + dy, 0, size + 1), np.clip(x0 + dx, 0, size + 1)), w * ww)
    return img[1:-1, 1:-1]


def polyline(points, step_px: float, size: int) -> np.ndarray:
    """Dense samples (N x 2) along a Catmull-Rom curve through normalised control points."""
    p = np.asarray(points, np.float32)
    if len(p) < 2:
        return p
    ext = np.vstack([2 * p[0] - p[1], p, 2 * p[-1] - p[-2]])
    out = []
    for i in range(1, len(ext) - 2):
        p0, p1, p2, p3 = ext[i - 1], ext[i], ext[i + 1], ext[i + 2]
        n = max(2, int(np.linalg.norm(p2 - p1) * size / step_px) + 1)
        t = np.linspace(0, 1, n, endpoint=False, dtype=np.float32)[:, None]
        out.append(0.5 * ((2 * p1) + (-p0 + p2) * t + (2 * p0 - 5 * p1 + 4 * p2 - p3) * t ** 2
                          + (-p0 + 3 * p1 - 3 * p2 + p3) * t ** 3))
    out.append(p[-1:])
    return np.vstack(out)


# ---------------------------------------------------------------- ribs

@dataclass(frozen=True)
class Rib:
    """One hemi-rib as y = f(x) over a lateral span; `kind` posterior or anterior."""
    side: int
    kind: str
    index: int
    x_med: float  # normalised |x - 0.5| where it starts (medial end)
    x_lat: float  # ... and ends (lateral wall)
    coef: tuple  # y = c0 + c1*t + c2*t^2 + c3*t^3, t = (|x-0.5| - x_med) / (x_lat - x_med)
    thick: tuple  # (medial, lateral) thickness, normalised

    def centre(self, X):
        u = np.abs(X - 0.5)
        t = (u - self.x_med) / (self.x_lat - self.x_med)
        c0, c1, c2, c3 = self.coef
        return c0 + c1 * t + c2 * t ** 2 + c3 * t ** 3, t

    def band(self, Y, X, dy: float = 0.0):
        """Density of this rib (cortex brighter than marrow), zero outside its span/side."""
        Y, X = Y[:, :1], X[:1, :]  # the centre line depends on x only: work on a row, broadcast
        yc, t = self.centre(X)
        th = self.thick[0] + (self.thick[1] - self.thick[0]) * np.clip(t, 0, 1)
        d = np.abs(Y - yc - dy) / (th / 2)
        on_side = (X - 0.5) * SIDE_SIGN[self.side] > 0
        span = smoothstep(-0.02, 0.08, t) * (1 - smoothstep(0.96, 1.04, t)) * on_side
        inside = np.minimum(1, 5 * np.clip(1 - d, 0, 1))  # ~1 px soft edge
        profile = (0.55 + 0.45 * np.clip(d, 0, 1) ** 4) * inside
        fade = 0.6 if self.kind == "anterior" else 1.0
        return profile * span * fade


def make_ribs(rng: np.random.Generator) -> list[Rib]:
    ribs = []
    spacing = 0.058 * (1 + 0.06 * rng.standard_normal())
    for side in (RIGHT, LEFT):
        for k in range(10):
            y0 = 0.105 + k * spacing + 0.004 * rng.standard_normal()
            # posterior: off the spine nearly level, then sweeping down along the lateral wall
            drop = 0.05 + 0.012 * k
            ribs.append(Rib(side, "posterior", k, 0.03, 0.43 - 0.004 * max(0, 5 - k) ** 1.5,
                            (y0, -0.03, 0.0, drop + 0.03), (0.017, 0.027)))
            # anterior: from the lateral wall down and medially, fading into cartilage
            y_lat = y0 + drop
            if k < 7:
                ribs.append(Rib(side, "anterior", k, 0.13 + 0.012 * k, 0.43,
                                (y_lat + 0.13 + 0.01 * k, -0.11 - 0.01 * k, -0.03, 0.01), (0.016, 0.02)))
    return ribs


# ---------------------------------------------------------------- base anatomy

@dataclass
class Base:
    size: int
    template: str
    inflated: bool
    soft: np.ndarray  # body soft tissue (path-length weighted)
    bones: np.ndarray  # ribs, clavicles, spine
    lung: np.ndarray  # soft lung-field mask 0..1
    side: np.ndarray  # int8: 0 outside lungs, RIGHT, LEFT
    air: np.ndarray  # lung air amount (0..1; deepest at the lung centres)
    air_extra: np.ndarray  # trachea, bronchi, gastric bubble
    vessels: np.ndarray  # lung markings
    dist: np.ndarray  # distance to the lung edge, pixels (inside the lungs)
    ribs: list[Rib]
    boxes: dict  # side id -> (x0, y0, x1, y1) lung bbox, normalised
    hila: dict  # side id -> (x, y) normalised
    bottom: np.ndarray  # per column: normalised y of the lung base (diaphragm), nan outside
    thorax: tuple  # (x0, x1) outer extent of the lungs, normalised
    dia: float  # normalised y of the diaphragm under the heart
    abdomen: np.ndarray  # 0..1 below the diaphragm (liver, spleen, stomach)
    Y: np.ndarray = field(repr=False, default=None)
    X: np.ndarray = field(repr=False, default=None)


def _vessel_tree(size: int, lung: np.ndarray, side: np.ndarray, hila: dict, rng) -> np.ndarray:
    """Branching, tapering vessels from each hilum; bigger toward the bases (gravity)."""
    layers = {1: [], 2: [], 3: []}  # width class -> point clouds with weights
    step = 0.6 / size
    for sid, (hx, hy) in hila.items():
        sgn = SIDE_SIGN[sid]
        stack = []
        for ang in np.linspace(-1.35, 1.5, 7) + 0.08 * rng.standard_normal(7):
            # angle 0 = lateral, positive = downward
            stack.append((hx, hy, ang, 0.085 + 0.02 * rng.random(), 1.0, 0))
        while stack:
            x, y, ang, length, w, depth = stack.pop()
            n = max(2, int(length / step))
            t = np.linspace(0, 1, n, dtype=np.float32)
            wob = 0.06 * np.sin(t * 3 + rng.random() * 6)
            xs = x + sgn * np.cos(ang + wob) * length * t
            ys = y + np.sin(ang + wob) * length * t
            cls = 3 if w > 0.6 else 2 if w > 0.3 else 1
            gravity = 0.85 + 0.3 * np.clip((ys - 0.3) / 0.5, 0, 1)
            layers[cls].append((np.stack([xs, ys], 1), w ** 1.5 * gravity))
            ex, ey = xs[-1], ys[-1]
            if depth < 5 and w > 0.12:
                for da in (-1, 1):
                    nang = ang + da * (0.22 + 0.2 * rng.random())
                    stack.append((ex, ey, nang, length * (0.7 + 0.15 * rng.random()), w * 0.68, depth + 1))
    out = np.zeros((size, size), np.float32)
    for cls, items in layers.items():
        if not items:
            continue
        pts = np.vstack([p for p, _ in items])
        wts = np.concatenate([w for _, w in items])
        img = splat(size, pts, wts * step * size)
        out += ndi.gaussian_filter(img, sigma=size / 256 * (0.6, 1.1, 1.8)[cls - 1]) * (1.0, 1.6, 2.6)[cls - 1]
    # markings fade toward the periphery and stay inside the lungs
    return out * lung


def build_base(size: int, template_index: int, inflated: bool = False) -> Base:
    return _build_base_cached(int(size), int(template_index) % N_TEMPLATES, bool(inflated))


# ~8 float32 layers per base: 2 MB at 256 px, 8 MB at 512 px; 32 bases hold every normal
# template and some hyperinflated ones.
@functools.lru_cache(maxsize=32)
def _build_base_cached(size: int, tidx: int, inflated: bool) -> Base:
    name, tmpl = lung_templates()[tidx]
    rng = np.random.default_rng([1234, tidx])
    Y, X = grid(size)

    # lungs: the template stretched into the canonical box (taller when hyperinflated)
    x0, y0, x1, y1 = LUNG_BOX
    if inflated:
        y1 += 0.07
        x0, x1 = x0 - 0.01, x1 + 0.01
    px0, py0, px1, py1 = (int(round(v * size)) for v in (x0, y0, x1, y1))
    box = ndi.zoom(tmpl.astype(np.float32), ((py1 - py0) / TEMPLATE_RES, (px1 - px0) / TEMPLATE_RES), order=1)
    lung_hard = np.zeros((size, size), np.float32)
    lung_hard[py0:py0 + box.shape[0], px0:px0 + box.shape[1]] = box[: size - py0, : size - px0]
    lung_hard = lung_hard > 0.5
    if inflated:  # flattened hemidiaphragms: cut the domes with a shallow arc
        lung_hard &= Y < (y1 - 0.045 + 0.02 * np.abs(X - 0.5) / 0.35)
    lab, n = ndi.label(lung_hard)
    side = np.zeros((size, size), np.int8)
    if n:
        sizes = ndi.sum(lung_hard, lab, range(1, n + 1))
        for comp in np.argsort(sizes)[::-1][:2] + 1:
            cx = X[lab == comp].mean()
            side[lab == comp] = RIGHT if cx < 0.5 else LEFT
    lung_hard = side > 0
    lung = ndi.gaussian_filter(lung_hard.astype(np.float32), size / 256 * 1.0)

    boxes, hila = {}, {}
    for sid in (RIGHT, LEFT):
        ys, xs = np.nonzero(side == sid)
        bx0, bx1, by0, by1 = xs.min() / size, (xs.max() + 1) / size, ys.min() / size, (ys.max() + 1) / size
        boxes[sid] = (bx0, by0, bx1, by1)
        hy = by0 + (0.40 if sid == RIGHT else 0.36) * (by1 - by0)  # left hilum sits higher
        row = side[int(hy * size)] == sid
        cols = np.nonzero(row)[0]
        medial = (cols.max() if sid == RIGHT else cols.min()) / size if len(cols) else 0.5
        hila[sid] = (medial - SIDE_SIGN[sid] * 0.035, hy)

    dist = ndi.distance_transform_edt(lung_hard).astype(np.float32)
    depth = 1 - np.exp(-dist / (0.05 * size))
    air = lung * (0.6 + 0.4 * depth) * (1.0 - 0.2 * smoothstep(0.45, 0.85, Y))
    if inflated:
        air *= 1.15

    # body: an elliptical cylinder seen side-on; shoulders taper into the neck
    half = 0.085 + (0.50 - 0.085) * smoothstep(0.0, 0.13, Y) - 0.03 * smoothstep(0.75, 1.0, Y)
    chord = np.sqrt(np.clip(1 - ((X - 0.5) / half) ** 2, 0, 1))
    soft = 0.16 + 0.26 * chord ** 0.6
    soft *= smoothstep(0.0, 0.03, chord)

    # bones
    ribs = make_ribs(rng)
    bones = np.zeros((size, size), np.float32)
    for rib in ribs:
        bones += rib.band(Y, X)
    bones *= RIB_DENSITY * (0.55 + 0.45 * ndi.gaussian_filter(lung, size / 256 * 4))  # ribs stand out over air
    for sgn in (-1, 1):  # clavicles: gentle S from the sternal notch out to the acromion
        u = np.abs(X - 0.5)
        t = np.clip((u - 0.04) / 0.30, 0, 1)
        yc = 0.125 - 0.05 * t + 0.012 * np.sin(2 * np.pi * t)
        d = np.abs(Y - yc) / 0.013
        on = ((X - 0.5) * sgn > 0) * smoothstep(0.0, 0.05, t) * (1 - smoothstep(0.95, 1.0, t))
        bones += 0.2 * np.clip(1.1 - d, 0, 1) ** 0.5 * (0.7 + 0.3 * np.clip(d, 0, 1) ** 4) * on
    # spine: vertebral bodies with disc spaces, pedicles; hidden behind the mediastinum
    period = 0.05
    phase = (Y - 0.02) % period / period
    body = (np.abs(X - 0.5) < 0.036) * smoothstep(0.0, 0.12, phase) * (1 - smoothstep(0.82, 0.95, phase))
    ped = np.clip(1 - np.sqrt(((np.abs(X - 0.5) - 0.027) / 0.009) ** 2 + ((phase - 0.35) / 0.18) ** 2), 0, 1)
    bones += 0.05 * (0.5 + 0.5 * body) * (np.abs(X - 0.5) < 0.036) + 0.04 * ped ** 0.5
    bones = ndi.gaussian_filter(bones, size / 256 * 0.7).astype(np.float32)

    # extra air: trachea, main bronchi, gastric bubble under the left hemidiaphragm
    trachea = (np.abs(X - 0.5 - 0.004) < 0.021) * (1 - smoothstep(0.30, 0.33, Y))
    pts = []
    for sid in (RIGHT, LEFT):
        hx, hy = hila[sid]
        pts.append(polyline([(0.5, 0.31), ((0.5 + hx) / 2, (0.33 + hy) / 2), (hx, hy)], 0.5, size))
    bronchi = np.clip(ndi.gaussian_filter(splat(size, np.vstack(pts)), size / 256 * 3.0) * 10, 0, 1)
    bottom = np.full(size, np.nan, np.float32)
    rows = np.arange(size)[:, None] * np.ones((1, size))
    has = lung_hard.any(0)
    bottom[has] = (np.where(lung_hard, rows, -1).max(0)[has] + 1) / size
    lb = boxes[LEFT]
    gx = lb[0] + 0.62 * (lb[2] - lb[0])
    gy = np.nanmax(bottom[int(gx * size) - 2:int(gx * size) + 3]) + 0.04
    bubble = ((X - gx) / 0.055) ** 2 + ((Y - gy) / 0.028) ** 2 < 1
    bubble &= Y < gy + 0.012  # air-fluid level
    air_extra = ndi.gaussian_filter(0.5 * trachea + 0.22 * bronchi * (1 - lung) + 0.45 * bubble,
                                    size / 256 * 1.2).astype(np.float32)

    vessels = _vessel_tree(size, lung, side, hila, rng)
    scale = np.percentile(vessels[lung_hard], 99) + 1e-6
    vessels = np.clip(vessels / scale, 0, 1.5) * 0.08
    periphery = smoothstep(0.0, 0.06 * size, dist)
    vessels = (vessels * (0.35 + 0.65 * periphery)).astype(np.float32)
    # hila: dense pulmonary arteries
    for sid, (hx, hy) in hila.items():
        r = np.sqrt(((X - hx) / 0.035) ** 2 + ((Y - hy) / 0.06) ** 2)
        vessels += 0.08 * np.clip(1 - r, 0, 1) * lung
    # fine parenchymal texture (band-passed noise), part of the markings: gone where the lung is
    noise = rng.standard_normal((size, size)).astype(np.float32)
    s = size / 256
    texture = ndi.gaussian_filter(noise, 0.9 * s) - ndi.gaussian_filter(noise, 2.5 * s)
    vessels += (0.05 / (texture.std() + 1e-6)) * 0.12 * texture * lung
    if inflated:
        vessels *= 0.8

    xs = np.nonzero(lung_hard.any(0))[0]
    thorax = (xs.min() / size, (xs.max() + 1) / size)
    # diaphragm level under the heart: the lung bases at the middle of each lung, averaged
    dia = float(np.mean([bottom[int((boxes[s][0] + 0.35 * (boxes[s][2] - boxes[s][0]) if s == RIGHT else
                                     boxes[s][2] - 0.35 * (boxes[s][2] - boxes[s][0])) * size)] for s in (RIGHT, LEFT)]))
    # abdomen: denser than the chest wall, from the diaphragm curve down (bridged under the heart)
    cols = np.arange(size)
    ok = np.isfinite(bottom)
    curve = np.interp(cols, cols[ok], bottom[ok]).astype(np.float32)
    beyond = np.maximum(cols[ok][0] - cols, cols - cols[ok][-1]).clip(0) / size
    curve += 1.5 * beyond  # lateral to the costophrenic angles the boundary drops away
    mid = np.abs((cols + 0.5) / size - 0.5) < 0.12
    curve[mid] = np.maximum(curve[mid], dia)
    abdomen = smoothstep(-0.005, 0.03, Y - curve[None, :]) * smoothstep(0.0, 0.3, soft)
    abdomen = ndi.gaussian_filter(abdomen, size / 256 * 1.5).astype(np.float32)
    soft = ndi.gaussian_filter(soft, size / 256 * 1.5).astype(np.float32)
    base = Base(size, name, inflated, soft, bones, lung.astype(np.float32), side, air.astype(np.float32),
                air_extra, vessels, dist, ribs, boxes, hila, bottom, thorax, dia, abdomen, Y, X)
    for value in vars(base).values():  # cached and shared by every sample: read-only
        if isinstance(value, np.ndarray):
            value.flags.writeable = False
    return base
