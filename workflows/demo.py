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
learned reward could buy.  ``regions=true`` has the raters mark where each bad image is wrong, so
the reward also learns a region head, and adds Focus-N-Fix as its paper runs it
(``finetune-draft-region``: reward backpropagation, DRaFT-1, on the same reward and targets with
``region.weight=region_weight``, the penalty on change outside the problem region whose gradient
lands on the pixels it protects; ``region_steps`` optimizer steps, ``draft_args``) beside plain DPOK
in every table of the report, whose keep table is then read against plain DPOK turned down
(``region_frontier_scales``).  (Region-aware DPOK, the penalty as one more scalar of a policy
gradient's reward, is dominated by plain DPOK turned down: experiments/keep-frontier.)
``label_methods=[dpo,kto]`` adds fine-tuning straight from the raters' labels of the targets, with
no reward model (:mod:`finetune.preference`): Diffusion-DPO on their ranking pairs and Diffusion-KTO
on their binary answers, each a row of every table beside RWL and DPOK (``dpo_args``, ``kto_args``).

The demo is round 0 of :mod:`workflows.round` (the round the closed loop, :mod:`workflows.loop`,
runs first and continues from), plus RWL on the same reward and targets, and its report.  Each
stage runs through the same library calls as its own make target, with its own typed config;
``<stage>_args`` add dotted overrides to a stage, e.g. ``dpok_args=[dpok.kl_weight=0.1]``.
The demo owns datasets/demo, runs/demo and reports/demo and recreates them on every run, so a
rerun with the same seed gives the same numbers.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from tqdm.auto import tqdm

from core.compile import resolve_compile
from core.config import NonNegativeInt, PositiveFloat, PositiveInt, save_config
from core.errors import UserError
from core.loading import default_device
from evaluation import report
from evaluation.compare import evaluate
from finetune.config import LabelMethod
from finetune.train import train
from reward.data import VIEWS
from workflows.round import RoundConfig, RoundOut, StageConfigs, Stages, claim_folders, run_round

NAMES = {"label": "simulate-raters", "dpok": "finetune-dpok"}  # the demo's names of the round's stages


@dataclass(frozen=True)
class DemoConfig(RoundConfig):
    root: str = "datasets/demo"
    runs: str = "runs/demo"
    report: str = "reports/demo"
    curve_every: NonNegativeInt = 10  # DPOK rounds between points of the oracle learning curve (0: none)
    oracle_upper_bound: bool = False  # also DPOK with the oracle as reward (same budget)
    target: Literal["rule", "heldout", "train", "all"] = "rule"  # prompts fine-tuned on and evaluated
    rwl_args: tuple[str, ...] = ()
    # also fine-tune on the targets' labels with no reward model, each method a run and a row beside
    # RWL and DPOK: dpo (their ranking pairs), kto (their binary answers); (): neither
    label_methods: tuple[LabelMethod, ...] = ()
    # regions=true: Focus-N-Fix on DRaFT-1, its region.weight (the paper's beta) and optimizer steps
    # (250: plain DRaFT's steps in about the demo's DPOK time, twice that with the penalty;
    # experiments/keep-frontier measured both)
    region_weight: PositiveFloat = 3.0
    region_steps: PositiveInt = 250
    draft_args: tuple[str, ...] = ()  # dotted overrides of that run's config (finetune/configs/draft.yaml)
    # regions=true: plain DPOK's scales the keep table is read against (the evaluation's
    # frontier_scales: the frontier and the floor, evaluation.frontier; eval_args may set others); (): none
    region_frontier_scales: tuple[PositiveFloat, ...] = (0.1, 0.25, 0.5)


def run_demo(cfg: DemoConfig) -> dict:
    runs, report_dir = Path(cfg.runs), Path(cfg.report)
    out = RoundOut(targets=runs / "targets.txt", reward=runs / "reward", tuned=runs / "finetune-dpok")
    split = None if cfg.target == "rule" else cfg.target
    prompts_file = out.targets if split is None else None
    models = [f"rwl={runs / 'finetune-rwl'}", f"dpok={out.tuned}"]
    if cfg.oracle_upper_bound:
        models.append(f"dpok_oracle={runs / 'finetune-dpok-oracle'}")
    if cfg.regions:
        models.append(f"draft_region={runs / 'finetune-draft-region'}")
    # Every stage's config is built before anything runs or any folder is recreated (DPOK's by
    # StageConfigs itself), so a bad <stage>_args override fails at once, not after minutes of
    # generating and labelling.
    configs = StageConfigs(cfg)
    gen_cfg = configs.generate(cfg.root, cfg.pipeline, 0, cfg.per_prompt)
    reward_cfg = configs.reward(out.reward, cfg.root)
    if cfg.regions and reward_cfg.region.head == "off":
        raise UserError("regions=true needs the reward's region head, and reward_args turn it off (region.head=off).",
                        "drop region.head=off from reward_args, or set regions=false.")
    rwl_cfg = configs.finetune("rwl", cfg.rwl_args, runs / "finetune-rwl", out.reward, cfg.seed, prompts_file, split)
    oracle_cfg = configs.dpok(runs / "finetune-dpok-oracle", out.reward, cfg.seed, prompts_file, split, oracle=True)
    region_cfg = configs.finetune("draft", cfg.draft_args, runs / "finetune-draft-region", out.reward, cfg.seed,
                                  prompts_file, split, **{"draft.steps": cfg.region_steps,
                                                          "region.weight": cfg.region_weight})
    label_cfgs = {m: configs.tuned(m, runs / f"finetune-{m}", out.reward, cfg.root, cfg.seed, prompts_file, split)
                  for m in dict.fromkeys(cfg.label_methods)}
    models += [f"{m}={c.output_dir}" for m, c in label_cfgs.items()]
    front = {"frontier_scales": cfg.region_frontier_scales} if cfg.regions else {}
    eval_cfg = configs.evaluation(models, out.reward, report_dir / "eval", prompts_file, cfg.target, **front)
    claim_folders(cfg, "demo", fresh=True)
    stages, t0 = Stages("demo"), time.perf_counter()

    r = run_round(stages, configs, 0, gen_cfg, out, name=lambda s: NAMES.get(s, s),
                  label_summary=lambda sim: {k: v for k, v in sim.items() if isinstance(v, (int, float))},
                  split=split)
    rwl = stages.run("finetune-rwl", lambda: train(rwl_cfg))
    histories = {"dpok": _history(out.tuned), "rwl": rwl.history}
    curves = {"dpok": r["finetune"]["curve"]}
    learnt = {}  # what DPO / KTO learnt from (pairs, answers: their metrics' labels) and their steps
    for m, c in label_cfgs.items():
        res = stages.run(f"finetune-{m}", lambda c=c: train(c))
        histories[m], learnt[m] = res.history, {**res.metrics["labels"], "steps": c.length[1]}
    if cfg.oracle_upper_bound:
        oracle = stages.run("finetune-dpok-oracle", lambda: train(oracle_cfg))
        histories["dpok_oracle"], curves["dpok_oracle"] = oracle.history, oracle.metrics["curve"]
    if cfg.regions:
        histories["draft_region"] = stages.run("finetune-draft-region", lambda: train(region_cfg)).history
    with tqdm(desc="eval: sampling", unit="img", file=sys.stderr) as bar:
        evals = stages.run("evaluate", lambda: evaluate(eval_cfg, progress=bar))
    seconds = {**stages.seconds, "total": time.perf_counter() - t0}

    reward_metrics = {view: r["reward"][view] for view in VIEWS if r["reward"].get(view)}
    reward_metrics |= {f"region_{view}": m for view, m in r["reward"].get("region", {}).items()}
    results = report.results_json(evals, reward_metrics, seconds)
    results["labels"] = r["label"]
    results["base_model"] = Path(cfg.pipeline).name  # the results page keeps each base model's gains apart
    results["target"] = cfg.target
    results["region_weight"] = cfg.region_weight if cfg.regions else None  # draft_region's beta; None: no such run
    results["label_methods"] = learnt
    # the evaluation's sampling.compile, auto resolved (timings depend on it)
    results["compile"] = "on" if resolve_compile(eval_cfg.sampling.compile, default_device()) else "off"
    results["targets_chosen"] = r["targets"]["targets"] if split is None else []
    results["eval_samples"] = {"per_target_prompt": cfg.eval_samples_per_prompt,
                               "per_side_prompt": cfg.eval_side_samples_per_prompt}
    results["curves"] = curves  # oracle alignment on the training prompts, fixed seeds, by DPOK round
    grids = {e.name: report_dir / "eval" / f"samples-{e.name}.png" for e in evals}
    prompts_txt = (report_dir / "eval" / "samples-base.txt").read_text().strip().replace("\n", "; ")
    report.write(report_dir, results, evals, histories, grids, prompts_txt, curves)
    save_config(cfg, report_dir / "config.yaml")
    return results


def _history(run: Path) -> list[dict]:
    """A finished fine-tuning run's per-round history (its metrics.json)."""
    return json.loads((run / "metrics.json").read_text())["history"]
