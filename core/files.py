"""Small file helpers shared by the stages."""

from __future__ import annotations

import json
import os
from pathlib import Path


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` under a temporary name beside it, then rename it into place: a
    reader sees the old file or the whole new one, never half of it."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def sort_safetensors_metadata(path: str | os.PathLike) -> None:
    """Rewrite a ``.safetensors`` file with its header's ``__metadata__`` keys in sorted order.

    safetensors' writer (Rust) stores the metadata map in an order that changes from process to
    process, so two saves of the same tensors and metadata differ in bytes once the map holds two
    keys (a LoRA file's ``format`` and ``lora_adapter_metadata``), and so would the fingerprint a
    fine-tuned run's seeds derive from (core.loading).  The file layout is an 8-byte little-endian
    header length, the JSON header padded with spaces to 8 bytes, then the tensor bytes, whose
    offsets count from the end of the header: only the header is rewritten."""
    path = Path(path)
    raw = path.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8:8 + n])
    meta = header.pop("__metadata__", None)
    if not meta:
        return
    text = json.dumps({"__metadata__": dict(sorted(meta.items())), **header}, separators=(",", ":"),
                      ensure_ascii=False).encode()
    text += b" " * (-len(text) % 8)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(len(text).to_bytes(8, "little") + text + raw[8 + n:])
    os.replace(tmp, path)
