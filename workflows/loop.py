"""``make loop``: the closed loop on the shapes world, round after round.

    round 0: the demo's round: the base model samples every prompt -> simulated raters label all of
             it -> targets by the rule -> reward on the labels -> DPOK on the targets
    round k: the round k-1 DPOK model samples the current targets and the control prompts
             -> the reward of round k-1 is measured on these new images (does it keep up?)
             -> a label budget of them is selected (random, where the reward is least sure, or a mix)
             -> simulated raters label only those, through the labeling app's assignment code
             -> targets re-picked from the round's labels (fixed prompts drop out, new failures
                enter; a target too little labelled to judge stays) -> the reward retrained on the
                labels of every round -> DPOK continues from round k-1's weights (its KL term still
                anchored to the base model)
    then:    the one-shot control (the same total labels, all on base-model images, one reward,
             one DPOK run of the loop's total rounds), the upper bound (the oracle as reward, the
             loop's total DPOK rounds), and one evaluation of every round's model, the control and
             the upper bound on the same prompts and fresh seeds -> reports/loop/

Everything lives in one dataset root (rounds are a column: :mod:`data.rounds`), one runs folder
(``round-<k>/`` per round) and one report folder.  Each finished stage leaves its summary in
``<runs>/stages/``: a rerun of the same command resumes after the last finished stage (DPOK from
its last checkpoint), and ``fresh=true`` starts over.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

from core.compile import CompileMode, resolve_workflow_compile
from core.config import NonNegativeInt, PositiveInt, Share, load_config, save_config, to_dict
from core.errors import UserError
from core.files import write_text_atomic
from core.jsonable import json_safe
from core.loading import check_folder
from data.labels import current
from data.rounds import filter_rounds, rounds_in
from data.schemas import GENERATIONS, SelectionMethod
from data.store import Store
from data.targets import TargetRule, pick_targets, prompt_pass_rates, read_prompts_file
from evaluation.compare import evaluate
from evaluation.config import EvalConfig
from evaluation.oracle import control_prompts
from finetune.config import CONFIGS, FinetuneConfig
from finetune.dpok import train_dpok
from labeling_app.config import LabelConfig
from labeling_app.generate import GenerateConfig, generate
from labeling_app.simulate import SimulateConfig, simulate
from reward.config import RewardConfig
from reward.evaluation import round_accuracy
from reward.selection import SelectConfig, select
from reward.train import train_reward
from shapes import SHAPES_CLIP, SHAPES_SD
from shapes.world import prompt_set
from workflows import loop_report
from workflows.demo import check_targets

MARKER = ".made-by-make-loop"
STAGES = "stages"


@dataclass(frozen=True)
class LoopConfig:
    root: str = "datasets/loop"  # one dataset root for every round (rounds are a column)
    runs: str = "runs/loop"  # round-<k>/ per round, one-shot-<R>/, oracle-<R>/, stages/ (what resumes)
    report: str = "reports/loop"
    pipeline: str = str(SHAPES_SD)  # the base model every round's KL term stays anchored to
    clip: str = str(SHAPES_CLIP)
    seed: int = 0
    rounds: PositiveInt = 3  # labeling rounds, round 0 (the demo's round) included
    per_prompt: PositiveInt = 8  # round 0: images per prompt, every shapes-world prompt
    round_per_prompt: PositiveInt = 8  # round k >= 1: images per current target and control prompt
    budget: PositiveInt = 256  # round k >= 1: images sent to the raters, of those just generated
    selection: SelectionMethod = "uncertain"  # which images the budget buys (reward.selection)
    mix_share: Share = 0.5  # selection=mix: the share of the budget picked by uncertainty
    reward_rounds: str = "all"  # the rounds whose labels the reward trains on (data.rounds grammar)
    rule: TargetRule = field(default_factory=TargetRule)  # the targets of every round
    min_targets: PositiveInt = 16  # round 0: fewer targets is an error (too little to measure)
    raters: PositiveInt = 5
    flip_rate: Share = 0.1  # simulated label noise
    overlap: PositiveInt = 2  # raters per item
    one_shot: bool = True  # also the one-shot control (same labels on base images, one DPOK run)
    oracle_upper_bound: bool = True  # also DPOK with the oracle as reward for the loop's total rounds
    eval_samples_per_prompt: PositiveInt = 16  # fresh seeds per target prompt in the final evaluation
    eval_side_samples_per_prompt: PositiveInt = 4  # per control and held-out prompt
    curve_every: NonNegativeInt = 0  # DPOK rounds between points of its oracle learning curve (0: none)
    compile: CompileMode = "auto"  # every stage's sampling.compile (auto: by the whole loop's images, as make demo)
    fresh: bool = False  # empty the loop's folders and start over (else a rerun resumes)
    generate_args: tuple[str, ...] = ()
    reward_args: tuple[str, ...] = ()
    dpok_args: tuple[str, ...] = ()
    eval_args: tuple[str, ...] = ()


class Stages:
    """The loop's finished stages, a JSON summary each under ``<runs>/stages/``: :meth:`run` skips a
    stage whose summary is there, so a killed loop resumes after its last finished stage."""

    def __init__(self, runs: Path):
        self.dir = runs / STAGES

    def run(self, name: str, fn: Callable[[], dict]) -> dict:
        path = self.dir / f"{name}.json"
        if path.is_file():
            print(f"== loop: {name} (done before)", file=sys.stderr, flush=True)
            return json.loads(path.read_text())
        print(f"\n== loop: {name}", file=sys.stderr, flush=True)
        t0 = time.perf_counter()
        out = {**fn(), "seconds": round(time.perf_counter() - t0, 1)}
        path.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(path, json.dumps(json_safe(out), indent=1))
        print(f"== loop: {name} done in {out['seconds']:.0f} s", file=sys.stderr, flush=True)
        return out


def _prepare(cfg: LoopConfig) -> None:
    """Make the loop's folders, or check that they are this loop's (same settings) to resume;
    ``fresh`` empties them first.  Refuses a folder the loop did not make."""
    dirs = [Path(d) for d in (cfg.root, cfg.runs, cfg.report)]
    saved = Path(cfg.runs) / "loop.yaml"
    for d in dirs:
        if d.exists() and not (d / MARKER).exists():
            raise UserError(f"{d} exists and was not made by `make loop`, so the loop will not write there.",
                            "pass another folder (root=, runs=, report=) or move that one away.")
    if not cfg.fresh and saved.is_file():
        before = {k: v for k, v in to_dict(load_config(LoopConfig, saved)).items() if k not in ("fresh", "rounds")}
        now = {k: v for k, v in to_dict(cfg).items() if k not in ("fresh", "rounds")}
        changed = sorted(k for k in now if before.get(k) != now[k])
        if changed:
            raise UserError(f"{cfg.runs} holds a loop made with other settings ({', '.join(changed)}).",
                            "rerun with the same settings to resume (rounds= may grow), pass fresh=true to start "
                            "over, or use other folders (root=, runs=, report=).")
    for d in dirs:
        if cfg.fresh and d.exists():
            shutil.rmtree(d)
        d.mkdir(parents=True, exist_ok=True)
        (d / MARKER).write_text("This folder belongs to `make loop` (fresh=true recreates it).\n")
    save_config(cfg, saved)


def _configs(cfg: LoopConfig):
    """Every stage's config for round ``k`` (``init``: the run it continues; ``prompts``: its
    prompts file), resolved from the stage args, so bad args fail before anything runs."""
    runs = Path(cfg.runs)
    base = load_config(FinetuneConfig, CONFIGS / "dpok.yaml", list(cfg.dpok_args))  # a round's DPOK section
    compile_ = f"sampling.compile={resolve_workflow_compile(cfg.compile, planned_images(cfg, base.dpok))}"

    def reward_cfg(out: Path, root: str) -> RewardConfig:
        return load_config(RewardConfig, None, [
            f"data.root={root}", f"data.rounds={cfg.reward_rounds}", f"model.clip={cfg.clip}", f"out_dir={out}",
            "overwrite=true", *cfg.reward_args])

    def dpok_cfg(out: Path, reward: str, prompts: Path, seed: int, init: Path | None = None,
                 rounds_times: int = 1, oracle: bool = False) -> FinetuneConfig:
        args = [f"model.pipeline={cfg.pipeline}", f"reward.path={reward}", f"seed={seed}",
                f"prompts.prompts_file={prompts}", f"output_dir={out}", f"curve_every={cfg.curve_every}", compile_,
                *cfg.dpok_args, f"dpok.rounds={base.dpok.rounds * rounds_times}"]
        if init is not None:
            args.append(f"init={init}")
        if oracle:
            args.append("reward.kind=oracle")
        return load_config(FinetuneConfig, CONFIGS / "dpok.yaml", args)

    def generate_cfg(pipeline: str, prompts: Path | None, per_prompt: int, round_: int, root: str) -> GenerateConfig:
        # round 0 draws the demo's seeds (the same round, labels, targets and round-0 model);
        # fill: a rerun after a kill adds only the images the round still lacks
        where = [f"prompts_file={prompts}"] if prompts is not None else ["prompts=all"]
        return load_config(GenerateConfig, None, [
            f"root={root}", f"pipeline={pipeline}", f"per_prompt={per_prompt}", f"round={round_}",
            f"seed={cfg.seed + 1000 * round_}", "fill=true", *where, compile_, *cfg.generate_args])

    def eval_cfg(prompts: Path, models: list[str]) -> EvalConfig:
        # judged by the last round's reward: trained on every round's labels
        return load_config(EvalConfig, None, [
            f"base={cfg.pipeline}", f"clip={cfg.clip}", f"reward.path={runs / f'round-{cfg.rounds - 1}' / 'reward'}",
            f"models=[{', '.join(models)}]", f"prompts_file={prompts}", "generalization_split=heldout",
            f"samples_per_prompt={cfg.eval_samples_per_prompt}",
            f"side_samples_per_prompt={cfg.eval_side_samples_per_prompt}", compile_,
            f"output_dir={Path(cfg.report) / 'eval'}", *cfg.eval_args])

    return reward_cfg, dpok_cfg, generate_cfg, eval_cfg


def planned_images(cfg: LoopConfig, dpok) -> int:
    """At least how many images the loop samples, known before it runs (``dpok``: its DPOK
    section): round 0, every round's DPOK rounds (counted whole, though DPOK runs fewer UNet steps
    an image) and the evaluation's target images of the base and each round's model at
    ``min_targets`` targets."""
    return (len(prompt_set("all")) * cfg.per_prompt + cfg.rounds * dpok.rounds * dpok.prompts_per_round
            * dpok.samples_per_prompt + (cfg.rounds + 1) * cfg.min_targets * cfg.eval_samples_per_prompt)


def _check(cfg: LoopConfig) -> None:
    """What can be refused before anything is written."""
    check_folder(Path(cfg.pipeline), "model_index.json", "Stable Diffusion pipeline")
    check_folder(Path(cfg.clip), "config.json", "CLIP model")
    # the largest round k >= 1 can hold: every possible target and control prompt
    most = cfg.round_per_prompt * (cfg.rule.max_targets + len(control_prompts()))
    if cfg.budget > most:
        raise UserError(f"budget={cfg.budget} images is more than a round can hold (at most {most}: "
                        f"round_per_prompt={cfg.round_per_prompt} x at most {cfg.rule.max_targets} targets and "
                        f"{len(control_prompts())} controls).", "lower budget, or raise round_per_prompt.")
    if cfg.selection == "all" and (cfg.rounds > 1 or cfg.one_shot):
        raise UserError("selection=all spends no budget: every image of a round goes to the raters.",
                        "pick random, uncertain or mix (the budget then says how many).")


def _targets(cfg: LoopConfig, k: int, path: Path, previous: list[str]) -> dict:
    """Round k's targets from round k's labels: the rule's picks among the train prompts the round
    sampled (the held-out prompts stay unseen), plus the previous targets too little labelled this
    round to judge (fewer than rule.min_images labelled images); the table beside them as CSV."""
    rates = prompt_pass_rates(Store(cfg.root), [k])
    table = pick_targets(rates, cfg.rule, among={p.text for p in prompt_set("train")})
    picked = list(table.loc[table["picked"], "prompt"])
    judged = set(table.loc[table["labelled_images"] >= cfg.rule.min_images, "prompt"])
    kept = [t for t in previous if t not in judged and t not in picked]
    chosen = (picked + kept)[: cfg.rule.max_targets]
    if k == 0:
        check_targets(chosen, cfg.min_targets, "round 0")
    if not chosen:
        raise UserError(f"round {k} has no target left: every prompt the rule could pick is fixed or unjudged.",
                        "stop the loop at this round (rounds=), or widen the rule.")
    write_text_atomic(path.with_suffix(".csv"), table.to_csv(index=False))
    write_text_atomic(path, "".join(f"{t}\n" for t in chosen))
    return {"targets": chosen, "picked": picked, "kept": kept,
            "dropped": [t for t in previous if t not in chosen]}


def _label(cfg: LoopConfig, root: str, k: int) -> dict:
    """Simulated raters label what the round serves (its selection, if it has one).  The labels
    spent are counted in the tables, not from this call's additions, so a stage resumed after a
    kill counts the labels made before it too."""
    sim = simulate(SimulateConfig(label=LabelConfig(root=root, overlap=cfg.overlap, seed=cfg.seed + k, round=k),
                                  raters=cfg.raters, flip_rate=cfg.flip_rate, seed=cfg.seed + k))
    store = Store(root)
    gens = store.to_pandas(GENERATIONS)
    counts = {name: len(filter_rounds(store, name, current(store, name).to_pandas(), [k], gens))
              for name in ("binary_labels", "rankings")}
    return {**{k2: v for k2, v in sim.items() if isinstance(v, (int, float)) and not k2.startswith("added_")},
            **counts, "labels": sum(counts.values())}


def _select(cfg: LoopConfig, root: str, k: int, budget: int, reward: Path) -> dict:
    """The round's selection; one already written (a kill after it was appended) is kept."""
    store = Store(root)
    have = filter_rounds(store, "selections", store.to_pandas("selections"), [k])
    if len(have):
        return {"selected": len(have), "method": str(have["method"].iloc[0]), "kept_from_before": True}
    res = select(SelectConfig(root=root, round=k, budget=budget, method=cfg.selection, reward=str(reward),
                              mix_share=cfg.mix_share, seed=cfg.seed + k, progress=False))
    return {k2: v for k2, v in asdict(res).items() if k2 != "image_ids"}


