"""Training and evaluating the region head (:mod:`reward.region.head`) beside the scalar head.

``train_region`` embeds every answered image's patch tokens once with the (frozen, final) CLIP,
fits the head on the training images' averaged rater heatmaps (MSE of its output against the
heatmap averaged over each patch, RichHF), keeps the epoch with the lowest MSE on the selection
images, attaches the head to the model and returns its ``metrics.json`` section.

Metrics, per validation view (:data:`reward.data.VIEWS`), over all its answered images' pixels
pooled (the predicted heatmap at image size against the averaged rater heatmap at image size; both
at most ``region.eval_size`` pixels a side):

- ``heatmap_auc``: ROC AUC of the predicted heatmap against rater heatmap > 0;
- ``heatmap_pearson``: Pearson correlation of the predicted and the rater heatmap;
- shapes world, against the oracle's exact problem masks (:func:`shapes.regions.problem_regions`):
  ``heatmap_auc_vs_oracle``, ``heatmap_pearson_vs_oracle``, and ``rater_heatmap_auc_vs_oracle``,
  the raters' own heatmap against the same masks (how well the labels themselves locate problems).
"""

from __future__ import annotations

import math
import sys

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from core.errors import UserError
from data.generations import load_image
from data.store import Store
from reward.config import RewardConfig
from reward.data import VIEWS, RewardData
from reward.fit import BestState, _cpu_threads, optimizer_step
from reward.metrics import NAN
from reward.model import RewardModel
from reward.preprocess import to_pixel_batches
from reward.region.data import RegionData, has_marks, load_region_data
from reward.region.head import build_region_head, crop_box, patch_tokens, to_image_size


def region_wanted(cfg: RewardConfig, store: Store) -> bool:
    """Whether this run trains a region head (``region.head``: auto = when the root has marks)."""
    mode = cfg.region.head
    if mode == "off":
        return False
    marked = has_marks(store)
    if mode == "on" and not marked:
        raise UserError(f"region.head=on but {store.root} has no marks.",
                        "collect marks with the labeling app (or simulate them), or set region.head=auto.")
    return marked


@torch.no_grad()
def _tokens(model: RewardModel, data: RewardData, images: np.ndarray, batch: int, progress: bool) -> torch.Tensor:
    out = []
    bar = tqdm(total=len(images), desc="patch tokens", unit="img", disable=not progress, file=sys.stderr)
    for s in range(0, len(images), batch):
        rows = data.images.iloc[images[s:s + batch]]
        pics = [load_image(data.root, r) for _, r in rows.iterrows()]
        out += [patch_tokens(model, b).half() for b in to_pixel_batches(pics, model.device)]
        bar.update(len(rows))
    bar.close()
    return torch.cat(out)


def train_region(cfg: RewardConfig, model: RewardModel, data: RewardData, store: Store,
                 progress: bool = False) -> dict:
    """Fit a region head on ``data``'s answered images, set ``model.region_head``, return metrics."""
    rc = cfg.region
    head = build_region_head(model, rc.hidden, cfg.train.seed)
    rd = load_region_data(store, data, model.preprocess, head.spec.grid)
    tokens = _tokens(model, data, rd.image, cfg.train.embed_batch_size, progress)
    text = model.cached_text_embeddings([data.prompts[data.image_prompt[i]] for i in rd.image])
    target = rd.grid.to(model.device)
    on = lambda split: np.flatnonzero(np.isin(rd.image, split.images)) if split is not None else np.zeros(0, np.int64)  # noqa: E731
    train, select = on(data.train), on(data.select)
    if not len(train):
        raise UserError("no answered image is left to train the region head on.", "label more images.")

    def mse(rows: np.ndarray) -> float:
        head.eval()
        with torch.no_grad():
            r = torch.as_tensor(rows, device=model.device)
            return float(F.mse_loss(head(tokens[r], text[r]), target[r]))

    opt = torch.optim.AdamW(head.parameters(), lr=rc.lr, weight_decay=cfg.train.weight_decay)
    steps = max(1, math.ceil(len(train) / rc.batch_size))
    total = rc.epochs * steps
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * s / total)))
    gen = torch.Generator().manual_seed(cfg.train.seed)
    best = BestState(head.state_dict().values())

    def checkpoint(epoch: int) -> None:
        if len(select):
            best.offer(mse(select), epoch)

    checkpoint(0)
    history = []
    with _cpu_threads(1, model.device.type == "cpu"):
        for epoch in tqdm(range(rc.epochs), desc="region head", unit="epoch", disable=not progress, file=sys.stderr):
            head.train()
            perm = train[torch.randperm(len(train), generator=gen).numpy()]
            total_loss = 0.0
            for s in range(steps):
                r = torch.as_tensor(perm[s * rc.batch_size:(s + 1) * rc.batch_size], device=model.device)
                total_loss += optimizer_step(opt, sched, F.mse_loss(head(tokens[r], text[r]), target[r]))
            history.append(total_loss / steps)
            checkpoint(epoch + 1)
    best.restore()
    head.eval().requires_grad_(False)
    model.region_head = head

    with torch.no_grad():
        probs = torch.cat([head(tokens[i:i + 256], text[i:i + 256]).clamp(0.0, 1.0)
                           for i in range(0, len(rd.image), 256)]).cpu() if len(rd.image) else target.cpu()
    fit_on = select if len(select) else train  # the threshold is chosen on images the head did not fit
    head.threshold = calibrate_threshold(probs[fit_on], rd.grid[fit_on])
    oracle = _oracle_masks(cfg, store, data, rd)
    out: dict = dict(grid=list(head.spec.grid), hidden=rc.hidden, threshold=round(head.threshold, 4),
                     images=len(rd.image), marks=rd.marks,
                     train_images=len(train), best_epoch=best.epoch if len(select) else rc.epochs,
                     epoch_losses=[round(x, 6) for x in history])
    for view in VIEWS:
        rows = on(getattr(data, view))
        if len(rows):
            out[view] = view_metrics(rd, rows, probs, model.preprocess, rc.eval_size, oracle)
    return out


