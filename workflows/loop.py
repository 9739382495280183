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
                anchored to the base model); but when the round's labels say its images' model fell
                back (:mod:`evaluation.round_check`: the good-rate on the round's random share against
                the kept model's round, on the same prompts, more than one SE lower), DPOK continues
                from the best model so far instead (``keep_best``)
    then:    the one-shot control (the same total labels, all on base-model images, one reward,
             one DPOK run of the loop's total rounds), the upper bound (the oracle as reward, the
             loop's total DPOK rounds), and one evaluation of every round's model, the control and
             the upper bound on the same prompts and fresh seeds -> reports/loop/

``finetune=dpo`` or ``kto`` puts Diffusion-DPO or Diffusion-KTO in DPOK's place in every round and in
the one-shot control: trained on the labels themselves (those of ``reward_rounds``, on the round's
targets), continuing from the kept model like DPOK, its reference still the base model.

Each round is :func:`workflows.round.run_round`, the demo's round.  Everything lives in one
dataset root (rounds are a column: :mod:`data.rounds`), one runs folder (``round-<k>/`` per round)
and one report folder.  Each finished stage leaves its summary in ``<runs>/stages/``: a rerun of
the same command resumes after the last finished stage (DPOK from its last checkpoint, a label
stage from the labels before it: :mod:`data.staging`), and ``fresh=true`` starts over.
"""

from __future__ import annotations

import shutil
from dataclasses import asdict, dataclass, replace
from functools import partial
from pathlib import Path

from collect.selection import SelectConfig, select
from core.config import NonNegativeFloat, NonNegativeInt, PositiveInt, Share, save_config
from core.errors import UserError
from core.files import write_text_atomic
from data.labels import current
from data.read import read_table
from data.rounds import filter_rounds, resolve_rounds, rounds_in
from data.schemas import GENERATIONS, SelectionMethod
from data.staging import STAGING
from data.store import Store
from data.targets import read_prompts_file
from evaluation import loop_report
from evaluation.compare import evaluate
from evaluation.oracle import control_prompts
from evaluation.round_check import round_check
from reward.evaluation import round_accuracy
from shapes.world import prompt_set
from workflows.round import (MARKER, RoundConfig, RoundMethod, RoundOut, StageConfigs, Stages, claim_folders,
                             finetune_summary, generate_summary, label, reward_summary, run_round)


@dataclass(frozen=True)
class LoopConfig(RoundConfig):
    root: str = "datasets/loop"  # one dataset root for every round (rounds are a column)
    runs: str = "runs/loop"  # round-<k>/ per round, one-shot-<R>/, oracle-<R>/, stages/ (what resumes)
    report: str = "reports/loop"
    curve_every: NonNegativeInt = 0  # DPOK rounds between points of its oracle learning curve (0: none)
    oracle_upper_bound: bool = True  # also DPOK with the oracle as reward for the loop's total DPOK rounds
    rounds: PositiveInt = 3  # labeling rounds, round 0 (the demo's round) included
    round_per_prompt: PositiveInt = 8  # round k >= 1: images per current target and control prompt
    budget: PositiveInt = 256  # round k >= 1: images sent to the raters, of those just generated
    # round 0: images sent to the raters, as whole prompts drawn at random (selection method
    # "prompts"), so that a label-scarce loop splits its labels over rounds; 0: every image
    round0_budget: NonNegativeInt = 0
    selection: SelectionMethod = "uncertain"  # which images the budget buys (collect.selection)
    mix_share: Share = 0.5  # selection=mix: the share of the budget picked by uncertainty
    prompt_cap: NonNegativeFloat = 2.0  # selection: a prompt's most uncertainty picks, x its even share (0: no cap)
    # round k >= 1's DPOK maximises sigmoid(logit + optimism x the reward's epistemic spread), a UCB
    # on the reward (SEIKO, Uehara et al. 2024): the policy explores where the reward is unsure and
    # the next round's labels check it there; 0: the reward's mean (round 0 always uses the mean)
    optimism: NonNegativeFloat = 0.0
    reward_rounds: str = "all"  # the rounds whose labels the reward trains on (data.rounds grammar)
    # each round's fine-tuning, and the one-shot control's: dpok (against the round's reward), or dpo /
    # kto on the labels of reward_rounds themselves, the current targets' (finetune.preference; the
    # reward still trains: the selection, the evaluation and the report use it)
    finetune: RoundMethod = "dpok"
    one_shot: bool = True  # also the one-shot control (same labels on base images, one run of `finetune`)
    # round k >= 1: a round whose labels say its images' model fell back (evaluation.round_check, on
    # an unbiased sample) is not continued from: its DPOK starts from the best model so far
    keep_best: bool = True
    fresh: bool = False  # empty the loop's folders and start over (else a rerun resumes)


def _check(cfg: LoopConfig) -> None:
    """What can be refused before anything is written (the models: :class:`StageConfigs`)."""
    # the largest round k >= 1 can hold: every possible target and control prompt
    most = cfg.round_per_prompt * (cfg.rule.max_targets + len(control_prompts()))
    if cfg.budget > most:
        raise UserError(f"budget={cfg.budget} images is more than a round can hold (at most {most}: "
                        f"round_per_prompt={cfg.round_per_prompt} x at most {cfg.rule.max_targets} targets and "
                        f"{len(control_prompts())} controls).", "lower budget, or raise round_per_prompt.")
    first = cfg.per_prompt * len(prompt_set("all"))
    if cfg.round0_budget > first:
        raise UserError(f"round0_budget={cfg.round0_budget} images is more than round 0 holds ({first}: per_prompt="
                        f"{cfg.per_prompt} x {len(prompt_set('all'))} prompts).",
                        "lower round0_budget, or 0 to label every image of round 0.")
    if cfg.optimism and cfg.finetune != "dpok":
        raise UserError(f"optimism={cfg.optimism:g} is DPOK's reward bonus, and finetune={cfg.finetune} "
                        "learns from the labels with no reward.", "set optimism=0, or finetune=dpok.")
    if cfg.selection in ("all", "prompts") and (cfg.rounds > 1 or cfg.one_shot):
        raise UserError(f"selection={cfg.selection} does not rank a later round's images (all: every image; "
                        "prompts: whole prompts at random, what round0_budget uses).",
                        "pick random, uncertain or mix (the budget then says how many).")
    # every reward stage must find the rounds it names: round k's has rounds 0..k, the one-shot's 0 and 1
    for have in [list(range(k + 1)) for k in range(cfg.rounds)] + ([[0, 1]] if cfg.one_shot else []):
        try:
            resolve_rounds(cfg.reward_rounds, have)
        except UserError as e:
            raise UserError(f"reward_rounds={cfg.reward_rounds!r} would fail at a reward stage whose root has "
                            f"rounds {have}: {e.problem}",
                            "write all, last:N, or rounds every reward stage has (round 0's reward trains "
                            "before round 1 exists).") from None


def _label(cfg: LoopConfig, root: str, k: int, sim: dict) -> dict:
    """A label stage's summary: the simulation's numbers, with the labels spent counted in the
    tables (round k's binary labels and rankings)."""
    store = Store(root)
    gens = store.to_pandas(GENERATIONS)
    counts = {name: len(filter_rounds(store, name, current(store, name).to_pandas(), [k], gens))
              for name in ("binary_labels", "rankings")}
    return {**{k2: v for k2, v in sim.items() if isinstance(v, (int, float)) and not k2.startswith("added_")},
            **counts, "labels": sum(counts.values())}


def _select(cfg: LoopConfig, root: str, k: int, budget: int, reward: Path | None, method: str | None = None) -> dict:
    """The round's selection (``method``: the loop's ``selection`` unless given); one already
    written (a kill after it was appended) is kept."""
    store = Store(root)
    have = filter_rounds(store, "selections", store.to_pandas("selections"), [k])
    if len(have):
        return {"selected": len(have), "method": str(have["method"].iloc[0]), "kept_from_before": True}
    res = select(SelectConfig(root=root, round=k, budget=budget, method=method or cfg.selection,
                              reward=None if reward is None else str(reward), mix_share=cfg.mix_share,
                              prompt_cap=cfg.prompt_cap, seed=cfg.seed + k, progress=False))
    return {k2: v for k2, v in asdict(res).items() if k2 != "image_ids"}


def _measure_and_select(cfg: LoopConfig, stages: Stages, k: int, reward: Path) -> dict:
    """Round k >= 1 before its labels: the reward the policy was trained against, judged on the
    policy's new images, then the images the budget buys."""
    return {"reward_before": stages.run(f"round-{k}/reward-before", lambda: round_accuracy(reward, cfg.root, k)),
            "select": stages.run(f"round-{k}/select", lambda: _select(cfg, cfg.root, k, cfg.budget, reward))}


@dataclass(frozen=True)
class Kept:
    """The model the loop continues from: ``model`` the DPOK folder (None: the base model), ``round``
    the round whose images it made (what the next round check compares with), ``why`` the reason."""

    model: str | None
    round: int
    why: str


def continue_from(kept: Kept, newest: str, k: int, check: dict, keep_best: bool) -> Kept:
    """The model round ``k``'s DPOK starts from, given round ``k``'s check (``check``: a RoundCheck
    as a dict, or ``{"refused": ...}``) of ``newest`` (the model that made round k's images)
    against ``kept``: ``kept`` again when it fell back on an unbiased sample and ``keep_best``,
    else ``newest`` (what the loop did before round checks)."""
    if "verdict" not in check:
        return Kept(newest, k, f"round {k} not checked ({check.get('refused', 'no check')}): continued")
    figures = (f"good-rate {100 * check['good_rate']:.1f} ± {100 * check['good_rate_se']:.1f} % on round {k} "
               f"against {100 * check['previous_good_rate']:.1f} ± {100 * check['previous_good_rate_se']:.1f} % "
               f"on round {check['against']} ({check['prompts']} shared prompts, {check['sample']}): "
               f"{100 * check['difference']:+.1f} ± {100 * check['difference_se']:.1f}, {check['verdict']}"
               + (" (uncertainty picks alone: biased)" if check["biased_sample"] else ""))
    if check["verdict"] != "fell back":
        return Kept(newest, k, figures)
    if check["biased_sample"]:
        return Kept(newest, k, f"{figures}: not acted on, continued")
    if not keep_best:
        return Kept(newest, k, f"{figures}; keep_best=false: continued")
    return replace(kept, why=f"{figures}: rolled back to {kept.model or 'the base model'}")


def _round_check(root: str, k: int, against: int) -> dict:
    """Round ``k``'s check against round ``against`` as a stage summary; a refusal (no labels on a
    shared prompt) is kept as its problem, and the loop continues as before."""
    try:
        return asdict(round_check(read_table(root, "generations"), read_table(root, "binary_labels"),
                                  read_table(root, "selections"), k, against))
    except UserError as e:
        return {"refused": e.problem}


def _check_round(cfg: LoopConfig, stages: Stages, k: int, kept: Kept, newest: str) -> dict:
    """Round k >= 1 after its labels: its check against the kept model's round, and the model its
    DPOK continues from (:func:`continue_from`)."""
    check = stages.run(f"round-{k}/round-check", lambda: _round_check(cfg.root, k, kept.round))
    check = {key: v for key, v in check.items() if key != "seconds"}
    return {"round_check": check, "continued_from": asdict(continue_from(kept, newest, k, check, cfg.keep_best))}


def _model(path: str | None) -> Path | None:
    return None if path is None else Path(path)


def _round_prompts(targets: list[str], path: Path) -> Path:
    """A round k >= 1 samples ``targets`` (the current ones and those judged fixed before, so a
    regression is seen and the target returns) and the control prompts (train prompts with one or
    two objects that are not targets): new failures among the controls can enter."""
    texts = list(targets) + [p.text for p in control_prompts(set(targets))]
    write_text_atomic(path, "".join(f"{t}\n" for t in texts))
    return path


def run_loop(cfg: LoopConfig) -> dict:
    _check(cfg)
    runs, report_dir = Path(cfg.runs), Path(cfg.report)
    configs = StageConfigs(cfg)  # a bad <stage>_args fails here, on round 0's configs, before any folder
    configs.generate(cfg.root, cfg.pipeline, 0, cfg.per_prompt)
    configs.reward(runs / "round-0" / "reward", cfg.root, cfg.reward_rounds)
    configs.evaluation([], runs / "round-0" / "reward", report_dir / "eval", runs / "eval-prompts.txt")
    claim_folders(cfg, "loop", fresh=cfg.fresh, may_change=("fresh", "rounds"))
    stages = Stages("loop", runs)
    rounds: list[dict] = []
    targets: list[str] = []
    ever: list[str] = []  # every round's targets so far: a round samples them all
    prev: RoundOut | None = None
    kept = Kept(None, 0, "the base model made round 0's images")
    for k in range(cfg.rounds):
        rdir = runs / f"round-{k}"
        rdir.mkdir(parents=True, exist_ok=True)
        out = RoundOut(targets=rdir / "targets.txt", reward=rdir / "reward", tuned=rdir / cfg.finetune)
        if k == 0:
            gen = configs.generate(cfg.root, cfg.pipeline, 0, cfg.per_prompt)
            before_label = None if not cfg.round0_budget else lambda: {"select": stages.run(
                "round-0/select", lambda: _select(cfg, cfg.root, 0, cfg.round0_budget, None, "prompts"))}
        else:
            gen = configs.generate(cfg.root, str(prev.tuned), k, cfg.round_per_prompt,
                                   _round_prompts(ever, rdir / "prompts.txt"))
            before_label = partial(_measure_and_select, cfg, stages, k, prev.reward)
        # round k >= 1: its check after its labels decides the model its DPOK starts from
        checked: dict = {}
        after_label = None if k == 0 else lambda k=k, kept=kept, newest=str(prev.tuned): \
            checked.setdefault("r", _check_round(cfg, stages, k, kept, newest))
        init = None if k == 0 else lambda: _model(checked["r"]["continued_from"]["model"])
        r = run_round(stages, configs, k, gen, out, name=lambda s, k=k: f"round-{k}/{s}",
                      label_summary=lambda sim, k=k: _label(cfg, cfg.root, k, sim), before_label=before_label,
                      previous=targets, init=init, reward_rounds=cfg.reward_rounds,
                      optimism=cfg.optimism if k else 0.0, after_label=after_label, method=cfg.finetune)
        if k:
            kept = Kept(**r["continued_from"])
        if k == 0:  # the one-shot control starts from round 0 as labelled (the stages after do not write there)
            stages.run("round-0/snapshot", lambda: _snapshot(cfg.root, _round0_copy(cfg)))
        targets = list(r["targets"]["targets"])
        ever = list(dict.fromkeys(targets + ever))
        prev = out
        rounds.append(r)

    first_targets = runs / "round-0" / "targets.txt"
    extra = {}
    if cfg.one_shot:
        extra["one_shot"] = _one_shot(cfg, stages, configs, first_targets)
    if cfg.oracle_upper_bound:
        extra["oracle"] = stages.run(f"oracle-{cfg.rounds}/dpok", lambda: finetune_summary(configs.dpok(
            _oracle_dir(cfg), runs / "round-0" / "reward", cfg.seed, first_targets,
            dpok_rounds=configs.lengths["dpok"] * cfg.rounds, oracle=True)))

    # One evaluation: every round's model, the control and the upper bound, on the round-0 targets
    # then each later round's new targets, the same fresh seeds for all (a paired comparison).
    every = list(dict.fromkeys(t for r in rounds for t in [*read_prompts_file(first_targets), *r["targets"]["targets"]]))
    eval_prompts = runs / "eval-prompts.txt"
    write_text_atomic(eval_prompts, "".join(f"{t}\n" for t in every))
    models = [f"round{k}={runs / f'round-{k}' / cfg.finetune}" for k in range(cfg.rounds)]
    if cfg.one_shot:
        models.append(f"one_shot={_one_shot_dir(cfg) / cfg.finetune}")
    if cfg.oracle_upper_bound:
        models.append(f"oracle={_oracle_dir(cfg)}")
    # judged by the last round's reward: trained on every round's labels
    ecfg = configs.evaluation(models, runs / f"round-{cfg.rounds - 1}" / "reward", report_dir / "eval", eval_prompts)
    evals = stages.run(f"evaluate-{cfg.rounds}", lambda: {"models": [asdict(e) for e in evaluate(ecfg)]})
    results = loop_report.results(cfg, rounds, extra, evals["models"], read_prompts_file(first_targets),
                                  seconds=sum(stages.seconds.values()))
    loop_report.write(report_dir, results)
    save_config(cfg, report_dir / "config.yaml")
    return results


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
    shutil.copytree(root, dest, ignore=shutil.ignore_patterns(MARKER.format("*"), ".*.lock", STAGING))
    return {"root": dest, "rounds": rounds_in(Store(dest))}


def _one_shot(cfg: LoopConfig, stages: Stages, configs: StageConfigs, first_targets: Path) -> dict:
    """The one-shot control: the loop's labels of rounds >= 1, spent at once on base-model images of
    the round-0 targets and controls (one extra round, drawn like the loop's, the same selection),
    one reward on all of it, one run of the loop's method (``finetune``) as long as all its rounds
    together, from the base model."""
    root, out, name = _one_shot_root(cfg), _one_shot_dir(cfg), _one_shot_dir(cfg).name
    out.mkdir(parents=True, exist_ok=True)
    if not Path(root).exists():  # a longer loop than the snapshot's: the same round-0 start
        stages.run(f"{name}/snapshot", lambda: _snapshot(_round0_copy(cfg), root))
    later = cfg.rounds - 1
    prompts = _round_prompts(read_prompts_file(first_targets), out / "prompts.txt")
    o: dict = {}
    o["generate"] = stages.run(f"{name}/generate", lambda: generate_summary(
        configs.generate(root, cfg.pipeline, 1, cfg.round_per_prompt * later, prompts)))
    o["select"] = stages.run(f"{name}/select", lambda: _select(
        cfg, root, 1, cfg.budget * later, Path(cfg.runs) / "round-0" / "reward"))
    o["label"] = stages.run(f"{name}/label", lambda: _label(cfg, root, 1, label(cfg, root, 1)))
    o["reward"] = stages.run(f"{name}/reward", lambda: reward_summary(configs.reward(out / "reward", root, cfg.reward_rounds)))
    o["finetune"] = stages.run(f"{name}/{cfg.finetune}", lambda: finetune_summary(configs.tuned(
        cfg.finetune, out / cfg.finetune, out / "reward", root, cfg.seed, first_targets, rounds=cfg.reward_rounds,
        length=configs.lengths[cfg.finetune] * cfg.rounds)))
    return o
