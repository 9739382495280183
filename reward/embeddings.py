"""Embeddings of a reward dataset's images and prompts: :class:`Embeddings`, cached once with the
frozen CLIP or computed live (with the graph) when the backbone trains."""

from __future__ import annotations

import sys

import numpy as np
import torch
from tqdm import tqdm

from data.generations import load_image
from reward.data import RewardData
from reward.model import RewardModel
from reward.preprocess import to_pixel_batches


class Embeddings:
    """Image and text embeddings by index into ``data.images`` / ``data.prompts``.

    Cached: computed once with the frozen CLIP.  Live (trainable backbone): computed by ``model``
    on each call, with the graph, from the image files.
    """

    def __init__(self, model: RewardModel, data: RewardData, *, cached: bool, batch_size: int,
                 progress: bool = False):
        self.model, self.data, self.cached = model, data, cached
        self.batch_size = batch_size
        if cached:
            self.image_cache = self._embed_all_images(progress)
            with torch.no_grad():
                self.text_cache = torch.cat([model.embed_texts(data.prompts[i:i + 1024])
                                             for i in range(0, len(data.prompts), 1024)])

    def _load(self, idx) -> list:
        rows = self.data.images.iloc[np.asarray(idx)]
        return [load_image(self.data.root, r) for _, r in rows.iterrows()]

    @torch.no_grad()
    def _embed_all_images(self, progress: bool) -> torch.Tensor:
        n = len(self.data.images)
        out = []
        bar = tqdm(total=n, desc="embedding images", unit="img", disable=not progress, file=sys.stderr)
        for start in range(0, n, self.batch_size):
            idx = np.arange(start, min(n, start + self.batch_size))
            out.append(self.model.embed_images(self._load(idx)))
            bar.update(len(idx))
        bar.close()
        return torch.cat(out)

    def images(self, idx: torch.Tensor) -> torch.Tensor:
        if self.cached:
            return self.image_cache[idx]
        return torch.cat([self.model.embed_pixels(b) for b in
                          to_pixel_batches(self._load(idx.cpu().numpy()), self.model.device)])

    def texts(self, idx: torch.Tensor) -> torch.Tensor:
        if self.cached:
            return self.text_cache[idx]
        return self.model.embed_texts([self.data.prompts[i] for i in idx.cpu().tolist()])
