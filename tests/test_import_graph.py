"""The line of stages, held by reading every import (`ast`, function bodies included) of the source tree.

Each stage may import only the stages below it (ALLOWED); nothing imports the CLI or the demo; no stage imports
the synthetic kit or the tests; benchmarks do not import tests; and no two modules import each other, directly or
through others. A failure names the importing module, the imported one and the rule broken.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("avsed", "features", "pipeline", "training", "evaluation", "grid", "detection", "flows")

# stage -> the stages it may import (besides itself). The line: core <- features <- pipeline; core <- training <-
# evaluation <- grid, detection <- flows <- cli (avsed/cli.py, avsed/demo.py); the kit beside the CLI.
BELOW = {
    "core": set(),
    "features": {"core"},
    "pipeline": {"core", "features"},
    "training": {"core"},
    "evaluation": {"core", "training"},
    "grid": {"core", "training", "evaluation"},
    "detection": {"core", "features", "pipeline", "training", "evaluation"},
    "flows": {"core", "features", "pipeline", "training", "evaluation", "grid", "detection"},
    "synthetic": {"core", "features", "pipeline", "training", "evaluation"},
    "cli": {"core", "features", "pipeline", "training", "evaluation", "grid", "detection", "flows", "synthetic"},
}


def stage_of(module: str) -> str | None:
    """The stage a dotted module belongs to (None: outside the product, e.g. tests or a third-party package)."""
    parts = module.split(".")
    if parts[0] == "avsed":
        if len(parts) > 1 and parts[1] in ("core", "synthetic"):
            return parts[1]
        return "core" if len(parts) == 1 else "cli"  # avsed/__init__ is a docstring; cli.py, demo.py, ...
    if parts[0] in PACKAGES:
        return parts[0]
    if parts[0] == "tests":
        return "tests"
    return None


def module_name(path: Path, root: Path) -> str:
    return ".".join(path.relative_to(root).with_suffix("").parts).removesuffix(".__init__")


def imports_of(path: Path, root: Path) -> list[tuple[str, int]]:
    """(imported module, line) for every absolute and relative import in the file, wherever it sits."""
    me = module_name(path, root).split(".")
    package = me if path.name == "__init__.py" else me[:-1]
    out = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            out += [(a.name, node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package[:len(package) - node.level + 1] + ([base] if base else []))
            # `from pkg import mod` imports the module pkg.mod when there is one
            out += [(f"{base}.{a.name}", node.lineno) for a in node.names]
    return out


def resolve(name: str, modules: set[str]) -> str | None:
    """The project module an imported name lives in (the longest existing prefix), or None."""
    parts = name.split(".")
    for n in range(len(parts), 0, -1):
        candidate = ".".join(parts[:n])
        if candidate in modules:
            return candidate
    return None


def import_graph(root: Path) -> dict[str, dict[str, int]]:
    """module -> {imported project module: first line}, for the product's packages, tests and benchmarks."""
    files = [p for top in (*PACKAGES, "tests", "benchmarks") for p in sorted((root / top).rglob("*.py"))]
    modules = {module_name(p, root): p for p in files}
    graph: dict[str, dict[str, int]] = {}
    for name, path in modules.items():
        edges: dict[str, int] = {}
        for imported, line in imports_of(path, root):
            target = resolve(imported, set(modules))
            if target is not None and target != name:
                edges.setdefault(target, line)
        graph[name] = edges
    return graph


def violations(root: Path) -> list[str]:
    graph = import_graph(root)
    found = []
    for module, edges in sorted(graph.items()):
        stage = stage_of(module)
        for target, line in sorted(edges.items()):
            to = stage_of(target)
            where = f"{module} (line {line}) imports {target}"
            if module.startswith("benchmarks"):
                if to == "tests":
                    found.append(f"{where}: benchmarks must not import tests (move what both need to avsed/synthetic)")
                continue
            if stage in (None, "tests") or to in (None, stage):
                continue
            if to == "tests":
                found.append(f"{where}: production code must not import tests")
            elif to == "synthetic" and stage != "cli":
                found.append(f"{where}: no stage imports the synthetic kit (take it as data or configuration)")
            elif to not in BELOW[stage]:
                found.append(f"{where}: {stage} may import only {sorted(BELOW[stage]) or 'nothing'}, not {to}")
    return found + cycles(graph)


def cycles(graph: dict[str, dict[str, int]]) -> list[str]:
    """Each group of product modules that import each other (Tarjan's strongly connected components)."""
    product = {m: [t for t in e if stage_of(t) not in (None, "tests")]
               for m, e in graph.items() if stage_of(m) not in (None, "tests") and not m.startswith("benchmarks")}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found: list[str] = []

    def visit(v: str) -> None:  # recursive: the product's import chains are short
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in product.get(v, []):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                found.append(f"import cycle: {' <-> '.join(sorted(group))}")

    for v in sorted(product):
        if v not in index:
            visit(v)
    return found


def test_stages_import_only_downward_and_nothing_imports_the_kit_or_tests():
    found = violations(ROOT)
    assert not found, f"{len(found)} imports break the line of stages:\n" + "\n".join(found)


def test_the_checker_sees_upward_imports_kit_imports_and_cycles(tmp_path):
    """The rules fire on a small tree that breaks each of them (function-level and relative imports included)."""
    files = {
        "avsed/__init__.py": "",
        "avsed/core/__init__.py": "",
        "avsed/core/labels.py": "",
        "avsed/synthetic/__init__.py": "",
        "avsed/synthetic/dataset.py": "",
        "features/__init__.py": "",
        "features/base.py": "def f():\n    from pipeline.extract import x\n",  # upward, inside a function
        "pipeline/__init__.py": "",
        "pipeline/extract.py": "from avsed.synthetic import dataset\nfrom . import download\n",  # the kit
        "pipeline/download.py": "import pipeline.extract\n",  # a cycle with extract (relative import above)
        "training/__init__.py": "",
        "training/data.py": "from avsed.core.labels import x\nimport tests.helpers\n",  # fine; tests: not
        "tests/__init__.py": "",
        "tests/helpers.py": "",
        "benchmarks/bench.py": "from tests import helpers\n",
    }
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    found = "\n".join(violations(tmp_path))
    assert "features.base (line 2) imports pipeline.extract: features may import only ['core'], not pipeline" in found
    assert "pipeline.extract (line 1) imports avsed.synthetic.dataset: no stage imports the synthetic kit" in found
    assert "import cycle: pipeline.download <-> pipeline.extract" in found
    assert "training.data (line 2) imports tests.helpers: production code must not import tests" in found
    assert "benchmarks.bench (line 1) imports tests.helpers: benchmarks must not import tests" in found
    assert "avsed.core.labels" not in found  # a downward import is fine
