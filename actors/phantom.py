"""The `phantom` image backend: a deterministic, entity-conditioned frontal CXR renderer that
needs no weights, plus its Ray Data stage.

render_phantom(entities, seed, size, report=None) -> PhantomResult(image uint8, masks, provenance).
Given the report written for the entities, a finding is drawn where the report's sentence about
it says (a text-to-image model reads the report too, so image and text agree on laterality);
without one, the ANATOMY entities lend their places in order. Each finding draws from its own
random stream (seed + the entity's text), so adding a finding never moves the others, and the
same (entities, seed, size, report) always gives the same bytes.
Side convention: the patient's LEFT is on the image RIGHT (radiological display).
"""
from __future__ import annotations

import re
import zlib
from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np
from scipy import ndimage as ndi

from actors.anatomy_model import N_TEMPLATES, build_base, smoothstep
from actors.phantom_findings import DRAWERS, Canvas, Where, finding_for, parse_location
from engine.images.pipeline import ImageBackend, empty_output, encode_result, finish_output, reject_row, row_reason, stage_settings

POSITIVE = ("ABNORMALITY", "DISEASE")
NEGATED = ("NON-ABNORMALITY", "NON-DISEASE")
ANATOMY = "ANATOMY"
AIR_SCALE = 0.3  # how much full lung air darkens the image, in density units
HEART_FINDINGS = ("cardiomegaly",)
CORE_DENSITY = 0.3  # heart, mediastinum and abdomen over the chest wall
FILM = 1.6  # film-like response: compresses the dense end


@dataclass
class FindingPlan:
    entity: str
    type: str
    finding: str
    where: Where
    source: str  # where the side/zone came from: "report", "entity", "anatomy" or "default"


@dataclass
class PhantomResult:
    image: np.ndarray  # uint8 (size, size)
    masks: list[dict] = field(default_factory=list)  # finding, entity, side, zone, mask (bool), bbox
    provenance: dict = field(default_factory=dict)


def _entity(e: Any, i: int) -> tuple[str, str]:
    try:
        text, etype = e["text"], e["type"]
    except (TypeError, KeyError, IndexError):
        raise ValueError(f"entity {i}: expected a mapping with 'text' and 'type', got {e!r}") from None
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"entity {i}: empty text")
    etype = str(etype)
    if etype not in POSITIVE + NEGATED + (ANATOMY,):
        raise ValueError(f"entity {i} ({text!r}): unknown type {etype!r}")
    return text.strip(), etype


_SENTENCE_END = re.compile(r"(?<=[.;])\s+|\n+")


def report_sentence(report: Optional[str], entity: str) -> Optional[str]:
    """The first sentence of `report` that names `entity` (whole words, any case), or None."""
    if not report:
        return None
    rx = re.compile(rf"(?<![\w-]){re.escape(entity)}(?![\w-])", re.I)
    return next((s for s in _SENTENCE_END.split(report) if rx.search(s)), None)


def plan_findings(entities, report: Optional[str] = None) -> tuple[list[FindingPlan], dict]:
    """Decide what to draw and where; negated entities draw nothing. A finding the report names
    goes where that sentence places it (nowhere in particular if it names no place); otherwise
    the ANATOMY entities lend their side/zone, in order, to the lateralisable findings that do not
    name their own."""
    items = [_entity(e, i) for i, e in enumerate(entities or [])]
    anatomy = [parse_location(t) for t, ty in items if ty == ANATOMY]
    places = [w for w in anatomy if w.side or w.zone]
    info = {"negated": [t for t, ty in items if ty in NEGATED], "undrawable": [],
            "anatomy": [t for t, ty in items if ty == ANATOMY]}
    plans: list[FindingPlan] = []
    j = 0
    for text, ty in items:
        if ty not in POSITIVE:
            continue
        name = finding_for(text)
        if name is None:
            info["undrawable"].append(text)
            continue
        drawer = DRAWERS[name]
        own = parse_location(text)
        sentence = report_sentence(report, text)
        if sentence is not None:
            where, source = parse_location(sentence), "report"
        elif own.side:
            where, source = own, "entity"
        elif drawer.lateral and places:  # the finding's own zone (if any) wins over the lent one
            lent = places[j % len(places)]
            where, source = Where(lent.side, own.zone or lent.zone), "anatomy"
            j += 1
        else:
            where, source = own, "entity" if own.zone else "default"
        if where.zone is None and drawer.default_zone:
            where = Where(where.side, drawer.default_zone)
        plans.append(FindingPlan(text, ty, name, where, source))
    return plans, info


