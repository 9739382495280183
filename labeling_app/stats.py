"""Round statistics for the admin tab and the export: counts, gold accuracy, agreement, times.

Pure functions of the label tables (as pandas DataFrames), so they are tested without a server.
Agreement is Krippendorff's alpha for nominal data (Krippendorff 2011, "Computing Krippendorff's
alpha-reliability"): it handles any number of raters per item and missing answers, and is 1 for
perfect agreement, 0 for agreement at chance level, negative below chance.

- binary labels: one unit per image, values good / bad (skips are not values);
- rankings: one unit per pair of images ranked together, values "first better" / "second better"
  / "tie" (the pairs of :func:`data.pairs.rankings_to_pairs`).
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from dataclasses import dataclass
from typing import Hashable, Iterable, Sequence

import numpy as np
import pandas as pd
import pyarrow as pa

from core.jsonable import json_safe
from data.labels import current
from data.marks import current_marks
from data.pairs import rankings_to_pairs
from data.schemas import BINARY_LABELS, GENERATIONS, RANKINGS, SELECTIONS
from data.store import Store
from labeling_app.gold import read_gold, read_gold_marks


@dataclass(frozen=True)
class Agreement:
    alpha: float          # NaN when undefined (fewer than 2 answers on every unit, or one value only)
    units: int            # items with at least 2 answers
    values: int           # answers in those items
    percent: float        # share of agreeing pairs of answers within units (NaN if none)


def krippendorff_alpha_nominal(units: Iterable[Sequence[Hashable]]) -> Agreement:
    """Alpha for nominal values; ``units`` holds, per item, the values the raters gave it."""
    coincidence: dict[tuple, float] = defaultdict(float)
    n_units = n_values = 0
    agree_pairs = total_pairs = 0
    for values in units:
        m = len(values)
        if m < 2:
            continue
        n_units += 1
        n_values += m
        counts = Counter(values)
        for c, nc in counts.items():
            for k, nk in counts.items():
                # ordered pairs of values from different raters, weighted 1 / (m - 1)
                pairs = nc * (nk - 1) if c == k else nc * nk
                coincidence[(c, k)] += pairs / (m - 1)
        agree_pairs += sum(n * (n - 1) for n in counts.values())
        total_pairs += m * (m - 1)
    percent = agree_pairs / total_pairs if total_pairs else math.nan
    if not n_units:
        return Agreement(math.nan, 0, 0, percent)
    marginals: dict[Hashable, float] = defaultdict(float)
    for (c, _), v in coincidence.items():
        marginals[c] += v
    n = sum(marginals.values())
    observed = sum(v for (c, k), v in coincidence.items() if c != k)
    expected = sum(marginals[c] * marginals[k] for c in marginals for k in marginals if c != k)
    if expected == 0:
        return Agreement(math.nan, n_units, n_values, percent)
    alpha = 1.0 - (n - 1) * observed / expected
    return Agreement(alpha, n_units, n_values, percent)


def binary_agreement(binary: pd.DataFrame) -> Agreement:
    answered = binary[binary["label"] != "skip"]
    return krippendorff_alpha_nominal(answered.groupby("image_id")["label"].apply(list).tolist())


def ranking_agreement(rankings: pd.DataFrame) -> Agreement:
    if rankings.empty:
        return krippendorff_alpha_nominal([])
    pairs = rankings_to_pairs(pa.Table.from_pandas(rankings, preserve_index=False)).to_pandas()
    units: dict[tuple[str, str], list[str]] = defaultdict(list)
    for a, b, l0 in zip(pairs["image_0"], pairs["image_1"], pairs["label_0"]):
        if a > b:  # orient every pair the same way so raters' answers are comparable
            a, b, l0 = b, a, 1.0 - l0
        units[(a, b)].append("tie" if l0 == 0.5 else ("first" if l0 == 1.0 else "second"))
    return krippendorff_alpha_nominal(units.values())


def counts_by_rater(binary: pd.DataFrame, rankings: pd.DataFrame) -> pd.DataFrame:
    """One row per rater: good, bad, skip, gold (binary answers on gold items), rankings, total."""
    b = binary.pivot_table(index="rater_id", columns="label", values="label_id", aggfunc="count",
                           fill_value=0) if not binary.empty else pd.DataFrame()
    out = pd.DataFrame(index=sorted(set(binary["rater_id"]) | set(rankings["rater_id"])))
    for c in ("good", "bad", "skip"):
        out[c] = b[c] if c in b else 0
    out["gold"] = binary[binary["is_gold"]].groupby("rater_id").size() if not binary.empty else 0
    out["rankings"] = rankings.groupby("rater_id").size() if not rankings.empty else 0
    out = out.fillna(0).astype(int)
    out["total"] = out[["good", "bad", "skip", "rankings"]].sum(axis=1)
    return out.rename_axis("rater_id").reset_index()


def gold_accuracy(binary: pd.DataFrame, gold: dict[str, str]) -> pd.DataFrame:
    """Per rater: gold items answered (skips excluded), how many matched the known answer, share."""
    cols = ["rater_id", "gold_answered", "gold_correct", "gold_accuracy", "gold_skipped"]
    g = binary[binary["is_gold"] & binary["image_id"].isin(gold.keys())]
    if g.empty:
        return pd.DataFrame(columns=cols)
    g = g.assign(answered=g["label"] != "skip",
                 correct=g["label"] == g["image_id"].map(gold))
    out = g.groupby("rater_id").agg(gold_answered=("answered", "sum"), gold_correct=("correct", "sum"),
                                    gold_skipped=("answered", lambda s: int((~s).sum())))
    out["gold_accuracy"] = (out["gold_correct"] / out["gold_answered"].where(out["gold_answered"] > 0)).round(3)
    return out.reset_index()[cols]


GOLD_HIT_RADIUS = 0.1  # a click within this fraction of the image side of a reference point is on target


def gold_marks(binary: pd.DataFrame, marks: pd.DataFrame,
               reference: dict[str, tuple[list[tuple[float, float]], list[int]]]) -> pd.DataFrame:
    """Per rater, their marks on the gold items with reference marks (``reference``: image_id ->
    (points, words), :func:`labeling_app.gold.read_gold_marks`) that they answered bad:
    ``gold_marked`` such answers, ``gold_point_precision`` the share of their clicks within
    :data:`GOLD_HIT_RADIUS` of a reference point (NaN: no clicks), ``gold_word_agreement`` the mean
    Jaccard agreement of their wrong words with the reference's (both empty: 1); a reference without
    points leaves that answer's clicks out.  ``marks``: the
    current marks rows (:func:`data.marks.current_marks`); a bad answer without a row marked nothing."""
    cols = ["rater_id", "gold_marked", "gold_point_precision", "gold_word_agreement"]
    b = binary[binary["is_gold"] & (binary["label"] == "bad") & binary["image_id"].isin(reference.keys())]
    if b.empty:
        return pd.DataFrame(columns=cols)
    by_label = {r.label_id: r for r in marks.itertuples()} if not marks.empty else {}
    rows = []
    for a in b.itertuples():
        ref_points, ref_words = reference[a.image_id]
        m = by_label.get(a.label_id)
        points = np.array([(p["x"], p["y"]) for p in m.points], dtype=float).reshape(-1, 2) if m else np.zeros((0, 2))
        words = set(m.words) if m else set()
        ref = np.array(ref_points, dtype=float).reshape(-1, 2)
        if not len(ref):  # a reference of words only says nothing of where the clicks belong
            points = points[:0]
        dist = np.sqrt(((points[:, None] - ref[None]) ** 2).sum(-1)).min(1) if len(points) else np.zeros(0)
        union = words | set(ref_words)
        rows.append(dict(rater_id=a.rater_id, clicks=len(points), hits=int((dist <= GOLD_HIT_RADIUS).sum()),
                         agree=len(words & set(ref_words)) / len(union) if union else 1.0))
    per = pd.DataFrame(rows).groupby("rater_id").agg(gold_marked=("agree", "size"), clicks=("clicks", "sum"),
                                                    hits=("hits", "sum"), gold_word_agreement=("agree", "mean"))
    per["gold_point_precision"] = (per["hits"] / per["clicks"].where(per["clicks"] > 0)).round(3)
    per["gold_word_agreement"] = per["gold_word_agreement"].round(3)
    return per.reset_index()[cols]


def timeline_freq(span: pd.Timedelta) -> str:
    """A bucket width that gives a readable number of rows for a round that ran ``span``."""
    if span <= pd.Timedelta(hours=3):
        return "5min"
    return "h" if span <= pd.Timedelta(days=3) else "D"


def labels_over_time(binary: pd.DataFrame, rankings: pd.DataFrame, freq: str | None = None) -> pd.DataFrame:
    """Answers (binary labels, skips included, and rankings) per rater per time bucket: columns
    ``start`` (the bucket's start, UTC), ``rater_id``, ``answers``; every bucket from the first
    answer to the last, for every rater (zeros included), sorted by start then rater.  ``freq``: a
    pandas offset alias; None picks 5 min, 1 h or 1 day from the round's span."""
    cols = ["start", "rater_id", "answers"]
    times = pd.concat([binary[["rater_id", "created_at"]], rankings[["rater_id", "created_at"]]])
    if times.empty:
        return pd.DataFrame(columns=cols)
    at = pd.to_datetime(times["created_at"], utc=True)
    freq = freq or timeline_freq(at.max() - at.min())
    counts = times.assign(start=at.dt.floor(freq)).groupby(["start", "rater_id"]).size()
    grid = pd.MultiIndex.from_product(
        [pd.date_range(at.min().floor(freq), at.max().floor(freq), freq=freq), sorted(set(times["rater_id"]))],
        names=["start", "rater_id"])
    return counts.reindex(grid, fill_value=0).rename("answers").reset_index()[cols]


def median_ms(binary: pd.DataFrame, rankings: pd.DataFrame) -> dict[str, float]:
    def med(s):
        return float(s.median()) if len(s) else math.nan
    return {"binary": med(binary["duration_ms"]), "ranking": med(rankings["duration_ms"])}


@dataclass(frozen=True)
class RoundReport:
    counts: pd.DataFrame
    gold: pd.DataFrame
    binary_agreement: Agreement
    ranking_agreement: Agreement
    median_ms: dict[str, float]
    timeline: pd.DataFrame  # labels_over_time
    binary_labels: int
    rankings: int
    retracted: int

    def summary(self) -> dict:
        """JSON-able headline figures."""
        return json_safe({
            "binary_labels": self.binary_labels, "rankings": self.rankings, "retracted": self.retracted,
            "raters": int(len(self.counts)),
            "binary_alpha": self.binary_agreement.alpha, "binary_units": self.binary_agreement.units,
            "ranking_alpha": self.ranking_agreement.alpha,
            "ranking_units": self.ranking_agreement.units,
            "median_ms": dict(self.median_ms),
            "gold_accuracy": {r: float(a) for r, a in zip(self.gold["rater_id"], self.gold["gold_accuracy"])},
            "gold_marks": {r.rater_id: {"marked": int(r.gold_marked), "point_precision": r.gold_point_precision,
                                        "word_agreement": r.gold_word_agreement}
                           for r in self.gold.dropna(subset=["gold_marked"]).itertuples()},
        }, digits=4)


def round_report(store: Store) -> RoundReport:
    """Everything the admin tab shows, from the current (not undone) labels of a round (gold: its
    gold pool, with the raters' agreement with the reference marks where gold items carry them)."""
    binary_all = store.read(BINARY_LABELS).num_rows
    rankings_all = store.read(RANKINGS).num_rows
    binary = current(store, BINARY_LABELS.name).to_pandas()
    rankings = current(store, RANKINGS.name).to_pandas()
    return RoundReport(
        counts=counts_by_rater(binary, rankings),
        gold=gold_accuracy(binary, read_gold(store)).merge(
            gold_marks(binary, current_marks(store).to_pandas(), read_gold_marks(store)), on="rater_id", how="left"),
        binary_agreement=binary_agreement(binary),
        ranking_agreement=ranking_agreement(rankings),
        median_ms=median_ms(binary, rankings),
        timeline=labels_over_time(binary, rankings),
        binary_labels=len(binary), rankings=len(rankings),
        retracted=binary_all + rankings_all - len(binary) - len(rankings),
    )


ROUND_COLUMNS = ["round", "images", "selected", "binary_labels", "rankings", "good_share"]


def per_round(generations: pd.DataFrame, selections: pd.DataFrame, binary: pd.DataFrame,
              rankings: pd.DataFrame) -> pd.DataFrame:
    """One row per round of the root (the closed loop, :mod:`data.rounds`), newest first: its
    images, the images selected for raters (0: no selection, every image is served), current
    binary labels and rankings on its images (a ranking: its first image's round), and the good
    share of its binary answers (good / (good + bad), skips left out; NaN before any answer): the
    pass rate the raters (or the oracle's simulated raters) give the model of that round."""
    if generations.empty:
        return pd.DataFrame(columns=ROUND_COLUMNS)
    round_of = pd.Series(generations["round"].to_numpy(), index=generations["image_id"].to_numpy())
    out = pd.DataFrame({"images": generations.groupby("round").size()})
    out["selected"] = selections.groupby("round").size() if not selections.empty else 0
    b = binary.assign(round=binary["image_id"].map(round_of))
    out["binary_labels"] = b.groupby("round").size() if not b.empty else 0
    first = rankings["image_ids"].map(lambda ids: ids[0] if len(ids) else None)
    out["rankings"] = rankings.assign(round=first.map(round_of)).groupby("round").size() if not rankings.empty else 0
    out = out.fillna(0).astype(int)
    answered = b[b["label"] != "skip"]
    good = answered.groupby("round")["label"].apply(lambda s: float((s == "good").mean())) if not answered.empty else None
    out["good_share"] = good.round(3) if good is not None else math.nan
    out = out.rename_axis("round").reset_index().sort_values("round", ascending=False, kind="stable")
    return out.reset_index(drop=True)[ROUND_COLUMNS]


def round_counts(store: Store) -> pd.DataFrame:
    """:func:`per_round` of a store's tables (current labels: undone answers left out)."""
    return per_round(store.to_pandas(GENERATIONS), store.to_pandas(SELECTIONS),
                     current(store, BINARY_LABELS.name).to_pandas(), current(store, RANKINGS.name).to_pandas())
