"""Entity extraction quality against the IU X-ray MeSH tags, and throughput.

Report level, per finding: a report is a reference positive when one of its MeSH major tags has
the finding's heading (the part before the first '/'); it is predicted positive when the
extractor returns a positive (ABNORMALITY or DISEASE) entity with one of the finding's canonical
names. Reports tagged "normal" are negatives for every finding; reports tagged "No Indexing"
are left out. Baseline in the same run: the same lexicon without negation or statements (every
mention counts as present), i.e. what the negation rules buy.

    .venv/bin/python -m benchmarks.bench_extraction [--quick] [--errors "Pleural Effusion"]
"""
from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from pathlib import Path

from benchmarks import write_results
from engine.core.config import CorpusConfig
from engine.text.corpora import load_corpus
from engine.text.entities import ANATOMY, is_negated
from engine.text.lexicon import load_lexicon, tokenize
from engine.text.lexicon_extractor import LexiconExtractor

RESULTS = Path(__file__).parent / "results" / "extraction.md"

# Finding -> (MeSH headings, lexicon canonical names). The frequent IU X-ray finding headings;
# anatomical headings whose meaning sits in the qualifier (Lung/hypoinflation, Aorta/tortuous,
# Thoracic Vertebrae/degenerative) are left out of the table. One exception: "Cardiac
# Shadow/enlarged" is the indexers' other spelling of cardiomegaly, so it counts for it.
FINDINGS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "Opacity": (("Opacity",), ("opacity",)),
    "Cardiomegaly": (("Cardiomegaly", "Cardiac Shadow/enlarged"), ("cardiomegaly",)),
    "Pulmonary Atelectasis": (("Pulmonary Atelectasis",), ("atelectasis",)),
    "Calcinosis": (("Calcinosis",), ("calcification",)),
    "Calcified Granuloma": (("Calcified Granuloma",), ("calcified granuloma",)),
    "Cicatrix": (("Cicatrix",), ("scarring",)),
    "Markings": (("Markings",), ("interstitial markings", "bronchovascular crowding")),
    "Pleural Effusion": (("Pleural Effusion",), ("pleural effusion",)),
    "Atherosclerosis": (("Atherosclerosis",), ("atherosclerosis",)),
    "Catheters, Indwelling": (("Catheters, Indwelling",),
                              ("central venous catheter", "picc line", "port catheter", "dialysis catheter",
                               "pulmonary artery catheter", "ventriculoperitoneal shunt")),
    "Airspace Disease": (("Airspace Disease",), ("airspace disease",)),
    "Density": (("Density",), ("density",)),
    "Deformity": (("Deformity",), ("deformity",)),
    "Granulomatous Disease": (("Granulomatous Disease",), ("granulomatous disease",)),
    "Nodule": (("Nodule",), ("nodule",)),
    "Implanted Medical Device": (("Implanted Medical Device",),
                                 ("pacemaker", "defibrillator", "loop recorder", "prosthetic valve",
                                  "cardiac occluder device")),
    "Surgical Instruments": (("Surgical Instruments",), ("surgical clips",)),
    "Scoliosis": (("Scoliosis",), ("scoliosis",)),
    "Fractures, Bone": (("Fractures, Bone",), ("fracture", "compression fracture")),
    "Pulmonary Congestion": (("Pulmonary Congestion",), ("pulmonary vascular congestion",)),
    "Osteophyte": (("Osteophyte",), ("osteophytes",)),
    "Infiltrate": (("Infiltrate",), ("infiltrate",)),
    "Spondylosis": (("Spondylosis",), ("spondylosis",)),
    "Emphysema": (("Emphysema", "Pulmonary Emphysema"), ("emphysema",)),
    "COPD": (("Pulmonary Disease, Chronic Obstructive",), ("copd",)),
    "Hernia, Hiatal": (("Hernia, Hiatal",), ("hiatal hernia",)),
    "Pulmonary Edema": (("Pulmonary Edema",), ("pulmonary edema",)),
    "Pneumonia": (("Pneumonia",), ("pneumonia",)),
}
TOP = 20  # rows in the table: the most frequent findings


def headings(mesh: list[str]) -> set[str]:
    """MeSH headings (before the first '/'), plus heading/first-qualifier pairs so that a finding
    can name e.g. "Cardiac Shadow/enlarged"."""
    out = set()
    for m in mesh:
        parts = [p.strip() for p in m.split("/")]
        out.add(parts[0])
        if len(parts) > 1:
            out.add(f"{parts[0]}/{parts[1]}")
    return out


class KeywordBaseline:
    """Lexicon phrases only: no statements, no negation."""

    def __init__(self):
        self.lexicon = load_lexicon()

    def extract(self, texts):
        out = []
        for text in texts:
            seen, ents = set(), []
            for m in self.lexicon.match_phrases(tokenize(text)):
                e = self.lexicon.entries[m.name]
                if (e.name, e.type) not in seen:
                    seen.add((e.name, e.type))
                    ents.append({"text": e.name, "type": e.type})
            out.append(ents)
        return out


@dataclass
class Score:
    tp: int = 0
    fp: int = 0
    fn: int = 0

    @property
    def precision(self) -> float:
        return self.tp / (self.tp + self.fp) if self.tp + self.fp else 0.0

    @property
    def recall(self) -> float:
        return self.tp / (self.tp + self.fn) if self.tp + self.fn else 0.0

    @property
    def f1(self) -> float:
        p, r = self.precision, self.recall
        return 2 * p * r / (p + r) if p + r else 0.0