def _rng(seed: int, *keys: int) -> np.random.Generator:
    return np.random.default_rng([int(seed) & 0xFFFFFFFFFFFFFFFF, *keys])


def _heart(cv: Canvas, rng) -> tuple[np.ndarray, np.ndarray, float]:
    """Cardiomediastinal silhouette as left/right border curves per row, and the resulting
    cardiothoracic ratio (widest heart diameter / widest inner thoracic diameter).

    Upper mediastinum: a column with the aortic knob on the left. Heart: the right border bulges
    from the right hilum to the diaphragm; the left border sweeps down and out to the apex. Two
    thirds of the heart lie left of the midline."""
    b = cv.base
    ctr = cv.heart.get("ctr") or float(rng.uniform(0.40, 0.48))
    tx0, tx1 = b.thorax
    width = ctr * (tx1 - tx0)
    share = rng.uniform(0.62, 0.7)
    hw_l, hw_r = share * width, (1 - share) * width
    dia, y = b.dia, b.Y[:, :1]
    mh = rng.uniform(0.045, 0.055)
    knob = 0.03 * np.exp(-(((y - 0.25) / 0.03) ** 2))
    top_r = b.hila[1][1] - 0.01
    t_r = np.clip((y - top_r) / (dia - top_r), 0, 1)
    right = mh + (hw_r - mh) * np.sin(np.pi / 2 * np.minimum(t_r / 0.8, 1)) ** 0.8 * (1 - 0.1 * np.clip((t_r - 0.8) / 0.2, 0, 1))
    top_l = b.hila[2][1] + 0.02
    t_l = np.clip((y - top_l) / (dia - 0.015 - top_l), 0, 1)
    left = mh + (hw_l - mh) * np.sin(np.pi / 2 * t_l) ** 0.65 * (1 - 0.3 * np.clip((t_l - 0.85) / 0.15, 0, 1) ** 2)
    left = np.maximum(left, mh + knob)
    centre = 0.5 + 0.004
    edge = 1.2 / b.size
    inside = (1 - smoothstep(-edge, edge, b.X - centre - left)) * (1 - smoothstep(-edge, edge, centre - right - b.X))
    # projected thickness: a rounded cross-section, thinner at the borders and up top
    half = (left + right) / 2
    u = (b.X - (centre + (left - right) / 2)) / half
    thick = np.sqrt(np.clip(1 - u ** 2, 0, 1))
    upper = 0.7 + 0.3 * smoothstep(min(top_r, top_l) - 0.05, min(top_r, top_l) + 0.08, b.Y)
    silhouette = (inside * (0.55 + 0.45 * thick) * upper).astype(np.float32)
    hard = (inside > 0.5) & (b.Y > max(top_r, top_l)) & (b.Y < dia)  # the heart, not the great vessels
    ctr_measured = float(np.max(left + right) / (tx1 - tx0))
    cv.heart.update(ctr=ctr, ctr_measured=ctr_measured, mask=hard)
    return silhouette, inside.astype(np.float32), ctr_measured


def _pose(size: int, rng) -> tuple[np.ndarray, np.ndarray]:
    """Small patient rotation, magnification and shift: output -> input affine for ndimage."""
    ang = np.deg2rad(np.clip(rng.normal(0, 1.5), -4, 4))
    scale = rng.uniform(0.95, 1.04)
    shift = rng.uniform(-0.02, 0.02, 2) * size
    c, s = np.cos(ang), np.sin(ang)
    m = np.array([[c, -s], [s, c]]) / scale
    centre = np.array([size / 2 - 0.5] * 2)
    return m, centre - m @ centre - shift


