"""The reward stage's config: one frozen dataclass, nested data / model / loss / train.

Load it with ``core.config.load_config(RewardConfig, yaml_path, ["train.lr=3e-4"])``; the
resolved config is saved as ``config.yaml`` in the output folder beside the model.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Literal

from core.config import Bounds, NonNegativeFloat, NonNegativeInt, PositiveFloat, PositiveInt, Share
from core.errors import UserError
from shapes import SHAPES_CLIP

Feature = Literal["image", "text", "product", "cosine"]

# Groups of interchangeable words for the auxiliary loss on prompts outside the shapes world: a
# perturbed prompt swaps one word for another of its group (Lee et al. swap colour, count and
# background).  Matching is case-insensitive on whole words.
DEFAULT_WORD_SWAPS: tuple[tuple[str, ...], ...] = (
    ("red", "green", "blue", "yellow", "orange", "purple", "pink", "brown", "black", "white",
     "gray"),
    ("one", "two", "three", "four", "five"),
    ("circle", "square", "triangle"),
    ("circles", "squares", "triangles"),
    ("cat", "dog", "bird", "horse"),
    ("cats", "dogs", "birds", "horses"),
)


@dataclass(frozen=True)
class DataConfig:
    root: str = "datasets/shapes"
    """Dataset root holding the generations, binary_labels, rankings and retractions tables."""
    rounds: str = "all"
    """Which rounds of the closed loop to train on (data.rounds grammar): all, last:N (the N newest
    rounds), or a comma list such as 0,2.  A label belongs to its image's round; a named round with
    no images is one clear error."""
    binary_aggregation: Literal["majority", "mean"] = "majority"
    """How the binary labels of one image from several raters become one target (skips dropped):
    majority = 1 if more raters said good than bad, 0 if fewer, image dropped on a tie;
    mean = the share of raters who said good (a soft target in [0, 1])."""
    val_split: Literal["auto", "shapes_heldout", "hash", "none"] = "auto"
    """Prompts never trained on: the ``val_prompts`` view (how the reward generalises).
    shapes_heldout = the shapes world's held-out prompts (compositions no train prompt has); hash =
    a seeded share val_fraction of the prompts; auto = shapes_heldout when at least
    min_val_prompts labelled held-out prompts exist and some train prompts too, else hash;
    none = every labelled prompt trains."""
    val_fraction: Share = 0.3
    val_image_fraction: Share = 0.25
    """Share of every trained prompt's labelled images held out: the ``val_images`` view, what
    fine-tuning on those prompts relies on (each image with its labels and ranking pairs)."""
    split_seed: int = 0
    select_fraction: Share = 0.15
    """Share of every trained prompt's labelled images held out of fitting to choose the best
    epoch (early stopping on their binary + ranking loss) and to calibrate; 0 trains on all and
    keeps the last epoch."""
    min_val_prompts: NonNegativeInt = 5
    oracle: Literal["auto", "none"] = "auto"
    """auto: in the shapes world, also measure against the programmatic oracle."""
    labels: Literal["raters", "oracle"] = "raters"
    """oracle (shapes world only; a diagnostic): train on the oracle's labels of the same images
    and pairs instead of the raters', to see how far label noise holds the reward back."""


@dataclass(frozen=True)
class ModelConfig:
    clip: str = str(SHAPES_CLIP)
    """A local transformers CLIPModel folder (the shapes CLIP or e.g. CLIP ViT-L/14)."""
    features: tuple[Feature, ...] = ("image", "text", "product", "cosine")
    """Head inputs from the unit-norm embeddings: image, text, their elementwise product, cosine."""
    hidden: tuple[PositiveInt, ...] = (256, 64)
    dropout: Share = 0.1
    cosine_skip: bool = False
    """Add a * standardised cosine(image, text) to the MLP's logit, a learnt from 1: the head
    starts from zero-shot CLIP's ordering and learns corrections."""
    train_last_layers: NonNegativeInt = 0
    """0 = frozen backbone (embeddings cached once).  N > 0 also trains the last N transformer
    layers of the vision and text towers, their final layer norms and projections."""
    epistemic: Literal["linear-ucb", "off"] = "linear-ucb"
    """linear-ucb: after training and calibration, the Laplace posterior of the head's last layer
    on its training rows (reward.epistemic), saved with the model: its ``spread`` is the reward's
    epistemic uncertainty, which fine-tuning with reward.optimism > 0 adds (SEIKO); off: none."""
    epistemic_lambda: PositiveFloat = 1.0
    """λ, the prior precision of each last-layer weight: 1 is a standard-normal prior on weights
    that multiply O(1) features (GELUs of standardised inputs).  It bounds the spread of a
    direction no training row spans (|a| |φ| / sqrt(λ)) and is soon outweighed elsewhere: the data
    term grows as the rows times p (1 - p), up to 0.25 each."""


