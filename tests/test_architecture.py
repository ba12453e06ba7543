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


def test_the_model_library_stands_apart_from_the_trainer(tmp_path):
    """train.models imports no Ray and no trainer; eval uses train.models only; nothing in
    production imports the test-only builders. Each planted arrow is named."""
    root = _tree(tmp_path, {
        "train/__init__.py": "", "train/models/__init__.py": "", "train/driver.py": "", "eval/__init__.py": "",
        "actors/__init__.py": "", "actors/testing/__init__.py": "", "actors/testing/tiny.py": "",
        "engine/__init__.py": "", "engine/core/__init__.py": "", "engine/core/errors.py": "",
        "train/models/base.py": "import torch\nfrom engine.core.errors import UserError\n",
        "train/models/gather.py": "import ray.train\n",
        "train/models/factory.py": "def f():\n    from train.driver import run_training\n",
        "train/loop.py": "import ray.train\nfrom train.models import base\n",  # the trainer may
        "eval/zero_shot.py": "from train.models import base\n",
        "eval/report.py": "from train import driver\n",
        "workflows/__init__.py": "", "workflows/experiment.py": "from train.driver import run_training\n",
        "eval/loading.py": "from actors.testing.tiny import x\n",
    })
    assert violations(import_graph(root)) == [
        "eval.loading -> actors.testing.tiny: test-only builders are for tests and benchmarks",
        "eval.report -> train.driver: eval/ uses the model library (train.models) only, and reads the engine's "
        "output through engine.dataset",
        "train.models.factory -> train.driver: the model library (train.models) imports no Ray and nothing of "
        "the trainer, the engine or eval",
        "train.models.gather -> ray: the model library (train.models) imports no Ray and nothing of the trainer, "
        "the engine or eval"]


# ---------------------------------------------------------------- environment variables

PRODUCTION = ("engine", "actors", "train", "eval", "workflows")
# reads whose variable the user names in a config (reports.options.api_key_env): documented there
CONFIG_NAMED = {"actors/report_openai.py"}


def environment_reads(root: Path) -> list[tuple[str, int, str | None]]:
    """(file, line, variable or None when not a literal) of every read of os.environ / os.getenv in
    the production packages. Writes (assignment, setdefault of Ray's own switches) are not reads."""
    import ast

    found = []
    for package in PRODUCTION:
        for path in sorted((root / package).rglob("*.py")):
            rel = str(path.relative_to(root))
            tree = ast.parse(path.read_text(), rel)
            for node in ast.walk(tree):
                key = None
                if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
                    f = node.func
                    is_environ = isinstance(f.value, ast.Attribute) and f.value.attr == "environ"
                    if (is_environ and f.attr in ("get", "pop")) or f.attr == "getenv":
                        key = node.args[0] if node.args else None
                    else:
                        continue
                elif (isinstance(node, ast.Subscript) and isinstance(node.ctx, ast.Load)
                      and isinstance(node.value, ast.Attribute) and node.value.attr == "environ"):
                    key = node.slice
                elif (isinstance(node, ast.Compare) and any(isinstance(op, (ast.In, ast.NotIn)) for op in node.ops)
                      and any(isinstance(c, ast.Attribute) and c.attr == "environ" for c in node.comparators)):
                    key = node.left
                else:
                    continue
                name = key.value if isinstance(key, ast.Constant) and isinstance(key.value, str) else None
                found.append((rel, node.lineno, name))
    return found


def undocumented_reads(root: Path) -> list[str]:
    docs = "\n".join(p.read_text() for p in [root / "README.md", *sorted((root / "docs").glob("*.md"))])
    bad = []
    for rel, line, name in environment_reads(root):
        if name is None and rel in CONFIG_NAMED:
            continue
        if name is None or name not in docs:
            bad.append(f"{rel}:{line} reads {name or 'a computed variable name'}")
    return bad


def test_no_production_module_reads_an_environment_variable_the_docs_do_not_name():
    assert undocumented_reads(ROOT) == []
    assert ("engine/core/ray_session.py", "RAY_ADDRESS") in {(f, n) for f, _, n in environment_reads(ROOT)}


def test_a_planted_hidden_switch_is_found(tmp_path):
    root = _tree(tmp_path, {
        "README.md": "Set RAY_ADDRESS to reach a cluster.\n", "docs/x.md": "",
        "engine/a.py": "import os\nADDR = os.environ.get('RAY_ADDRESS')\nFAULT = os.environ.get('SYNCXR_FAULT')\n",
        "train/b.py": "import os\ndef f(k):\n    return os.getenv(k), 'SYNCXR_X' in os.environ, os.environ['HOME']\n",
        "actors/c.py": "import os\nos.environ.setdefault('RAY_DEDUP_LOGS', '0')\n", "eval/d.py": "",
    })
    assert undocumented_reads(root) == ["engine/a.py:3 reads SYNCXR_FAULT", "train/b.py:3 reads a computed variable name",
                                        "train/b.py:3 reads SYNCXR_X", "train/b.py:3 reads HOME"]
