"""One round of feedback, the round ``make demo`` runs once and ``make loop`` runs round after round:

    generate -> label (simulated raters) -> targets -> reward -> DPOK (or DPO / KTO on the labels)

and what both workflows share to run it: :class:`RoundConfig` (their common keys, written once),
:class:`Stages` (the one stage runner: announces and times each stage; where it keeps summaries, a
rerun skips the stages that finished), :func:`claim_folders` (the one folder guard and marker),
:class:`StageConfigs` (each stage's typed config: the workflow's values set with
``dataclasses.replace``, then the user's ``<stage>_args`` on top) and :func:`run_round`.

Labels are made in a staging copy of the dataset root and moved in when the stage is done
(:mod:`data.staging`), so a label stage killed at any point resumes to exactly the labels an
uninterrupted one writes.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Literal, Sequence, get_args

from core.config import (NonNegativeInt, PositiveInt, Share, load_config, replace_keys, save_config, to_dict,
                         with_overrides)
from core.errors import UserError
from core.files import write_text_atomic
from core.jsonable import json_safe
from core.loading import check_folder
from data.staging import staged
from data.store import Store
from data.targets import TargetRule, choose_targets, fixed_targets, pick_targets, prompt_pass_rates
from evaluation.config import EvalConfig
from finetune.config import CONFIGS, FinetuneConfig
from finetune.train import train
from labeling_app.config import LabelConfig
from collect.generate import GenerateConfig, generate
from labeling_app.simulate import SimulateConfig, simulate
from reward.config import RewardConfig
from reward.train import train_reward
from shapes import SHAPES_CLIP, SHAPES_SD
from shapes.world import Prompt, prompt_set

MARKER = ".made-by-make-{}"  # in every folder a workflow made, named by the workflow (demo, loop)
STAGES = "stages"  # <runs>/stages/<stage>.json: a finished stage's summary (what resumes)
# a round's fine-tuning: DPOK against the round's reward, or DPO / KTO on the round's labels themselves
# (finetune.preference: no reward model)
RoundMethod = Literal["dpok", "dpo", "kto"]


@dataclass(frozen=True)
class RoundConfig:
    """The keys ``make demo`` and ``make loop`` share.  The folders, ``curve_every`` and
    ``oracle_upper_bound`` have no default here: each workflow writes its own."""

    root: str  # the dataset root (every round's images and labels: rounds are a column)
    runs: str  # the run folders (reward, DPOK, ...)
    report: str
    curve_every: NonNegativeInt  # DPOK rounds between points of its oracle learning curve (0: none)
    oracle_upper_bound: bool  # also DPOK with the oracle as reward (the same budget)
    pipeline: str = str(SHAPES_SD)  # the base model (every DPOK run's KL term stays anchored to it)
    clip: str = str(SHAPES_CLIP)  # the reward's CLIP and the fidelity proxy's
    # every stage's sampling.max_sequence_length (the T5 tokens an SD3 / FLUX folder is fed;
    # core.sampling.SamplingConfig): shapes-flow needs 0; None leaves each stage's own
    max_sequence_length: NonNegativeInt | None = None
    seed: int = 0  # every stage's seed derives from it
    per_prompt: PositiveInt = 8  # round 0: images per prompt, every shapes-world prompt (more labels, better reward)
    rule: TargetRule = field(default_factory=TargetRule)  # which prompts are targets (data.targets)
    min_targets: PositiveInt = 16  # round 0: fewer targets is an error (too little to measure)
    raters: PositiveInt = 5
    flip_rate: Share = 0.1  # simulated label noise
    overlap: PositiveInt = 2  # raters per item
    # The simulated raters mark where each bad image is wrong (the app's marks), so the reward also
    # trains its region head (reward region.head=auto); the demo then adds region-aware DPOK.
    regions: bool = False
    # Fresh seeds per target prompt in the evaluation: 16 x 32 targets = 512 images per model, a
    # standard error of ~2 points per figure (4 seeds gave ~4, and ~6 on a gain).
    eval_samples_per_prompt: PositiveInt = 16
    eval_side_samples_per_prompt: PositiveInt = 4  # per control and generalisation (held-out) prompt
    generate_args: tuple[str, ...] = ()  # dotted overrides of a stage's config, e.g. [max_prompts=24]
    reward_args: tuple[str, ...] = ()
    dpok_args: tuple[str, ...] = ()
    dpo_args: tuple[str, ...] = ()
    kto_args: tuple[str, ...] = ()
    eval_args: tuple[str, ...] = ()


class Stages:
    """A workflow's stages, run in order: each is announced on stderr and timed (``seconds``).
    With ``keep`` (a runs folder) each finished stage's summary, a JSON dict, is written to
    ``<keep>/stages/<name>.json`` and a rerun returns it instead of running the stage again, so a
    killed workflow resumes after its last finished stage; ``seconds`` then holds the time the
    stage took when it ran, so a resumed workflow still counts what its stages cost."""

    def __init__(self, who: str, keep: Path | None = None):
        self.who, self.dir = who, (keep / STAGES if keep is not None else None)
        self.seconds: dict[str, float] = {}

    def run(self, name: str, fn: Callable[[], object]):
        path = self.dir / f"{name}.json" if self.dir is not None else None
        if path is not None and path.is_file():
            print(f"== {self.who}: {name} (done before)", file=sys.stderr, flush=True)
            out = json.loads(path.read_text())
            self.seconds[name] = float(out.get("seconds", 0.0))
            return out
        print(f"\n== {self.who}: {name}", file=sys.stderr, flush=True)
        t0 = time.perf_counter()
        out = fn()
        self.seconds[name] = time.perf_counter() - t0
        if path is not None:
            out = {**out, "seconds": round(self.seconds[name], 1)}
            path.parent.mkdir(parents=True, exist_ok=True)
            write_text_atomic(path, json.dumps(json_safe(out), indent=1))
        print(f"== {self.who}: {name} done in {self.seconds[name]:.0f} s", file=sys.stderr, flush=True)
        return out


def claim_folders(cfg: RoundConfig, who: str, *, fresh: bool, may_change: tuple[str, ...] = ()) -> None:
    """Make the workflow's folders (root, runs, report), refusing one that ``make <who>`` did not
    make (its marker).  ``fresh``: empty them first; else, to resume, the settings saved in
    ``<runs>/<who>.yaml`` must be ``cfg``'s but for the keys in ``may_change``."""
    dirs = [Path(d) for d in (cfg.root, cfg.runs, cfg.report)]
    marker = MARKER.format(who)
    for d in dirs:
        if d.exists() and not (d / marker).exists():
            raise UserError(f"{d} exists and was not made by `make {who}`, so the {who} will not write there.",
                            "pass another folder (root=, runs=, report=) or move that one away.")
    saved = Path(cfg.runs) / f"{who}.yaml"
    if not fresh and saved.is_file():
        before, now = to_dict(load_config(type(cfg), saved)), to_dict(cfg)
        changed = sorted(k for k in now if k not in may_change and before.get(k) != now[k])
        if changed:
            raise UserError(f"{cfg.runs} holds a {who} made with other settings ({', '.join(changed)}).",
                            f"rerun with the same settings to resume ({', '.join(may_change) or 'none'} may change), "
                            "pass fresh=true to start over, or use other folders (root=, runs=, report=).")
    for d in dirs:
        if fresh and d.exists():
            shutil.rmtree(d)
        d.mkdir(parents=True, exist_ok=True)
        (d / marker).write_text(f"This folder belongs to `make {who}`, which may empty and rewrite it.\n")
    save_config(cfg, saved)


