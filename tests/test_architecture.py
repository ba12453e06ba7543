"""The floor plan holds: no import cycles between the project's modules (imports inside functions
count), and every arrow follows the direction rules of engine/core/imports.py."""
from __future__ import annotations

from pathlib import Path

from engine.core.imports import cycles, import_graph, violations

ROOT = Path(__file__).resolve().parent.parent


def test_the_project_has_no_cycle_and_no_arrow_against_the_rules():
    graph = import_graph(ROOT)
    assert len(graph) > 60 and "engine.synth.run" in graph
    assert cycles(graph) == []
    assert violations(graph) == []


def _tree(tmp_path: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return tmp_path


def test_a_planted_cycle_through_a_function_body_is_found(tmp_path):
    root = _tree(tmp_path, {
        "engine/__init__.py": "", "engine/images/__init__.py": "", "actors/__init__.py": "",
        "engine/images/pipeline.py": "def check():\n    from actors.diffusers_sd import source\n",
        "actors/diffusers_sd.py": "from engine.images.pipeline import check\n",
        "engine/core/__init__.py": "", "engine/core/files.py": "import json\n",
    })
    graph = import_graph(root)
    assert graph["engine.images.pipeline"] == {"actors.diffusers_sd"}
    assert cycles(graph) == [["actors.diffusers_sd", "engine.images.pipeline"]]
    assert violations(graph) == ["engine.images.pipeline -> actors.diffusers_sd: engine steps reach backends "
                                 "through their registry, and never import the CLI or train/eval"]


def test_arrows_against_the_direction_are_named(tmp_path):
    root = _tree(tmp_path, {
        "engine/__init__.py": "", "engine/core/__init__.py": "", "engine/synth/__init__.py": "",
        "engine/cli/__init__.py": "", "engine/cli/commands/__init__.py": "", "train/__init__.py": "",
        "engine/core/config.py": "from engine.synth import run\n",
        "engine/synth/run.py": "from engine.cli.commands import plan\n",
        "engine/cli/commands/plan.py": "import engine.core.config\n",
        "engine/dataset.py": "from engine.core import config\n",
        "train/loop.py": "from engine.dataset import open_dataset\nfrom engine.synth.run import run\n",
    })
    found = violations(import_graph(root))
    assert [v.split(":")[0] for v in found] == ["engine.core.config -> engine.synth.run",
                                               "engine.synth.run -> engine.cli.commands.plan",
                                               "train.loop -> engine.synth.run"]
