"""The CPU default report writer: composes FINDINGS and IMPRESSION from a plan row's entities
with seeded choices among report-style phrasings. No weights; deterministic per (seed, candidate).

- present findings (ABNORMALITY) are stated in FINDINGS with the anatomy that locates them
  ("Pleural effusion is seen in the left costophrenic angle."), in the usual report order
  (devices, lungs, pleura, heart, mediastinum, diaphragm, bones, soft tissues);
- absent findings (NON-ABNORMALITY) become negative statements, often listed together ("No
  pneumothorax or pleural effusion."), a few in the words reports use ("The heart size is
  normal." when the heart is among the anatomy);
- diagnoses (DISEASE / NON-DISEASE) and the main present findings go to IMPRESSION.
Each sentence names its entities as the plan wrote them (with `options.descriptors`, sometimes with
a descriptor the corpus uses for that finding: "Small pleural effusion is seen."), and adds no
other clinical word, so the plan's own extractor reads back the sampled set (report QC measures it)."""
from __future__ import annotations

import re
from typing import Optional

import numpy as np
from pydantic import BaseModel, ConfigDict

from engine.text.entities import ABNORMALITY, ANATOMY, DISEASE, NON_ABNORMALITY, NON_DISEASE
from engine.reports.parse import format_report
from engine.reports.pipeline import CandidateStage

# --- where things are ----------------------------------------------------------------------------
# A finding's group, from words in its name (the lexicon gives regions to anatomy only); the first
# matching pattern wins, the default is lung parenchyma. Each group lists the anatomy kinds that
# can locate it, with a cost: 0 = the natural place, higher = plausible but vaguer.
_GROUPS = (
    ("global", r"^(?:abnormality|acute cardiopulmonary abnormality|low lung volumes|hyperinflation)$", {}),
    ("line", r"catheter|picc|central venous|\bport\b|\bline\b", {"central vein": 0, "pulmonary vessel": 0.5}),
    ("gi tube", r"nasogastric|gastrostomy|feeding tube|enteric|orogastric",
     {"abdomen": 0, "esophagus": 0}),
    ("airway tube", r"tracheostomy|endotracheal", {"airway": 0, "neck": 0.5}),
    ("chest tube", r"chest tube", {"lung": 0, "pleura": 0, "apex": 0.5, "base": 0.5}),
    ("cardiac device", r"pacemaker|defibrillator|loop recorder|prosthetic valve|occluder|bypass graft|"
                       r"assist device", {"heart": 0, "chest wall": 0.5, "mediastinum": 1}),
    ("shunt", r"shunt", {"neck": 0, "soft tissue": 0.5, "abdomen": 0.5}),
    ("abdominal device", r"ivc filter|embolization coil", {"abdomen": 0, "central vein": 0.5}),
    ("bone", r"sternotomy|orthopedic|fusion hardware|fracture|osteo|spondyl|scolio|kyphos|lordosis|"
             r"degenerat|pectus|dislocation|deformity|thoracotomy|arthritis|myeloma|bone|osseous|"
             r"lytic|sclerotic|\bribs?\b|cervical rib", {"bone": 0, "soft tissue": 1.5}),
    ("neck", r"goiter|thyroid", {"neck": 0, "mediastinum": 0.5, "airway": 1}),
    ("soft tissue", r"soft tissue|subcutaneous|breast|mastectomy|axill",
     {"soft tissue": 0, "neck": 1}),
    ("device", r"device|leads|neurostimulator|piercing|foreign body|clips|stent|wires|hardware",
     {"soft tissue": 0.5, "neck": 1, "abdomen": 1, "heart": 1.5, "lung": 1.5}),
    ("heart", r"pericard|cardi|heart|ventric|atri(?:al|um)|valvular|coronary",
     {"heart": 0, "mediastinum": 1}),
    ("aorta", r"aort|atherosclero", {"aorta": 0, "mediastinum": 0.5}),
    ("pulmonary vessels", r"pulmonary vascular|vascular congestion|pulmonary hypertension|pulmonary embolism",
     {"pulmonary vessel": 0, "hilum": 0.5, "lung": 1}),
    ("hiatus", r"hiatal", {"retrocardiac": 0, "mediastinum": 0.5, "diaphragm": 1}),
    ("nodes", r"lymph|adenopath|lymphoma", {"nodal station": 0, "hilum": 0, "mediastinum": 0.5}),
    ("mediastinum", r"mediastin|hilar|hilum|bronchovascular|thym",
     {"mediastinum": 0, "hilum": 0, "retrosternal": 0.5, "nodal station": 1}),
    ("blunting", r"costophrenic", {"costophrenic": 0}),
    ("pleura", r"pleura|effusion|pneumothorax|hydropneumo|hemothorax|fissur|empyema",
     {"pleura": 0, "costophrenic": 0, "base": 0.5, "apex": 0.5, "lower": 0.5, "lung": 1}),
    ("diaphragm", r"diaphragm|hernia|eventration|pneumoperitoneum|free air|subdiaphragm|bowel|"
                  r"cholelith|organomegaly", {"diaphragm": 0, "abdomen": 0.5, "base": 1}),
    ("lung", r"", {"lung": 0, "upper": 0, "middle": 0, "lower": 0, "apex": 0, "base": 0, "costophrenic": 0.5,
                   "hilum": 0.5}),
)
_GROUP_RES = [(name, re.compile(pattern), hosts) for name, pattern, hosts in _GROUPS]
_GROUP_HOSTS = {name: hosts for name, _, hosts in _GROUPS}
_REPORT_ORDER = ("line", "gi tube", "airway tube", "chest tube", "cardiac device", "shunt", "abdominal device",
                 "device", "global", "lung", "pleura", "blunting", "heart", "pulmonary vessels", "mediastinum", "nodes",
                 "aorta", "hiatus", "diaphragm", "neck", "bone", "soft tissue")
