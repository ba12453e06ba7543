"""The report-writing prompt: a versioned YAML template (configs/prompts/*.yaml) rendered into
chat messages from one plan row's entities. Every error names the prompt file."""
from __future__ import annotations

import string
from dataclasses import dataclass, field
from pathlib import Path


from engine.text.entities import ENTITY_TYPES, NEGATED_TYPES, ANATOMY
from engine.core.errors import ConfigError, UserError
from engine.core.yaml_file import read_yaml

_REQUIRED = ("version", "system", "user", "entity_line", "type_labels")
_USER_FIELDS = {"entity_list", "num_entities", "present_list", "absent_list"}
_LINE_FIELDS = {"text", "label"}


@dataclass(frozen=True)
class PromptTemplate:
    version: str
    system: str
    user: str
    entity_line: str
    type_labels: dict[str, str] = field(default_factory=dict)
    path: str = "<prompt>"

    def render(self, entities: list[dict]) -> list[dict]:
        """Chat messages (system, user) asking for a report holding exactly `entities`."""
        return render_messages(self, entities)


def _placeholders(template: str, source: str, what: str) -> set[str]:
    try:
        return {name for _, name, _, _ in string.Formatter().parse(template) if name is not None}
    except ValueError as exc:
        raise ConfigError(f"{source}: field '{what}': malformed placeholder: {exc}") from None


def load_prompt(path: str | Path) -> PromptTemplate:
    path = Path(path)
    data = read_yaml(path, "prompt", ConfigError)
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping with fields {', '.join(_REQUIRED)}")
    missing = [k for k in _REQUIRED if k not in data]
    if missing:
        raise ConfigError(f"{path}: missing field(s) {', '.join(missing)}")
    unknown = sorted(set(data) - set(_REQUIRED))
    if unknown:
        raise ConfigError(f"{path}: unknown field(s) {', '.join(unknown)}")
    for key in ("version", "system", "user", "entity_line"):
        if not isinstance(data[key], str) or not data[key].strip():
            raise ConfigError(f"{path}: field '{key}' must be a non-empty string")
    labels = data["type_labels"]
    if not isinstance(labels, dict) or set(labels) != set(ENTITY_TYPES):
        raise ConfigError(f"{path}: field 'type_labels' must map exactly {', '.join(ENTITY_TYPES)} to labels")
    for what, template, allowed in (("user", data["user"], _USER_FIELDS),
                                    ("entity_line", data["entity_line"], _LINE_FIELDS),
                                    ("system", data["system"], set())):
        bad = _placeholders(template, str(path), what) - allowed
        if bad:
            raise ConfigError(f"{path}: field '{what}': unknown placeholder(s) "
                              f"{', '.join('{' + b + '}' for b in sorted(bad))}; allowed: "
                              f"{', '.join('{' + a + '}' for a in sorted(allowed)) or 'none'}")
    return PromptTemplate(version=data["version"].strip(), system=data["system"].strip(),
                          user=data["user"].strip(), entity_line=data["entity_line"],
                          type_labels={k: str(v) for k, v in labels.items()}, path=str(path))


def render_messages(prompt: PromptTemplate, entities: list[dict]) -> list[dict]:
    if not entities:
        raise UserError("empty entity list: nothing to write a report about")
    lines, present, absent = [], [], []
    for e in entities:
        etype = e.get("type")
        text = str(e.get("text", "")).strip()
        if etype not in prompt.type_labels or not text:
            raise UserError(f"bad entity {e!r}: needs a non-empty text and a type in {', '.join(ENTITY_TYPES)}")
        lines.append(prompt.entity_line.format(text=text, label=prompt.type_labels[etype]))
        if etype != ANATOMY:
            (absent if etype in NEGATED_TYPES else present).append(text)
    user = prompt.user.format(
        entity_list="\n".join(lines), num_entities=len(entities),
        present_list=", ".join(present) or "none", absent_list=", ".join(absent) or "none",
    )
    return [{"role": "system", "content": prompt.system}, {"role": "user", "content": user}]