class StageConfigs:
    """Each stage's config: the stage's dataclass (DPOK's and RWL's from their shipped yaml) with
    the workflow's values set (:func:`core.config.replace_keys`), then the user's ``<stage>_args``
    on top (:func:`core.config.with_overrides`: the user's win; a bad one is an error naming it)."""

    def __init__(self, cfg: RoundConfig):
        check_folder(Path(cfg.pipeline), "model_index.json", "Stable Diffusion pipeline")
        check_folder(Path(cfg.clip), "config.json", "CLIP model")
        self.cfg = cfg
        # how long each method's stage of a round runs (dpok.rounds, dpo.steps, kto.steps: its yaml's or
        # the user's <method>_args'): a bad <method>_args fails here
        self.lengths = {m: with_overrides(load_config(FinetuneConfig, CONFIGS / f"{m}.yaml"), self.args(m)).length[1]
                        for m in get_args(RoundMethod)}

    def args(self, method: RoundMethod) -> tuple[str, ...]:
        """The user's overrides of a round method's stages (``<method>_args``)."""
        return getattr(self.cfg, f"{method}_args")

    def _configured(self, c, values: dict, args: tuple[str, ...]):
        if self.cfg.max_sequence_length is not None and hasattr(c, "sampling"):
            values = {"sampling.max_sequence_length": self.cfg.max_sequence_length, **values}
        return with_overrides(replace_keys(c, values), args)

    def generate(self, root: str, pipeline: str, k: int, per_prompt: int, prompts_file: Path | None = None) -> GenerateConfig:
        """Round ``k``'s images of every shapes-world prompt, or of ``prompts_file``'s; seeds by
        round; ``fill``: a rerun after a kill adds only the images the round still lacks."""
        where = {"prompts": "all"} if prompts_file is None else {"prompts_file": str(prompts_file)}
        return self._configured(GenerateConfig(), dict(root=root, pipeline=pipeline, per_prompt=per_prompt, round=k,
                                                     seed=self.cfg.seed + 1000 * k, fill=True, **where),
                              self.cfg.generate_args)

    def reward(self, out: Path, root: str, rounds: str = "all") -> RewardConfig:
        return with_overrides(replace_keys(RewardConfig(), {
            "data.root": root, "data.rounds": rounds, "model.clip": self.cfg.clip, "out_dir": str(out),
            "overwrite": True}), self.cfg.reward_args)

    def finetune(self, method: str, args: tuple[str, ...], out: Path, reward: Path | None, seed: int,
                 prompts_file: Path | None = None, split: str | None = None, init: Path | None = None,
                 **extra) -> FinetuneConfig:
        """A run on ``prompts_file`` (or the shapes-world ``split``) against the reward at
        ``reward`` (None: a method with none), from the base or from the run ``init``; ``extra``: more keys."""
        where = {"prompts.prompts_file": str(prompts_file)} if prompts_file is not None else {"prompts.split": split}
        judge = {} if reward is None else {"reward.path": str(reward)}
        return self._configured(load_config(FinetuneConfig, CONFIGS / f"{method}.yaml"), {
            "model.pipeline": self.cfg.pipeline, **judge, "seed": seed, "output_dir": str(out),
            "init": None if init is None else str(init), **where, **extra}, args)

    def tuned(self, method: RoundMethod, out: Path, reward: Path, root: str, seed: int,
              prompts_file: Path | None = None, split: str | None = None, init: Path | None = None,
              rounds: str = "all", length: int | None = None) -> FinetuneConfig:
        """A round's fine-tuning by ``method``: DPOK against the reward at ``reward``, or DPO / KTO on
        the labels of ``rounds`` (data.rounds grammar) in the dataset root ``root`` -- those of
        ``prompts_file``'s prompts; with a ``split``, every label; ``length``: its DPOK rounds or
        steps instead of a round's (:attr:`lengths`), for a control as long as several rounds."""
        if method == "dpok":
            return self.dpok(out, reward, seed, prompts_file, split, init, dpok_rounds=length)
        c = self.finetune(method, self.args(method), out, None, seed, prompts_file, split, init,
                          **{"data.root": root, "data.rounds": rounds})
        return c if length is None else replace_keys(c, {c.length[0]: length})

    def dpok(self, out: Path, reward: Path, seed: int, prompts_file: Path | None = None, split: str | None = None,
             init: Path | None = None, dpok_rounds: int | None = None, oracle: bool = False) -> FinetuneConfig:
        """DPOK for a round; ``dpok_rounds``: the DPOK rounds it runs instead of a round's
        (:attr:`lengths`), for a control as long as several rounds; ``oracle``: the oracle as reward."""
        c = self.finetune("dpok", self.cfg.dpok_args, out, reward, seed, prompts_file, split, init,
                          curve_every=self.cfg.curve_every)
        after = {"dpok.rounds": dpok_rounds} if dpok_rounds is not None else {}
        return replace_keys(c, {**after, **({"reward.kind": "oracle"} if oracle else {})})

    def evaluation(self, models: list[str], reward: Path, out: Path, prompts_file: Path | None = None,
                   split: str | None = None, **extra) -> EvalConfig:
        """The base and ``models`` (``name=run folder``) on ``prompts_file`` (the held-out prompts
        as generalisation) or the shapes-world ``split``, judged by the reward at ``reward``;
        ``extra``: more keys (``eval_args`` still win)."""
        where = dict(prompts_file=str(prompts_file), generalization_split="heldout") if prompts_file is not None \
            else dict(split=split)
        return self._configured(EvalConfig(), {
            "base": self.cfg.pipeline, "clip": self.cfg.clip, "reward.path": str(reward), "models": tuple(models),
            "samples_per_prompt": self.cfg.eval_samples_per_prompt, "output_dir": str(out),
            "side_samples_per_prompt": self.cfg.eval_side_samples_per_prompt, **where, **extra}, self.cfg.eval_args)