assert set(_REPORT_ORDER) == set(_GROUP_HOSTS), "every finding group needs a place in the report order"
_DEVICE_GROUPS = {"line", "gi tube", "airway tube", "chest tube", "cardiac device", "shunt",
                  "abdominal device", "device"}
_LINE_GROUPS = {"line", "gi tube", "airway tube", "chest tube"}  # things with a tip
# Added to the fit cost: present findings take any good fit, diagnoses and absent findings only
# their natural places (with max_fit_cost 0.75).
_HOST_KIND_COST = {"present": 0.0, "diagnosis": 0.6, "absent": 0.5}


def finding_group(name: str) -> str:
    low = name.lower()
    for group, pattern, _ in _GROUP_RES:
        if pattern.search(low):
            return group
    return "lung"


def anatomy_kinds(name: str, region: Optional[str]) -> set[str]:
    """What an anatomy entry can host: its lexicon region, refined by its name where the region
    mixes things (the vessel region holds both the pulmonary vasculature and the central veins)."""
    if region is None:
        return set()
    low = name.lower()
    kinds = {region}
    if region == "mediastinum" and not re.search(r"^mediastinum$|silhouette", low):
        # Its parts host only what belongs there ("lymphadenopathy in the subcarinal region").
        kinds = set()
        if re.search(r"lymph|paratracheal|subcarinal|aortopulmonary", low):
            kinds.add("nodal station")
        if re.search(r"retrosternal|thymus", low):
            kinds.add("retrosternal")
    if region == "vessel":
        kinds = {"pulmonary vessel"} if "pulmonary" in low else {"central vein"}
    if "arter" in low and "pulmonary" in low:
        kinds = {"pulmonary vessel"}
    if re.search(r"vena cava|azygos|cavoatrial|right atrium", low):
        kinds.add("central vein")
    if re.search(r"aort|great vessels", low):
        kinds.add("aorta")
    if "esophag" in low:
        kinds.add("esophagus")
    if "retrocardiac" in low:
        kinds.add("retrocardiac")
    if "cardiomediastinal" in low:
        kinds.add("heart")
    if "chest wall" in low:
        kinds.add("chest wall")
    return kinds


def fit_cost(group: str, anatomy: str, region: Optional[str]) -> Optional[float]:
    """How well `anatomy` locates a finding of `group`; None: it does not."""
    hosts = _GROUP_HOSTS[group]
    if not hosts:
        return None
    if region is None:
        return 2.0  # anatomy the lexicon does not know: allowed, as a last resort
    costs = [hosts[k] for k in anatomy_kinds(anatomy, region) if k in hosts]
    return min(costs) if costs else None


# --- grammar -------------------------------------------------------------------------------------
_LATIN_PLURALS = {"hila", "bronchi", "apices", "bases", "viscera"}


def is_plural(name: str) -> bool:
    last = name.lower().split()[-1] if name.split() else ""
    if last in _LATIN_PLURALS or last.endswith("ae"):
        return True
    return last.endswith("s") and not last.endswith(("ss", "is", "us", "ous"))


def _cap(text: str) -> str:
    return text[:1].upper() + text[1:]


_ABBREVIATIONS = re.compile(r"\b(picc|copd|ivc|svc|cabg|icd|ng)\b")


