"""Which epistemic uncertainty points at the reward's errors where the policy moves?  The shipped
linear-UCB spread (reward.epistemic) against a bootstrap ensemble (SEIKO's other option, and
the deep ensembles of Lakshminarayanan et al., NeurIPS 2017) - issue 59, item 2: "measure which".

    python experiments/loop-scarce/epistemic_compare.py <loop name> [K]

For each round k >= 1 of a finished loop (``datasets/<name>``, ``runs/<name>``, run from the folder
the loop ran in): the round k-1 reward as the loop trained it (its saved folder: the calibrated
probability p and the linear-UCB spread), and K heads trained the same way (the reward's own
``fit`` and ``calibrate`` on the same cached CLIP embeddings, seeds 1..K) each on a bootstrap
resample of the training rows (binary examples and ranking pairs drawn with replacement); the
ensemble's spread is the standard deviation of its heads' calibrated logits, its p the sigmoid of
their mean.  Both are judged against the oracle on **every image round k generated** (the policy's
new images, which no reward trained on: what optimism acts on) and on round k-1's ``val_images``:
Spearman of the spread with |p - y|, the partial one given p(1 - p) (what the spread adds to the
probability), and the AUC of the spread for the images p gets wrong; and for selection, the
reward's error rate among the top quarter of the images by the margin p(1 - p) and by each
epistemic score p(1 - p) s (what ``make select method=uncertain`` ranks by).  One JSON line per
round.
"""

from __future__ import annotations

import json
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from sklearn.metrics import roc_auc_score

from core.config import load_config
from core.loading import load_clip
from data.generations import load_image
from data.read import read_table
from data.store import Store
from reward.calibrate import calibrate
from reward.config import RewardConfig
from reward.data import BinaryExamples, PairExamples, load_reward_data
from reward.embeddings import Embeddings
from reward.epistemic import spread as ucb_spread
from reward.fit import fit
from reward.metrics import spread_calibration
from reward.model import RewardModel
from shapes.oracle import ALIGNED_MIN_SCORE, judge
from shapes.world import Prompt


def bootstrap(split, rng: np.random.Generator):
    """The split with its binary examples and ranking pairs each resampled with replacement."""
    b, p = split.binary, split.pairs
    ib, ip = rng.integers(0, len(b.image), len(b.image)), rng.integers(0, len(p.image_0), len(p.image_0))
    return replace(split, binary=BinaryExamples(b.image[ib], b.target[ib], b.votes[ib], b.prompt_id[ib]),
                   pairs=PairExamples(p.image_0[ip], p.image_1[ip], p.label_0[ip], p.prompt_id[ip]))


def scores(rm: RewardModel, heads: list, img: torch.Tensor, txt: torch.Tensor) -> dict:
    """p and the two spreads of embedded images (B, D) with their prompts' embeddings."""
    with torch.no_grad():
        r, phi = rm.head.logit_and_hidden(img, txt)
        p = rm.head.probability(r).double().numpy()
        s_ucb = ucb_spread(phi, rm.epistemic.covariance, rm.head.calib_scale).numpy()
        cal = torch.stack([h.calib_scale * h(img, txt) + h.calib_bias for h in heads]).double()
    return {"p": p, "ucb": s_ucb, "ens": cal.std(0).numpy(), "p_ens": torch.sigmoid(cal.mean(0)).numpy()}


