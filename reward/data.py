"""Training data for the reward model, read from a dataset root's tables.

Inputs (see data/schemas.py): ``generations`` (the images and their prompts), ``binary_labels``
and ``rankings`` as they stand now (:func:`data.labels.current`: retracted rows removed).

- Binary labels: skips are dropped; the labels of one image from several raters become one target
  (``data.binary_aggregation``): *majority* = 1 if more raters said good than bad, 0 if fewer, the
  image is dropped on a tie; *mean* = the share of raters who said good.
- Rankings become every pair of each ranking (:func:`data.pairs.rankings_to_pairs`), ties as
  0.5/0.5.  Each rater's ranking counts on its own (no aggregation: disagreeing raters give
  opposite pairs, which Bradley-Terry averages).
- Auxiliary prompt classification (Lee et al.): every image whose target is good (> 0.5) with a
  pool of prompts one attribute away from its own.
- Two validation views (Lee et al. train the reward on the prompts they fine-tune):
  ``val_images``: a seeded share of every trained prompt's labelled images
  (``data.val_image_fraction``), what fine-tuning on those prompts relies on; ``val_prompts``:
  prompts never trained on (``data.val_split``), the reward's generalisation.  A seeded share
  (``data.select_fraction``) of every trained prompt's images picks the epoch and calibrates.
  An image, its binary labels and every ranking pair touching it fall on one side (a pair whose
  images sit on two sides goes to the later of train < select < val_images).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from core.errors import DataError, UserError
from data.labels import aggregate_binary, check_label_images, current
from data.pairs import rankings_to_pairs
from data.rounds import filter_rounds, resolve_rounds, rounds_in
from data.schemas import BINARY_LABELS, GENERATIONS, RANKINGS
from data.store import Store
from reward.config import DataConfig, LossConfig
from shapes.world import Prompt, one_attribute_swaps

MAKE_LABELS = ("run `make generate && make simulate-raters` (simulated raters), or collect labels "
               "with the labeling app")


@dataclass
class BinaryExamples:
    image: np.ndarray  # int64 (n,) index into RewardData.images
    target: np.ndarray  # float32 (n,) in [0, 1]
    votes: np.ndarray  # int64 (n,) non-skip labels behind the target
    prompt_id: np.ndarray  # object (n,)


@dataclass
class PairExamples:
    image_0: np.ndarray  # int64 (n,)
    image_1: np.ndarray  # int64 (n,)
    label_0: np.ndarray  # float32 (n,): 1 image_0 preferred, 0 image_1, 0.5 tie
    prompt_id: np.ndarray  # object (n,)


@dataclass
class AuxExamples:
    image: np.ndarray  # int64 (n,) images labelled good
    prompt: np.ndarray  # int64 (n,) index into RewardData.prompts of the image's own prompt
    pool: np.ndarray  # int64 (n, P) perturbed prompts (indices into RewardData.prompts), -1 = none


@dataclass
class Split:
    prompt_ids: list[str]
    images: np.ndarray  # int64: every image of this split that has a label
    binary: BinaryExamples
    pairs: PairExamples
    aux: AuxExamples


SIDES = ("train", "select", "val_images", "val_prompts")  # a pair goes to the later of its images' sides
VIEWS = ("val_images", "val_prompts")  # the validation views reported in metrics.json


@dataclass
class RewardData:
    root: Path
    images: pd.DataFrame  # generations rows of the labelled images; row i is image i
    image_prompt: np.ndarray  # int64 (n_images,) index into prompts
    prompts: list[str]  # every text to embed: the images' prompts, then their perturbations
    train: Split
    val_images: Split  # unseen images of trained prompts
    val_prompts: Split  # images of prompts never trained on (may be empty: data.val_split=none)
    split: str  # how val_prompts were chosen: "shapes_heldout", "hash" or "none"
    summary: dict = field(default_factory=dict)
    select: Split | None = None  # trained prompts' images held out of fitting to choose the epoch


# ---------------------------------------------------------------------------------------------
# Perturbed prompts for the auxiliary loss


def shapes_perturbations(text: str) -> list[str] | None:
    """Every prompt one specified attribute away from a shapes-world prompt (None if ``text`` is
    not one)."""
    try:
        p = Prompt.parse(text)
    except UserError:
        return None
    return sorted(q.text for _, q in one_attribute_swaps(p))


_WORD = re.compile(r"^(\W*)(\w+)(\W*)$")


def word_swap_perturbations(text: str, groups: tuple[tuple[str, ...], ...]) -> list[str]:
    """Every prompt with one word swapped for another of its group (case-insensitive whole words,
    punctuation kept)."""
    index = {w.lower(): g for g in groups for w in g}
    words = text.split(" ")
    out = set()
    for i, w in enumerate(words):
        m = _WORD.match(w)
        if not m or m[2].lower() not in index:
            continue
        for alt in index[m[2].lower()]:
            if alt.lower() != m[2].lower():
                out.add(" ".join(words[:i] + [m[1] + alt + m[3]] + words[i + 1:]))
    out.discard(text)
    return sorted(out)


def perturbations_of(text: str, loss: LossConfig) -> list[str]:
    if loss.perturbation in ("auto", "shapes"):
        pool = shapes_perturbations(text)
        if pool is not None:
            return pool
        if loss.perturbation == "shapes":
            raise UserError(f"prompt '{text}' is not a shapes-world prompt, so it has no shapes "
                            "perturbations.", "set loss.perturbation=auto or word_swap.")
    return word_swap_perturbations(text, loss.word_swaps)


# ---------------------------------------------------------------------------------------------
# Splitting by prompt


def is_shapes_heldout(text: str) -> bool | None:
    try:
        return Prompt.parse(text).is_heldout
    except UserError:
        return None


def _hash_unit(seed: int, key: str) -> float:
    return int.from_bytes(hashlib.sha256(f"{seed}:{key}".encode()).digest()[:8], "big") / 2.0**64


def split_prompts(prompt_text: dict[str, str], cfg: DataConfig) -> tuple[set[str], str]:
    """The validation prompt ids and the split used.  ``prompt_text``: prompt_id -> prompt."""
    ids = sorted(prompt_text)
    if cfg.val_split == "none":
        return set(), "none"
    if len(ids) < 2:
        raise DataError(f"the labels cover {len(ids)} prompt(s); a split by prompt needs at least 2.",
                        "label images of more prompts, or set data.val_split=none.")
    kind = cfg.val_split
    heldout = {i: is_shapes_heldout(prompt_text[i]) for i in ids}
    if kind in ("auto", "shapes_heldout"):
        n_val = sum(bool(h) for h in heldout.values())
        n_train = sum(h is False for h in heldout.values())
        shapes_ok = all(h is not None for h in heldout.values()) and n_train > 0
        if shapes_ok and n_val >= (cfg.min_val_prompts if kind == "auto" else 1):
            return {i for i in ids if heldout[i]}, "shapes_heldout"
        if kind == "shapes_heldout":
            raise DataError(
                f"data.val_split=shapes_heldout needs labelled shapes-world prompts of both sets; "
                f"found {n_val} held-out and {n_train} train prompts"
                + ("" if all(h is not None for h in heldout.values()) else " (some prompts are not "
                   "shapes-world prompts)") + ".",
                "label images of held-out prompts, or set data.val_split=hash.")
    # A hash of (seed, prompt_id) decides, so a prompt stays on its side as the dataset grows.
    u = {i: _hash_unit(cfg.split_seed, i) for i in ids}
    val = {i for i in ids if u[i] < cfg.val_fraction}
    if not val:
        val = {min(ids, key=u.get)}
    if len(val) == len(ids):
        val.discard(max(ids, key=u.get))
    return val, "hash"


# ---------------------------------------------------------------------------------------------
# Reading and checking the tables


def load_reward_data(store: Store, data_cfg: DataConfig, loss_cfg: LossConfig) -> RewardData:
    """Read, check, aggregate and split the labels of ``store``; raise one clear error if they
    are empty, malformed or do not match the generations table."""
    gens = store.to_pandas(GENERATIONS)
    binary = current(store, BINARY_LABELS.name).to_pandas()
    rankings_tbl = current(store, RANKINGS.name)
    if gens.empty:
        raise UserError(f"no generated images in {store.root} (the generations table is empty).",
                        f"{MAKE_LABELS}, or set data.root to a dataset root that has them.")
    binary, rankings_tbl, rounds = _keep_rounds(store, data_cfg.rounds, binary, rankings_tbl, gens)
    if binary.empty and rankings_tbl.num_rows == 0:
        raise UserError(f"no labels in {store.root}{_rounds_note(rounds)}: binary_labels and rankings are empty.",
                        f"{MAKE_LABELS}, then run make reward again.")
    gens = gens.set_index("image_id", drop=False)

    # -- labels must point at images of the generations table, under the same prompt
    check_label_images(store.root, gens, binary, rankings_tbl.to_pandas() if rankings_tbl.num_rows else None)
    pairs = rankings_to_pairs(rankings_tbl).to_pandas() if rankings_tbl.num_rows else None

    agg = aggregate_binary(binary, data_cfg.binary_aggregation)
    use_binary = loss_cfg.binary != "none" or loss_cfg.aux_weight > 0
    use_pairs = loss_cfg.ranking != "none"
    n_pairs = 0 if pairs is None else len(pairs)
    if (not use_binary or agg.empty) and (not use_pairs or n_pairs == 0):
        n_skip = int((binary["label"] == "skip").sum()) if not binary.empty else 0
        raise UserError(
            f"nothing to train on in {store.root}: {len(binary)} binary labels ({n_skip} skips, "
            f"{len(agg)} images with a decided label), {rankings_tbl.num_rows} rankings, "
            f"losses binary={loss_cfg.binary} ranking={loss_cfg.ranking}.",
            f"{MAKE_LABELS}, or turn on the loss that matches the labels you have.")

    # -- the labelled images, their prompts and the split
    labelled = set(agg["image_id"]) | (set(pairs["image_0"]) | set(pairs["image_1"])
                                       if pairs is not None else set())
    # Ordered by what generated them (prompt, model, seed), not by the random image id, so the same
    # round trains the same way every time.
    images = (gens.loc[sorted(labelled)].reset_index(drop=True)
              .sort_values(["prompt_id", "model_id", "seed", "image_id"], kind="stable").reset_index(drop=True))
    index = {iid: i for i, iid in enumerate(images["image_id"])}
    prompt_text = dict(zip(images["prompt_id"], images["prompt"]))
    val_ids, split_kind = split_prompts(prompt_text, data_cfg)

    prompts = sorted(set(images["prompt"]))
    # Perturbations of every prompt: the auxiliary loss on train prompts, and the perturbed-prompt
    # accuracy metric on validation prompts.
    perturbed = {t: perturbations_of(t, loss_cfg) for t in prompts}
    extra = sorted({q for qs in perturbed.values() for q in qs} - set(prompts))
    all_prompts = prompts + extra
    pindex = {t: i for i, t in enumerate(all_prompts)}
    image_pid = images["prompt_id"].to_numpy()
    image_prompt = np.array([pindex[t] for t in images["prompt"]], dtype=np.int64)
    side = image_sides(images["image_id"].to_numpy(), image_pid, val_ids, data_cfg)
    rank = {name: r for r, name in enumerate(SIDES)}
    side_rank = np.array([rank[x] for x in side], dtype=np.int64)
    # a pair's side: the later of its two images' sides
    pair_rank = None
    if pairs is not None:
        pair_rank = np.maximum(side_rank[[index[i] for i in pairs["image_0"]]],
                               side_rank[[index[i] for i in pairs["image_1"]]])

    def make_split(name: str) -> Split:
        keep_img = side == name
        b = agg[[keep_img[index[i]] for i in agg["image_id"]]] if len(agg) else agg
        bimg = np.array([index[i] for i in b["image_id"]], dtype=np.int64)
        binary_ex = BinaryExamples(bimg, b["target"].to_numpy(np.float32) if len(b) else np.zeros(0, np.float32),
                                   (b["good"] + b["bad"]).to_numpy(np.int64) if len(b) else np.zeros(0, np.int64),
                                   image_pid[bimg])
        if pairs is not None:
            pr = pairs[pair_rank == rank[name]]
            p0 = np.array([index[i] for i in pr["image_0"]], dtype=np.int64)
            p1 = np.array([index[i] for i in pr["image_1"]], dtype=np.int64)
            pair_ex = PairExamples(p0, p1, pr["label_0"].to_numpy(np.float32), pr["prompt_id"].to_numpy())
        else:
            z = np.zeros(0, np.int64)
            pair_ex = PairExamples(z, z, np.zeros(0, np.float32), np.zeros(0, object))
        good = bimg[binary_ex.target > 0.5]
        pools = [[pindex[q] for q in perturbed[images["prompt"].iloc[i]]] for i in good]
        width = max((len(p) for p in pools), default=0)
        pool = np.full((len(good), width), -1, dtype=np.int64)
        for r, p in enumerate(pools):
            pool[r, :len(p)] = p
        has_pool = (pool >= 0).any(1) if width else np.zeros(len(good), bool)
        aux = AuxExamples(good[has_pool], image_prompt[good[has_pool]], pool[has_pool])
        return Split(sorted({image_pid[i] for i in np.flatnonzero(keep_img)}),
                     np.flatnonzero(keep_img).astype(np.int64), binary_ex, pair_ex, aux)

    train, val_images, val_prompts = make_split("train"), make_split("val_images"), make_split("val_prompts")
    select = make_split("select") if (side == "select").any() else None
    if not len(train.images):
        raise DataError(f"no labelled image is left to train on in {store.root}: {len(images)} images, "
                        f"{len(val_ids)} of {len(prompt_text)} prompts held out ({split_kind}).",
                        "label more images, or lower data.val_image_fraction / data.select_fraction.")
    summary = dict(
        images=len(images), prompts=len(prompt_text), train_prompts=len(train.prompt_ids),
        val_prompts=len(val_prompts.prompt_ids), binary_labels=int(len(binary)),
        binary_skips=int((binary["label"] == "skip").sum()) if len(binary) else 0,
        binary_images=int(len(agg)), rankings=int(rankings_tbl.num_rows), pairs=int(n_pairs),
        train_images=len(train.images), train_binary=len(train.binary.image),
        train_pairs=len(train.pairs.image_0), train_aux=len(train.aux.image),
        select_images=0 if select is None else len(select.images),
        val_images=len(val_images.images), val_images_binary=len(val_images.binary.image),
        val_images_pairs=len(val_images.pairs.image_0),
        val_prompts_images=len(val_prompts.images), val_prompts_binary=len(val_prompts.binary.image),
        val_prompts_pairs=len(val_prompts.pairs.image_0), split=split_kind,
        aggregation=data_cfg.binary_aggregation,
        # the rounds whose images it learns from (make reward-check refuses to judge it on them)
        labelled_rounds=sorted({int(r) for r in images["round"]}),
    )
    if rounds is not None:  # only when a spec narrowed the rounds: a default summary stays as it was
        summary["rounds"] = rounds
    return RewardData(Path(store.root), images, image_prompt, all_prompts, train, val_images, val_prompts,
                      split_kind, summary, select)


def _keep_rounds(store: Store, spec: str, binary: pd.DataFrame, rankings, gens: pd.DataFrame):
    """The binary labels (pandas) and rankings (arrow) of the rounds ``spec`` names, and those
    rounds; with every round named, the tables untouched and None (so the default reads exactly
    what it read before rounds existed).  ``gens``: the root's generations table."""
    available = rounds_in(store, gens)
    rounds = resolve_rounds(spec, available)
    if rounds == available:
        return binary, rankings, None
    binary = filter_rounds(store, BINARY_LABELS.name, binary, rounds, gens).reset_index(drop=True)
    if rankings.num_rows:  # a ranking's round is its first image's (data.rounds.filter_rounds)
        kept = filter_rounds(store, RANKINGS.name, rankings.to_pandas(), rounds, gens)
        rankings = rankings.take(kept.index.to_numpy())
    return binary, rankings, rounds