def display(name: str) -> str:
    """An entity as a report writes it: abbreviations in capitals (the extractor ignores case)."""
    return _ABBREVIATIONS.sub(lambda m: m.group(1).upper(), name)


def join_list(items: list[str]) -> str:
    if len(items) <= 2:
        return " or ".join(items)
    return ", ".join(items[:-1]) + f", or {items[-1]}"


def fill(template: str, x: str = "", y: str = "", xs: Optional[list[str]] = None) -> str:
    """{x}/{X}: a finding (capitalised), {y}: anatomy, {xs}: a list; {is}/{are} agree with x,
    {y_is} with y."""
    x, xs = display(x), [display(v) for v in xs or []]
    out = template.format(x=x, X=_cap(x), y=y, xs=join_list(xs),
                          **{"is": "are" if is_plural(x) else "is", "y_is": "are" if is_plural(y) else "is"})
    return _cap(out)


# --- phrasings -----------------------------------------------------------------------------------
PHRASES = {
    "present": ["{X} {is} seen.", "{X} {is} noted.", "{X} {is} present.", "There is evidence of {x}.",
                "{X} {is} demonstrated."],
    "present_at": ["{X} {is} seen in the {y}.", "{X} {is} noted in the {y}.", "{X} {is} present in the {y}.",
                   "There is evidence of {x} in the {y}."],
    "device": ["{X} {is} in place.", "{X} {is} seen.", "{X} {is} noted.", "{X} {is} present."],
    "device_at": ["{X} {is} seen in the {y}.", "{X} {is} noted in the {y}.", "{X} {is} in place in the {y}."],
    "line_at": ["{X} terminates in the {y}.", "The tip of the {x} is in the {y}.",
                "The tip of the {x} projects over the {y}."],
    "absent": ["No {x}.", "There {is} no {x}.", "No evidence of {x}.", "No {x} {is} seen.",
               "There is no evidence of {x}.", "No {x} {is} identified."],
    "absent_at": ["No {x} in the {y}.", "There {is} no {x} in the {y}.", "No {x} {is} seen in the {y}."],
    "absent_list": ["No {xs}.", "There is no {xs}.", "No evidence of {xs}.", "No {xs} is seen."],
    "anatomy_only": ["The {y} {y_is} visualized.", "The {y} {y_is} included in the field of view."],
    "diagnosis": ["{X}.", "Findings consistent with {x}.", "Findings compatible with {x}.",
                  "Findings are consistent with {x}.", "Appearance consistent with {x}."],
    "diagnosis_at": ["{X} in the {y}.", "Findings consistent with {x} in the {y}."],
    "summary": ["{X}.", "{X} {is} noted."],
    "summary_at": ["{X} in the {y}."],
    "excluded": ["No {x}.", "No evidence of {x}.", "No radiographic evidence of {x}."],
}
# How reports say some findings without naming them; usable when the plan holds the anatomy the
# sentence names (the extractor reads both back: engine/data/lexicon.yaml `statements`).
STATEMENTS = {
    ("cardiomegaly", NON_ABNORMALITY, "heart"): ["The heart size is normal.", "The heart is not enlarged."],
    ("cardiomegaly", ABNORMALITY, "heart"): ["The heart is enlarged."],
    ("cardiomegaly", NON_ABNORMALITY, "cardiomediastinal silhouette"):
        ["The cardiomediastinal silhouette is within normal limits."],
    ("airspace disease", NON_ABNORMALITY, "lungs"): ["The lungs are clear."],
}