def _round_prompts(targets: list[str], path: Path) -> Path:
    """A round k >= 1 samples its current targets and the control prompts (train prompts with one or
    two objects that are not targets): new failures among the controls can enter."""
    texts = list(targets) + [p.text for p in control_prompts(set(targets))]
    write_text_atomic(path, "".join(f"{t}\n" for t in texts))
    return path


def run_loop(cfg: LoopConfig) -> dict:
    _check(cfg)
    reward_cfg, dpok_cfg, generate_cfg, eval_cfg = _configs(cfg)
    runs, report_dir = Path(cfg.runs), Path(cfg.report)
    # resolve every stage config once with placeholder paths: a bad <stage>_args fails here
    reward_cfg(runs / "x", cfg.root), dpok_cfg(runs / "x", "x", runs / "x", 0), eval_cfg(runs / "x", [])
    generate_cfg(cfg.pipeline, None, 1, 0, cfg.root)
    _prepare(cfg)
    stages = Stages(runs)
    t_all = time.perf_counter()
    rounds: list[dict] = []
    targets: list[str] = []
    prev_dpok: Path | None = None
    prev_reward: Path | None = None
    for k in range(cfg.rounds):
        rdir = runs / f"round-{k}"
        rdir.mkdir(parents=True, exist_ok=True)
        r: dict = {"round": k}
        if k == 0:
            r["generate"] = stages.run("round-0/generate", lambda: _gen(generate_cfg(cfg.pipeline, None, cfg.per_prompt, 0, cfg.root)))
        else:
            prompts = _round_prompts(targets, rdir / "prompts.txt")
            r["generate"] = stages.run(f"round-{k}/generate", lambda: _gen(
                generate_cfg(str(prev_dpok), prompts, cfg.round_per_prompt, k, cfg.root)))
            # the reward the policy was trained against, judged on the policy's new images
            r["reward_before"] = stages.run(f"round-{k}/reward-before", lambda: round_accuracy(prev_reward, cfg.root, k))
            r["select"] = stages.run(f"round-{k}/select", lambda: _select(cfg, cfg.root, k, cfg.budget, prev_reward))
        r["label"] = stages.run(f"round-{k}/label", lambda: _label(cfg, cfg.root, k))
        if k == 0:  # the one-shot control starts from round 0 as it is now
            stages.run("round-0/snapshot", lambda: _snapshot(cfg.root, _round0_copy(cfg)))
        r["targets"] = stages.run(f"round-{k}/targets", lambda: _targets(cfg, k, rdir / "targets.txt", targets))
        targets = list(r["targets"]["targets"])
        r["reward"] = stages.run(f"round-{k}/reward", lambda: _reward(reward_cfg(rdir / "reward", cfg.root), k))
        r["dpok"] = stages.run(f"round-{k}/dpok", lambda: _dpok(dpok_cfg(
            rdir / "dpok", str(rdir / "reward"), rdir / "targets.txt", cfg.seed + k, prev_dpok)))
        prev_dpok, prev_reward = rdir / "dpok", rdir / "reward"
        rounds.append(r)

    first_targets = runs / "round-0" / "targets.txt"
    extra = {}
    if cfg.one_shot:
        extra["one_shot"] = _one_shot(cfg, stages, reward_cfg, dpok_cfg, generate_cfg, first_targets)
    if cfg.oracle_upper_bound:
        extra["oracle"] = stages.run(f"oracle-{cfg.rounds}/dpok", lambda: _dpok(dpok_cfg(
            _oracle_dir(cfg), str(runs / "round-0" / "reward"), first_targets, cfg.seed,
            rounds_times=cfg.rounds, oracle=True)))

    # One evaluation: every round's model, the control and the upper bound, on the round-0 targets
    # then each later round's new targets, the same fresh seeds for all (a paired comparison).
    every = list(dict.fromkeys(t for r in rounds for t in [*read_prompts_file(first_targets), *r["targets"]["targets"]]))
    eval_prompts = runs / "eval-prompts.txt"
    write_text_atomic(eval_prompts, "".join(f"{t}\n" for t in every))
    models = [f"round{k}={runs / f'round-{k}' / 'dpok'}" for k in range(cfg.rounds)]
    if cfg.one_shot:
        models.append(f"one_shot={_one_shot_dir(cfg) / 'dpok'}")
    if cfg.oracle_upper_bound:
        models.append(f"oracle={_oracle_dir(cfg)}")
    ecfg = eval_cfg(eval_prompts, models)
    evals = stages.run(f"evaluate-{cfg.rounds}", lambda: {"models": [asdict(e) for e in evaluate(ecfg)]})
    results = loop_report.results(cfg, rounds, extra, evals["models"], read_prompts_file(first_targets),
                                  seconds=time.perf_counter() - t_all)
    loop_report.write(report_dir, results)
    save_config(cfg, report_dir / "config.yaml")
    return results


