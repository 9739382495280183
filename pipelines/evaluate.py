"""``make eval``: the base model and each fine-tuned model on held-out prompts, same seeds.

    python -m pipelines.evaluate                                   # base, runs/finetune-{dpok,rwl}
    python -m pipelines.evaluate "models=[mine=runs/x]" samples_per_prompt=8

Writes reports/eval/: results.md (the table), metrics.json, samples-<model>.png grids.
"""

from __future__ import annotations

import sys

from tqdm.auto import tqdm

from finetune.evaluate import EvalConfig, evaluate, markdown_table
from pipelines.cli import config_parser, parse_config, run
from pipelines.config import save_config


def main(argv: list[str] | None = None) -> int:
    cfg = parse_config(EvalConfig, config_parser(__doc__.splitlines()[0]), argv)
    with tqdm(desc="eval: sampling", unit="img", file=sys.stderr) as bar:
        results = evaluate(cfg, progress=bar)
    save_config(cfg, f"{cfg.output_dir}/config.yaml")
    print(markdown_table(results))
    print(f"wrote {cfg.output_dir}/results.md, metrics.json and sample grids")
    return 0


if __name__ == "__main__":
    sys.exit(run(main))