@dataclass(frozen=True)
class RoundOut:
    """Where a round writes: its targets file (the table beside it as CSV), reward and fine-tuned run."""

    targets: Path
    reward: Path
    tuned: Path


def run_round(stages: Stages, configs: StageConfigs, k: int, gen: GenerateConfig, out: RoundOut, *,
              name: Callable[[str], str], label_summary: Callable[[dict], dict],
              before_label: Callable[[], dict] | None = None, previous: Sequence[str] = (),
              split: str | None = None, init: Path | None | Callable[[], Path | None] = None,
              reward_rounds: str = "all", optimism: float = 0.0,
              after_label: Callable[[], dict] | None = None, method: RoundMethod = "dpok") -> dict:
    """Round ``k``: ``gen``'s images -> (``before_label``'s stages) -> simulated raters label what
    the round serves -> targets from the round's labels (``previous``: the last round's; ``split``:
    fine-tune on that shapes-world prompt set instead, no targets) -> the reward on the labels of
    ``reward_rounds`` -> fine-tuning by ``method`` (DPOK on that reward, or DPO / KTO on those
    labels; from ``init``, or what it returns when called after ``after_label``'s stages: the
    loop's round check; ``optimism``: DPOK's reward's UCB weight, reward.optimism).
    ``name``: a stage's name in ``stages`` (the fine-tuning's: the method's);
    ``label_summary``: the simulation's summary as the workflow keeps it.  Each stage's summary
    (the fine-tuning's as ``finetune``)."""
    cfg, root = configs.cfg, gen.root
    r: dict = {"round": k}
    r["generate"] = stages.run(name("generate"), lambda: generate_summary(gen))
    if before_label is not None:
        r.update(before_label())
    r["label"] = stages.run(name("label"), lambda: label_summary(label(cfg, root, k)))
    if after_label is not None:
        r.update(after_label())
    if split is None:
        r["targets"] = stages.run(name("targets"), lambda: pick_round_targets(cfg, root, k, out.targets, list(previous)))
    r["reward"] = stages.run(name("reward"), lambda: reward_summary(configs.reward(out.reward, root, reward_rounds)))
    fcfg = configs.tuned(method, out.tuned, out.reward, root, cfg.seed + k, out.targets if split is None else None,
                         split, init() if callable(init) else init, rounds=reward_rounds)
    if optimism:  # only when set, so a run without it keeps its saved config (and resumes) as before
        fcfg = replace_keys(fcfg, {"reward.optimism": optimism})
    r["finetune"] = stages.run(name(method), lambda: finetune_summary(fcfg))
    return r


