"""``make demo``: the whole loop on the shapes world, from the committed base model to a report.

    generate a labeling round -> simulated raters (binary and ranking, noisy, overlapping)
    -> reward model -> fine-tune with RWL and with DPOK -> evaluate on held-out prompts
    -> reports/demo/ (report.md, report.html, results.json, learning curves, sample grids)

The target prompts are the shapes world's held-out prompts: colour/background and count/colour pairs
the base model never saw, which it gets wrong, as Stable Diffusion gets counts and colour bindings
wrong.  As in Lee et al. and DPOK, the labeling round covers them (beside the train prompts), both
methods fine-tune on them, and the evaluation samples them with seeds no fine-tuning stage used;
the control prompts (train prompts with one or two objects) are never fine-tuned on and measure
collateral damage.

Each stage runs through the same library calls as its own make target, with its own typed config;
``<stage>_args`` add dotted overrides to a stage, e.g. ``dpok_args=[dpok.kl_weight=0.1]``.
The demo owns datasets/demo, runs/demo and reports/demo and recreates them on every run, so a
rerun with the same seed gives the same numbers.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from tqdm.auto import tqdm

from data.errors import UserError
from data.loading import SHAPES_CLIP, SHAPES_SD, check_folder
from pipelines.cli import config_parser, parse_config, run
from pipelines.config import load_config, save_config


@dataclass(frozen=True)
class DemoConfig:
    root: str = "datasets/demo"
    runs: str = "runs/demo"
    report: str = "reports/demo"
    pipeline: str = str(SHAPES_SD)
    clip: str = str(SHAPES_CLIP)
    seed: int = 0
    per_prompt: int = 8  # images per prompt in the labeling round (more labels, better reward)
    target: Literal["heldout", "train", "all"] = "heldout"  # prompts fine-tuned on and evaluated
    raters: int = 5
    flip_rate: float = 0.1  # simulated label noise
    overlap: int = 2  # raters per item
    eval_samples_per_prompt: int = 4
    generate_args: tuple[str, ...] = ()
    reward_args: tuple[str, ...] = ()
    rwl_args: tuple[str, ...] = ()
    dpok_args: tuple[str, ...] = ()
    eval_args: tuple[str, ...] = ()


MARKER = ".made-by-make-demo"


def _recreate(d: Path) -> None:
    """Empty a folder the demo made before; refuse to touch one it did not make."""
    if d.exists():
        if not (d / MARKER).exists():
            raise UserError(f"{d} exists and was not made by `make demo`, so the demo will not replace it.",
                            "pass another folder (root=, runs=, report=) or move that one away.")
        shutil.rmtree(d)
    d.mkdir(parents=True)
    (d / MARKER).write_text("This folder is recreated by every `make demo` run.\n")


def _stage(name: str, seconds: dict, fn):
    print(f"\n== demo: {name}", file=sys.stderr, flush=True)
    t0 = time.perf_counter()
    out = fn()
    seconds[name] = time.perf_counter() - t0
    print(f"== demo: {name} done in {seconds[name]:.0f} s", file=sys.stderr, flush=True)
    return out


def run_demo(cfg: DemoConfig) -> dict:
    from finetune import report
    from finetune.config import FinetuneConfig
    from finetune.dpok import train_dpok
    from finetune.evaluate import EvalConfig, evaluate
    from finetune.rwl import train_rwl
    from labeling_app.config import LabelConfig
    from pipelines.finetune import CONFIGS
    from pipelines.generate import GenerateConfig, generate
    from pipelines.simulate_raters import SimulateConfig, simulate
    from reward.config import RewardConfig
    from reward.data import VIEWS
    from reward.train import train_reward

    check_folder(Path(cfg.pipeline), "model_index.json", "Stable Diffusion pipeline")
    check_folder(Path(cfg.clip), "config.json", "CLIP model")
    runs, report_dir = Path(cfg.runs), Path(cfg.report)
    # Every stage's config is resolved before anything runs or any folder is recreated, so a bad
    # <stage>_args override fails at once, not after minutes of generating and labelling.
    gen_cfg = load_config(GenerateConfig, None, [
        f"root={cfg.root}", f"pipeline={cfg.pipeline}", f"per_prompt={cfg.per_prompt}", f"seed={cfg.seed}",
        "prompts=all", *cfg.generate_args])
    reward_cfg = load_config(RewardConfig, None, [
        f"data.root={cfg.root}", f"model.clip={cfg.clip}", f"out_dir={runs / 'reward'}", *cfg.reward_args])
    common = [f"model.pipeline={cfg.pipeline}", f"reward.path={runs / 'reward'}", f"seed={cfg.seed}",
              f"prompts.split={cfg.target}"]
    rwl_cfg = load_config(FinetuneConfig, CONFIGS / "rwl.yaml",
                          [*common, f"output_dir={runs / 'finetune-rwl'}", *cfg.rwl_args])
    dpok_cfg = load_config(FinetuneConfig, CONFIGS / "dpok.yaml",
                           [*common, f"output_dir={runs / 'finetune-dpok'}", *cfg.dpok_args])
    eval_cfg = load_config(EvalConfig, None, [
        f"base={cfg.pipeline}", f"clip={cfg.clip}", f"reward.path={runs / 'reward'}",
        f"models=[rwl={runs / 'finetune-rwl'}, dpok={runs / 'finetune-dpok'}]",
        f"split={cfg.target}", f"samples_per_prompt={cfg.eval_samples_per_prompt}",
        f"output_dir={report_dir / 'eval'}", *cfg.eval_args])
    for d in (cfg.root, cfg.runs, cfg.report):
        _recreate(Path(d))
    seconds: dict[str, float] = {}
    t_all = time.perf_counter()

    _stage("generate", seconds, lambda: generate(gen_cfg))
    sim = _stage("simulate-raters", seconds, lambda: simulate(SimulateConfig(
        label=LabelConfig(root=cfg.root, overlap=cfg.overlap, seed=cfg.seed),
        raters=cfg.raters, flip_rate=cfg.flip_rate, seed=cfg.seed)))
    reward = _stage("reward", seconds, lambda: train_reward(reward_cfg))
    rwl = _stage("finetune-rwl", seconds, lambda: train_rwl(rwl_cfg))
    dpok = _stage("finetune-dpok", seconds, lambda: train_dpok(dpok_cfg))
    with tqdm(desc="eval: sampling", unit="img", file=sys.stderr) as bar:
        evals = _stage("evaluate", seconds, lambda: evaluate(eval_cfg, progress=bar))
    seconds["total"] = time.perf_counter() - t_all

    reward_metrics = {view: {k: v for k, v in reward.metrics[view].items() if isinstance(v, (int, float))}
                      for view in VIEWS if view in reward.metrics}
    results = report.results_json(evals, reward_metrics, seconds)
    results["labels"] = {k: v for k, v in sim.items() if isinstance(v, (int, float))}
    results["target"] = cfg.target
    grids = {e.name: report_dir / "eval" / f"samples-{e.name}.png" for e in evals}
    prompts_txt = (report_dir / "eval" / "samples-base.txt").read_text().strip().replace("\n", "; ")
    report.write(report_dir, results, evals, {"dpok": dpok.history, "rwl": rwl.history}, grids, prompts_txt)
    save_config(cfg, report_dir / "config.yaml")
    return results


def main(argv: list[str] | None = None) -> int:
    cfg = parse_config(DemoConfig, config_parser(__doc__.splitlines()[0]), argv)
    results = run_demo(cfg)
    print((Path(cfg.report) / "report.md").read_text())
    print(json.dumps({m: results[m]["alignment"]["overall"] for m in ("base", "rwl", "dpok")}))
    print(f"\nReport: {cfg.report}/report.md (and report.html, results.json).\n"
          f"Label this round yourself in a browser:\n"
          f"  make rater-add RATER=you ADMIN=1\n"
          f"  make label ARGS=\"root={cfg.root}\"      # then open http://127.0.0.1:7860")
    return 0


if __name__ == "__main__":
    sys.exit(run(main))
