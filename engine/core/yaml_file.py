"""Read a YAML file a user wrote (config, lexicon, prompt): a missing file or malformed YAML is one
line naming the file and, where YAML knows it, the line and column."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from engine.core.errors import UserError


def read_yaml(path: Path, what: str, error: type[UserError] = UserError) -> Any:
    """The parsed document; `what` names the file's role in the 'not found' message."""
    path = Path(path)
    if not path.is_file():
        raise error(f"{path}: {what} file not found")
    try:
        return yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise error(f"{path}: malformed YAML{where}: {problem}") from None