class TemplateComposer:
    """Composes one report from entities; `regions` maps anatomy names to lexicon regions."""

    def __init__(self, regions: Optional[dict[str, str]] = None, phrases: Optional[dict] = None,
                 statements: Optional[dict] = None, max_absent_list: int = 3, statement_rate: float = 0.7,
                 max_fit_cost: float = 0.75, descriptors: Optional[dict[str, dict]] = None):
        self.regions = regions or {}
        self.descriptors = descriptors or {}  # engine.text.descriptors: how the corpus qualifies findings
        self.phrases = phrases or PHRASES
        self.statements = STATEMENTS if statements is None else statements
        self.max_absent_list = max_absent_list
        self.statement_rate = statement_rate
        self.max_fit_cost = max_fit_cost  # a vaguer fit reads wrong: such anatomy stands alone

    def _pick(self, rng: np.random.Generator, kind: str) -> str:
        options = self.phrases[kind]
        return options[int(rng.integers(len(options)))]

    def describe(self, names: list[str], rng: np.random.Generator) -> dict[str, str]:
        """Finding -> how this report names it: with a descriptor as often as the corpus uses one
        ("small pleural effusion"), the word drawn by its corpus frequency; chosen once per report,
        so FINDINGS and IMPRESSION agree."""
        out = {}
        for x in names:
            entry = self.descriptors.get(x)
            u = float(rng.random())  # one draw per finding, so a table change moves no other choice
            if not entry:
                continue
            words, counts = list(entry["words"]), np.array(list(entry["words"].values()), float)
            if u < counts.sum() / entry["mentions"]:
                out[x] = f"{words[int(np.searchsorted(np.cumsum(counts), u * entry['mentions'], side='right'))]} {x}"
        return out

    def place_anatomy(self, anatomy: list[str], hosts: list[tuple[str, str]], rng) -> dict[str, str]:
        """Finding -> the anatomy that locates it: cheapest fits first, one anatomy per finding.
        `hosts` are (name, kind), kind present / diagnosis / absent; anatomy left unplaced gets
        a sentence of its own."""
        options = []
        for y in anatomy:
            for name, kind in hosts:
                cost = fit_cost(finding_group(name), y, self.regions.get(y))
                if cost is not None and cost <= self.max_fit_cost:
                    options.append((cost + _HOST_KIND_COST[kind], float(rng.random()), y, name))
        placed: dict[str, str] = {}
        used: set[str] = set()
        for _, _, y, name in sorted(options):
            if y not in used and name not in placed:
                placed[name] = y
                used.add(y)
        return placed

    def compose(self, entities: list[dict], seed: int, candidate: int = 0) -> tuple[str, str]:
        seed_words = [int(seed) & 0xFFFFFFFF, (int(seed) >> 32) & 0xFFFFFFFF, int(candidate)]
        rng = np.random.default_rng(seed_words)
        by_type: dict[str, list[str]] = {t: [] for t in (ABNORMALITY, NON_ABNORMALITY, DISEASE, NON_DISEASE, ANATOMY)}
        for e in entities:
            if e["text"] not in by_type[e["type"]]:
                by_type[e["type"]].append(e["text"])
        for names in by_type.values():
            rng.shuffle(names)
        present, absent = by_type[ABNORMALITY], by_type[NON_ABNORMALITY]
        diseases, excluded, anatomy = by_type[DISEASE], by_type[NON_DISEASE], list(by_type[ANATOMY])
        # its own stream: descriptors leave every other choice as it was without them
        say = self.describe(present + diseases, np.random.default_rng([*seed_words, 1]))

        findings: list[tuple[int, int, str]] = []  # (report order, 0 present / 1 absent / 2 other, text)
        # Natural statements first: they use up their anatomy.
        stated = set()
        for (x, etype, y), options in self.statements.items():
            if y in anatomy and x in by_type[etype] and rng.random() < self.statement_rate:
                order = _REPORT_ORDER.index(finding_group(x))
                findings.append((order, 0 if etype == ABNORMALITY else 1, options[int(rng.integers(len(options)))]))
                stated.add(x)
                anatomy.remove(y)
        present = [x for x in present if x not in stated]
        absent = [x for x in absent if x not in stated]
        # A global negative ("no acute cardiopulmonary abnormality") is an impression sentence.
        absent_global = [x for x in absent if finding_group(x) == "global"]
        absent = [x for x in absent if finding_group(x) != "global"]

        hosts = ([(x, "present") for x in present] + [(d, "diagnosis") for d in diseases]
                 + [(a, "absent") for a in absent])
        where = self.place_anatomy(anatomy, hosts, rng)
        loose = [y for y in anatomy if y not in where.values()]

        for x in present:
            group = finding_group(x)
            kind = "device" if group in _DEVICE_GROUPS else "present"
            if x in where:
                at = "line_at" if group in _LINE_GROUPS and rng.random() < 0.6 else f"{kind}_at"
                text = fill(self._pick(rng, at), x=say.get(x, x), y=where[x])
            else:
                text = fill(self._pick(rng, kind), x=say.get(x, x))
            findings.append((_REPORT_ORDER.index(finding_group(x)), 0, text))
        for x in absent:
            if x in where:
                findings.append((_REPORT_ORDER.index(finding_group(x)), 1,
                                 fill(self._pick(rng, "absent_at"), x=x, y=where[x])))
        plain_absent = sorted((x for x in absent if x not in where),
                              key=lambda x: _REPORT_ORDER.index(finding_group(x)))
        while plain_absent:
            size = int(rng.integers(1, min(self.max_absent_list, len(plain_absent)) + 1))
            chunk, plain_absent = plain_absent[:size], plain_absent[size:]
            text = (fill(self._pick(rng, "absent"), x=chunk[0]) if len(chunk) == 1
                    else fill(self._pick(rng, "absent_list"), xs=chunk))
            findings.append((_REPORT_ORDER.index(finding_group(chunk[0])), 1, text))
        for y in loose:
            findings.append((len(_REPORT_ORDER), 2, fill(self._pick(rng, "anatomy_only"), y=y)))
        findings.sort(key=lambda s: (s[0], s[1]))
        finding_text = [s[2] for s in findings]

        # IMPRESSION: diagnoses, the main present findings (devices only when nothing else),
        # excluded diagnoses, a global negative.
        impression = []
        for d in diseases:
            impression.append(fill(self._pick(rng, "diagnosis_at"), x=say.get(d, d), y=where[d]) if d in where
                              else fill(self._pick(rng, "diagnosis"), x=say.get(d, d)))
        all_present = by_type[ABNORMALITY]
        clinical = [x for x in all_present if finding_group(x) not in _DEVICE_GROUPS]
        summary = clinical or ([] if diseases else all_present)
        if summary:
            n_summary = int(rng.integers(0 if diseases else 1, min(2, len(summary)) + 1))
            for x in summary[:n_summary]:
                impression.append(fill(self._pick(rng, "summary_at"), x=say.get(x, x), y=where[x])
                                  if x in where and rng.random() < 0.5 else fill(self._pick(rng, "summary"), x=say.get(x, x)))
        impression += [fill(self._pick(rng, "excluded"), x=x) for x in excluded]
        impression += [fill(self._pick(rng, "excluded"), x=x) for x in absent_global]
        if not impression:  # nothing positive: restate what is absent
            restate = absent[: self.max_absent_list] or [x for x in stated if x in by_type[NON_ABNORMALITY]][:1]
            if restate:
                impression.append(fill(self._pick(rng, "absent") if len(restate) == 1 else self._pick(rng, "absent_list"),
                                       x=restate[0], xs=restate))
            elif all_present:
                impression.append(fill(self._pick(rng, "summary"), x=say.get(all_present[0], all_present[0])))
        if not finding_text:
            # Only diagnoses (and global negatives): the findings describe them too.
            finding_text = [fill(self._pick(rng, "present_at"), x=say.get(d, d), y=where[d]) if d in where
                            else fill(self._pick(rng, "present"), x=say.get(d, d)) for d in diseases]
            finding_text += [fill(self._pick(rng, "excluded"), x=x) for x in excluded + absent_global]
        return " ".join(finding_text), " ".join(impression)


class TemplateOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    lexicon: Optional[str] = None  # anatomy regions from this lexicon YAML; default: the packaged one
    max_absent_list: int = 3  # absent findings listed in one sentence at most
    statement_rate: float = 0.7  # how often a natural statement replaces "No cardiomegaly." etc.
    # how the corpus qualifies findings ("small", "patchy"; engine.text.descriptors): "packaged"
    # (mined from IU X-ray), a table's path, or null (default) for the bare entity names; off by
    # default until it measures better in `make demo` (docs/training.md)
    descriptors: Optional[str] = None


def anatomy_regions(lexicon_path: Optional[str] = None) -> dict[str, str]:
    """Anatomy name -> region, from the lexicon the extractor uses."""
    from engine.text.lexicon import load_lexicon

    return {e.name: e.region for e in load_lexicon(lexicon_path) if e.type == ANATOMY}


def descriptor_table(source: Optional[str]) -> dict[str, dict]:
    from engine.text.descriptors import load_descriptors

    return {} if source is None else load_descriptors(None if source == "packaged" else source)


class TemplateReportWriter(CandidateStage):
    name, Options = "template", TemplateOptions

    @classmethod
    def check(cls, rcfg, cfg=None) -> None:
        opts = cls.options_of(rcfg.options)
        if opts.lexicon:
            anatomy_regions(opts.lexicon)  # a bad lexicon path fails here, naming the file
        descriptor_table(opts.descriptors)  # and so does a bad descriptor table

    def __init__(self, num_candidates: int = 1, options: Optional[dict] = None):
        opts = TemplateOptions.model_validate(options or {})
        self.num_candidates = num_candidates
        self.composer = TemplateComposer(anatomy_regions(opts.lexicon), max_absent_list=opts.max_absent_list,
                                         statement_rate=opts.statement_rate,
                                         descriptors=descriptor_table(opts.descriptors))

    def generate(self, rows: list[dict]) -> list[tuple[list[str], list[bool]]]:
        out = []
        for row in rows:
            texts = [format_report(*self.composer.compose(row["entities"], row["seed"], c))
                     for c in range(self.num_candidates)]
            out.append((texts, [False] * self.num_candidates))
        return out
