"""The region head's training data: per labelled image, the raters' averaged click heatmap.

Read from the dataset root: the current binary answers (:func:`data.labels.current`, retracted ones
gone) and the ``marks`` table (:data:`data.marks.MARKS`), joined on ``label_id`` and kept for *bad*
answers only.  Every rater who answered an image good or bad counts once (RichHF): a bad answer
with marks contributes its clicks as disks (:func:`data.marks.heatmap`), a good answer or a bad one
without points an empty map; skips do not count.  Images answered only by skips, or only ranked,
have no heatmap and are left out of the region head's data.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from data.labels import current
from data.marks import MARKS, heatmap, read_marks
from data.schemas import BINARY_LABELS
from data.store import Store
from reward.data import RewardData
from reward.region.head import crop_box, to_grid


@dataclass
class RegionData:
    image: np.ndarray  # int64 (n,) index into RewardData.images of each image with an answer
    points: list[list[list[tuple[float, float]]]]  # per image, per answer: its clicks (x, y) in [0, 1]
    size: list[tuple[int, int]]  # per image, its (height, width)
    grid: torch.Tensor  # (n, rows, cols) float32: the averaged heatmap on the patch grid
    marks: int  # marks rows joined to current bad answers of these images

    def heatmaps(self, k: int, size: tuple[int, int] | None = None) -> np.ndarray:
        """Image ``k``'s averaged rater heatmap at ``size`` (default: the image's), (H, W) in [0, 1]."""
        return heatmap(self.points[k], size or self.size[k])


def has_marks(store: Store) -> bool:
    return store.exists(MARKS) and read_marks(store).num_rows > 0


def load_region_data(store: Store, data: RewardData, preprocess, grid: tuple[int, int]) -> RegionData:
    """The answered images of ``data`` with their raters' clicks and target heatmaps on ``grid``."""
    labels = current(store, BINARY_LABELS.name).to_pandas()
    labels = labels[labels["label"] != "skip"]
    marks = read_marks(store).to_pandas() if store.exists(MARKS) else None
    by_label: dict[str, list[tuple[float, float]]] = {}
    if marks is not None and len(marks):
        bad = set(labels.loc[labels["label"] == "bad", "label_id"])
        for lid, pts in zip(marks["label_id"], marks["points"]):
            if lid in bad:
                by_label[lid] = [(float(p["x"]), float(p["y"])) for p in pts]
    index = {iid: i for i, iid in enumerate(data.images["image_id"])}
    answers: dict[int, list[str]] = {}
    for lid, iid in zip(labels["label_id"], labels["image_id"]):
        if iid in index:
            answers.setdefault(index[iid], []).append(lid)
    image = np.array(sorted(answers), dtype=np.int64)
    points = [[by_label.get(lid, []) for lid in sorted(answers[i])] for i in image]
    size = [(int(data.images["height"].iloc[i]), int(data.images["width"].iloc[i])) for i in image]
    grids = []
    for pts, (h, w) in zip(points, size):
        full = torch.from_numpy(heatmap(pts, (h, w)))[None]
        grids.append(to_grid(full, crop_box(preprocess, h, w), grid)[0])
    stacked = torch.stack(grids) if grids else torch.zeros((0, *grid))
    n_marks = sum(bool(lid in by_label) for i in image for lid in answers[i])
    return RegionData(image, points, size, stacked, n_marks)
