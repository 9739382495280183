"""The shapes world's vocabulary, prompt grammar and deterministic prompt sets.

Prompts read like "three red circles on a white background".  Every prompt names a count and a
shape; colour and background are optional.  The categories follow Lee et al. 2023 (colour, count,
background, combination):

=============  ==========================================  ==================================
category       what the prompt specifies                   example
=============  ==========================================  ==================================
count          a count and a shape                         "three squares"
color          one object, its colour                      "one red circle"
background     one object, the background                  "one square on a gray background"
combination    anything more                               "two blue circles on a white background"
=============  ==========================================  ==================================

Unspecified attributes are free: the renderer picks them at random (per object for colour).

Sizing (see ../shared/shapes-world-measurements.md): images are 64x64 by default and objects span
20-30 % of the side (13-19 px), because 5-10 px shapes were too small to draw or judge reliably.
Two shapes (circle, square) keep the world learnable by a tiny model trained on a CPU; four colours
and three backgrounds give the colour and background categories room.

The *held-out* set holds every prompt with a colour/background pair or a count/colour pair listed
in HELDOUT_COLOR_BACKGROUND / HELDOUT_COUNT_COLOR; no train prompt contains those pairs, so held-out
alignment measures composition, not memorisation.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass
from typing import Literal

import numpy as np

from core.errors import UserError
from data.generations import PromptSpec

COUNT_WORDS: tuple[str, ...] = ("one", "two", "three", "four")
COUNTS: tuple[int, ...] = (1, 2, 3, 4)

# RGB, 0-255.  Chosen pairwise far apart (min distance to any background or other colour > 120),
# so a blurred or noisy pixel still snaps to the right one.
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (235, 205, 30),
}
SHAPES: tuple[str, ...] = ("circle", "square")
BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "black": (0, 0, 0),
    "gray": (128, 128, 128),
    "white": (255, 255, 255),
}

Category = Literal["color", "count", "background", "combination"]
CATEGORIES: tuple[str, ...] = ("color", "count", "background", "combination")
Attribute = Literal["count", "color", "shape", "background"]
ATTRIBUTES: tuple[str, ...] = ("count", "color", "shape", "background")

HELDOUT_COLOR_BACKGROUND: frozenset[tuple[str, str]] = frozenset(
    {("red", "white"), ("green", "black"), ("blue", "gray"), ("yellow", "black")}
)
HELDOUT_COUNT_COLOR: frozenset[tuple[int, str]] = frozenset({(3, "blue"), (4, "yellow"), (2, "green")})

Split = Literal["train", "heldout", "all"]

ATTRIBUTE_VALUES: dict[str, tuple] = {
    "count": COUNTS, "shape": SHAPES, "color": tuple(COLORS), "background": tuple(BACKGROUNDS),
}

_PROMPT_RE = re.compile(
    r"^(?P<count>one|two|three|four) (?:(?P<color>[a-z]+) )?(?P<shape>[a-z]+?)s?"
    r"(?: on a (?P<background>[a-z]+) background)?$"
)


@dataclass(frozen=True, order=True)
class Prompt:
    """One prompt of the grammar.  ``color`` / ``background`` are None where unspecified."""

    count: int
    shape: str
    color: str | None = None
    background: str | None = None

    def __post_init__(self):
        if self.count not in COUNTS:
            raise UserError(f"count {self.count} is not in the shapes world.", f"use one of {COUNTS}.")
        if self.shape not in SHAPES:
            raise UserError(f"shape '{self.shape}' is not in the shapes world.", f"use one of {SHAPES}.")
        if self.color is not None and self.color not in COLORS:
            raise UserError(f"colour '{self.color}' is not in the shapes world.",
                            f"use one of {tuple(COLORS)}.")
        if self.background is not None and self.background not in BACKGROUNDS:
            raise UserError(f"background '{self.background}' is not in the shapes world.",
                            f"use one of {tuple(BACKGROUNDS)}.")

    @property
    def text(self) -> str:
        words = [COUNT_WORDS[self.count - 1]]
        if self.color:
            words.append(self.color)
        words.append(self.shape + ("s" if self.count > 1 else ""))
        if self.background:
            words.append(f"on a {self.background} background")
        return " ".join(words)

    @property
    def prompt_id(self) -> str:
        return f"{self.count}-{self.color or 'any'}-{self.shape}-{self.background or 'any'}"

    @property
    def category(self) -> Category:
        if self.color is None and self.background is None:
            return "count"
        if self.count == 1 and self.background is None:
            return "color"
        if self.count == 1 and self.color is None:
            return "background"
        return "combination"

    @property
    def specified(self) -> tuple[str, ...]:
        """The attributes this prompt constrains (count and shape always)."""
        return tuple(a for a in ATTRIBUTES if getattr(self, a) is not None)

    @property
    def is_heldout(self) -> bool:
        return ((self.color, self.background) in HELDOUT_COLOR_BACKGROUND
                or (self.count, self.color) in HELDOUT_COUNT_COLOR)

    @classmethod
    def parse(cls, text: str) -> "Prompt":
        m = _PROMPT_RE.match(text.strip().lower())
        if m is None:
            raise UserError(f"'{text}' is not a shapes-world prompt.",
                            "write e.g. 'three red circles on a white background'.")
        count = COUNT_WORDS.index(m["count"]) + 1
        plural = text.strip().lower().split(" on a ")[0].endswith("s")
        if plural != (count > 1):
            raise UserError(f"'{text}': number and noun disagree.", "write 'one circle', 'two circles'.")
        return cls(count=count, shape=m["shape"], color=m["color"], background=m["background"])

    def replace(self, **changes) -> "Prompt":
        fields = dict(count=self.count, shape=self.shape, color=self.color, background=self.background)
        fields.update(changes)
        return Prompt(**fields)


def all_prompts() -> list[Prompt]:
    """Every prompt of the grammar, in a fixed order."""
    out = []
    for count, shape, color, bg in itertools.product(
        COUNTS, SHAPES, (None, *COLORS), (None, *BACKGROUNDS)
    ):
        out.append(Prompt(count=count, shape=shape, color=color, background=bg))
    return sorted(out, key=lambda p: p.prompt_id)


def prompt_set(split: Split) -> list[Prompt]:
    """The deterministic train / held-out prompt sets (disjoint; together all prompts)."""
    if split not in ("train", "heldout", "all"):
        raise UserError(f"unknown prompt split '{split}'.", "use 'train', 'heldout' or 'all'.")
    prompts = all_prompts()
    if split == "all":
        return prompts
    return [p for p in prompts if p.is_heldout == (split == "heldout")]


def perturb(prompt: Prompt, attribute: Attribute, rng: np.random.Generator) -> Prompt:
    """A prompt that differs from ``prompt`` in exactly ``attribute`` (Lee et al.'s perturbed
    prompts).  Only specified attributes can be swapped; asking for another raises ValueError."""
    if attribute not in prompt.specified:
        raise ValueError(f"{prompt.text!r} does not specify {attribute}")
    choices = ATTRIBUTE_VALUES[attribute]
    current = getattr(prompt, attribute)
    new = [c for c in choices if c != current][int(rng.integers(len(choices) - 1))]
    return prompt.replace(**{attribute: new})


def one_attribute_swaps(prompt: Prompt) -> list[tuple[str, Prompt]]:
    """Every (attribute, prompt) pair one specified attribute away from ``prompt``, in attribute
    order then value order: Lee et al.'s perturbed prompts, all of them."""
    return [(a, prompt.replace(**{a: v})) for a in prompt.specified for v in ATTRIBUTE_VALUES[a]
            if v != getattr(prompt, a)]


def perturbations(prompt: Prompt, n: int, rng: np.random.Generator) -> list[Prompt]:
    """``n`` distinct prompts, each one specified attribute away from ``prompt``."""
    pool = sorted(q for _, q in one_attribute_swaps(prompt))
    if n > len(pool):
        raise ValueError(f"{prompt.text!r} has only {len(pool)} one-attribute perturbations")
    return [pool[i] for i in rng.choice(len(pool), size=n, replace=False)]


def prompt_spec(text: str) -> PromptSpec | None:
    """The generations-table spec of a shapes-world prompt (its own id and category), or None for
    any other text: pass it as ``known`` to :func:`data.generations.prompt_spec`."""
    try:
        p = Prompt.parse(text)
    except UserError:
        return None
    return PromptSpec(p.text, p.prompt_id, p.category)
