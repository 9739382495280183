"""The labeling round's configuration (one frozen dataclass, loadable from YAML with overrides)."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Optional

from core.config import NonNegativeInt
from core.errors import UserError

Task = Literal["binary", "ranking"]
TASKS: tuple[str, ...] = ("binary", "ranking")
MarksMode = Literal["off", "optional", "required"]
MARKS_MODES: tuple[str, ...] = ("off", "optional", "required")

DEFAULT_GUIDELINES = Path(__file__).resolve().parent / "guidelines.md"


@dataclass(frozen=True)
class ServerConfig:
    host: str = "127.0.0.1"  # 0.0.0.0 to serve other machines (put TLS in front: see README)
    port: int = 7860
    # Listener threads: Gradio runs one event per thread; 1 (Gradio's default) would serialise
    # every rater behind every other one.
    concurrency: int = 32
    trusted_proxies: tuple[str, ...] = ()
    """Addresses (or networks, e.g. 10.0.0.0/8) of the reverse proxies in front of the app: only
    from these is ``X-Forwarded-For`` taken for the client's address (the login throttle counts
    per client address).  Empty: from nobody, every client is the address it connects from."""


@dataclass(frozen=True)
class GoldConfig:
    share: float = 0.1
    """Chance that a rater's next binary item is a gold item (while unseen gold items remain);
    the gold pool is this share of the round's images."""
    source: Literal["auto", "oracle", "file", "none"] = "auto"
    """auto: follows the data (``file`` when one is given; else the oracle on a round of
    shapes-world prompts, and no gold items on any other round); oracle: the shapes-world oracle's
    verdict; file: ``file`` (CSV or Parquet with columns image_id, answer); none: no gold items."""
    file: Optional[str] = None


@dataclass(frozen=True)
class LoginConfig:
    """Growing delays after wrong passwords (labeling_app.raters.LoginThrottle), kept per client
    address and per (client address, name): wrong tries from one client never delay another."""
    free_per_name: int = 3
    """wrong passwords for one name from one client before delays start"""
    free_per_client: int = 10
    """wrong passwords from one client, any names, before delays start"""
    base_delay_s: float = 1.0
    """the first delay; each further wrong password doubles it"""
    max_delay_s: float = 300.0
    forget_s: float = 900.0
    """a key's wrong passwords are forgotten this long after its last one"""


@dataclass(frozen=True)
class LabelConfig:
    root: str = "datasets/shapes"
    """Dataset root: images/, generations and the label tables (see data/store.py)."""
    round: Optional[NonNegativeInt] = None
    """The round of the closed loop served (generations.round); None: the newest round in the
    root.  A round with selections rows serves only its selected images (labeling_app.rounds)."""
    raters_file: str = "datasets/raters.json"
    """Salted password hashes of the raters (pipelines.raters adds and disables them)."""
    guidelines: Optional[str] = None
    """Markdown file shown to raters; None: the packaged labeling_app/guidelines.md, which describes
    the shapes world, so a round of other prompts needs its own file (one error says so)."""
    tasks: tuple[Task, ...] = TASKS
    overlap: int = 3
    """K: each item goes to up to K distinct raters (skips do not count toward K)."""
    rank_max_images: int = 4
    """A ranking set holds at most this many images of one prompt (larger groups are split)."""
    lease_s: float = 900.0
    """An item shown to a rater is reserved for them this long; after that it may go to another
    rater if they have not answered."""
    seed: int = 0
    """Order in which items are handed out, and the draw of gold items."""
    marks: MarksMode = "optional"
    """Marks on a bad answer (where the image is wrong: points on it, wrong prompt words; see
    data.marks): off (not offered), optional, or required (a bad answer needs a point or a word,
    or the reason box saying why nothing can be marked)."""
    gold: GoldConfig = field(default_factory=GoldConfig)
    server: ServerConfig = field(default_factory=ServerConfig)
    login: LoginConfig = field(default_factory=LoginConfig)

    def __post_init__(self):
        if self.overlap < 1:
            raise UserError(f"overlap={self.overlap}: each item needs at least one rater.",
                            "set overlap to 1 or more.")
        if not 2 <= self.rank_max_images <= 8:
            raise UserError(f"rank_max_images={self.rank_max_images} is outside 2..8.",
                            "rank between 2 and 8 images at a time.")
        if not self.tasks or len(set(self.tasks)) != len(self.tasks):
            raise UserError(f"tasks={list(self.tasks)}: name each task once.",
                            f"use some of {list(TASKS)}.")
        if not 0.0 <= self.gold.share < 1.0:
            raise UserError(f"gold.share={self.gold.share} is outside [0, 1).",
                            "set gold.share to e.g. 0.1 (or 0 for no gold items).")
        if self.gold.file and self.gold.source in ("oracle", "none"):
            raise UserError(f"gold.file={self.gold.file} is given with gold.source={self.gold.source}, "
                            "which does not read it.", "set gold.source=file (or auto), or drop gold.file.")
        if self.gold.source == "file" and not self.gold.file:
            raise UserError("gold.source=file needs gold.file.",
                            "set gold.file=<CSV or Parquet with columns image_id, answer>.")
        if self.lease_s <= 0:
            raise UserError(f"lease_s={self.lease_s} must be > 0.", "set lease_s to e.g. 900.")
        if not 0 <= self.server.port <= 65535:
            raise UserError(f"server.port={self.server.port} is not a port.", "use 1..65535.")
        lg = self.login
        if lg.free_per_name < 0 or lg.free_per_client < 0 or not 0 < lg.base_delay_s <= lg.max_delay_s:
            raise UserError(f"login={lg} is not a throttle: free_* must be >= 0 and "
                            "0 < base_delay_s <= max_delay_s.", "e.g. login.base_delay_s=1 login.max_delay_s=300.")
        if self.server.concurrency < 1:
            raise UserError("server.concurrency must be >= 1.", "set it to e.g. 32.")
        for proxy in self.server.trusted_proxies:
            try:
                ipaddress.ip_network(proxy, strict=False)
            except ValueError:
                raise UserError(f"server.trusted_proxies: {proxy!r} is not an IP address or network.",
                                "name your reverse proxy's address, e.g. server.trusted_proxies=[127.0.0.1] "
                                "(or [] when no proxy sits in front of the app).") from None

    @property
    def uses_gold(self) -> bool:
        return self.gold.source != "none" and self.gold.share > 0