@dataclass(frozen=True)
class LossConfig:
    binary: Literal["mse", "bce", "none"] = "mse"
    """mse: Lee et al.'s squared error of sigmoid(head) against the {0, 1} (or mean) target;
    bce: binary cross-entropy on the logit."""
    binary_weight: NonNegativeFloat = 1.0
    ranking: Literal["bradley_terry", "none"] = "bradley_terry"
    """-[y log s(r0 - r1) + (1 - y) log s(r1 - r0)] over every pair of every ranking; a tie is
    y = 0.5 (PickScore)."""
    ranking_weight: NonNegativeFloat = 1.0
    per_prompt_weighting: bool = True
    """Weigh binary examples and ranking pairs by 1 / (examples of their prompt), so prompts with
    many images do not dominate."""
    aux_weight: NonNegativeFloat = 0.5
    """lambda of Lee et al.'s auxiliary prompt classification; 0 turns it off."""
    aux_num_prompts: Annotated[int, Bounds(low=2)] = 4
    """N: the true prompt plus N - 1 perturbed prompts per image labelled good."""
    aux_temperature: PositiveFloat = 1.0
    """T in softmax(r(x, z_i) / T); r is the head's logit."""
    perturbation: Literal["auto", "shapes", "word_swap"] = "auto"
    """shapes: swap one specified attribute of a shapes-world prompt (colour, count, shape,
    background); word_swap: swap one word for another of its group in word_swaps; auto: shapes
    for prompts of the shapes grammar, word_swap for the rest."""
    word_swaps: tuple[tuple[str, ...], ...] = DEFAULT_WORD_SWAPS


@dataclass(frozen=True)
class TrainConfig:
    epochs: PositiveInt = 30
    """Passes over the larger of the binary examples and the ranking pairs (the best epoch on
    the selection images is kept, see data.select_fraction)."""
    batch_size: PositiveInt = 256
    lr: PositiveFloat = 1e-3
    backbone_lr: NonNegativeFloat = 1e-5
    weight_decay: NonNegativeFloat = 1e-2
    seed: int = 0
    embed_batch_size: PositiveInt = 128
    baselines: bool = True
    """Also evaluate zero-shot CLIP (cosine) and an untrained head on the validation split."""
    ablate_aux: bool = True
    """Also train heads with and without the auxiliary loss (frozen embeddings, ablation_seeds
    seeds each) and report both on the validation prompts."""
    ablation_seeds: PositiveInt = 3
    num_threads: NonNegativeInt = 0
    """torch CPU threads; 0 keeps torch's default."""


@dataclass(frozen=True)
class RegionConfig:
    head: Literal["auto", "on", "off"] = "auto"
    """The region head (where an image is wrong, from the raters' marks; docs/reward.md): auto =
    trained when the dataset root's marks table has rows; on = always (no marks is an error); off."""
    hidden: PositiveInt = 128
    """Channels of the head's projected patch tokens and its convolutions."""
    epochs: PositiveInt = 60
    """Passes over the training images (the best epoch on the selection images is kept)."""
    batch_size: PositiveInt = 64
    lr: PositiveFloat = 1e-3
    eval_size: PositiveInt = 128
    """Metrics compare heatmaps at the image size, shrunk to at most this many pixels a side."""


@dataclass(frozen=True)
class RewardConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    region: RegionConfig = field(default_factory=RegionConfig)
    out_dir: str = "runs/reward"
    overwrite: bool = False
    """An existing model in out_dir is kept unless this is true (then replaced only once the new
    one is complete)."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    progress: bool = True

    def __post_init__(self):  # bad values fail when the config loads (numbers: their declared Bounds)
        if not self.model.features:
            raise UserError("model.features is empty.", "use some of image, text, product, cosine.")
