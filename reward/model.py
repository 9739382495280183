"""The reward model: CLIP image and text embeddings -> MLP head -> scalar reward (Lee et al. 2023).

``RewardModel.score(images, prompts)`` is what other stages call: a (B,) float32 tensor, no grad,
one CLIP pass per batch, text embeddings cached per prompt string.  The reward is
``sigmoid(head logit)``: trained with binary labels it estimates the probability that a rater
says the image matches its prompt, so it lies in [0, 1] and can weight a likelihood directly
(Lee et al.'s reward-weighted loss).  ``score(..., logits=True)`` gives the unbounded logit, the
Bradley-Terry scale on which differences of rewards are log-odds of preference.  ``spread`` is the
reward's epistemic uncertainty and ``score(..., optimism=c)`` its upper confidence bound
(:mod:`reward.epistemic`).

A saved model is a folder::

    reward_config.json   head architecture, output, the CLIP folder it was built on, model_id
    head.safetensors     head weights and the feature standardisation buffers
    region_head.safetensors  only with a region head (reward.region.head): its weights, its spec
                         under "region" in reward_config.json
    epistemic.safetensors    only with an epistemic part (reward.epistemic), "epistemic" there
    clip/                only when backbone layers were trained: the fine-tuned CLIP folder
    config.yaml          the resolved training config (written by the trainer)
    metrics.json         validation metrics (written by the trainer)
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from collections import OrderedDict
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from core.errors import UserError
from core.loading import LoadedCLIP, default_device, load_clip, model_fingerprint
from reward.epistemic import Epistemic, fit_epistemic, load_epistemic, optimistic, save_epistemic, spread
from reward.folder import CONFIG_FILE, HEAD_FILE, load_head_state, reward_clip_folder
from reward.preprocess import ClipPreprocess, prompt_list, to_pixel_batches
from reward.region.head import load_region_head, predict_heatmap, save_region_head

FORMAT_VERSION = 1
METRICS_FILE = "metrics.json"
TRAIN_CONFIG_FILE = "config.yaml"
CLIP_SUBDIR = "clip"
TEXT_CACHE_SIZE = 16384  # prompt strings kept; one embedding is projection_dim floats


@dataclass(frozen=True)
class HeadSpec:
    embed_dim: int
    features: tuple[str, ...] = ("image", "text", "product", "cosine")
    hidden: tuple[int, ...] = (256, 64)
    dropout: float = 0.1
    cosine_skip: bool = False

    @property
    def in_dim(self) -> int:
        sizes = {"image": self.embed_dim, "text": self.embed_dim, "product": self.embed_dim, "cosine": 1}
        return sum(sizes[f] for f in self.features)


class RewardHead(nn.Module):
    """MLP on features of unit-norm CLIP embeddings; returns one logit per (image, text) row.

    Features are standardised with the training set's mean/std (buffers fixed before training),
    so the head sees unit-scale inputs whatever the CLIP's embedding size: an elementwise product
    of unit vectors has entries of about 1/D otherwise.
    """

    def __init__(self, spec: HeadSpec):
        super().__init__()
        if not spec.features:
            raise UserError("model.features is empty.", "use some of image, text, product, cosine.")
        self.spec = spec
        self.register_buffer("feat_mean", torch.zeros(spec.in_dim))
        self.register_buffer("feat_std", torch.ones(spec.in_dim))
        # Platt calibration of the logit (fitted after training on held-out training prompts):
        # reward = sigmoid(calib_scale * logit + calib_bias).  Bradley-Terry sets the logit's
        # scale for ranking, which need not be the scale of a calibrated probability.
        self.register_buffer("calib_scale", torch.ones(()))
        self.register_buffer("calib_bias", torch.zeros(()))
        self.register_buffer("cos_mean", torch.zeros(()))
        self.register_buffer("cos_std", torch.ones(()))
        layers: list[nn.Module] = []
        d = spec.in_dim
        for h in spec.hidden:
            layers += [nn.Linear(d, h), nn.GELU(), nn.Dropout(spec.dropout)]
            d = h
        layers.append(nn.Linear(d, 1))
        self.mlp = nn.Sequential(*layers)
        if spec.cosine_skip:
            # logit = a * standardised cosine + MLP(features), a starting at 1 and the MLP's last
            # layer at 0: the head starts as zero-shot CLIP's ordering and learns corrections.
            self.cos_scale = nn.Parameter(torch.ones(()))
            nn.init.zeros_(self.mlp[-1].weight)
            nn.init.zeros_(self.mlp[-1].bias)

    def featurize(self, img: torch.Tensor, txt: torch.Tensor) -> torch.Tensor:
        """(B, D) unit-norm image and text embeddings -> (B, in_dim) raw features."""
        parts = []
        for f in self.spec.features:
            if f == "image":
                parts.append(img)
            elif f == "text":
                parts.append(txt)
            elif f == "product":
                parts.append(img * txt)
            elif f == "cosine":
                parts.append((img * txt).sum(-1, keepdim=True))
        return torch.cat(parts, dim=-1)

    @torch.no_grad()
    def set_feature_stats(self, img: torch.Tensor, txt: torch.Tensor) -> None:
        feats = self.featurize(img, txt)
        cos = (img * txt).sum(-1)
        self.cos_mean.copy_(cos.mean())
        self.cos_std.copy_(cos.std().clamp_min(1e-6) if len(cos) > 1 else torch.ones(()))
        self.feat_mean.copy_(feats.mean(0))
        self.feat_std.copy_(feats.std(0).clamp_min(1e-6) if len(feats) > 1 else torch.ones_like(self.feat_std))

    def probability(self, logits: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.calib_scale * logits + self.calib_bias)

    def logit_and_hidden(self, img: torch.Tensor, txt: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The logit (B,) and φ (B, H), the last hidden layer the logit is linear in (reward.epistemic)."""
        phi = self.mlp[:-1]((self.featurize(img, txt) - self.feat_mean) / self.feat_std)
        out = self.mlp[-1](phi).squeeze(-1)
        if self.spec.cosine_skip:
            cos = (img * txt).sum(-1)
            out = out + self.cos_scale * (cos - self.cos_mean) / self.cos_std
        return out, phi

    def forward(self, img: torch.Tensor, txt: torch.Tensor) -> torch.Tensor:
        return self.logit_and_hidden(img, txt)[0]


