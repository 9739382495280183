"""The guidelines raters see, and the version stored with every label they give.

The version is the ``version:`` line of the file's front matter when it has one, followed by a
short hash of the whole text, e.g. ``2+3f9a1c0b``: editing the file without bumping the version
still changes what is stored, so labels given under different texts stay distinguishable.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

from core.errors import UserError
from labeling_app.config import DEFAULT_GUIDELINES

_FRONT = re.compile(r"\A---\s*\n(?P<head>.*?)\n---\s*\n", re.S)


@dataclass(frozen=True)
class Guidelines:
    text: str      # markdown, front matter removed
    version: str
    path: Path


def guidelines_file(chosen: str | None, shapes_round: bool) -> Path:
    """The guidelines file raters see: ``chosen`` (``guidelines=``) when set; else the packaged
    one, on a round of shapes-world prompts only (``shapes_round``), since it judges nothing else."""
    if chosen:
        return Path(chosen)
    if not shapes_round:
        raise UserError("the packaged rater guidelines describe shapes-world prompts (count, shape, colour), "
                        "and this round's prompts are not shapes-world prompts.",
                        "write your raters' guidelines as a markdown file (docs/labeling.md#your-own-"
                        "guidelines-and-gold-items) and pass guidelines=<file>.")
    return DEFAULT_GUIDELINES  # the packaged file: it describes the shapes world


def load_guidelines(path: str | Path) -> Guidelines:
    path = Path(path)
    try:
        raw = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(f"guidelines file {path} does not exist.",
                        "pass guidelines=<markdown file>, or leave it unset for the packaged one.") from None
    except UnicodeDecodeError:
        raise UserError(f"guidelines file {path} is not UTF-8 text.", "save it as UTF-8 markdown.") from None
    declared = None
    body = raw
    m = _FRONT.match(raw)
    if m:
        body = raw[m.end():]
        for line in m["head"].splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "version" and value.strip():
                declared = value.strip()
    if not body.strip():
        raise UserError(f"guidelines file {path} is empty.", "write the guidelines raters should follow.")
    digest = hashlib.sha256(raw.encode()).hexdigest()[:8]
    return Guidelines(text=body, version=f"{declared}+{digest}" if declared else digest, path=path)
