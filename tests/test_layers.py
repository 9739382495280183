"""The package layers point one way: `lint-imports` (import-linter, contracts in pyproject.toml's
[tool.importlinter]) passes on the repository and fails on a reverse import."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LINT = Path(sys.executable).parent / "lint-imports"

pytestmark = pytest.mark.skipif(not LINT.exists(), reason="import-linter is not installed (pip install -e '.[dev]')")


def _lint(cwd: Path, config: Path | None = None) -> subprocess.CompletedProcess:
    cmd = [str(LINT), "--no-cache"] + (["--config", str(config)] if config else [])
    env = {**os.environ, "PYTHONPATH": str(cwd)}
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


def test_the_repository_keeps_its_layers():
    res = _lint(ROOT)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "0 broken" in res.stdout


def _tree(tmp_path: Path, imports: dict[str, str]) -> Path:
    """A copy of the project's package names, each one empty module plus the given imports."""
    tree = tmp_path / "tree"
    for pkg in ("core", "data", "shapes", "collect", "labeling_app", "reward", "finetune", "evaluation", "workflows",
                "tools", "pipelines"):
        (tree / pkg).mkdir(parents=True)
        (tree / pkg / "__init__.py").write_text("")
        (tree / pkg / "mod.py").write_text("")
    (tree / "pipelines" / "cli.py").write_text("")
    for algorithm in ("finetune/dpok", "finetune/rwl", "finetune/preference", "finetune/label_data", "reward/model",
                      "reward/fit", "evaluation/compare"):
        (tree / f"{algorithm}.py").write_text("")  # the modules the plug-in contract names
    for main in ("mod", "other"):  # entry points, each using the argv helpers
        (tree / "pipelines" / f"{main}.py").write_text("import pipelines.cli\n")
    for module, line in imports.items():
        path = tree / (module.replace(".", "/") + ".py")
        path.write_text(path.read_text() + line + "\n")
    config = tmp_path / "contracts.toml"
    shutil.copy(ROOT / "pyproject.toml", config)
    return tree


@pytest.mark.parametrize("module, line", [
    ("data.mod", "import pipelines.mod"),            # library code importing an entry point
    ("core.mod", "from data import mod"),            # core importing the contracts
    ("data.mod", "import shapes.mod"),               # the contracts importing the shapes world
    ("shapes.mod", "import labeling_app.mod"),       # the shapes world importing a stage
    ("reward.mod", "import finetune.mod"),           # a stage importing the one above it
    ("reward.mod", "import labeling_app.mod"),       # two sibling stages
    ("finetune.mod", "import labeling_app.mod"),     # fine-tuning importing the labeling app
    ("evaluation.mod", "import labeling_app.mod"),   # evaluation importing the labeling app
    ("finetune.mod", "import evaluation.mod"),       # fine-tuning and evaluation are siblings
    ("evaluation.mod", "import finetune.mod"),
    ("shapes.mod", "import evaluation.mod"),         # the shapes world (make base's training) importing evaluation
    ("finetune.mod", "import tools.mod"),            # an algorithm importing the tooling that measures it
    ("evaluation.mod", "import tools.mod"),          # the evaluation importing the results page / bench
    ("finetune.dpok", "from shapes import mod"),     # an algorithm importing the shapes world (it plugs in)
    ("finetune.preference", "import shapes.mod"),
    ("evaluation.compare", "import shapes.mod"),
    ("reward.model", "import shapes.mod"),
    ("pipelines.mod", "import pipelines.other"),     # one entry point importing another
    ("collect.mod", "import labeling_app.mod"),      # a round's images importing the app that serves them
    ("shapes.mod", "import collect.mod"),            # the shapes world importing the collect layer
    ("reward.mod", "import collect.mod"),            # the reward importing the round that asks it (selection)
    ("labeling_app.mod", "import collect.mod"),      # the app importing what picks its images
    ("collect.mod", "import finetune.mod"),          # a round's collection and fine-tuning are siblings
    ("workflows.mod", "import pipelines.mod"),       # a workflow importing an entry point
    ("finetune.mod", "import workflows.mod"),        # a stage importing the workflow that chains it
])
@pytest.mark.slow
def test_a_reverse_import_fails_the_check(tmp_path, module, line):
    tree = _tree(tmp_path, {module: line})
    res = _lint(tree, tmp_path / "contracts.toml")
    assert res.returncode != 0, res.stdout
    assert "1 broken" in res.stdout, res.stdout + res.stderr


def test_the_same_tree_passes_with_allowed_imports(tmp_path):
    tree = _tree(tmp_path, {"pipelines.mod": "import finetune.mod\nimport evaluation.mod\nimport core.mod\nimport tools.mod",
                            "tools.mod": "import finetune.mod\nimport evaluation.mod",
                            "finetune.dpok": "import finetune.mod",  # which may use the shapes world
                            "finetune.mod": "import reward.mod\nimport shapes.mod",
                            "evaluation.mod": "import reward.mod\nimport shapes.mod\nimport core.mod",
                            "labeling_app.mod": "import shapes.mod\nimport data.mod",
                            "collect.mod": "import reward.mod\nimport shapes.mod\nimport data.mod",
                            "workflows.mod": "import collect.mod\nimport finetune.mod\nimport evaluation.mod",
                            "shapes.mod": "import data.mod", "data.mod": "import core.mod"})
    res = _lint(tree, tmp_path / "contracts.toml")
    assert res.returncode == 0, res.stdout + res.stderr


def test_the_contract_names_every_package():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    packages = {p.name for p in ROOT.iterdir() if (p / "__init__.py").is_file() and p.name != "tests"}
    assert set(cfg["root_packages"]) == packages


PACKAGES = ("core", "data", "shapes", "collect", "labeling_app", "reward", "finetune", "evaluation", "workflows",
            "tools", "pipelines")


def import_circles(packages=PACKAGES) -> list[list[str]]:
    """Groups of modules that import each other, directly or round a circle (strongly connected
    components of grimp's module graph with more than one module; grimp ships with import-linter).
    Layers only see packages: a circle inside one (reward.model <-> reward.epistemic, issue 71) passes
    them, so it is checked here."""
    grimp = pytest.importorskip("grimp")
    graph = grimp.build_graph(*packages, cache_dir=None)
    index, low, on_stack, stack, circles = {}, {}, set(), [], []

    def visit(v):  # Tarjan's algorithm, recursive: the graph is a few hundred modules
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.find_modules_directly_imported_by(v):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                circles.append(sorted(group))

    for module in sorted(graph.modules):
        if module not in index:
            visit(module)
    return circles


def test_no_module_imports_itself_round_a_circle():
    assert import_circles() == []


def test_the_circle_check_finds_a_circle(tmp_path, monkeypatch):
    tree = tmp_path / "circ"
    (tree / "pkg").mkdir(parents=True)
    (tree / "pkg" / "__init__.py").write_text("")
    (tree / "pkg" / "a.py").write_text("from pkg import b\n")
    (tree / "pkg" / "b.py").write_text("def f():\n    from pkg import a\n")  # a function-level import counts too
    (tree / "pkg" / "c.py").write_text("from pkg import a\n")
    monkeypatch.syspath_prepend(str(tree))
    assert import_circles(("pkg",)) == [["pkg.a", "pkg.b"]]
