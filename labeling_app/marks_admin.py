"""The Admin tab's view of the marks: which images raters marked, and one image's averaged heatmap
drawn over it (:mod:`data.marks`), with how many of its raters marked each prompt word.

The picture is embedded as a ``data:`` URI (like the tab's charts), so it is never a file that
Gradio's file route could hand to someone else.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

from data.marks import ImageMarks, heatmap, prompt_words
from labeling_app.charts import clip, data_uri
from labeling_app.views import esc

MIN_SIDE = 320  # px: small renders (64 px) are scaled up, pixel edges kept, to be seen
RED = np.array([220, 38, 38], dtype=np.float32)
ALPHA = 0.65  # the heatmap's opacity where every rater marked


def picker_choices(marks: dict[str, ImageMarks]) -> list[tuple[str, str]]:
    """(label, image_id) of every image with at least one mark, most-marked first; a long prompt
    is clipped, as in the charts (the heatmap below the picker shows all its words)."""
    marked = [m for m in marks.values() if m.marked]
    marked.sort(key=lambda m: (-sum(bool(p) or bool(w) for p, w in zip(m.points, m.words)), m.image_id))
    return [(f"{clip(m.prompt)} · {m.image_id[:8]} · marked by "
             f"{sum(bool(p) or bool(w) for p, w in zip(m.points, m.words))} of {len(m.raters)}", m.image_id)
            for m in marked]


def overlay_png(path: Path, m: ImageMarks) -> bytes:
    """The image with the raters' averaged heatmap in red over it, as PNG bytes."""
    img = Image.open(path).convert("RGB")
    scale = max(1, -(-MIN_SIDE // min(img.size)))
    img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
    rgb = np.asarray(img, dtype=np.float32)
    heat = heatmap(m.points, (img.height, img.width))[..., None] * ALPHA
    out = rgb * (1 - heat) + RED * heat
    buf = io.BytesIO()
    Image.fromarray(out.round().astype(np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def heatmap_html(path: Path, m: ImageMarks) -> str:
    """The overlay and the prompt's words, each with how many raters marked it."""
    counts = np.zeros(len(prompt_words(m.prompt)), dtype=int)
    for ws in m.words:
        counts[[w for w in ws if w < len(counts)]] += 1
    words = " ".join(f'<span class="word-chip{" marked" if c else ""}">{esc(w)} <b>{c}</b></span>'
                     for w, c in zip(prompt_words(m.prompt), counts))
    n_marked = sum(bool(p) or bool(w) for p, w in zip(m.points, m.words))
    return (f'<div class="admin-heatmap"><img id="admin-heatmap-image" alt="averaged marks" '
            f'src="{data_uri(overlay_png(path, m))}" style="max-width: 100%; image-rendering: pixelated">'
            f'<div>{n_marked} of {len(m.raters)} raters who answered it marked it; red: the share of them '
            f'who clicked there.</div><div class="mark-words">{words}</div></div>')
