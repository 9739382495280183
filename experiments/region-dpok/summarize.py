"""The region-aware fine-tuning study's table: one row per (seed, model) of each record's `make eval`
metrics, and the region-aware model against the plain one of its seed.

    PYTHONPATH=. python experiments/region-dpok/summarize.py experiments/region-dpok
"""

import sys
from pathlib import Path

from tools.records import read_records

COLS = ("targets", "gain", "fixed", "broken", "moved_base_right", "moved_outside", "heldout", "heldout_colour",
        "off_palette_heldout")


def row(m: dict) -> dict:
    k, g, off = m.get("keep") or {}, m["generalization"], m.get("off_palette") or {}
    return {"targets": m["alignment"]["overall"], "gain": m.get("gain"), "fixed": k.get("fixed"),
            "broken": k.get("broken"), "moved_base_right": k.get("moved_base_right"),
            "moved_outside": k.get("moved_outside"), "heldout": g["overall"], "heldout_colour": g["color"],
            "off_palette_heldout": off.get("generalization")}


def fmt(v) -> str:
    return "–" if v is None else f"{100 * v:.1f}" if isinstance(v, float) else str(v)


def main(path: str) -> None:
    print("| record | model | " + " | ".join(COLS) + " |")
    print("|---|---|" + "---|" * len(COLS))
    for file, rec in read_records(Path(path)):
        for name, m in rec["models"].items():
            print(f"| {file.removesuffix('.json')} | {name} | " + " | ".join(fmt(v) for v in row(m).values()) + " |")


if __name__ == "__main__":
    main(*sys.argv[1:])
