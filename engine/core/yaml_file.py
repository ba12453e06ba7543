"""Read a YAML file a user wrote (config, lexicon, prompt): a missing file, a file that is not UTF-8
text, malformed YAML or a key written twice in one mapping (YAML would let the last one win,
silently) is one line naming the file and, where known, the line and column."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from engine.core.errors import UserError


class _DuplicateKey(yaml.YAMLError):
    def __init__(self, message: str, mark):
        super().__init__(message)
        self.problem = message
        self.problem_mark = mark


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses a mapping holding the same key twice."""

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            self.flatten_mapping(node)
            seen: dict = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    hash(key)
                except TypeError:
                    continue  # the base class reports an unhashable key
                if key in seen:
                    raise _DuplicateKey(f"key {key!r} is written twice in one mapping (first at line "
                                        f"{seen[key].line + 1}); remove one", key_node.start_mark)
                seen[key] = key_node.start_mark
        return super().construct_mapping(node, deep=deep)


def read_yaml(path: Path, what: str, error: type[UserError] = UserError) -> Any:
    """The parsed document; `what` names the file's role in the 'not found' message."""
    path = Path(path)
    if not path.is_file():
        raise error(f"{path}: {what} file not found")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise error(f"{path}: not UTF-8 text (byte 0x{exc.object[exc.start]:02x} at offset {exc.start}); "
                    f"save the {what} file as UTF-8") from None
    except OSError as exc:
        raise error(f"{path}: cannot read the {what} file ({exc.strerror or exc})") from None
    try:
        return yaml.load(text, Loader=_StrictLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        kind = "duplicate key" if isinstance(exc, _DuplicateKey) else "malformed YAML"
        raise error(f"{path}: {kind}{where}: {problem}") from None
