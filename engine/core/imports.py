"""The import graph of the project's packages, read from source (nothing is imported), and the
rules its arrows must follow. `tests/test_architecture.py` runs it; docs/architecture.md explains it.

Every `import` counts, also those inside functions: a cycle hidden in a function body still ties
two modules together."""
from __future__ import annotations

import ast
from pathlib import Path

PACKAGES = ("engine", "actors", "train", "eval", "workflows")
# third-party packages whose arrows are tracked too (the model library must not reach Ray)
EXTERNAL = ("ray",)

# (importer prefix, imported prefix, why it is forbidden); the first matching importer rule wins
# in `allowed` below. Prefixes are module paths; "engine.core" also matches "engine.core.files".
RULES = (
    # engine.core is the floor: it stands on nothing else of the project
    ("engine.core", ("engine.", "actors", "train", "eval", "workflows"), ("engine.core",),
     "engine.core depends on no other part of the project"),
    # the published dataset is read by train/eval: it stands on core only
    ("engine.dataset", ("engine.", "actors", "train", "eval", "workflows"), ("engine.core",),
     "the published dataset module depends on engine.core only"),
    # the CLI may import the engine's steps; it finds the other packages' commands by name
    ("engine.cli", ("train", "eval", "workflows"), (),
     "the engine's CLI finds train/eval/workflows commands by name only"),
    # the engine's steps reach backends through registries (import paths as strings), never by module
    ("engine", ("actors", "train", "eval", "workflows", "engine.cli"), (),
     "engine steps reach backends through their registry, and never import the CLI or train/eval"),
    # a backend may use the core and the steps it serves, never the run logic or the CLI
    ("actors", ("engine.synth", "engine.cli", "engine.plan", "train", "eval", "workflows"), (),
     "backends depend on engine.core and the step they serve only"),
    # the model library stands alone: no Ray, no trainer, none of the engine's steps
    ("train.models", ("engine.", "actors", "train", "eval", "workflows", "ray"),
     ("train.models", "engine.core.errors", "engine.core.config", "engine.core.registry"),
     "the model library (train.models) imports no Ray and nothing of the trainer, the engine or eval"),
    # the trainer reads the engine's output through the published dataset only
    ("train", ("engine.", "eval", "workflows"), ("engine.dataset", "engine.core", "engine.text"),
     "train/ reads the engine's output only through engine.dataset"),
    # evaluation uses the model library, never the trainer
    ("eval", ("engine.", "train", "workflows"), ("engine.dataset", "engine.core", "engine.text", "train.models"),
     "eval/ uses the model library (train.models) only, and reads the engine's output through engine.dataset"),
    # workflows is the composition root: it may import any of them
)
# what no production module may import, whatever its package
TEST_ONLY = ("actors.testing",)


def module_name(root: Path, path: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _resolve(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    base = module.split(".")
    base = base if is_package else base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def imports_of(root: Path, path: Path, known: set[str]) -> set[str]:
    """Project modules (and EXTERNAL packages) that the file imports (a `from pkg import name` of a
    submodule counts as it)."""
    module = module_name(root, path)
    tree = ast.parse(path.read_text(), filename=str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            target = _resolve(module, path.name == "__init__.py", node)
            names = [f"{target}.{a.name}" if f"{target}.{a.name}" in known else target for a in node.names]
        else:
            continue
        for name in names:
            if name.split(".")[0] in EXTERNAL:
                found.add(name.split(".")[0])
                continue
            while name and name not in known:
                name = name.rpartition(".")[0]  # `import a.b.c` of a function/attr -> module a.b
            if name and name != module and name.split(".")[0] in PACKAGES:
                found.add(name)
    return found


def import_graph(root: str | Path) -> dict[str, set[str]]:
    root = Path(root)
    files = [f for pkg in PACKAGES if (root / pkg).is_dir() for f in sorted((root / pkg).rglob("*.py"))]
    known = {module_name(root, f) for f in files}
    return {module_name(root, f): imports_of(root, f, known) for f in files}


def _matches(name: str, prefix: str) -> bool:
    return name == prefix.rstrip(".") or name.startswith(prefix if prefix.endswith(".") else prefix + ".")


def violations(graph: dict[str, set[str]]) -> list[str]:
    """Arrows against the rules, as 'a -> b: why'."""
    out = []
    for src, targets in sorted(graph.items()):
        if not any(_matches(src, t) for t in TEST_ONLY):
            out += [f"{src} -> {dst}: test-only builders are for tests and benchmarks"
                    for dst in sorted(targets) if any(_matches(dst, t) for t in TEST_ONLY)]
        for importer, forbidden, allowed, why in RULES:
            if not _matches(src, importer):
                continue
            for dst in sorted(targets):
                if any(_matches(dst, a) for a in allowed):
                    continue
                if any(_matches(dst, f) for f in forbidden):
                    out.append(f"{src} -> {dst}: {why}")
            break
    return out


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), each sorted."""
    index, low, on_stack, stack, result = {}, {}, set(), [], []
    counter = [0]

    def visit(v: str) -> None:
        work = [(v, iter(sorted(graph.get(v, ()))))]
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        while work:
            node, children = work[-1]
            for w in children:
                if w not in index:
                    index[w] = low[w] = counter[0]
                    counter[0] += 1
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(sorted(graph.get(w, ())))))
                    break
                if w in on_stack:
                    low[node] = min(low[node], index[w])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    comp = []
                    while True:
                        w = stack.pop()
                        on_stack.discard(w)
                        comp.append(w)
                        if w == node:
                            break
                    if len(comp) > 1:
                        result.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return result
