"""``make demo`` (:mod:`pipelines.demo`): the whole loop on the shapes world, from the committed base model to a report.

    generate a labeling round -> simulated raters (binary and ranking, noisy, overlapping)
    -> target prompts picked by the rule from the raters' labels -> reward model on all labels
    -> fine-tune with RWL and with DPOK on the targets -> evaluate with fresh seeds
    -> reports/demo/ (report.md, report.html, results.json, learning curves, sample grids)

Lee et al.'s and DPOK's protocol: collect feedback on the prompts to fix, train the reward on
those labels, fine-tune on the same prompts, evaluate them with new seeds.  The targets
(``target=rule``) are the prompts the raters found *sometimes* right (data.targets: good-rate in
(0, 0.5]), among the train prompts, since a reward-weighted method can only amplify what the model
already samples.  The evaluation reports (a) the targets, (b) generalisation: the held-out
prompts, never fine-tuned on and whose labels the reward never trained on (its val_prompts view),
(c) control prompts (train prompts with one or two objects, not targets): collateral damage.
``target=heldout|train|all`` fine-tunes on a whole shapes-world prompt set instead (the earlier
design).  ``oracle_upper_bound=true`` adds DPOK with the oracle as reward, same budget: the most a
learned reward could buy.

Each stage runs through the same library calls as its own make target, with its own typed config;
``<stage>_args`` add dotted overrides to a stage, e.g. ``dpok_args=[dpok.kl_weight=0.1]``.
The closed loop (:mod:`workflows.loop`, ``make loop``) runs this round first and continues from it.
The demo owns datasets/demo, runs/demo and reports/demo and recreates them on every run, so a
rerun with the same seed gives the same numbers.
"""

from __future__ import annotations

import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from tqdm.auto import tqdm

from core.compile import CompileMode, resolve_workflow_compile
from core.config import load_config, save_config
from core.errors import UserError
from core.loading import check_folder
from data.targets import TargetRule, write_targets
from evaluation import report
from evaluation.compare import evaluate
from evaluation.config import EvalConfig
from finetune.config import CONFIGS, FinetuneConfig
from finetune.dpok import train_dpok
from finetune.rwl import train_rwl
from labeling_app.config import LabelConfig
from labeling_app.generate import GenerateConfig, generate
from labeling_app.simulate import SimulateConfig, simulate
from reward.config import RewardConfig
from reward.data import VIEWS
from reward.train import train_reward
from shapes import SHAPES_CLIP, SHAPES_SD
from shapes.world import Prompt, prompt_set


