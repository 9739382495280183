"""Simulated raters labeling a round through the app's own assignment and write path.

No browser: each simulated rater asks :class:`~labeling_app.assignment.Assigner` for its current
item exactly as the app does for a logged-in rater (so it labels only what the round serves: the
round's images, or its selected ones), judges the image(s) with
:class:`shapes.raters.SimulatedRater`, and submits the answer with its token.  So the demo,
the tests and the reward stage get rounds with the same overlap, gold items, leases and rows as a
round labeled by people.

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
from labeling_app.gold import ensure_gold, read_gold
from labeling_app.guidelines import guidelines_file, load_guidelines
from labeling_app.rounds import served_round
from labeling_app.stats import round_report
from shapes.oracle import Verdict, judge
from shapes.raters import RaterProfile, SimulatedRater, default_panel
from shapes.world import Prompt


@dataclass(frozen=True)
class RoundSummary:
    binary_labels: int
    rankings: int
    labels_by_rater: dict[str, int]
    gold_labels: int = 0  # binary labels on gold items (included in binary_labels)


def run_simulated_round(assigner: Assigner, panel: list[RaterProfile], *, seed: int = 0,
                        max_labels_per_rater: int | None = None, progress=None) -> RoundSummary:
    """Let ``panel`` label until no rater gets another item (or each gave
    ``max_labels_per_rater``).  Raters take turns in a new random order each sweep, so which raters
    share an item varies (agreement is then measured across every pair of raters)."""
    if not panel:
        raise UserError("the simulated panel is empty.", "give at least one rater profile.")
    raters = [SimulatedRater(p, seed) for p in panel]
    rng = seeds.rng(seed, seeds.Stream.SIMULATED_PANEL)
    images: dict[str, Image.Image] = {}
    prompts: dict[str, Prompt] = {}
    verdicts: dict[tuple[str, Prompt], Verdict] = {}  # each image is judged once, not once per rater

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

    counts: Counter[str] = Counter()
    n_binary = n_rankings = n_gold = 0
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
    return RoundSummary(n_binary, n_rankings, dict(sorted(counts.items())), gold_labels=n_gold)


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
) -> RoundSummary:
    """Label the round in ``store`` with ``panel`` through the labeling app's assignment code.

    Every image (binary) and every prompt's image set (ranking) goes to ``overlap`` distinct
    raters who answer it; a skip sends the item to one more rater.  With ``gold_share`` > 0 the
    raters also meet oracle-judged gold items.  ``round``: the round served (None: the newest; only
    its selected images when it has selections, :mod:`labeling_app.rounds`).  The driver is
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
    return run_simulated_round(assigner, panel, seed=seed)


@dataclass(frozen=True)
class SimulateConfig:
    label: LabelConfig = field(default_factory=LabelConfig)
    """The round (root, tasks, overlap, gold, guidelines) exactly as `make label` reads it."""
    raters: PositiveInt = 5
    flip_rate: Share = 0.1
    seed: int = 0
    max_labels_per_rater: Optional[PositiveInt] = None


def simulate(cfg: SimulateConfig) -> dict:
    guidelines = load_guidelines(guidelines_file(cfg.label.guidelines, True))  # simulated raters judge shapes prompts
    panel = default_panel(cfg.raters, flip_rate=cfg.flip_rate, seed=cfg.seed)
    assigner = Assigner.open(cfg.label, guidelines.version)  # writes the gold pool on first use
    with tqdm(desc="simulate-raters", unit="label", file=sys.stderr) as bar:
        summary = run_simulated_round(assigner, panel, seed=cfg.seed,
                                      max_labels_per_rater=cfg.max_labels_per_rater, progress=bar)
    report = round_report(assigner.store, read_gold(assigner.store)).summary()
    return {"round": assigner.round, "added_binary": summary.binary_labels, "added_rankings": summary.rankings,
            "added_gold": summary.gold_labels,
            "round_completion": {t: round(c, 4) for t, c in assigner.progress("").round_completion.items()},
            **report}
