"""``make targets``: the prompts to fine-tune on, chosen by a rule from a round's own labels.

    python -m pipelines.targets root=datasets/shapes [out=FILE] [rounds=last:1] [previous=FILE] [rule.max_good_rate=0.5]

Prints every prompt's raters' good-rate (worst first) with the rule's picks, writes the picked
prompts one per line to ``out`` (default ``<root>/targets.txt``; what
``make finetune ARGS="prompts.prompts_file=..."`` takes) and the whole table beside it as CSV, and
ends with the ``make finetune`` line to run: on the model that made the round's images (the
generations rows' ``model_id`` and ``run``), with ``init=`` when that was a fine-tuned run.
The rule (``data.targets.TargetRule``): good-rate in (min_good_rate, max_good_rate], at least
min_images labelled images, at most max_targets prompts, lowest good-rate first.  ``previous``
(the last round's targets file): its prompts stay targets, ahead of the new picks, unless this
round's labels judge them fixed with ``rule.fixed_confidence``, as ``make loop`` keeps them.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

from data.rounds import resolve_rounds, rounds_in
from data.schemas import GENERATIONS
from data.store import Store
from data.targets import TargetRule, read_prompts_file, write_targets
from pipelines.cli import config_parser, parse_config, run
from shapes.world import prompt_spec


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


def finetune_hint(root: str, rounds: list[int] | None, prompts_file: Path) -> list[str]:
    """The ``make finetune`` lines to run on ``prompts_file``: one per model that made the newest
    counted round's images (the generations rows' ``model_id`` and ``run``), so the fine-tune starts
    from the round's own model, never from the shipped shapes model by default.  A round of
    fine-tuned-run images continues that run (``init=``) on its base, as docs/loop.md does."""
    gens = Store(root).to_pandas(GENERATIONS)
    if rounds is not None:
        gens = gens[gens["round"].isin(rounds)]
    gens = gens[gens["round"] == gens["round"].max()]
    prompts = f"prompts.prompts_file={prompts_file}"
    sampled = gens[gens["model_fingerprint"].notna()]  # sampled from a model (not rendered, not imported)
    if sampled.empty:
        if not gens.empty and all(prompt_spec(t) is not None for t in gens["prompt"].unique()):
            return [f'make finetune ARGS="{prompts}"']  # the shapes world: its shipped model
        return [f'make finetune ARGS="model.pipeline=<the model that made these images> {prompts}"']
    lines = []
    for (model_id, run), _ in sampled.groupby(["model_id", sampled["run"].fillna("")], sort=True):
        if not run:
            lines.append(f'make finetune ARGS="model.pipeline={model_id} {prompts}"')
            continue
        from core.loading import run_base  # here: torch only for a round a fine-tuned run made

        # pipeline=<base> adapter=<run> records "<base>+<run>"; a run folder alone records itself
        base = model_id[: -len(run) - 1] if model_id.endswith(f"+{run}") else run_base(run)
        lines.append(f'make finetune ARGS="model.pipeline={base or "<the base model " + run + " was trained from>"} '
                     f'init={run} {prompts}"')
    return lines


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
    hint = finetune_hint(cfg.root, rounds, out)
    print(f"\n{chosen} target prompts ({chosen - kept} picked{from_before}) -> {out} (table: {out.with_suffix('.csv')})\n"
          f"fine-tune on them with the model that made the round's images"
          + (":" if len(hint) == 1 else f" ({len(hint)} models made them; one line each):"))
    for line in hint:
        print(f"  {line}")
    return 0


if __name__ == "__main__":
    sys.exit(run(main))
