"""Simulated raters labeling a round through the app's own assignment and write path.

No browser: each simulated rater asks :class:`~labeling_app.assignment.Assigner` for its current
item exactly as the app does for a logged-in rater (so it labels only what the round serves: the
round's images, or its selected ones), judges the image(s) with
:class:`shapes.raters.SimulatedRater`, and submits the answer with its token.  So the demo,
the tests and the reward stage get rounds with the same overlap, gold items, leases and rows as a
round labeled by people.

**Marks.**  Given a :class:`~shapes.raters.MarkProfile`, a rater gives every bad answer the marks
it would click where the image is wrong (:func:`shapes.marking.rater_marks` on the oracle's problem
regions) through the app's own path for them (:meth:`Assigner.answer_bad`), as a person does on
the page.  The marks come from their own seeded stream per rater and image, so the answers
themselves are the same with marks or without.  ``make simulate-raters`` marks whenever the round
offers marking (``label.marks``, optional by default); with ``label.marks=required`` an answer
with nothing to click or mark says so in its reason, as the app asks.

- :func:`run_simulated_round`: the driver, given an :class:`Assigner`;
- :func:`simulate_round`: a round in a store, labeled by a panel (tests, ``make reward-bench``);
- :func:`simulate` + :class:`SimulateConfig`: ``make simulate-raters`` (:mod:`pipelines.simulate_raters`),
  the round exactly as ``make label`` reads it, with a JSON-ready summary.
"""

from __future__ import annotations

import sys
from collections import Counter
from dataclasses import dataclass, field
from typing import Optional

from PIL import Image
from tqdm import tqdm

from core import seeds
from core.config import PositiveInt, Share
from core.errors import UserError
from data.schemas import GENERATIONS
from data.store import Store
from labeling_app.assignment import Assigner
from labeling_app.config import GoldConfig, LabelConfig
from labeling_app.gold import ensure_gold
from labeling_app.guidelines import guidelines_file, load_guidelines
from labeling_app.rounds import served_round
from labeling_app.stats import round_report
from shapes.marking import rater_marks, truth_regions
from shapes.oracle import Verdict, judge
from shapes.raters import MarkProfile, RaterProfile, SimulatedRater, default_panel
from shapes.regions import ProblemRegions
from shapes.world import Prompt


@dataclass(frozen=True)
class RoundSummary:
    binary_labels: int
    rankings: int
    labels_by_rater: dict[str, int]
    gold_labels: int = 0  # binary labels on gold items (included in binary_labels)
    marks: int = 0  # bad answers given with marks (a marks row each)


# The reason a simulated rater gives in a round that requires marks when it clicks and marks nothing
# (a good image it answered bad by its noise, or every region and word missed).
NOTHING_MARKED = "cannot point to what is wrong"


def run_simulated_round(assigner: Assigner, panel: list[RaterProfile], *, seed: int = 0,
                        max_labels_per_rater: int | None = None, progress=None,
                        marks: MarkProfile | None = None) -> RoundSummary:
    """Let ``panel`` label until no rater gets another item (or each gave
    ``max_labels_per_rater``).  Raters take turns in a new random order each sweep, so which raters
    share an item varies (agreement is then measured across every pair of raters).  ``marks``:
    how the raters mark their bad answers (None: they do not)."""
    if not panel:
        raise UserError("the simulated panel is empty.", "give at least one rater profile.")
    mode = assigner.answers.marks
    if marks is not None and mode == "off":
        raise UserError("the simulated raters were asked to mark, but the round has marking off (marks=off).",
                        "set label.marks=optional (or required), or simulate without marks.")
    raters = [SimulatedRater(p, seed) for p in panel]
    rng = seeds.rng(seed, seeds.Stream.SIMULATED_PANEL)
    images: dict[str, Image.Image] = {}
    prompts: dict[str, Prompt] = {}
    verdicts: dict[tuple[str, Prompt], Verdict] = {}  # each image is judged once, not once per rater
    truths: dict[str, ProblemRegions | None] = {}  # and its problem regions found once

    def image(image_id: str) -> Image.Image:
        if image_id not in images:
            with Image.open(assigner.image_path(image_id)) as im:
                images[image_id] = im.convert("RGB")
        return images[image_id]

    def prompt(text: str) -> Prompt:
        if text not in prompts:
            try:
                prompts[text] = Prompt.parse(text)
            except UserError:
                raise UserError(f"simulated raters judge shapes-world prompts only, and {text!r} is not one.",
                                "simulate a round of shapes-world prompts, or label it with people.") from None
        return prompts[text]

    def verdict(image_id: str, p: Prompt) -> Verdict:
        key = (image_id, p)
        if key not in verdicts:
            verdicts[key] = judge(image(image_id), p)
        return verdicts[key]

    def answer_bad(rid: str, a, duration_ms: int) -> bool:
        """Answer bad with the rater's marks; whether a marks row was written."""
        image_id = a.item.image_ids[0]
        if image_id not in truths:
            truths[image_id] = truth_regions(image(image_id), a.item.prompt)
        truth = truths[image_id]
        points, words = ([], []) if truth is None else rater_marks(truth, rid, image_id, seed, marks)
        note = NOTHING_MARKED if mode == "required" and not (points or words) else None
        assigner.answer_bad(rid, a.token, points, words, note, duration_ms=duration_ms)
        return bool(points or words or note)

    counts: Counter[str] = Counter()
    n_binary = n_rankings = n_gold = n_marks = 0
    active = list(range(len(raters)))
    while active:
        still = []
        for i in rng.permutation(active):
            rater = raters[int(i)]
            rid = rater.rater_id
            progressed = False
            for task in assigner.tasks:
                if max_labels_per_rater is not None and counts[rid] >= max_labels_per_rater:
                    break
                a = assigner.current(rid, task)
                if a is None:
                    continue
                p = prompt(a.item.prompt)
                if task == "binary":
                    ans = rater.binary(image(a.item.image_ids[0]), p, verdict(a.item.image_ids[0], p))
                    if ans.label == "bad" and marks is not None:
                        n_marks += answer_bad(rid, a, ans.duration_ms)
                    else:
                        assigner.submit_binary(rid, a.token, ans.label, ans.skip_reason, duration_ms=ans.duration_ms)
                    n_binary += 1
                    n_gold += a.item.is_gold
                else:
                    ans = rater.rank([image(x) for x in a.item.image_ids], p, [verdict(x, p) for x in a.item.image_ids])
                    assigner.submit_ranking(rid, a.token, ans.ranks, duration_ms=ans.duration_ms)
                    n_rankings += 1
                counts[rid] += 1
                progressed = True
                if progress is not None:
                    progress.update(1)
            if progressed:
                still.append(int(i))
        active = still
    return RoundSummary(n_binary, n_rankings, dict(sorted(counts.items())), gold_labels=n_gold, marks=n_marks)


