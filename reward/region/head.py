"""The region head: where an image is wrong, from the CLIP vision tower's patch tokens (Rich Human
Feedback, Liang et al. 2024: a heatmap head on ViT patch tokens trained with MSE on the raters'
averaged click heatmaps).

It sits beside the scalar reward head on the same CLIP: the vision tower's last-layer patch tokens
(through its final layer norm; the shapes CLIP's 8x8 grid, ViT-L/14's 16x16), conditioned on the
unit-norm CLIP text embedding of the prompt twice: each patch mapped into CLIP's joint space
(starting as the visual projection) times the text embedding, and FiLM (a per-channel scale and
shift); plus the mean of the projected tokens (global context: an object is extra only given the
others); then a 3x3 and a
1x1 convolution to one value per patch: the averaged rater heatmap on the patch grid, fitted with
MSE directly on that value (a sigmoid before the MSE stalled: the targets are mostly 0 and small,
where its gradient vanishes) and clamped to [0, 1] when predicting.

The grid covers what CLIP sees of the image: the centre crop of its preprocessing (all of a square
image).  :func:`to_image_size` maps a grid back onto the image, bilinear, zero outside the crop.

Saved in the reward model folder as ``region_head.safetensors`` with its :class:`RegionSpec` under
``"region"`` in ``reward_config.json``; a folder without them loads with no region head.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from core.errors import UserError
from reward.preprocess import ClipPreprocess, to_pixel_batches

REGION_FILE = "region_head.safetensors"


@dataclass(frozen=True)
class RegionSpec:
    token_dim: int  # width of the vision tower's hidden states
    text_dim: int  # CLIP projection_dim (the text embedding)
    grid: tuple[int, int]  # (rows, columns) of patches
    hidden: int = 128


class RegionHead(nn.Module):
    """(B, N, token_dim) patch tokens + (B, text_dim) text embeddings -> (B, rows, cols) heatmap
    values (unclamped: :func:`region_grid` clamps them to [0, 1])."""

    def __init__(self, spec: RegionSpec, threshold: float = 0.5):
        super().__init__()
        self.spec = spec
        # The heatmap value above which a pixel is a problem, chosen when the head trained
        # (reward.region.fit.calibrate_threshold): an MSE fit to averaged rater disks predicts
        # small values, so a fixed 1/2 would mark nothing.
        self.threshold = threshold
        d = spec.hidden
        self.tok = nn.Sequential(nn.LayerNorm(spec.token_dim), nn.Linear(spec.token_dim, d))
        # Each patch in CLIP's joint space (initialised from the visual projection by
        # build_region_head) times the text embedding: how the patch matches each prompt direction.
        self.joint = nn.Linear(spec.token_dim, spec.text_dim, bias=False)
        self.match = nn.Linear(spec.text_dim, d)
        self.glob = nn.Linear(d, d)
        self.film = nn.Linear(spec.text_dim, 2 * d)
        self.body = nn.Sequential(nn.GELU(), nn.Conv2d(d, d, 3, padding=1), nn.GELU(), nn.Conv2d(d, 1, 1))
        nn.init.zeros_(self.film.weight)  # starts unconditioned: scale 1, shift 0
        nn.init.zeros_(self.film.bias)

    def forward(self, tokens: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        b, n, _ = tokens.shape
        rows, cols = self.spec.grid
        if n != rows * cols:
            raise UserError(f"the region head expects {rows}x{cols} patch tokens, got {n}.",
                            "use the CLIP (and image size) it was trained with.")
        tokens, text = tokens.float(), text.float()
        joint = F.normalize(self.joint(tokens), dim=-1) * text[:, None]  # (B, N, text_dim)
        h = self.tok(tokens) + self.match(joint * joint.shape[-1] ** 0.5)
        h = h + self.glob(h.mean(1, keepdim=True))
        scale, shift = self.film(text).chunk(2, dim=-1)
        h = h * (1 + scale[:, None]) + shift[:, None]
        return self.body(h.transpose(1, 2).reshape(b, -1, rows, cols))[:, 0]


def patch_grid(clip_model, preprocess: ClipPreprocess) -> tuple[int, int]:
    """The (rows, cols) patch grid of the vision tower on the preprocessed input."""
    vc = clip_model.config.vision_config
    hw = preprocess.output_hw or (vc.image_size, vc.image_size)
    return hw[0] // vc.patch_size, hw[1] // vc.patch_size


def patch_tokens(model, pixels: torch.Tensor) -> torch.Tensor:
    """float (B, 3, H, W) in [0, 1] -> the vision tower's last-layer patch tokens through its final
    layer norm, (B, rows * cols, token_dim) float32 (the class token dropped).  Keeps the graph."""
    dtype = next(model.clip.parameters()).dtype
    x = model.preprocess(pixels.to(model.device, dtype))
    vision = model.clip.vision_model
    hidden = vision(pixel_values=x).last_hidden_state[:, 1:, :]
    return vision.post_layernorm(hidden).float()


def build_region_head(model, hidden: int, seed: int) -> RegionHead:
    """A fresh region head for ``model`` (a :class:`reward.model.RewardModel`), seeded."""
    spec = RegionSpec(token_dim=int(model.clip.config.vision_config.hidden_size),
                      text_dim=int(model.clip.config.projection_dim),
                      grid=patch_grid(model.clip, model.preprocess), hidden=int(hidden))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        head = RegionHead(spec)
    with torch.no_grad():
        head.joint.weight.copy_(model.clip.visual_projection.weight)
    return head.to(model.device)


def crop_box(preprocess: ClipPreprocess, h: int, w: int) -> tuple[int, int, int, int]:
    """The pixels (top, bottom, left, right) of an (h, w) image that CLIP's centre crop keeps."""
    if preprocess.shortest_edge is not None:
        s = preprocess.shortest_edge / min(h, w)
        rh, rw = h * s, w * s
    elif preprocess.resize_hw is not None:
        rh, rw = preprocess.resize_hw
    else:
        rh, rw = h, w
    ch, cw = preprocess.crop_hw or (rh, rw)
    fh, fw = min(1.0, ch / rh), min(1.0, cw / rw)  # kept share of each side
    top, left = round(h * (1 - fh) / 2), round(w * (1 - fw) / 2)
    return top, top + round(h * fh), left, left + round(w * fw)