@dataclass(frozen=True)
class DemoConfig:
    root: str = "datasets/demo"
    runs: str = "runs/demo"
    report: str = "reports/demo"
    pipeline: str = str(SHAPES_SD)
    clip: str = str(SHAPES_CLIP)
    seed: int = 0
    per_prompt: int = 8  # images per prompt in the labeling round (more labels, better reward)
    target: Literal["rule", "heldout", "train", "all"] = "rule"  # prompts fine-tuned on and evaluated
    rule: TargetRule = field(default_factory=TargetRule)  # target=rule: which prompts
    min_targets: int = 16  # target=rule: fewer is an error (too little to measure)
    oracle_upper_bound: bool = False  # also DPOK with the oracle as reward (same budget)
    curve_every: int = 10  # DPOK rounds between points of the oracle learning curve (0: none)
    raters: int = 5
    flip_rate: float = 0.1  # simulated label noise
    overlap: int = 2  # raters per item
    # Fresh seeds per target prompt in the evaluation: 16 x 32 targets = 512 images per model, a
    # standard error of ~2 points per figure (4 seeds gave ~4, and ~6 on a gain).
    eval_samples_per_prompt: int = 16
    eval_side_samples_per_prompt: int = 4  # per control and generalisation (held-out) prompt
    # every stage's sampling.compile (generate, RWL's D_model, DPOK's rounds, the evaluation), one
    # compiled UNet serving them all; auto: on where the whole demo's images pay for a compile
    # (core.compile.resolve_workflow_compile, planned_images), which the default demo's do on a CPU
    # with a C++ compiler (experiments/demo-budget)
    compile: CompileMode = "auto"
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
    check_folder(Path(cfg.pipeline), "model_index.json", "Stable Diffusion pipeline")
    check_folder(Path(cfg.clip), "config.json", "CLIP model")
    runs, report_dir = Path(cfg.runs), Path(cfg.report)
    # Every stage's config is resolved before anything runs or any folder is recreated, so a bad
    # <stage>_args override fails at once, not after minutes of generating and labelling.
    reward_cfg = load_config(RewardConfig, None, [
        f"data.root={cfg.root}", f"model.clip={cfg.clip}", f"out_dir={runs / 'reward'}", *cfg.reward_args])
    targets_file = runs / "targets.txt"
    if cfg.target == "rule":
        prompt_args = [f"prompts.prompts_file={targets_file}"]
        eval_prompts = [f"prompts_file={targets_file}", "generalization_split=heldout"]
    else:
        prompt_args, eval_prompts = [f"prompts.split={cfg.target}"], [f"split={cfg.target}"]
    models = [f"rwl={runs / 'finetune-rwl'}", f"dpok={runs / 'finetune-dpok'}"]
    if cfg.oracle_upper_bound:
        models.append(f"dpok_oracle={runs / 'finetune-dpok-oracle'}")

    def sampling_configs(compile_: str):
        """The stages that sample, each with ``sampling.compile=compile_`` (a stage's own args win)."""
        common = [f"model.pipeline={cfg.pipeline}", f"reward.path={runs / 'reward'}", f"seed={cfg.seed}",
                  f"sampling.compile={compile_}", *prompt_args]
        dpok_args = [*common, f"curve_every={cfg.curve_every}"]
        return (
            load_config(GenerateConfig, None, [
                f"root={cfg.root}", f"pipeline={cfg.pipeline}", f"per_prompt={cfg.per_prompt}", f"seed={cfg.seed}",
                "prompts=all", f"sampling.compile={compile_}", *cfg.generate_args]),
            load_config(FinetuneConfig, CONFIGS / "rwl.yaml",
                        [*common, f"output_dir={runs / 'finetune-rwl'}", *cfg.rwl_args]),
            load_config(FinetuneConfig, CONFIGS / "dpok.yaml",
                        [*dpok_args, f"output_dir={runs / 'finetune-dpok'}", *cfg.dpok_args]),
            load_config(FinetuneConfig, CONFIGS / "dpok.yaml",
                        [*dpok_args, f"output_dir={runs / 'finetune-dpok-oracle'}", *cfg.dpok_args,
                         "reward.kind=oracle"]),
            load_config(EvalConfig, None, [
                f"base={cfg.pipeline}", f"clip={cfg.clip}", f"reward.path={runs / 'reward'}",
                f"models=[{', '.join(models)}]", *eval_prompts, f"samples_per_prompt={cfg.eval_samples_per_prompt}",
                f"side_samples_per_prompt={cfg.eval_side_samples_per_prompt}", f"sampling.compile={compile_}",
                f"output_dir={report_dir / 'eval'}", *cfg.eval_args]))

    gen_cfg, rwl_cfg, dpok_cfg, _, _ = sampling_configs(cfg.compile)
    compile_ = resolve_workflow_compile(cfg.compile, planned_images(cfg, gen_cfg, rwl_cfg, dpok_cfg))
    gen_cfg, rwl_cfg, dpok_cfg, oracle_cfg, eval_cfg = sampling_configs(compile_)
    for d in (cfg.root, cfg.runs, cfg.report):
        _recreate(Path(d))
    seconds: dict[str, float] = {}
    t_all = time.perf_counter()

    _stage("generate", seconds, lambda: generate(gen_cfg))
    sim = _stage("simulate-raters", seconds, lambda: simulate(SimulateConfig(
        label=LabelConfig(root=cfg.root, overlap=cfg.overlap, seed=cfg.seed),
        raters=cfg.raters, flip_rate=cfg.flip_rate, seed=cfg.seed)))
    chosen = _stage("targets", seconds, lambda: pick_demo_targets(cfg, targets_file)) if cfg.target == "rule" else []
    reward = _stage("reward", seconds, lambda: train_reward(reward_cfg))
    rwl = _stage("finetune-rwl", seconds, lambda: train_rwl(rwl_cfg))
    dpok = _stage("finetune-dpok", seconds, lambda: train_dpok(dpok_cfg))
    histories = {"dpok": dpok.history, "rwl": rwl.history}
    curves = {"dpok": dpok.metrics["curve"]}
    if cfg.oracle_upper_bound:
        oracle = _stage("finetune-dpok-oracle", seconds, lambda: train_dpok(oracle_cfg))
        histories["dpok_oracle"], curves["dpok_oracle"] = oracle.history, oracle.metrics["curve"]
    with tqdm(desc="eval: sampling", unit="img", file=sys.stderr) as bar:
        evals = _stage("evaluate", seconds, lambda: evaluate(eval_cfg, progress=bar))
    seconds["total"] = time.perf_counter() - t_all

    reward_metrics = {view: {k: v for k, v in reward.metrics[view].items() if isinstance(v, (int, float))}
                      for view in VIEWS if view in reward.metrics}
    results = report.results_json(evals, reward_metrics, seconds)
    results["labels"] = {k: v for k, v in sim.items() if isinstance(v, (int, float))}
    results["target"] = cfg.target
    results["compile"] = compile_  # the stages' sampling.compile, auto resolved (timings depend on it)
    results["targets_chosen"] = chosen
    results["eval_samples"] = {"per_target_prompt": cfg.eval_samples_per_prompt,
                               "per_side_prompt": cfg.eval_side_samples_per_prompt}
    results["curves"] = curves  # oracle alignment on the training prompts, fixed seeds, by DPOK round
    grids = {e.name: report_dir / "eval" / f"samples-{e.name}.png" for e in evals}
    prompts_txt = (report_dir / "eval" / "samples-base.txt").read_text().strip().replace("\n", "; ")
    report.write(report_dir, results, evals, histories, grids, prompts_txt, curves)
    save_config(cfg, report_dir / "config.yaml")
    return results