def _gen(gcfg: GenerateConfig) -> dict:
    res = generate(gcfg)
    return {"images_added": res.images_added, "images_in_root": res.images_in_round, "prompts": res.prompts,
            "model": res.model_id}


def _reward(rcfg: RewardConfig, k: int) -> dict:
    res = train_reward(rcfg)
    keep = {view: {m: v for m, v in res.metrics.get(view, {}).items() if isinstance(v, (int, float))}
            for view in ("val_images", "val_prompts")}
    return {**keep, "by_round": res.metrics.get("by_round", {}), "model_id": res.model.model_id}


def _dpok(fcfg: FinetuneConfig) -> dict:
    """DPOK for one stage; a run that finished before a kill cut its stage short is kept (its
    metrics.json is written last: finetune.checkpoints.save_result)."""
    done = Path(fcfg.output_dir) / "metrics.json"
    metrics = json.loads(done.read_text()) if done.is_file() else train_dpok(fcfg).metrics
    return {"output_dir": fcfg.output_dir, "curve": metrics.get("curve", []), "rounds": fcfg.dpok.rounds,
            "init": fcfg.init}


# The controls match the loop's length: a rerun with more rounds= makes them anew beside the old.
def _one_shot_root(cfg: LoopConfig) -> str:
    return str(Path(cfg.root) / f"one-shot-{cfg.rounds}")


