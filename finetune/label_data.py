"""What DPO and KTO learn from (:mod:`finetune.preference`): the labelled round(s) of a dataset root,
read as ``make reward`` reads them (``data.root``, ``data.rounds``; :func:`data.read_table`: the
current answers, undone ones out, gold-check answers out; with ``prompts.prompts_file``, the labels
of its prompts only, the prompts a run fixes as Lee et al.'s protocol has it), checked against the generations table
(:func:`data.labels.check_label_images`: a ranking across prompts is refused) and with every image
loaded and checked against its row (:func:`data.generations.load_image`) -- all before anything
is written (:func:`finetune.run.setup_run` calls :func:`read_labels` first).

- DPO: every pair of images of different ranks in each ranking (:func:`data.pairs.rankings_to_pairs`;
  each rater's ranking on its own, as the reward's ranking loss takes them), the preferred image
  first; a tie dropped or, ``dpo.ties=half``, kept with target 1/2; with ``dpo.binary_pairs`` also
  every (good, bad) pair of one prompt's binary answers.
- KTO: every image with a decided binary answer, its target the raters' verdict aggregated as the
  reward does (``data.binary_aggregation``, :func:`data.labels.aggregate_binary`: skips out; majority
  1 / 0 and the image dropped on a tie, or the share of raters who said good).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import torch

from core.errors import UserError
from core.images import pil_to_tensor
from data import read_table
from data.generations import load_image
from data.labels import aggregate_binary, check_label_images
from data.pairs import rankings_to_pairs
from data.schemas import BINARY_LABELS, GENERATIONS, RANKINGS
from finetune.config import FinetuneConfig
from finetune.prompts import training_prompts
from reward.data import MAKE_LABELS


@dataclass(frozen=True)
class LabelData:
    """The examples of a DPO or KTO run and their images.  Examples index ``images`` (row i is image i)."""

    images: pd.DataFrame  # generations rows of the images the examples use, by (prompt_id, model_id, seed, image_id)
    pixels: torch.Tensor  # (N, 3, H, W) in [0, 1]: those images at the run's size
    first: np.ndarray  # int64 (n,): DPO the preferred image of each pair; KTO each answered image
    second: np.ndarray | None  # int64 (n,): DPO the other image of each pair; KTO None
    target: np.ndarray  # float32 (n,): DPO P(first preferred), 1 or a tie's 1/2; KTO the share who said good
    summary: dict  # what was read: root, rounds, counts (into metrics.json)

    def __len__(self) -> int:
        return len(self.first)

    @property
    def image_prompts(self) -> list[str]:
        """The prompt of every image, (N,)."""
        return self.images["prompt"].tolist()

    @property
    def prompts(self) -> list[str]:
        """The distinct prompts of the examples, in the images' order (the run's prompts, its sample grid's)."""
        return list(dict.fromkeys(self.image_prompts))


def load_images(root: Path, rows: pd.DataFrame, size: tuple[int, int]) -> torch.Tensor:
    """The images (N, 3, H, W) in [0, 1] of generations ``rows`` of ``root``, each checked against
    its row (a missing or replaced file is one error naming it) and required to be ``size`` = (H, W)
    pixels, the size the model is fine-tuned at: nothing is resized."""
    images = []
    for _, row in rows.iterrows():
        im = load_image(root, row)
        if im.size != (size[1], size[0]):  # PIL: (width, height)
            raise UserError(f"image {row['image_id']} in {root} is {im.size[0]}x{im.size[1]} (width x height), "
                            f"the model is fine-tuned at {size[1]}x{size[0]}.",
                            "use images of that size, or set sampling.height / sampling.width to theirs.")
        images.append(im)
    return pil_to_tensor(images)