def _rounds_note(rounds: list[int] | None) -> str:
    return "" if rounds is None else f" (rounds {rounds})"


def image_sides(image_ids: np.ndarray, prompt_ids: np.ndarray, val_prompt_ids: set[str],
                cfg: DataConfig) -> np.ndarray:
    """Each labelled image's side (one of :data:`SIDES`), (n,) object array.

    Images of validation prompts are ``val_prompts``.  Within every other prompt, its images
    ordered by a seeded hash of their (content-addressed) ids: the first round(val_image_fraction
    * n) are ``val_images``, the next round(select_fraction * n) ``select``, the rest ``train``;
    a prompt with 2 or more images always keeps one to train on."""
    out = np.full(len(image_ids), "train", dtype=object)
    by_prompt: dict[str, list[int]] = {}
    for i, pid in enumerate(prompt_ids):
        by_prompt.setdefault(pid, []).append(i)
    for pid, members in by_prompt.items():
        if pid in val_prompt_ids:
            out[members] = "val_prompts"
            continue
        order = sorted(members, key=lambda i: _hash_unit(cfg.split_seed + 2, str(image_ids[i])))
        n = len(order)
        k_val = int(np.floor(cfg.val_image_fraction * n + 0.5))
        k_sel = int(np.floor(cfg.select_fraction * n + 0.5))
        if n >= 2 and k_val + k_sel >= n:  # keep one image to train on
            k_sel = max(0, n - 1 - k_val)
            k_val = min(k_val, n - 1)
        out[order[:k_val]] = "val_images"
        out[order[k_val:k_val + k_sel]] = "select"
    return out
