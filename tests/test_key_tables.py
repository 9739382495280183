"""Every stage config has one key table in docs/ (key, default, meaning, units), one row per leaf key
of its dataclass, with the dataclass's default: a key added, renamed or removed without its row, or
a default changed without the table, fails here.  And docs/ is reference: no dated measurement
outside the generated results page (experiment records live in experiments/)."""

from __future__ import annotations

import dataclasses
import importlib
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# the dataclass of each stage's config -> the page that holds its table
TABLES = {
    "finetune.config.FinetuneConfig": "docs/finetune.md",
    "reward.config.RewardConfig": "docs/reward.md",
    "collect.generate.GenerateConfig": "docs/labeling.md",
    "labeling_app.config.LabelConfig": "docs/labeling.md",
    "evaluation.config.EvalConfig": "docs/evaluation.md",
    "workflows.demo.DemoConfig": "docs/demo.md",
    "workflows.loop.LoopConfig": "docs/loop.md",
}
MARKER = "<!-- key-table: {} -->"


def _class(path: str) -> type:
    module, name = path.rsplit(".", 1)
    return getattr(importlib.import_module(module), name)


def leaf_defaults(cls: type, prefix: str = "") -> dict[str, object]:
    """Dotted leaf key -> default of a (nested) config dataclass."""
    out: dict[str, object] = {}
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            value = f.default
        else:
            value = f.default_factory()
        if dataclasses.is_dataclass(value):
            out.update(leaf_defaults(type(value), f"{prefix}{f.name}."))
        else:
            out[prefix + f.name] = value
    return out


def written(value) -> str:
    """A default as the tables write it: YAML-like (null, true, [a, b]), floats as Python prints them."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (tuple, list)):
        return "[" + ", ".join(written(v) for v in value) + "]"
    return str(value)


def table_rows(doc: Path, cls_path: str) -> dict[str, str]:
    """key -> default cell of the table after the page's marker for ``cls_path``."""
    lines = doc.read_text().splitlines()
    marker = MARKER.format(cls_path)
    assert marker in lines, f"{doc} has no line {marker}"
    i = lines.index(marker) + 1
    assert lines[i].startswith("| key | default | meaning | units |"), f"{doc}: the table after {marker}"
    rows: dict[str, str] = {}
    for line in lines[i + 2:]:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip("|").split("|")]
        key = cells[0].strip("`")
        assert key not in rows, f"{doc}: two rows for {key}"
        rows[key] = cells[1]
    return rows


@pytest.mark.parametrize("cls_path", sorted(TABLES))
def test_every_config_key_has_one_row_with_its_default(cls_path):
    defaults = leaf_defaults(_class(cls_path))
    rows = table_rows(ROOT / TABLES[cls_path], cls_path)
    assert sorted(set(defaults) - set(rows)) == [], f"keys without a row in {TABLES[cls_path]}"
    assert sorted(set(rows) - set(defaults)) == [], f"rows for keys {cls_path} does not have"
    for key, cell in rows.items():
        if cell.startswith("`"):  # a default written out; a description (a path, a long tuple) is not compared
            assert cell.strip("`") == written(defaults[key]), f"{key}: the table says {cell}, the dataclass {defaults[key]!r}"


def _leaves(tree: dict, prefix: str = "") -> dict[str, object]:
    out: dict[str, object] = {}
    for k, v in tree.items():
        out.update(_leaves(v, f"{prefix}{k}.") if isinstance(v, dict) else {prefix + k: v})
    return out


@pytest.mark.parametrize("name", ["dpok", "rwl", "sd15", "sd35", "flux"])
def test_shipped_finetune_configs_hold_only_what_differs_from_the_defaults(name):
    """The defaults are written once, in the dataclass (the shipped shapes-world DPOK run): a yaml
    key that repeats its default would be a second place to change it.  ``method`` names the file's
    method and is exempt."""
    import yaml

    from core.config import to_dict
    from finetune.config import CONFIGS, FinetuneConfig

    shipped = _leaves(yaml.safe_load((CONFIGS / f"{name}.yaml").read_text()) or {})
    defaults = _leaves(to_dict(FinetuneConfig()))
    repeated = sorted(k for k, v in shipped.items() if k != "method" and defaults[k] == v)
    assert repeated == [], f"{name}.yaml repeats the defaults of {repeated}"
    if name == "dpok":
        assert len(shipped) <= 8


def test_docs_carry_no_dated_measurements():
    """Dated figures are experiment records (experiments/<study>/); only the generated results page
    quotes them in docs/."""
    dated = re.compile(r"\b20\d\d-\d\d-\d\d\b")
    offenders = [f"{p.name}:{n}" for p in sorted((ROOT / "docs").glob("*.md")) if p.name != "results.md"
                 for n, line in enumerate(p.read_text().splitlines(), 1) if dated.search(line)]
    assert offenders == []