def calibrate_threshold(probs: torch.Tensor, target: torch.Tensor) -> float:
    """The heatmap value above which a patch is a problem: of 0.01, 0.02, ..., 0.99, the one whose
    patches ``probs`` (N, rows, cols) above it best match the patches any rater's disk touched
    (``target`` > 0, the averaged rater heatmaps per patch), by F1; 0.5 when no patch is marked."""
    marked = (target > 0).flatten().cpu().numpy()
    p = probs.flatten().float().cpu().numpy()
    if not marked.any():
        return 0.5
    cands = np.round(np.arange(1, 100) / 100, 2)
    hits = p[None, :] > cands[:, None]  # (99, cells)
    tp = (hits & marked).sum(1)
    f1 = 2 * tp / np.maximum(hits.sum(1) + marked.sum(), 1)
    return float(cands[int(np.argmax(f1))])


def _oracle_masks(cfg: RewardConfig, store: Store, data: RewardData, rd: RegionData) -> dict | None:
    """The oracle's masks of the validation views' answered images, by row of ``rd`` (shapes world
    only: None when a prompt is not a shapes-world one)."""
    if cfg.data.oracle != "auto":
        return None
    from shapes.marking import oracle_masks

    val = np.concatenate([getattr(data, v).images for v in VIEWS])
    rows = np.flatnonzero(np.isin(rd.image, val))
    ids = [data.images["image_id"].iloc[rd.image[k]] for k in rows]
    masks = oracle_masks(store, ids)
    return {int(k): masks[i] for k, i in zip(rows, ids)} if len(masks) == len(ids) else None


def _shrink(size: tuple[int, int], eval_size: int) -> tuple[int, int]:
    s = min(1.0, eval_size / max(size))
    return max(1, round(size[0] * s)), max(1, round(size[1] * s))


def view_metrics(rd: RegionData, rows: np.ndarray, probs: torch.Tensor, preprocess, eval_size: int,
                 oracle: dict | None) -> dict:
    """Pooled pixel metrics of the predicted heatmaps ``probs`` (grid, one per ``rd`` image) on
    the images ``rows`` of ``rd`` (see the module docstring); ``oracle``: exact masks by row of ``rd``."""
    pred, rater, truth = [], [], []
    for k in rows:
        size = _shrink(rd.size[k], eval_size)
        pred.append(to_image_size(probs[k:k + 1], size, crop_box(preprocess, *size))[0].numpy().ravel())
        rater.append(rd.heatmaps(k, size).ravel())
        if oracle is not None:
            m = oracle.get(int(k))
            truth.append(_resize_mask(m, size).ravel() if m is not None else None)
    p, r = np.concatenate(pred), np.concatenate(rater)
    out = dict(images=int(len(rows)), marked_images=int(sum(bool(any(pts)) for pts in (rd.points[k] for k in rows))),
               heatmap_auc=_auc(r > 0, p), heatmap_pearson=_pearson(p, r))
    if oracle is not None and truth and all(t is not None for t in truth):
        t = np.concatenate(truth)
        out.update(heatmap_auc_vs_oracle=_auc(t, p), heatmap_pearson_vs_oracle=_pearson(p, t.astype(np.float32)),
                   rater_heatmap_auc_vs_oracle=_auc(t, r), oracle_marked_images=int(
                       sum(bool(x.any()) for x in truth)))
    return out


def _resize_mask(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    h, w = mask.shape
    rows = ((np.arange(size[0]) + 0.5) * h / size[0]).astype(int)
    cols = ((np.arange(size[1]) + 0.5) * w / size[1]).astype(int)
    return mask[np.ix_(rows, cols)]


def _auc(labels: np.ndarray, scores: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    labels = np.asarray(labels, dtype=bool)
    if labels.all() or not labels.any():
        return NAN
    return float(roc_auc_score(labels, scores))


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    if a.std() == 0 or b.std() == 0:
        return NAN
    return float(np.corrcoef(a, b)[0, 1])
