"""Which prompts to fine-tune on, chosen from a labeling round's own labels (a lead's workflow).

A policy gradient or reward-weighted likelihood can only raise the probability of what the model
already samples: on a prompt it never gets right every sample earns the same reward and a
per-prompt advantage of zero, and on a prompt it always gets right there is nothing to gain.  So
the targets are the prompts the raters found *sometimes* right: a good-rate in a band.

One function, :func:`prompt_pass_rates`, gives the per-prompt figures that both ``make targets``
and the labeling app's admin tab show.  It reads the raters' labels only (never an oracle), so it
works on any round, shapes world or not.
"""

from __future__ import annotations

import os
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from statistics import NormalDist

import numpy as np
import pandas as pd

from core.errors import UserError
from core.files import write_text_atomic
from data.labels import aggregate_binary, current
from data.rounds import filter_rounds
from data.schemas import BINARY_LABELS, GENERATIONS
from data.store import Store

COLUMNS = ("prompt_id", "prompt", "labelled_images", "good_images", "good_rate", "labels")


@dataclass(frozen=True)
class TargetRule:
    """Targets: prompts whose raters' good-rate (images judged good by the raters' majority, over
    images with a decided majority) lies in (min_good_rate, max_good_rate], with at least
    ``min_images`` such images; at most ``max_targets`` of them, lowest good-rate first (the most
    room to improve), ties by prompt id."""

    min_good_rate: float = 0.0  # exclusive: a prompt never judged right has no signal to amplify
    max_good_rate: float = 0.5  # inclusive
    min_images: int = 4
    max_targets: int = 32
    # A previous target leaves only when its round's labels say it is fixed with this confidence:
    # the one-sided Wilson lower bound of its good-rate is above max_good_rate (:func:`staying`).
    # At 0.95 that takes 3 of 3, 6 of 7 or 6 of 8 decided images judged good.
    fixed_confidence: float = 0.95

    def __post_init__(self):  # a bad band fails when the config loads
        if not 0 <= self.min_good_rate < self.max_good_rate <= 1:
            raise UserError(f"the good-rate band ({self.min_good_rate}, {self.max_good_rate}] is empty or "
                            "outside [0, 1].", "set 0 <= min_good_rate < max_good_rate <= 1.")
        if not 0.5 <= self.fixed_confidence < 1:
            raise UserError(f"rule.fixed_confidence={self.fixed_confidence} is outside [0.5, 1).",
                            "set it to e.g. 0.95 (a one-sided confidence).")
        if self.min_images < 1 or self.max_targets < 1:
            raise UserError("min_images and max_targets must be at least 1.", "set them to 1 or more.")


def prompt_pass_rates(store: Store, rounds: list[int] | None = None) -> pd.DataFrame:
    """Per prompt of the round (every prompt with a generated image; ``rounds``: of those rounds of
    the closed loop only, :mod:`data.rounds`): ``labelled_images`` (images
    whose binary labels have a majority; ties and skip-only images do not count), ``good_images``,
    ``good_rate`` (NaN without labelled images) and ``labels`` (binary votes, skips excluded).
    Sorted worst first: lowest good-rate, unlabelled prompts last, then prompt id."""
    gens = store.to_pandas(GENERATIONS)
    binary = current(store, BINARY_LABELS.name).to_pandas()
    if rounds is not None:
        binary = filter_rounds(store, BINARY_LABELS.name, binary, rounds, gens)
        gens = filter_rounds(store, GENERATIONS.name, gens, rounds)
    if gens.empty:
        return pd.DataFrame(columns=list(COLUMNS))
    per_image = aggregate_binary(binary, "majority").merge(gens[["image_id", "prompt_id"]], on="image_id")
    prompts = gens.groupby("prompt_id", sort=True)["prompt"].first()
    out = pd.DataFrame({"prompt_id": prompts.index, "prompt": prompts.to_numpy()})
    agg = per_image.assign(is_good=per_image["target"] > 0.5) \
        .groupby("prompt_id").agg(labelled_images=("image_id", "size"), good_images=("is_good", "sum"))
    votes = binary[binary["label"] != "skip"].groupby("prompt_id").size().rename("labels")
    out = out.join(agg, on="prompt_id").join(votes, on="prompt_id")
    for col in ("labelled_images", "good_images", "labels"):
        out[col] = out[col].fillna(0).astype(np.int64)
    out["good_rate"] = np.where(out["labelled_images"] > 0,
                                out["good_images"] / out["labelled_images"].clip(lower=1), np.nan)
    out = out.sort_values(["good_rate", "prompt_id"], na_position="last", kind="stable").reset_index(drop=True)
    return out[list(COLUMNS)]


def pick_targets(rates: pd.DataFrame, rule: TargetRule = TargetRule(),
                 among: Collection[str] | None = None) -> pd.DataFrame:
    """``rates`` (from :func:`prompt_pass_rates`) with a boolean ``picked`` column: the rule's
    targets, only among the prompt texts ``among`` when given (e.g. those the reward trains on)."""
    ok = ((rates["good_rate"] > rule.min_good_rate) & (rates["good_rate"] <= rule.max_good_rate)
          & (rates["labelled_images"] >= rule.min_images))
    if among is not None:
        ok &= rates["prompt"].isin(set(among))
    order = rates[ok].sort_values(["good_rate", "prompt_id"], kind="stable")
    chosen = set(order["prompt_id"].iloc[:rule.max_targets])
    return rates.assign(picked=rates["prompt_id"].isin(chosen))