def planned_images(cfg: DemoConfig, gen: GenerateConfig, rwl: FinetuneConfig, dpok: FinetuneConfig) -> int:
    """At least how many images the demo samples, known before it runs: the labeling round, RWL's
    D_model, every DPOK run's rounds (counted whole, though DPOK runs fewer UNet steps an image)
    and the evaluation's target images, the last two at ``min_targets`` targets."""
    prompts = len(prompt_set(gen.prompts))
    if gen.max_prompts is not None:
        prompts = min(prompts, gen.max_prompts)
    dpok_runs = 2 if cfg.oracle_upper_bound else 1
    per_round = dpok.dpok.prompts_per_round * dpok.dpok.samples_per_prompt
    return (prompts * cfg.per_prompt + cfg.min_targets * rwl.rwl.samples_per_prompt
            + dpok_runs * dpok.dpok.rounds * per_round
            + (2 + dpok_runs) * cfg.min_targets * cfg.eval_samples_per_prompt)


def pick_demo_targets(cfg: DemoConfig, path: Path) -> list[str]:
    """The rule's targets among the train prompts (the reward's val_prompts are the held-out
    prompts: they stay unseen for the generalisation figure); at least ``min_targets`` of them,
    in at least two categories, or a clear error."""
    table, _ = write_targets(cfg.root, path, cfg.rule, among={p.text for p in prompt_set("train")}, overwrite=True)
    chosen = list(table.loc[table["picked"], "prompt"])
    check_targets(chosen, cfg.min_targets, "the demo")
    return chosen


def check_targets(chosen: list[str], min_targets: int, who: str) -> None:
    """Enough targets to measure a gain on: at least ``min_targets`` prompts in at least two
    categories, or one clear error (``who``: what needs them, for the message)."""
    categories = {Prompt.parse(t).category for t in chosen}
    if len(chosen) < min_targets or len(categories) < 2:
        raise UserError(f"the target rule picked {len(chosen)} prompts in {len(categories)} categories "
                        f"({who} needs at least {min_targets} in 2).",
                        "widen the rule (rule.max_good_rate, rule.min_images), raise per_prompt, or lower min_targets.")
    print(f"targets: {len(chosen)} prompts in {sorted(categories)}", file=sys.stderr)