def label(cfg: RoundConfig, root: str, k: int) -> dict:
    """Simulated raters label what round ``k`` serves (its selection, if it has one), marking their
    bad answers with ``regions``, in a staging copy of the root moved in when done
    (:func:`data.staging.staged`); the simulation's summary."""
    return staged(root, lambda at: simulate(SimulateConfig(
        label=LabelConfig(root=at, overlap=cfg.overlap, seed=cfg.seed + k, round=k,
                          marks="optional" if cfg.regions else "off"),  # the raters mark when the round offers it
        raters=cfg.raters, flip_rate=cfg.flip_rate, seed=cfg.seed + k)))


def pick_round_targets(cfg: RoundConfig, root: str, k: int, path: Path, previous: list[str]) -> dict:
    """Round k's targets from round k's labels: the previous targets that stay (all but those the
    round's labels judge fixed with ``rule.fixed_confidence``), then the rule's new picks among
    the train prompts the round sampled (the held-out prompts stay unseen for the generalisation
    figure; a fixed target that regressed is picked again), at most ``rule.max_targets``
    (:func:`data.targets.choose_targets`); the table beside them as CSV.  Round 0's, to measure a
    gain on: at least ``min_targets`` in at least two categories, or one clear error."""
    rates = prompt_pass_rates(Store(root), [k])
    table = pick_targets(rates, cfg.rule, among={p.text for p in prompt_set("train")})
    chosen = choose_targets(table, previous, cfg.rule)
    categories = {Prompt.parse(t).category for t in chosen}
    if k == 0 and (len(chosen) < cfg.min_targets or len(categories) < 2):
        raise UserError(f"the target rule picked {len(chosen)} prompts in {len(categories)} categories "
                        f"(round 0 needs at least {cfg.min_targets} in 2).",
                        "widen the rule (rule.max_good_rate, rule.min_images), raise per_prompt, or lower min_targets.")
    if not chosen:
        raise UserError(f"round {k} has no target left: every prompt the rule could pick is fixed.",
                        "stop the loop at this round (rounds=), or widen the rule.")
    print(f"targets: {len(chosen)} prompts in {sorted(categories)}", file=sys.stderr)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path.with_suffix(".csv"), table.to_csv(index=False))
    write_text_atomic(path, "".join(f"{t}\n" for t in chosen))
    kept = [t for t in chosen if t in set(previous)]
    return {"targets": chosen, "picked": [t for t in chosen if t not in set(previous)], "kept": kept,
            "fixed": fixed_targets(table, previous, cfg.rule), "dropped": [t for t in previous if t not in chosen]}