def _warp_image(img: np.ndarray, matrix: np.ndarray, offset: np.ndarray) -> np.ndarray:
    """The same bilinear warp as ndimage.affine_transform(order=1, mode="nearest"), done by
    Pillow (about twice as fast); edges replicated by padding first."""
    from PIL import Image

    pad = max(4, int(0.1 * img.shape[0]))
    src = np.pad(img.astype(np.float32, copy=False), pad, mode="edge")
    off = offset + pad  # the output frame is unchanged; input coordinates shift by the pad
    a = np.array([[matrix[1, 1], matrix[1, 0]], [matrix[0, 1], matrix[0, 0]]])
    c = np.array([off[1], off[0]]) + 0.5 - a @ np.array([0.5, 0.5])  # pixel centres -> PIL corners
    im = Image.fromarray(src, mode="F")
    out = im.transform((img.shape[1], img.shape[0]), Image.AFFINE,
                       (a[0, 0], a[0, 1], c[0], a[1, 0], a[1, 1], c[1]), resample=Image.BILINEAR)
    return np.asarray(out)


def _warp_mask(mask: np.ndarray, matrix: np.ndarray, offset: np.ndarray) -> np.ndarray:
    """Warp a boolean mask with the image's pose, only over the window it can land in."""
    size = mask.shape[0]
    ys, xs = np.nonzero(mask)
    out = np.zeros_like(mask, dtype=bool)
    if len(ys) == 0:
        return out
    corners = np.array([[ys.min(), xs.min()], [ys.min(), xs.max()], [ys.max(), xs.min()], [ys.max(), xs.max()]], float)
    land = (np.linalg.inv(matrix) @ (corners - offset).T).T  # input -> output coordinates
    lo = np.clip(np.floor(land.min(0)) - 2, 0, size).astype(int)
    hi = np.clip(np.ceil(land.max(0)) + 3, 0, size).astype(int)
    if np.any(hi <= lo):
        return out
    window = ndi.affine_transform(mask.astype(np.float32), matrix, offset=offset + matrix @ lo,
                                  output_shape=tuple(hi - lo), order=1, mode="constant")
    out[lo[0]:hi[0], lo[1]:hi[1]] = window > 0.5
    return out