def simulate_round(
    store: Store,
    panel: list[RaterProfile],
    *,
    overlap: int = 2,
    binary: bool = True,
    ranking: bool = True,
    guideline_version: str = "sim-1",
    seed: int = 0,
    gold_share: float = 0.0,
    round: int | None = None,
    marks: MarkProfile | None = None,
) -> RoundSummary:
    """Label the round in ``store`` with ``panel`` through the labeling app's assignment code.

    Every image (binary) and every prompt's image set (ranking) goes to ``overlap`` distinct
    raters who answer it; a skip sends the item to one more rater.  With ``gold_share`` > 0 the
    raters also meet oracle-judged gold items.  ``round``: the round served (None: the newest; only
    its selected images when it has selections, :mod:`labeling_app.rounds`).  ``marks``: how the
raters mark their bad answers (None: they do not).  The driver is
    :func:`run_simulated_round`; ``make simulate-raters`` runs it with the
    app's config.
    """
    if not 1 <= overlap <= len(panel):
        raise UserError(f"overlap {overlap} needs between 1 and {len(panel)} raters.",
                        "lower the overlap or add raters to the panel.")
    tasks = tuple(t for t, on in (("binary", binary), ("ranking", ranking)) if on)
    if not tasks:
        raise UserError("neither binary nor ranking labels were asked for.", "set binary or ranking to True.")
    gens = store.to_pandas(GENERATIONS)
    if gens.empty:
        raise UserError(f"no generations in {store.root}.", "generate or render a round first.")
    served = served_round(store, round, gens)
    gold = ensure_gold(store, GoldConfig(share=gold_share, source="oracle"), served.images, seed=seed) if gold_share > 0 else {}
    assigner = Assigner(store, overlap=overlap, tasks=tasks, gold=gold, gold_share=gold_share,
                        guideline_version=guideline_version, seed=seed, round=served.round)
    return run_simulated_round(assigner, panel, seed=seed, marks=marks)


@dataclass(frozen=True)
class SimulateConfig:
    label: LabelConfig = field(default_factory=LabelConfig)
    """The round (root, tasks, overlap, gold, guidelines) exactly as `make label` reads it."""
    raters: PositiveInt = 5
    flip_rate: Share = 0.1
    seed: int = 0
    max_labels_per_rater: Optional[PositiveInt] = None
    mark_profile: MarkProfile = field(default_factory=MarkProfile)
    """How the raters mark where a bad image is wrong; they mark whenever the round offers marking
    (``label.marks`` not ``off``)."""


def simulate(cfg: SimulateConfig) -> dict:
    guidelines = load_guidelines(guidelines_file(cfg.label.guidelines, True))  # simulated raters judge shapes prompts
    panel = default_panel(cfg.raters, flip_rate=cfg.flip_rate, seed=cfg.seed)
    assigner = Assigner.open(cfg.label, guidelines.version)  # writes the gold pool on first use
    with tqdm(desc="simulate-raters", unit="label", file=sys.stderr) as bar:
        summary = run_simulated_round(assigner, panel, seed=cfg.seed, max_labels_per_rater=cfg.max_labels_per_rater,
                                      progress=bar, marks=None if cfg.label.marks == "off" else cfg.mark_profile)
    report = round_report(assigner.store).summary()
    return {"round": assigner.round, "added_binary": summary.binary_labels, "added_rankings": summary.rankings,
            "added_gold": summary.gold_labels, "added_marks": summary.marks,
            "round_completion": {t: round(c, 4) for t, c in assigner.progress("").round_completion.items()},
            **report}
