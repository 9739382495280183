"""Validation metrics of a reward model (and of the baselines, computed the same way).

All on one validation view (a :class:`reward.data.Split`: ``val_images``, unseen images of the
trained prompts, or ``val_prompts``, prompts never trained on).  Definitions:

- ``binary_accuracy``: images with an aggregated binary label (majority, or mean > 0.5 / < 0.5;
  exact 0.5 excluded); predicted good when the reward (a probability) is >= 0.5.
- ``binary_auc``: ROC-AUC of the reward logit against those labels.
- ``ece``: expected calibration error of the probability against those labels, 10 equal-width
  bins: sum_b (n_b / n) |mean label_b - mean probability_b|.
- ``pairwise_accuracy_vs_labels``: ranking pairs whose raters did not tie them; correct when the
  better-ranked image has the higher reward; equal rewards count 0.5.
- ``pairwise_accuracy_vs_oracle`` (shapes world): every pair of images of the same prompt that
  touches a validation image (its partner may be a training image of that prompt: ``partners``)
  and whose oracle graded scores differ (oracle ties are excluded); equal rewards count 0.5.
  Split in two (``oracle_pairs`` counts all, ``oracle_aligned_pairs`` the first kind):
  ``..._aligned_pairs``, one aligned and one misaligned image (what a binary label teaches, and
  what a per-prompt advantage mostly rewards), and ``..._failure_pairs``, two misaligned images
  that differ only in partial credit (an object too many, one colour wrong; only rankings teach it).
- ``spearman_vs_oracle``: Spearman correlation of reward and oracle score over validation images.
- ``binary_auc_vs_oracle``: ROC-AUC of the reward against the oracle's aligned verdict.
- ``perturbed_prompt_accuracy``: for images labelled good, the share of (image, prompt one
  attribute away) pairs where the reward with the true prompt is higher (ties 0.5): does the
  model read the prompt?
"""

from __future__ import annotations

import math

import numpy as np
from scipy.stats import rankdata, spearmanr
from sklearn.metrics import roc_auc_score

from shapes.oracle import ALIGNED_MIN_SCORE

NAN = float("nan")


def _auc(labels: np.ndarray, scores: np.ndarray) -> float:
    if len(labels) == 0 or len(np.unique(labels)) < 2:
        return NAN
    return float(roc_auc_score(labels, scores))


def expected_calibration_error(labels: np.ndarray, probs: np.ndarray, bins: int = 10) -> float:
    if len(labels) == 0:
        return NAN
    idx = np.clip((probs * bins).astype(int), 0, bins - 1)
    total = 0.0
    for b in range(bins):
        m = idx == b
        if m.any():
            total += m.mean() * abs(labels[m].mean() - probs[m].mean())
    return float(total)


def pair_accuracy(s0: np.ndarray, s1: np.ndarray, first_better: np.ndarray) -> float:
    """Share of pairs ordered like ``first_better`` (bool); equal scores count 0.5."""
    if len(s0) == 0:
        return NAN
    correct = np.where(first_better, s0 > s1, s1 > s0).astype(float)
    correct[s0 == s1] = 0.5
    return float(correct.mean())