def render_phantom(entities, seed: int, size: int = 256, report: Optional[str] = None) -> PhantomResult:
    """Draw one frontal CXR phantom for an entity list (placed as `report` says, when given).
    Raises ValueError for malformed input."""
    if not isinstance(size, (int, np.integer)) or size < 32:
        raise ValueError(f"size must be an integer >= 32, got {size!r}")
    plans, info = plan_findings(entities, report)
    anat = _rng(seed, 1)
    template = int(anat.integers(N_TEMPLATES))
    inflated = any(p.finding == "emphysema" for p in plans)
    base = build_base(int(size), template, inflated)
    cv = Canvas.new(base)

    def draw(k: int, p: FindingPlan):
        occurrence = sum(q.entity == p.entity for q in plans[:k])
        rng = _rng(seed, 2, zlib.crc32(p.entity.lower().encode()), occurrence)
        return DRAWERS[p.finding].fn(cv, p.where, rng, p.entity.lower())

    # The heart goes first (findings must know where it hides the lung); each part of the
    # picture has its own random stream, so no finding shifts the pose or another finding.
    results = {k: draw(k, p) for k, p in enumerate(plans) if p.finding in HEART_FINDINGS}
    heart, cover, ctr = _heart(cv, _rng(seed, 4))
    cv.heart_soft = cover
    results.update({k: draw(k, p) for k, p in enumerate(plans) if p.finding not in HEART_FINDINGS})
    drawn = [(p, *results[k]) for k, p in enumerate(plans)]
    lung_air = base.air * (1 - heart) ** 2 * (1 - cv.fill)  # some retrocardiac lung shows through
    core = np.maximum(heart, base.abdomen)
    density = (base.soft + CORE_DENSITY * core
               + base.bones + cv.bones_delta
               + base.vessels * cv.keep * (1 - cv.fill)
               - AIR_SCALE * (lung_air + base.air_extra + cv.air_add) + cv.add)

    matrix, offset = _pose(size, _rng(seed, 5))
    warped = _warp_image(density, matrix, offset)

    # exposure (window/gamma) and detector noise, then 8 bits
    look = _rng(seed, 3)
    gamma, gain, bias = look.uniform(0.85, 1.2), look.uniform(0.92, 1.08), look.uniform(-0.04, 0.03)
    # film-like response: compresses the dense end so the mediastinum does not saturate
    img = (1 - np.exp(-FILM * np.clip(warped * gain + bias, 0, None))) / (1 - np.exp(-FILM))
    img = np.clip(img, 0, 1) ** gamma
    noise = look.standard_normal((size, size)).astype(np.float32)
    grain = ndi.gaussian_filter(look.standard_normal((size, size)).astype(np.float32), 1.0 * size / 256)
    img = img + look.uniform(0.008, 0.02) * noise + 0.03 * grain
    image = (np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8)

    masks = []
    for p, mask, side in drawn:
        if mask is None:  # cardiomegaly: the enlarged heart itself
            mask = cv.heart["mask"]
        m = _warp_mask(mask, matrix, offset)
        ys, xs = np.nonzero(m)
        if len(ys) == 0:
            info["undrawable"].append(f"{p.entity} (out of frame)")
            continue
        masks.append({"finding": p.finding, "entity": p.entity, "side": side, "zone": p.where.zone or "",
                      "mask": m, "bbox": [int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1],
                      "source": p.source})
    provenance = {"backend": "phantom", "seed": int(seed), "size": int(size), "template": base.template,
                  "ctr": round(ctr, 3), "drawn": [f"{m['entity']} -> {m['finding']} ({m['side']}"
                                                  f"{', ' + m['zone'] if m['zone'] else ''})" for m in masks],
                  **info}
    return PhantomResult(image, masks, provenance)


class PhantomStage(ImageBackend):
    """Ray Data stage: rows with sample_id, entities, seed (and the report's findings and
    impression, when the rows have them) -> image, masks, provenance. A row that fails is
    returned with ok=False and the reason; the batch carries on."""

    name = "phantom"
    reads = ("sample_id", "entities", "seed")

    @classmethod
    def can_draw(cls, entity_text: str) -> bool:
        return finding_for(entity_text) is not None

    def __init__(self, config: Optional[dict] = None):
        self.settings = stage_settings(config)
        self.size = int(self.settings["size"])

    def __call__(self, batch: dict) -> dict:
        out = empty_output()
        for i in range(len(batch["sample_id"])):
            sid = str(batch["sample_id"][i])
            try:
                entities = _row_entities(batch["entities"][i])
                seed = batch["seed"][i]
                if seed is None or (isinstance(seed, float) and np.isnan(seed)):
                    raise ValueError("seed is missing")
                res = render_phantom(entities, int(seed), self.size, report_text(batch, i))
                encode_result(out, sid, res.image, res.masks, res.provenance)
            except Exception as exc:  # noqa: BLE001 - a bad row is a rejected row, never a crashed batch
                reject_row(out, sid, row_reason("phantom", "error", f"{type(exc).__name__}: {exc}"),
                           {"backend": "phantom", "seed": _int_or(batch["seed"][i]), "size": self.size})
        return finish_output(out)


def report_text(batch: dict, i: int) -> Optional[str]:
    """Row i's findings and impression (plan rows have none: None)."""
    parts = [batch[c][i] for c in ("findings", "impression") if c in batch]
    parts = [str(p).strip() for p in parts if isinstance(p, str) and p.strip()]
    return "\n".join(parts) or None


def _row_entities(value) -> list[dict]:
    if value is None:
        return []
    return [{"text": str(e["text"]), "type": str(e["type"])} for e in value]


def _int_or(v, default: int = -1) -> int:
    try:
        return int(v)
    except (TypeError, ValueError):
        return default