def generate_summary(gcfg: GenerateConfig) -> dict:
    res = generate(gcfg)
    return {"images_added": res.images_added, "images_in_root": res.images_in_round, "prompts": res.prompts,
            "model": res.model_id}


def reward_summary(rcfg: RewardConfig) -> dict:
    """The reward's numeric validation metrics by view, its accuracy by round, its id; with a region
    head, that head's numeric metrics by view (``region``)."""
    res = train_reward(rcfg)
    numeric = lambda d: {m: v for m, v in d.items() if isinstance(v, (int, float))}  # noqa: E731
    views = ("val_images", "val_prompts")
    keep = {view: numeric(res.metrics.get(view, {})) for view in views}
    if "region" in res.metrics:
        keep["region"] = {view: numeric(res.metrics["region"][view]) for view in views if view in res.metrics["region"]}
    return {**keep, "by_round": res.metrics.get("by_round", {}), "model_id": res.model.model_id}


def finetune_summary(fcfg: FinetuneConfig) -> dict:
    """A round method's run (DPOK, DPO or KTO) for one stage; a run that finished before a kill cut its
    stage short is kept (its metrics.json is written last: finetune.checkpoints.save_result).
    ``length``: its DPOK rounds or steps; ``curve``: DPOK's oracle learning curve ([] for the others)."""
    done = Path(fcfg.output_dir) / "metrics.json"
    metrics = json.loads(done.read_text()) if done.is_file() else train(fcfg).metrics
    return {"output_dir": fcfg.output_dir, "method": fcfg.method, "curve": metrics.get("curve", []),
            "length": fcfg.length[1], "init": fcfg.init}
