"""``make eval``: the base model and each fine-tuned model on the same prompts with the same seeds.

    python -m pipelines.evaluate                                   # base, runs/finetune-{dpok,rwl}
    python -m pipelines.evaluate "models=[mine=runs/x]" samples_per_prompt=8
    python -m pipelines.evaluate prompts_file=prompts.txt base=/models/sd-v1-5 "models=[mine=runs/x]" \
        reward.path=runs/reward clip=/models/clip-vit-large-patch14 reference_images=/data/photos

Any pipeline and prompts: the learned reward (mean, win-rate against the base), a fidelity proxy
(CLIP-FD to reference_images, else to shapes-world renders or the base model's samples) and, when
every prompt is a shapes-world prompt, the oracle's alignment.  A named run that is not there is
an error.  The fine-tuned runs' own sampling setting (steps, guidance, eta in their config.yaml)
is every model's, for each key not given (evaluation.settings); results.md says which.  Every
model samples the fine-tuning chain (DDIM with sampling.eta on the folder's noise schedule) unless
sampling.scheduler=pipeline (the folder's own scheduler); the reports name the sampler.  Writes
reports/eval/: results.md (the table), metrics.json, samples-<model>.png grids.
"""

from __future__ import annotations

import sys

from tqdm.auto import tqdm

from core.config import load_config, save_config
from evaluation.compare import EvalConfig, evaluate, markdown_table
from evaluation.settings import eval_setting, given_keys
from pipelines.cli import config_parser, run


def main(argv: list[str] | None = None) -> int:
    args = config_parser(__doc__.splitlines()[0]).parse_args(argv)
    cfg = load_config(EvalConfig, args.config, args.overrides)
    # a run samples at its own setting unless the user sets one (evaluation.settings)
    cfg, note = eval_setting(cfg, given_keys(args.config, args.overrides))
    print(f"sampling every model at {note}", file=sys.stderr, flush=True)
    with tqdm(desc="eval: sampling", unit="img", file=sys.stderr) as bar:
        results = evaluate(cfg, progress=bar, sampling_note=note)
    save_config(cfg, f"{cfg.output_dir}/config.yaml")
    print(markdown_table(results))
    print(f"wrote {cfg.output_dir}/results.md, metrics.json and sample grids")
    return 0


if __name__ == "__main__":
    sys.exit(run(main))
