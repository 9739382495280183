"""Calibration: Platt scaling of a head's logit on the selection labels (:func:`calibrate`), the
calibrated probability (:func:`calibrated_probs`) and the zero-shot baseline's probability
(:func:`zero_shot_probs`, a logistic fit of the cosine on the training labels)."""

from __future__ import annotations

import numpy as np
import torch

from reward.data import RewardData
from reward.embeddings import Embeddings
from reward.evaluation import predict
from reward.model import RewardModel


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def calibrated_probs(head, logits: np.ndarray) -> np.ndarray:
    """The head's calibrated probability of its logits."""
    return sigmoid(float(head.calib_scale) * logits + float(head.calib_bias))


@torch.no_grad()
def calibrate(model: RewardModel, emb: Embeddings, data: RewardData) -> bool:
    """Platt-scale the head's logit on the selection images' binary labels (a monotone map:
    rankings do not change).  Returns False (identity kept) without such labels of both kinds."""
    from sklearn.linear_model import LogisticRegression

    if data.select is None:
        return False
    b = data.select.binary
    decided = b.target != 0.5
    y = (b.target[decided] > 0.5).astype(int)
    if len(np.unique(y)) < 2:
        return False
    pred = predict(model.head, emb, data, data.select)["logits"][b.image[decided]]
    lr = LogisticRegression(C=1e4).fit(pred[:, None], y)
    model.head.calib_scale.fill_(float(lr.coef_[0, 0]))
    model.head.calib_bias.fill_(float(lr.intercept_[0]))
    return True


def zero_shot_probs(data: RewardData, cos: np.ndarray) -> np.ndarray | None:
    """Platt scaling of the cosine on the training binary labels (so accuracy and ECE of the
    zero-shot baseline mean something); None without training binary labels of both kinds."""
    from sklearn.linear_model import LogisticRegression

    b = data.train.binary
    decided = b.target != 0.5
    y = (b.target[decided] > 0.5).astype(int)
    if len(np.unique(y)) < 2:
        return None
    lr = LogisticRegression(C=1e4).fit(cos[b.image[decided]][:, None], y)
    out = np.full_like(cos, np.nan)
    ok = np.isfinite(cos)
    out[ok] = lr.predict_proba(cos[ok][:, None])[:, 1]
    return out