def wilson_lower(good: np.ndarray, n: np.ndarray, confidence: float) -> np.ndarray:
    """One-sided Wilson score lower bound of a binomial rate (Wilson 1927): the rate ``good / n``
    is at least this with ``confidence``; 0 where ``n`` is 0 (nothing seen, nothing known)."""
    z = NormalDist().inv_cdf(confidence)
    n = np.asarray(n, dtype=np.float64)
    safe = np.maximum(n, 1.0)
    p = np.asarray(good, dtype=np.float64) / safe
    centre = p + z * z / (2 * safe)
    half = z * np.sqrt(p * (1 - p) / safe + z * z / (4 * safe * safe))
    return np.where(n > 0, (centre - half) / (1 + z * z / safe), 0.0)


def fixed_targets(table: pd.DataFrame, previous: Collection[str], rule: TargetRule = TargetRule()) -> list[str]:
    """The previous targets that ``table`` (:func:`prompt_pass_rates`) judges fixed with
    ``rule.fixed_confidence``: the Wilson lower bound of their good-rate above ``rule.max_good_rate``."""
    lower = wilson_lower(table["good_images"].to_numpy(), table["labelled_images"].to_numpy(), rule.fixed_confidence)
    fixed = set(table.loc[lower > rule.max_good_rate, "prompt"])
    return [t for t in dict.fromkeys(previous) if t in fixed]


def staying(table: pd.DataFrame, previous: Collection[str], rule: TargetRule = TargetRule()) -> list[str]:
    """The previous targets that stay targets: every one but those :func:`fixed_targets`.  A round
    labelled on a budget gives most prompts a few labels, and a prompt right on 2 of 2 images is
    not known to be fixed: dropping it would let DPOK forget it (the closed-loop study's round 2
    regressed that way).  A prompt not sampled or not labelled this round stays."""
    gone = set(fixed_targets(table, previous, rule))
    return [t for t in dict.fromkeys(previous) if t not in gone]


def choose_targets(table: pd.DataFrame, previous: Collection[str], rule: TargetRule = TargetRule()) -> list[str]:
    """A round's targets: the previous ones that stay (:func:`staying`) first, then the rule's new
    picks (``table``'s ``picked``: a fixed target that regressed into the band returns this way),
    at most ``rule.max_targets``."""
    stay = staying(table, previous, rule)
    picked = [t for t in table.loc[table["picked"], "prompt"] if t not in set(stay)]
    return (stay + picked)[:rule.max_targets]


def read_prompts_file(path: str | os.PathLike) -> list[str]:
    """The prompts of a prompts file (what :func:`write_targets` writes and ``prompts_file=`` takes
    everywhere): one per line, stripped, blank lines skipped; a missing or empty file is one error."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"prompts file {path} does not exist.", "pass a text file with one prompt per line.")
    texts = [t.strip() for t in path.read_text(encoding="utf-8").splitlines() if t.strip()]
    if not texts:
        raise UserError(f"prompts file {path} holds no prompt.", "write one prompt per line.")
    return texts


def write_targets(root: str | os.PathLike, out: str | os.PathLike | None = None, rule: TargetRule = TargetRule(),
                  *, among: Collection[str] | None = None, overwrite: bool = False,
                  rounds: list[int] | None = None, previous: Collection[str] = ()) -> tuple[pd.DataFrame, Path]:
    """Pick the targets of the round at ``root`` and write them one per line to ``out`` (default
    ``<root>/targets.txt``), with the whole table (:func:`pick_targets`, plus ``kept``) beside it
    as CSV; ``rounds``: from the labels of those rounds of the closed loop only (None: every label);
    ``previous``: the last round's targets, which stay unless this round judges them fixed
    (:func:`staying`), ahead of the new picks, within ``rule.max_targets``.
    Refuses, before reading anything, to replace an existing prompts file or table unless
    ``overwrite``, and a prompts file named like its table; returns (table, prompts file)."""
    out = Path(out) if out else Path(root) / "targets.txt"
    table_path = out.with_suffix(".csv")
    if table_path == out:
        raise UserError(f"out={out} is the name of the table written beside the prompts file (<out>.csv), so "
                        "the table would replace the prompts.", "name the prompts file e.g. targets.txt.")
    existing = [str(p) for p in (out, table_path) if p.exists()]
    if existing and not overwrite:
        raise UserError(f"{existing[0]} already exists{', and so does ' + existing[1] if existing[1:] else ''}.",
                        "pass out=<another file>, or overwrite=true to replace the prompts file and its table.")
    store = Store(root)
    if not store.exists("generations"):
        raise UserError(f"{root} holds no labeling round (no generations table).",
                        "pass root=<the dataset root of a labelled round>.")
    table = pick_targets(prompt_pass_rates(store, rounds), rule, among)
    chosen = choose_targets(table, previous, rule)
    table = table.assign(kept=table["prompt"].isin(set(chosen) & set(previous)))
    if not chosen:
        enough = int((table["labelled_images"] >= rule.min_images).sum())
        raise UserError(f"no prompt of {root} passes the target rule: good-rate in ({rule.min_good_rate}, "
                        f"{rule.max_good_rate}] with at least {rule.min_images} labelled images ({enough} of "
                        f"{len(table)} prompts have that many).",
                        "label more images, or widen the rule (rule.min_good_rate, rule.max_good_rate, "
                        "rule.min_images).")
    out.parent.mkdir(parents=True, exist_ok=True)
    for path, text in ((out, "".join(f"{p}\n" for p in chosen)),
                       (table_path, table.to_csv(index=False))):
        write_text_atomic(path, text)
    return table, out