def positives(entities: list[dict]) -> set[str]:
    return {e["text"] for e in entities if e["type"] != ANATOMY and not is_negated(e["type"])}


def score(reports, predictions, findings) -> dict[str, Score]:
    out = {f: Score() for f in findings}
    for report, ents in zip(reports, predictions):
        gold, pred = headings(report.mesh), positives(ents)
        for f in findings:
            mesh_heads, names = FINDINGS[f]
            g, p = bool(gold & set(mesh_heads)), bool(pred & set(names))
            out[f].tp += g and p
            out[f].fp += p and not g
            out[f].fn += g and not p
    return out


def micro(scores: dict[str, Score]) -> Score:
    return Score(sum(s.tp for s in scores.values()), sum(s.fp for s in scores.values()),
                 sum(s.fn for s in scores.values()))


def timed(extractor, texts, repeats: int) -> tuple[list, float]:
    best, preds = float("inf"), None
    for _ in range(repeats):
        t0 = time.perf_counter()
        preds = extractor.extract(texts)
        best = min(best, time.perf_counter() - t0)
    return preds, best


def show_errors(finding: str, reports, predictions, limit: int = 40) -> None:
    mesh_heads, names = FINDINGS[finding]
    fps, fns = [], []
    for r, ents in zip(reports, predictions):
        g, p = bool(headings(r.mesh) & set(mesh_heads)), bool(positives(ents) & set(names))
        if p and not g:
            fps.append(r)
        elif g and not p:
            fns.append(r)
    for label, rows in (("FALSE POSITIVES", fps), ("FALSE NEGATIVES", fns)):
        print(f"== {finding}: {label} ({len(rows)})")
        for r in rows[:limit]:
            print(f"- [{r.report_id}] mesh={r.mesh}\n  {r.text}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="first 1,000 reports, one timing run")
    ap.add_argument("--errors", metavar="FINDING", help="print false positives/negatives of one finding")
    args = ap.parse_args(argv)
    if args.errors and args.errors not in FINDINGS:
        ap.error(f"unknown finding {args.errors!r}; known: {', '.join(FINDINGS)}")

    reports = [r for r in load_corpus(CorpusConfig(limit=1000 if args.quick else None))
               if r.mesh and "No Indexing" not in headings(r.mesh)]
    texts = [r.text for r in reports]
    repeats = 1 if args.quick else 3
    lexicon_ex, baseline = LexiconExtractor(), KeywordBaseline()
    preds, t_lex = timed(lexicon_ex, texts, repeats)
    base_preds, t_base = timed(baseline, texts, repeats)
    if args.errors:
        show_errors(args.errors, reports, preds)
        return 0

    support = {f: sum(bool(headings(r.mesh) & set(FINDINGS[f][0])) for r in reports) for f in FINDINGS}
    top = sorted(FINDINGS, key=lambda f: -support[f])[:TOP]
    ours, base = score(reports, preds, top), score(reports, base_preds, top)
    n_normal = sum("normal" in headings(r.mesh) for r in reports)
    lines = [
        f"# Entity extraction vs IU X-ray MeSH tags ({len(reports):,} reports, {n_normal:,} tagged normal)",
        "",
        "Report level. Predicted: a positive (non-negated) entity with one of the finding's canonical "
        "names. Baseline: the same lexicon without negation/statements (every mention counts).",
        "",
        "| finding (MeSH heading) | reports | precision | recall | F1 | baseline P | baseline R | F1 vs baseline |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for f in top:
        s, b = ours[f], base[f]
        ratio = f"{s.f1 / b.f1:.2f}x" if b.f1 else "n/a"
        lines.append(f"| {f} | {support[f]} | {s.precision:.3f} | {s.recall:.3f} | {s.f1:.3f} | "
                     f"{b.precision:.3f} | {b.recall:.3f} | {ratio} |")
    m, mb = micro(ours), micro(base)
    lines.append(f"| **micro average** | {sum(support[f] for f in top)} | **{m.precision:.3f}** | "
                 f"**{m.recall:.3f}** | **{m.f1:.3f}** | {mb.precision:.3f} | {mb.recall:.3f} | "
                 f"{m.f1 / mb.f1:.2f}x |")
    macro_f1 = sum(ours[f].f1 for f in top) / len(top)
    macro_b = sum(base[f].f1 for f in top) / len(top)
    n_ents = sum(len(p) for p in preds)
    lines += [
        "",
        f"Macro F1 over these {len(top)} findings: {macro_f1:.3f} (baseline {macro_b:.3f}).",
        "",
        "| extractor | reports/s | s for the corpus | relative |",
        "|---|---|---|---|",
        f"| lexicon + negation | {len(texts) / t_lex:,.0f} | {t_lex:.2f} | {t_base / t_lex:.2f}x |",
        f"| keyword baseline | {len(texts) / t_base:,.0f} | {t_base:.2f} | 1.00x |",
        "",
        f"{n_ents:,} entities extracted ({n_ents / len(texts):.1f} per report); best of {repeats} run(s), "
        "single process.",
    ]
    text = "\n".join(lines) + "\n"
    if args.quick:
        print(text)
    else:
        write_results(RESULTS, text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