def oracle_pairs(images: np.ndarray, prompt_of: np.ndarray, oracle: np.ndarray
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Index pairs (i, j) of ``images`` with the same prompt and oracle[i] > oracle[j]."""
    a, b = [], []
    by_prompt: dict = {}
    for i in images:
        by_prompt.setdefault(prompt_of[i], []).append(i)
    for members in by_prompt.values():
        m = np.array(members)
        o = oracle[m]
        hi, lo = np.nonzero(o[:, None] > o[None, :])
        a.append(m[hi])
        b.append(m[lo])
    if not a:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    return np.concatenate(a), np.concatenate(b)


def oracle_pair_accuracy(scores: np.ndarray, hi: np.ndarray, lo: np.ndarray, oracle: np.ndarray) -> dict:
    """Pairwise accuracy of ``scores`` on the oracle pairs (``hi``, ``lo``) of :func:`oracle_pairs`,
    over all of them and by kind: one aligned and one misaligned image (``_aligned_pairs``), or
    two misaligned images (``_failure_pairs``; two aligned images always tie).  With the pair
    counts ``oracle_pairs`` and ``oracle_aligned_pairs``."""
    aligned = oracle[hi] >= ALIGNED_MIN_SCORE  # then oracle[lo] < ALIGNED_MIN_SCORE, or it would tie

    def acc(m: np.ndarray) -> float:
        return pair_accuracy(scores[hi[m]], scores[lo[m]], np.ones(int(m.sum()), bool))

    return {"pairwise_accuracy_vs_oracle": acc(np.ones(len(hi), bool)),
            "pairwise_accuracy_vs_oracle_aligned_pairs": acc(aligned),
            "pairwise_accuracy_vs_oracle_failure_pairs": acc(~aligned),
            "oracle_pairs": int(len(hi)), "oracle_aligned_pairs": int(aligned.sum())}


def evaluate(split, logits: np.ndarray, probs: np.ndarray | None, *, prompt_of: np.ndarray,
             oracle: np.ndarray | None = None, aux_true: np.ndarray | None = None,
             aux_perturbed: np.ndarray | None = None, partners: np.ndarray | None = None) -> dict[str, float]:
    """Metrics of per-image rewards on ``split`` (a :class:`reward.data.Split`).

    ``logits``/``probs``: (n_images,) rewards of every image of the dataset with its own prompt
    (probs None: no calibrated probability, accuracy and ECE are NaN).  ``prompt_of``: (n_images,)
    prompt id per image.  ``oracle``: (n_images,) oracle graded score, NaN where not judged.
    ``partners``: other images (e.g. the same prompts' training images) that oracle pairs with a
    validation image may include; ``logits`` must cover them.
    ``aux_true`` (n,) / ``aux_perturbed`` (n, P, NaN padding): rewards of the split's good images
    with their own and perturbed prompts.
    """
    out: dict[str, float] = {}
    b = split.binary
    decided = b.target != 0.5
    y = (b.target[decided] > 0.5).astype(float)
    img = b.image[decided]
    out["binary_auc"] = _auc(y, logits[img])
    if probs is not None and len(img):
        out["binary_accuracy"] = float(((probs[img] >= 0.5) == (y > 0.5)).mean())
        out["ece"] = expected_calibration_error(y, probs[img])
    else:
        out["binary_accuracy"] = out["ece"] = NAN
    p = split.pairs
    strict = p.label_0 != 0.5
    out["pairwise_accuracy_vs_labels"] = pair_accuracy(
        logits[p.image_0[strict]], logits[p.image_1[strict]], p.label_0[strict] > 0.5)
    if oracle is not None and np.isfinite(oracle[split.images]).any():
        judged = split.images[np.isfinite(oracle[split.images])]
        pool = judged if partners is None else np.union1d(judged, partners[np.isfinite(oracle[partners])])
        hi, lo = oracle_pairs(pool, prompt_of, oracle)
        touches = np.isin(hi, judged) | np.isin(lo, judged)
        hi, lo = hi[touches], lo[touches]
        out.update(oracle_pair_accuracy(logits, hi, lo, oracle))
        rho = spearmanr(logits[judged], oracle[judged]).statistic if len(judged) > 2 else NAN
        out["spearman_vs_oracle"] = float(rho) if rho == rho else NAN
        out["binary_auc_vs_oracle"] = _auc((oracle[judged] >= ALIGNED_MIN_SCORE).astype(float), logits[judged])
    else:
        none = np.zeros(0, np.int64)
        out.update(oracle_pair_accuracy(logits, none, none, np.zeros(0)))  # NaN accuracies, no pairs
        out["spearman_vs_oracle"] = out["binary_auc_vs_oracle"] = NAN
    if aux_true is not None and aux_perturbed is not None and aux_perturbed.size:
        valid = np.isfinite(aux_perturbed)
        t = np.broadcast_to(aux_true[:, None], aux_perturbed.shape)[valid]
        q = aux_perturbed[valid]
        out["perturbed_prompt_accuracy"] = pair_accuracy(t, q, np.ones(len(t), bool))
    else:
        out["perturbed_prompt_accuracy"] = NAN
    out["val_binary_images"] = int(len(img))
    out["val_label_pairs"] = int(strict.sum())
    return out


def spread_calibration(spread: np.ndarray, p: np.ndarray, y: np.ndarray) -> dict:
    """Does an uncertainty point at the errors?  ``spread``, ``p`` (the predicted probability) and
    ``y`` (the truth, 0 or 1), (n,) each, of the same images; the error is |p - y|, wrong is p on
    the other side of 1/2 from y.  Spearman correlations (NaN under 4 images):
    ``spearman_spread_vs_abs_error``; ``spearman_p_uncertainty_vs_abs_error``, the same of
    p (1 - p), what the probability itself knows of its errors; ``partial_spearman_spread_vs_abs_error``,
    the spread's once the ranks of p (1 - p) are regressed out of both ranks: what the spread adds.
    By spread quartile, lowest first (images sorted by spread, four near-equal parts):
    ``error_rate_by_spread_quartile`` (share wrong), ``abs_error_by_spread_quartile``,
    ``spread_by_spread_quartile`` (means)."""
    err, u, n = np.abs(p - y), p * (1 - p), len(spread)
    ranks = [rankdata(v) for v in (spread, err, u)]
    z = np.stack([np.ones(n), ranks[2]], 1)
    res = [r - z @ np.linalg.lstsq(z, r, rcond=None)[0] for r in ranks[:2]]

    def corr(a: np.ndarray, b: np.ndarray) -> float:
        return float(np.corrcoef(a, b)[0, 1]) if n > 3 and a.std() > 1e-9 and b.std() > 1e-9 else NAN

    quarters = np.array_split(np.argsort(spread, kind="stable"), 4)

    def means(x: np.ndarray) -> list[float]:
        return [float(x[q].mean()) if len(q) else NAN for q in quarters]

    return {"n": int(n), "spearman_spread_vs_abs_error": corr(ranks[0], ranks[1]),
            "spearman_p_uncertainty_vs_abs_error": corr(ranks[2], ranks[1]),
            "partial_spearman_spread_vs_abs_error": corr(*res),
            "error_rate_by_spread_quartile": means(((p >= 0.5) != (y > 0.5)).astype(float)),
            "abs_error_by_spread_quartile": means(err), "spread_by_spread_quartile": means(spread)}


TABLE_ROWS = ("pairwise_accuracy_vs_oracle", "pairwise_accuracy_vs_oracle_aligned_pairs",
              "pairwise_accuracy_vs_oracle_failure_pairs", "pairwise_accuracy_vs_labels", "spearman_vs_oracle",
              "binary_accuracy", "binary_auc", "binary_auc_vs_oracle", "ece",
              "perturbed_prompt_accuracy")


def format_table(columns: dict[str, dict], rows=TABLE_ROWS) -> str:
    """A plain-text table: one row per metric, one column per model."""
    names = list(columns)
    width = max(len(r) for r in rows) + 2
    colw = max(14, *(len(n) + 2 for n in names))
    lines = ["metric".ljust(width) + "".join(n.rjust(colw) for n in names)]
    lines.append("-" * len(lines[0]))
    for r in rows:
        cells = []
        for n in names:
            v = columns[n].get(r)
            cells.append(("-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.3f}").rjust(colw))
        lines.append(r.ljust(width) + "".join(cells))
    return "\n".join(lines)
