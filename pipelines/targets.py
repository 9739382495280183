"""``make targets``: the prompts to fine-tune on, chosen by a rule from a round's own labels.

    python -m pipelines.targets root=datasets/shapes [out=FILE] [rounds=last:1] [previous=FILE] [rule.max_good_rate=0.5]

Prints every prompt's raters' good-rate (worst first) with the rule's picks, writes the picked
prompts one per line to ``out`` (default ``<root>/targets.txt``; what
``make finetune ARGS="prompts.prompts_file=..."`` takes) and the whole table beside it as CSV.
The rule (``data.targets.TargetRule``): good-rate in (min_good_rate, max_good_rate], at least
min_images labelled images, at most max_targets prompts, lowest good-rate first.  ``previous``
(the last round's targets file): its prompts stay targets, ahead of the new picks, unless this
round's labels judge them fixed with ``rule.fixed_confidence``, as ``make loop`` keeps them.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field

from data.rounds import resolve_rounds, rounds_in
from data.store import Store
from data.targets import TargetRule, read_prompts_file, write_targets
from pipelines.cli import config_parser, parse_config, run


@dataclass(frozen=True)
class TargetsConfig:
    root: str = "datasets/shapes"
    out: str | None = None  # the prompts file; default <root>/targets.txt (table: same name, .csv)
    overwrite: bool = False  # replace an existing prompts file and its table
    rule: TargetRule = field(default_factory=TargetRule)
    # the closed loop's rounds whose labels count (data.rounds: all, last:N or a list like 0,2);
    # None: every label of the root
    rounds: str | None = None
    # the last round's targets file: its prompts stay targets unless this round's labels judge them
    # fixed (rule.fixed_confidence)
    previous: str | None = None


def main(argv: list[str] | None = None) -> int:
    cfg = parse_config(TargetsConfig, config_parser(__doc__.splitlines()[0]), argv)
    rounds = None if cfg.rounds is None else resolve_rounds(cfg.rounds, rounds_in(Store(cfg.root)))
    previous = read_prompts_file(cfg.previous) if cfg.previous else ()
    table, out = write_targets(cfg.root, cfg.out, cfg.rule, overwrite=cfg.overwrite, rounds=rounds, previous=previous)
    yes = {True: "yes", False: ""}
    shown = table.assign(good_rate=table["good_rate"].round(3), picked=table["picked"].map(yes),
                         kept=table["kept"].map(yes))
    print(shown.to_string(index=False, max_rows=60))
    written = read_prompts_file(out)
    chosen, kept = len(written), sum(t in set(previous) for t in written)  # a kept one may be unsampled: not in the table
    from_before = f", {kept} kept from {cfg.previous}" if cfg.previous else ""
    print(f"\n{chosen} target prompts ({chosen - kept} picked{from_before}) -> {out} (table: {out.with_suffix('.csv')})\n"
          f"fine-tune on them: make finetune ARGS=\"prompts.prompts_file={out}\"")
    return 0


if __name__ == "__main__":
    sys.exit(run(main))