def read_labels(cfg: FinetuneConfig, size: tuple[int, int]) -> LabelData:
    """The examples ``cfg.method`` (dpo or kto) learns from in ``data.root`` (module docstring), with
    their images at ``size`` = (H, W); one clear error, before anything is written, for a root with no
    images, a round with no rankings (dpo) or no decided binary answers (kto), labels that do not
    match the generations table, and images missing on disk or of another size."""
    d = cfg.data
    root = Path(d.root)
    gens = read_table(root, GENERATIONS.name)
    if gens.empty:
        raise UserError(f"no generated images in {root} (data.root: its generations table is empty or missing).",
                        f"{MAKE_LABELS}, or set data.root to the dataset root of your labelled round.")
    binary = read_table(root, BINARY_LABELS.name, rounds=d.rounds)  # current answers, gold-check answers out
    rankings = read_table(root, RANKINGS.name, rounds=d.rounds)  # current rankings
    gens = gens.set_index("image_id", drop=False)
    check_label_images(root, gens, binary, rankings if len(rankings) else None)
    where = f"{root}" + ("" if d.rounds == "all" else f" (data.rounds={d.rounds})")
    if cfg.prompts.prompts_file:  # the prompts to fix (e.g. make targets' file): their labels only
        wanted = set(training_prompts(cfg))
        binary = binary[gens.loc[binary["image_id"], "prompt"].isin(wanted).to_numpy()]
        if len(rankings):  # a ranking's prompt: its first image's (its images share one, checked above)
            first_image = rankings["image_ids"].map(lambda ids: ids[0])
            rankings = rankings[gens.loc[first_image, "prompt"].isin(wanted).to_numpy()]
        where += f" on the prompts of prompts.prompts_file={cfg.prompts.prompts_file}"
    agg = aggregate_binary(binary, d.binary_aggregation)
    agg = agg.assign(prompt_id=gens.loc[agg["image_id"], "prompt_id"].to_numpy()) if len(agg) else agg
    if cfg.method == "dpo":
        first, second, target, counts = _dpo_pairs(cfg, where, rankings, agg)
    else:
        if agg.empty:
            n_skip = int((binary["label"] == "skip").sum()) if len(binary) else 0
            raise UserError(f"no binary answers to learn from in {where}: {len(binary)} current answers "
                            f"({n_skip} skips, none decided good or bad), and KTO learns from good / bad answers.",
                            f"{MAKE_LABELS}, or use METHOD=dpo on the round's rankings.")
        first, second, target = agg["image_id"].to_numpy(), None, agg["target"].to_numpy(np.float32)
        counts = {"binary_answers": len(binary), "images": len(agg), "good": int((target > 0.5).sum())}
    used = sorted(set(first) | set(() if second is None else second))
    images = (gens.loc[used].reset_index(drop=True)
              .sort_values(["prompt_id", "model_id", "seed", "image_id"], kind="stable").reset_index(drop=True))
    index = {iid: i for i, iid in enumerate(images["image_id"])}

    def rows(ids) -> np.ndarray:
        return np.array([index[i] for i in ids], dtype=np.int64)

    summary = {"root": str(root.resolve()), "rounds": d.rounds, **counts, "examples": len(first),
               "prompts": int(images["prompt_id"].nunique())}
    return LabelData(images, load_images(root, images, size), rows(first), None if second is None else rows(second),
                     np.asarray(target, np.float32), summary)


def _dpo_pairs(cfg: FinetuneConfig, where: str, rankings: pd.DataFrame, agg: pd.DataFrame
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict]:
    """(preferred image ids, the other image ids, P(preferred wins), counts) of DPO's pairs."""
    p = cfg.dpo
    if rankings.empty and not p.binary_pairs:
        raise UserError(f"no rankings in {where}: DPO learns from the raters' ranking pairs.",
                        "rank the round's images (the labeling app's ranking task; make simulate-raters ranks "
                        "too), set dpo.binary_pairs=true to pair one prompt's good and bad answers, or use "
                        "METHOD=kto on binary answers.")
    pairs = (rankings_to_pairs(pa.Table.from_pandas(rankings, preserve_index=False)).to_pandas() if len(rankings)
             else pd.DataFrame(columns=["image_0", "image_1", "label_0"]))
    tie = pairs["label_0"] == 0.5
    if p.ties == "drop":
        pairs = pairs[~tie]
    zero_first = (pairs["label_0"] >= 0.5).to_numpy()  # image_0 preferred (or tied)
    first = np.where(zero_first, pairs["image_0"], pairs["image_1"]).astype(object)
    second = np.where(zero_first, pairs["image_1"], pairs["image_0"]).astype(object)
    target = np.where(pairs["label_0"] == 0.5, 0.5, 1.0)
    n_binary = 0
    if p.binary_pairs and len(agg):
        good, bad = agg[agg["target"] > 0.5], agg[agg["target"] < 0.5]
        both = good.merge(bad, on="prompt_id", suffixes=("_good", "_bad"))  # every (good, bad) pair of a prompt
        first = np.concatenate([first, both["image_id_good"].to_numpy(object)])
        second = np.concatenate([second, both["image_id_bad"].to_numpy(object)])
        target = np.concatenate([target, np.ones(len(both))])
        n_binary = len(both)
    if len(first) == 0:
        raise UserError(f"no pair of images with different ranks or verdicts in {where}: {len(rankings)} rankings, "
                        f"{int(tie.sum())} tied pairs (dpo.ties={p.ties})"
                        + (f", {len(agg)} images with a decided binary answer" if p.binary_pairs else "") + ".",
                        "rank more images, keep ties with dpo.ties=half, or set dpo.binary_pairs=true.")
    counts = {"rankings": len(rankings), "ranking_pairs": len(first) - n_binary, "tied_pairs": int(tie.sum()),
              "binary_pairs": n_binary}
    return first, second, target, counts