def _tensor(out) -> torch.Tensor:
    """get_*_features returns a tensor (transformers 4) or an output with pooler_output (5)."""
    return out if isinstance(out, torch.Tensor) else out.pooler_output


class RewardModel(nn.Module):
    """CLIP + reward head.  Build with :meth:`build` (training) or :meth:`from_pretrained`."""

    def __init__(self, clip: LoadedCLIP, head: RewardHead, *, model_id: str | None = None):
        super().__init__()
        self.clip = clip.model
        self.tokenizer = clip.tokenizer
        self.image_processor = clip.image_processor
        self.clip_path = Path(clip.path)
        self.head = head
        self.preprocess = ClipPreprocess.from_processor(clip.image_processor)
        self.model_id = model_id
        self.backbone_trained = False  # CLIP layers were fine-tuned: save_pretrained saves the CLIP
        self._text_trainable = False
        self.score_batch_size = 256  # images per CLIP forward inside score()
        max_len = getattr(self.tokenizer, "model_max_length", None) or 77
        self.max_text_length = int(min(max_len, self.clip.config.text_config.max_position_embeddings))
        self._text_cache: OrderedDict[str, torch.Tensor] = OrderedDict()
        self.region_head: nn.Module | None = None  # reward.region.head.RegionHead, when trained with marks
        self.epistemic: Epistemic | None = None  # the last layer's posterior (reward.epistemic), or none
        self.clip.requires_grad_(False)
        self.to(next(self.clip.parameters()).device)
        self.eval()

    # -- construction ----------------------------------------------------------------------

    @classmethod
    def build(cls, clip: LoadedCLIP, *, features=("image", "text", "product", "cosine"),
              hidden=(256, 64), dropout: float = 0.1, cosine_skip: bool = False,
              seed: int = 0) -> "RewardModel":
        """A fresh (untrained) head on ``clip``; the head's init is seeded."""
        spec = HeadSpec(embed_dim=int(clip.model.config.projection_dim), features=tuple(features),
                        hidden=tuple(int(h) for h in hidden), dropout=float(dropout),
                        cosine_skip=bool(cosine_skip))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            head = RewardHead(spec)
        return cls(clip, head)

    @property
    def device(self) -> torch.device:
        return self.head.feat_mean.device

    def train(self, mode: bool = True):
        self._text_cache.clear()  # text embeddings may change while training
        return super().train(mode)

    def unfreeze_last_layers(self, n: int) -> list[nn.Parameter]:
        """Make the last ``n`` encoder layers of both towers, their final norms and projections
        trainable; return those parameters.  ``n = 0`` leaves the backbone frozen."""
        if n <= 0:
            return []
        m = self.clip
        modules: list[nn.Module] = []
        for tower, norm, proj in ((m.vision_model, m.vision_model.post_layernorm, m.visual_projection),
                                  (m.text_model, m.text_model.final_layer_norm, m.text_projection)):
            layers = tower.encoder.layers
            if n > len(layers):
                raise UserError(f"model.train_last_layers={n} but the CLIP has {len(layers)} layers.",
                                f"set model.train_last_layers between 0 and {len(layers)}.")
            modules += list(layers[-n:]) + [norm, proj]
        params = []
        for mod in modules:
            for p in mod.parameters():
                p.requires_grad_(True)
                params.append(p)
        self.backbone_trained = True
        self._text_trainable = True
        self._text_cache.clear()
        return params

    # -- embeddings --------------------------------------------------------------------------

    def embed_pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        """float (B, 3, H, W) in [0, 1] -> unit-norm image embeddings (B, D).  Keeps the graph."""
        dtype = next(self.clip.parameters()).dtype
        x = self.preprocess(pixels.to(self.device, dtype))
        return F.normalize(_tensor(self.clip.get_image_features(pixel_values=x)).float(), dim=-1)

    def embed_images(self, images) -> torch.Tensor:
        """Any accepted image input (see :func:`reward.preprocess.to_pixel_batches`) -> (B, D)."""
        return torch.cat([self.embed_pixels(b) for b in to_pixel_batches(images, self.device)])

    def embed_texts(self, prompts: list[str]) -> torch.Tensor:
        """Prompts -> unit-norm text embeddings (B, D), computed now (keeps the graph)."""
        tok = self.tokenizer(list(prompts), padding=True, truncation=True,
                             max_length=self.max_text_length, return_tensors="pt")
        tok = {k: v.to(self.device) for k, v in tok.items() if k in ("input_ids", "attention_mask")}
        return F.normalize(_tensor(self.clip.get_text_features(**tok)).float(), dim=-1)

    @torch.no_grad()
    def cached_text_embeddings(self, prompts: list[str]) -> torch.Tensor:
        """(B, D) text embeddings, each prompt string computed once (LRU of TEXT_CACHE_SIZE).
        Only valid for a frozen text tower; the cache empties whenever train() is called."""
        missing = list(dict.fromkeys(p for p in prompts if p not in self._text_cache))
        if missing:
            emb = self.embed_texts(missing)
            for p, e in zip(missing, emb):
                self._text_cache[p] = e
        out = []
        for p in prompts:
            self._text_cache.move_to_end(p)
            out.append(self._text_cache[p])
        while len(self._text_cache) > TEXT_CACHE_SIZE:
            self._text_cache.popitem(last=False)
        return torch.stack(out)

    # -- rewards -----------------------------------------------------------------------------

    def embed_pairs(self, images, prompts: list[str] | str) -> tuple[torch.Tensor, torch.Tensor]:
        """Unit-norm embeddings (B, D) of the images and of their prompts (as :meth:`forward` takes
        them), keeping the image graph; the text from the cache unless its tower is being trained."""
        prompts = prompt_list(images, prompts)
        if not prompts:
            empty = torch.zeros(0, self.head.spec.embed_dim, device=self.device)
            return empty, empty
        # The cache holds embeddings of a frozen text tower; a tower being trained needs the graph.
        fresh = self._text_trainable and torch.is_grad_enabled()
        txt = self.embed_texts(prompts) if fresh else self.cached_text_embeddings(prompts)
        return self.embed_images(images), txt

    def forward(self, images, prompts: list[str] | str, *, logits: bool = False) -> torch.Tensor:
        """Rewards (B,) for images and their prompts, differentiable with respect to image tensors.

        ``images``: list of PIL images, uint8 array (B, H, W, 3), or float tensor (B, 3, H, W) in
        [0, 1] on any device.  ``prompts``: one string per image, or one string for all.
        """
        out = self.head(*self.embed_pairs(images, prompts))
        return out if logits else self.head.probability(out)

    @torch.no_grad()
    def score(self, images, prompts: list[str] | str, *, logits: bool = False,
              optimism: float = 0.0) -> torch.Tensor:
        """Rewards (B,) float32 on the model's device, no grad: sigmoid(logit) in [0, 1], or the
        logit with ``logits=True``.  One CLIP pass per ``score_batch_size`` images.  ``optimism``
        c > 0 (needs :attr:`epistemic`): the upper bound sigmoid(calibrated logit + c * spread), or
        with ``logits=True`` logit + c * spread / |calib_scale|; c = 0: the reward itself."""
        if optimism == 0:
            return self._batched(partial(self.forward, logits=logits), images, prompts)
        ep, c, head = self.require_epistemic(), self.check_optimism(optimism), self.head
        return self._batched(lambda im, pr: optimistic(*head.logit_and_hidden(*self.embed_pairs(im, pr)), ep,
                                                       head.calib_scale, head.calib_bias, raw=logits, optimism=c),
                             images, prompts)

    @torch.no_grad()
    def spread(self, images, prompts: list[str] | str) -> torch.Tensor:
        """The reward's epistemic standard deviation (B,) float32, in calibrated-logit units, no
        grad (:mod:`reward.epistemic`); inputs as :meth:`score`.  Needs :attr:`epistemic`."""
        cov = self.require_epistemic().covariance
        return self._batched(lambda im, pr: spread(self.head.logit_and_hidden(*self.embed_pairs(im, pr))[1], cov,
                                                   self.head.calib_scale), images, prompts)

    def require_epistemic(self) -> Epistemic:
        if self.epistemic is None:
            name = f" {self.model_id}" if self.model_id else ""
            raise UserError(f"the reward model{name} has no epistemic part (it was trained before the spread "
                            "existed, or with model.epistemic=off), so it has no spread.",
                            "retrain it with `make reward` (model.epistemic=linear-ucb, the default).")
        return self.epistemic

    def check_optimism(self, optimism: float) -> float:
        """``optimism`` c as the bonus takes it: c >= 0, with an epistemic part to be optimistic about."""
        if not optimism >= 0:  # NaN too
            raise UserError(f"optimism={optimism}: the bonus is c times the spread, c >= 0.", "pass optimism >= 0.")
        self.require_epistemic()
        return float(optimism)

    @torch.no_grad()
    def fit_epistemic(self, img: torch.Tensor, txt: torch.Tensor, lam: float) -> None:
        """Attach the head's last-layer posterior (:mod:`reward.epistemic`) from its training rows:
        ``img``, ``txt`` (N, D) the unit-norm embeddings of each trained image and its prompt."""
        was = self.head.training
        self.head.eval()  # φ without dropout, as scoring sees it
        self.epistemic = fit_epistemic(*self.head.logit_and_hidden(img, txt), lam)
        self.head.train(was)

    def _batched(self, fn, images, prompts: list[str] | str) -> torch.Tensor:
        """``fn(images, prompts) -> (b,)`` over slices of ``score_batch_size``, in eval mode, fp32."""
        was_training = self.training
        if was_training:
            self.eval()
        try:
            prompts = prompt_list(images, prompts)
            step = self.score_batch_size
            parts = [fn(images[i:i + step], prompts[i:i + step]) for i in range(0, len(prompts), step)]
            return (torch.cat(parts) if parts else torch.zeros(0, device=self.device)).float()
        finally:
            if was_training:
                self.train()

    @torch.no_grad()
    def heatmap(self, images, prompts: list[str] | str) -> torch.Tensor:
        """Where each image is wrong: the region head's heatmap at image size, float32 (B, H, W) in
        [0, 1] (images of one size; zero outside CLIP's centre crop).  Needs a region head."""
        return predict_heatmap(self, images, prompt_list(images, prompts))

    # -- saving and loading ------------------------------------------------------------------

    def save_pretrained(self, directory: str | os.PathLike, *, name: str | None = None) -> Path:
        """Write the model folder (see the module docstring).  ``name`` (default: the folder's
        name) prefixes :attr:`model_id`, which also holds a hash of the weights."""
        from safetensors.torch import save_file

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().cpu().contiguous() for k, v in self.head.state_dict().items()}
        save_file(state, directory / HEAD_FILE)
        h = hashlib.sha256((directory / HEAD_FILE).read_bytes())
        region = save_region_head(self.region_head, directory) if self.region_head is not None else None
        epistemic = save_epistemic(self.epistemic, directory) if self.epistemic is not None else None
        for part in (region, epistemic):
            if part:
                h.update((directory / part["file"]).read_bytes())
        clip_ref: dict = {}
        if self.backbone_trained:
            clip_dir = directory / CLIP_SUBDIR
            self.clip.save_pretrained(clip_dir)
            self.tokenizer.save_pretrained(clip_dir)
            self.image_processor.save_pretrained(clip_dir)
            clip_ref["clip_subdir"] = CLIP_SUBDIR
            h.update(model_fingerprint(clip_dir, config_only=True).encode())
            for f in sorted(clip_dir.glob("*.safetensors")):
                h.update(f.read_bytes())
        clip_abs = self.clip_path.resolve()
        clip_ref.update(
            clip_path=str(clip_abs),
            clip_path_relative=os.path.relpath(clip_abs, directory.resolve()),
            clip_fingerprint=model_fingerprint(self.clip_path, config_only=True) if (self.clip_path / "config.json").is_file() else None,
        )
        self.model_id = f"{name or directory.name}-{h.hexdigest()[:10]}"
        config = dict(format_version=FORMAT_VERSION, model_id=self.model_id,
                      head=asdict(self.head.spec), output="sigmoid(logit)", **clip_ref,
                      **({"region": region} if region else {}),
                      **({"epistemic": epistemic} if epistemic else {}))
        tmp = directory / f".{CONFIG_FILE}.tmp"
        tmp.write_text(json.dumps(config, indent=2))
        tmp.replace(directory / CONFIG_FILE)
        return directory

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike, device: torch.device | str | None = None,
                        *, clip_path: str | os.PathLike | None = None) -> "RewardModel":
        """Load a saved reward model, its CLIP from :func:`reward_clip_folder`."""
        directory = Path(directory)
        cfg_file = directory / CONFIG_FILE
        head_state = load_head_state(directory)  # before the CLIP loads: a bad head fails at once
        try:
            cfg = json.loads(cfg_file.read_text())
        except json.JSONDecodeError as e:
            raise UserError(f"{cfg_file} is not valid JSON ({e}).", "retrain or restore the folder.") from None
        if int(cfg.get("format_version", 0)) > FORMAT_VERSION:
            raise UserError(f"{directory} was written by a newer version (format "
                            f"{cfg['format_version']}).", "upgrade the toolkit.")
        path = reward_clip_folder(directory, cfg, clip_path, check=True)  # before the weights load
        clip = load_clip(path, device=device or default_device())
        if cfg.get("clip_fingerprint") and not cfg.get("clip_subdir") \
                and model_fingerprint(path, config_only=True) != cfg["clip_fingerprint"]:
            warnings.warn(f"the CLIP in {path} differs from the one {directory} was trained on; "
                          "rewards may be meaningless.", stacklevel=2)
        spec = HeadSpec(**{k: tuple(v) if isinstance(v, list) else v for k, v in cfg["head"].items()})
        head = RewardHead(spec)
        try:
            head.load_state_dict(head_state)
        except RuntimeError as e:
            raise UserError(f"could not load {directory / HEAD_FILE}: {e}", "retrain or restore it.") from None
        model = cls(clip, head, model_id=cfg.get("model_id"))
        model.region_head = load_region_head(directory, cfg.get("region"), model.device)
        model.epistemic = load_epistemic(directory, cfg.get("epistemic"), int(head.mlp[-1].in_features), model.device)
        model.backbone_trained = bool(cfg.get("clip_subdir"))
        model.clip.requires_grad_(False)
        return model

