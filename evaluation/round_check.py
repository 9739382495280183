"""Did a round pay?  The raters' good-rate on the model's own images of round N against the same
prompts' good-rate in the round before: ``make round-check``, and the loop's keep-or-roll-back
decision (issue 79).  Label-based, no oracle: the labels a round already bought say whether the
model that made its images is better than the one before it.

Round N's images were made by the model fine-tuned in round N-1, round N-1's by the model before
it, so the two good-rates compare two consecutive models on the same prompts.

Which images: a round's random share (its ``selections`` rows picked at random: ``method=random``,
``mix``'s random share, ``prompts``' whole prompts), or every image of the round when it had no
selection.  Images picked by uncertainty are the ones the reward was least sure of, so their
good-rate is not the model's: a round whose selection has no random share is judged on every
labelled image with ``biased_sample`` true (read the verdict with care; the loop does not act on it).

Per image: the raters' majority (skips out, ties dropped: ``data.labels.aggregate_binary``, as
``make reward`` reads binary labels), so each image is one good/bad draw of the model and the
good-rate over images has the binomial standard error sqrt(p (1 - p) / n).  (The mean of the raters
would give an image with several raters a fractional value and no binomial error; the majority also
takes most of one rater's noise out.)  Undone answers and gold items are out (``data.read``).  The
two rounds' images are different draws, so the difference's standard error is the root of the sum
of the squares.  Verdict: "fell back" when the difference is below minus its standard error (the
issue's "falls back by more than its error"), "paid" when above plus it, "within noise" otherwise.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import pandas as pd

from core.config import NonNegativeInt
from core.errors import UserError
from data.labels import aggregate_binary
from data.read import read_table
from data.rounds import resolve_rounds, rounds_in
from data.store import Store

Verdict = Literal["paid", "fell back", "within noise"]


@dataclass(frozen=True)
class RoundCheckConfig:
    root: str = "datasets/shapes"  # the dataset root holding both rounds and their labels
    round: NonNegativeInt | None = None  # the round whose model is judged; null: the newest
    against: NonNegativeInt | None = None  # the round it is compared with; null: the one before


@dataclass(frozen=True)
class RoundCheck:
    round: int  # the judged round (its images: the newer model's)
    against: int  # the round compared with (its images: the older model's)
    sample: Literal["random share", "all images", "all labelled"]  # round N's images judged
    biased_sample: bool  # round N (or the other) had only uncertainty picks: the rates are not the models'
    prompts: int  # prompts labelled in both rounds' samples (the rates are on these alone)
    images: int  # round N's images with a decided majority, on those prompts
    good_rate: float
    good_rate_se: float  # binomial, over images
    previous_images: int
    previous_good_rate: float
    previous_good_rate_se: float
    difference: float  # good_rate - previous_good_rate
    difference_se: float
    verdict: Verdict


def binomial_se(p: float, n: int) -> float:
    """The standard error of a share ``p`` of ``n`` independent draws (NaN without draws)."""
    return math.sqrt(p * (1 - p) / n) if n > 0 else math.nan


def verdict(difference: float, se: float) -> Verdict:
    """"fell back" below minus one standard error, "paid" above plus one, else "within noise"."""
    if difference < -se:
        return "fell back"
    if difference > se:
        return "paid"
    return "within noise"


def _sample(gens: pd.DataFrame, labels: pd.DataFrame, picks: pd.DataFrame, k: int) -> tuple[pd.DataFrame, str, bool]:
    """Round ``k``'s judged images with their majority label and prompt: (image_id, prompt_id,
    target), which sample, and whether it is biased."""
    ids = set(gens.loc[gens["round"] == k, "image_id"])
    mine = picks[picks["image_id"].isin(ids)] if len(picks) else picks
    sample, biased = "all images", False
    if len(mine):
        random_ids = set(mine.loc[mine["uncertainty"].isna() & (mine["method"] != "all"), "image_id"])
        if random_ids:
            ids, sample = random_ids, "random share"
        else:
            sample, biased = "all labelled", bool(mine["uncertainty"].notna().any())
    agg = aggregate_binary(labels[labels["image_id"].isin(ids)], "majority")
    prompt_of = gens.drop_duplicates("image_id").set_index("image_id")["prompt_id"]
    agg = agg.assign(prompt_id=agg["image_id"].map(prompt_of))[["image_id", "prompt_id", "target"]]
    return agg, sample, biased


def round_check(generations: pd.DataFrame, binary_labels: pd.DataFrame, selections: pd.DataFrame,
                round: int, against: int | None = None) -> RoundCheck:
    """Round ``round``'s good-rate against round ``against``'s (default: the round before) on the
    prompts both labelled.  ``binary_labels``: current answers, gold items out (``data.read``);
    ``generations`` needs image_id, prompt_id and round; ``selections`` image_id, method and
    uncertainty (may be empty)."""
    k = int(round)
    j = k - 1 if against is None else int(against)
    if j < 0 or j == k:
        raise UserError(f"round {k} has no round before it to compare with." if j < 0 else
                        f"round {k} cannot be compared with itself.",
                        "pass a round >= 1 (round=), or another round to compare with (against=).")
    new, sample, biased_new = _sample(generations, binary_labels, selections, k)
    old, _, biased_old = _sample(generations, binary_labels, selections, j)
    for r, agg in ((k, new), (j, old)):
        if agg.empty:
            raise UserError(f"round {r} has no binary labels (of its judged images) yet.",
                            "label the round first (make label, or make simulate-raters), then check.")
    shared = set(new["prompt_id"]) & set(old["prompt_id"])
    if not shared:
        raise UserError(f"rounds {k} and {j} have no labelled prompt in common, so their good-rates "
                        "cannot be compared.", "generate the round on prompts the round before labelled.")
    new, old = new[new["prompt_id"].isin(shared)], old[old["prompt_id"].isin(shared)]
    p, q = float(new["target"].mean()), float(old["target"].mean())
    se_p, se_q = binomial_se(p, len(new)), binomial_se(q, len(old))
    diff, se = p - q, math.hypot(se_p, se_q)
    return RoundCheck(round=k, against=j, sample=sample, biased_sample=biased_new or biased_old,
                      prompts=len(shared), images=len(new), good_rate=p, good_rate_se=se_p,
                      previous_images=len(old), previous_good_rate=q, previous_good_rate_se=se_q,
                      difference=diff, difference_se=se, verdict=verdict(diff, se))


def check_round(cfg: RoundCheckConfig) -> RoundCheck:
    """:func:`round_check` on the tables of ``cfg.root`` (labels read as ``make reward`` reads them)."""
    root = Path(cfg.root)
    gens = read_table(root, "generations")
    k = resolve_rounds("last:1" if cfg.round is None else str(cfg.round), rounds_in(Store(root), gens))[0]
    return round_check(gens, read_table(root, "binary_labels"), read_table(root, "selections"), k, cfg.against)
