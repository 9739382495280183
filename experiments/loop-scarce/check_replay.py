"""Issue 79: the round check's verdicts replayed on a finished loop's labels with two other estimators.

    python experiments/loop-scarce/check_replay.py datasets/<loop name> [against for round 2, default 1]

For round 1 (against round 0) and round 2 (against the round whose images the kept model made: 1
unless round 1 was rolled back), prints the shipped check (pooled good-rates of the random shares on the
shared prompts, binomial SE: evaluation.round_check), the same images compared prompt by prompt
(the mean per-prompt difference, SE across prompts), and every labelled image of both rounds,
uncertainty picks included (biased, prompt by prompt).  Reads the tables only: no model runs.
"""

from __future__ import annotations

import math
import sys

import pandas as pd

from data.labels import aggregate_binary
from data.read import read_table
from evaluation.round_check import _sample, round_check


def per_prompt(new: pd.DataFrame, old: pd.DataFrame) -> tuple[float, float, int]:
    """Mean over the shared prompts of the good-rate difference, its SE across prompts, and n."""
    shared = set(new["prompt_id"]) & set(old["prompt_id"])
    d = (new[new["prompt_id"].isin(shared)].groupby("prompt_id")["target"].mean()
         - old[old["prompt_id"].isin(shared)].groupby("prompt_id")["target"].mean()).dropna()
    return float(d.mean()), float(d.std(ddof=1) / math.sqrt(len(d))), len(d)


def every_labelled(gens: pd.DataFrame, labels: pd.DataFrame, k: int) -> pd.DataFrame:
    ids = set(gens.loc[gens["round"] == k, "image_id"])
    agg = aggregate_binary(labels[labels["image_id"].isin(ids)], "majority")
    prompt_of = gens.drop_duplicates("image_id").set_index("image_id")["prompt_id"]
    return agg.assign(prompt_id=agg["image_id"].map(prompt_of))


def main(root: str, against2: int) -> None:
    gens, labels, picks = (read_table(root, t) for t in ("generations", "binary_labels", "selections"))
    for k, j in ((1, 0), (2, against2)):
        rc = round_check(gens, labels, picks, k, j)
        (new, _, _), (old, _, _) = _sample(gens, labels, picks, k), _sample(gens, labels, picks, j)
        m, se, n = per_prompt(new, old)
        ma, sea, na = per_prompt(every_labelled(gens, labels, k), every_labelled(gens, labels, j))
        print(f"round {k} vs {j}: shipped {100 * rc.difference:+.1f} ± {100 * rc.difference_se:.1f} "
              f"({rc.images}/{rc.previous_images} images, {rc.prompts} prompts); prompt by prompt "
              f"{100 * m:+.1f} ± {100 * se:.1f} (n={n}); every labelled image, prompt by prompt "
              f"{100 * ma:+.1f} ± {100 * sea:.1f} (n={na})")


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 1)