def judged(s: dict, y: np.ndarray) -> dict:
    def one(spread, p):
        wrong = (p >= 0.5) != (y > 0.5)
        cal = spread_calibration(spread, p, y)
        auc = float(roc_auc_score(wrong, spread)) if 0 < wrong.sum() < len(wrong) else float("nan")
        return {"spearman": round(cal["spearman_spread_vs_abs_error"], 3),
                "partial": round(cal["partial_spearman_spread_vs_abs_error"], 3),
                "auc_wrong": round(auc, 3), "error_rate": round(float(wrong.mean()), 3)}
    def picks(u, p):  # what a selection ranks by: how many of its top quarter the reward gets wrong
        top = np.argsort(-u, kind="stable")[: max(1, len(u) // 4)]
        return round(float(((p[top] >= 0.5) != (y[top] > 0.5)).mean()), 3)

    pu = s["p"] * (1 - s["p"])
    return {"n": int(len(y)), "linear_ucb": one(s["ucb"], s["p"]), "ensemble": one(s["ens"], s["p_ens"]),
            "p_uncertainty_spearman": round(spread_calibration(s["ucb"], s["p"], y)["spearman_p_uncertainty_vs_abs_error"], 3),
            # error rate among the top quarter by each selection score (the margin, and p(1 - p) s)
            "top_quarter_error": {"margin": picks(pu, s["p"]), "linear_ucb": picks(pu * s["ucb"], s["p"]),
                                  "ensemble": picks(s["p_ens"] * (1 - s["p_ens"]) * s["ens"], s["p_ens"])}}


def main(name: str, k_heads: int = 5) -> None:
    runs, root = Path("runs") / name, Path("datasets") / name
    rounds = sorted(int(p.name.split("-")[1]) for p in runs.glob("round-*") if (p / "reward").is_dir())
    for k in [r for r in rounds if r >= 1]:
        folder = runs / f"round-{k - 1}" / "reward"
        cfg = load_config(RewardConfig, folder / "config.yaml", [])
        rm = RewardModel.from_pretrained(folder, device="cpu")
        data = load_reward_data(Store(cfg.data.root), cfg.data, cfg.loss)
        clip = load_clip(cfg.model.clip, device="cpu")
        mc = cfg.model
        emb = Embeddings(RewardModel.build(clip, features=mc.features, hidden=mc.hidden, dropout=mc.dropout,
                                           cosine_skip=mc.cosine_skip, seed=0), data, cached=True,
                         batch_size=cfg.train.embed_batch_size)
        tr = np.unique(np.concatenate([data.train.binary.image, data.train.pairs.image_0, data.train.pairs.image_1]))
        stats = (emb.image_cache[torch.as_tensor(tr)], emb.text_cache[torch.as_tensor(data.image_prompt[tr])])
        heads = []
        for i in range(1, k_heads + 1):
            m = RewardModel.build(clip, features=mc.features, hidden=mc.hidden, dropout=mc.dropout,
                                  cosine_skip=mc.cosine_skip, seed=cfg.train.seed + i)
            m.head.set_feature_stats(*stats)
            boot = replace(data, train=bootstrap(data.train, np.random.default_rng(1000 * k + i)))
            fit(m, emb, boot, cfg, aux_weight=cfg.loss.aux_weight, seed=cfg.train.seed + i)
            calibrate(m, emb, boot)
            heads.append(m.head.eval())

        # round k's images: the policy's new samples, none trained on
        gens = read_table(str(root), "generations", rounds=str(k)).reset_index(drop=True)
        images = [load_image(str(root), row) for _, row in gens.iterrows()]
        y = np.array([float(judge(im, Prompt.parse(t)).score(Prompt.parse(t)) >= ALIGNED_MIN_SCORE)
                      for im, t in zip(images, gens["prompt"])])
        with torch.no_grad():
            img, txt = rm.embed_pairs(images, list(gens["prompt"]))
        new = judged(scores(rm, heads, img, txt), y)

        # round k-1's reward on its own validation images (in distribution)
        v = data.val_images.images
        vy = np.array([float(judge(load_image(str(root), row), Prompt.parse(row["prompt"])).score(
            Prompt.parse(row["prompt"])) >= ALIGNED_MIN_SCORE) for _, row in data.images.iloc[v].iterrows()])
        val = judged(scores(rm, heads, emb.image_cache[torch.as_tensor(v)],
                            emb.text_cache[torch.as_tensor(data.image_prompt[v])]), vy)
        print(json.dumps({"loop": name, "round": k, "reward": f"round-{k - 1}", "heads": k_heads,
                          "new_images": new, "val_images": val}), flush=True)


if __name__ == "__main__":
    pd.options.mode.copy_on_write = True
    main(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 5)