def to_grid(maps: torch.Tensor, box: tuple[int, int, int, int], grid: tuple[int, int]) -> torch.Tensor:
    """(B, H, W) image-size maps -> (B, rows, cols): the crop ``box`` averaged over each patch."""
    t, b, l, r = box
    return F.adaptive_avg_pool2d(maps[:, None, t:b, l:r].float(), grid)[:, 0]


def to_image_size(grid_maps: torch.Tensor, size: tuple[int, int], box: tuple[int, int, int, int]) -> torch.Tensor:
    """(B, rows, cols) -> (B, H, W) = ``size``: bilinear over the crop ``box``, zero outside."""
    t, b, l, r = box
    out = grid_maps.new_zeros((grid_maps.shape[0], *size))
    out[:, t:b, l:r] = F.interpolate(grid_maps[:, None].float(), size=(b - t, r - l), mode="bilinear",
                                     align_corners=False)[:, 0]
    return out


def region_grid(model, pixels: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
    """Predicted heatmaps on the patch grid, (B, rows, cols) in [0, 1], differentiable."""
    return model.region_head(patch_tokens(model, pixels), text).clamp(0.0, 1.0)


def save_region_head(head: RegionHead, directory: Path) -> dict:
    """Write the head's weights; returns the ``"region"`` entry of ``reward_config.json``."""
    from safetensors.torch import save_file

    save_file({k: v.detach().cpu().contiguous() for k, v in head.state_dict().items()}, directory / REGION_FILE)
    return dict(file=REGION_FILE, spec=asdict(head.spec), threshold=head.threshold,
                output="the averaged rater heatmap per patch, clamped to [0, 1]")


def load_region_head(directory: str | os.PathLike, entry: dict | None, device) -> RegionHead | None:
    """The region head a reward model folder carries (None when ``entry`` is None: a folder
    saved without one)."""
    if entry is None:
        return None
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(directory) / entry.get("file", REGION_FILE)
    spec = RegionSpec(**{k: tuple(v) if isinstance(v, list) else v for k, v in entry["spec"].items()})
    head = RegionHead(spec, float(entry.get("threshold", 0.5)))
    try:
        head.load_state_dict(load_file(path))
    except (OSError, SafetensorError, RuntimeError) as e:
        raise UserError(f"could not load the region head {path}: {e}", "retrain or restore the folder.") from None
    return head.to(device).eval().requires_grad_(False)


def predict_heatmap(model, images, prompts: list[str]) -> torch.Tensor:
    """:meth:`reward.model.RewardModel.heatmap`: (B, H, W) float32 in [0, 1] at image size."""
    if model.region_head is None:
        raise UserError("this reward model has no region head.",
                        "train it with marks in its dataset root (make reward with region.head=on).")
    batches = to_pixel_batches(images, model.device)
    if len({tuple(b.shape[-2:]) for b in batches}) > 1:
        raise UserError("heatmap() got images of different sizes.", "pass images of one size per call.")
    if sum(len(b) for b in batches) != len(prompts):
        raise UserError(f"got {sum(len(b) for b in batches)} images and {len(prompts)} prompts.",
                        "pass one prompt per image.")
    pixels = torch.cat(batches)
    h, w = pixels.shape[-2:]
    out = []
    for s in range(0, len(pixels), model.score_batch_size):
        grid = region_grid(model, pixels[s:s + model.score_batch_size],
                           model.cached_text_embeddings(prompts[s:s + model.score_batch_size]))
        out.append(to_image_size(grid, (h, w), crop_box(model.preprocess, h, w)))
    return torch.cat(out).float() if out else torch.zeros((0, h, w), device=model.device)