def _one_shot_dir(cfg: LoopConfig) -> Path:
    return Path(cfg.runs) / f"one-shot-{cfg.rounds}"


def _oracle_dir(cfg: LoopConfig) -> Path:
    return Path(cfg.runs) / f"oracle-{cfg.rounds}" / "dpok"


def _round0_copy(cfg: LoopConfig) -> str:
    return str(Path(cfg.runs) / "round-0" / "labelled-root")


def _snapshot(root: str, dest: str) -> dict:
    """A copy of a dataset root (round 0 after its labels: the one-shot control's start)."""
    if Path(dest).exists():
        shutil.rmtree(dest)
    shutil.copytree(root, dest, ignore=shutil.ignore_patterns(MARKER, ".*.lock"))
    return {"root": dest, "rounds": rounds_in(Store(dest))}


def _one_shot(cfg: LoopConfig, stages: Stages, reward_cfg, dpok_cfg, generate_cfg, first_targets: Path) -> dict:
    """The one-shot control: the loop's labels of rounds >= 1, spent at once on base-model images of
    the round-0 targets and controls (one extra round, drawn like the loop's, the same selection),
    one reward on all of it, one DPOK run of the loop's total rounds from the base model."""
    root, out, name = _one_shot_root(cfg), _one_shot_dir(cfg), _one_shot_dir(cfg).name
    out.mkdir(parents=True, exist_ok=True)
    if not Path(root).exists():  # a longer loop than the snapshot's: the same round-0 start
        stages.run(f"{name}/snapshot", lambda: _snapshot(_round0_copy(cfg), root))
    later = cfg.rounds - 1
    prompts = _round_prompts(read_prompts_file(first_targets), out / "prompts.txt")
    o: dict = {}
    o["generate"] = stages.run(f"{name}/generate", lambda: _gen(
        generate_cfg(cfg.pipeline, prompts, cfg.round_per_prompt * later, 1, root)))
    o["select"] = stages.run(f"{name}/select", lambda: _select(
        cfg, root, 1, cfg.budget * later, Path(cfg.runs) / "round-0" / "reward"))
    o["label"] = stages.run(f"{name}/label", lambda: _label(cfg, root, 1))
    o["reward"] = stages.run(f"{name}/reward", lambda: _reward(reward_cfg(out / "reward", root), 1))
    o["dpok"] = stages.run(f"{name}/dpok", lambda: _dpok(dpok_cfg(
        out / "dpok", str(out / "reward"), first_targets, cfg.seed, rounds_times=cfg.rounds)))
    return o
