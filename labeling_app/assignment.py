"""Who labels what next: the one assignment and write path of a labeling round.

The Gradio app, the simulated raters (``make simulate-raters``) and the load test all go through
:class:`Assigner`; nothing else writes labels.  Its rules:

- **Items.**  A *binary* item is one image of the generations table; a *ranking* item is a set of
  2..``rank_max_images`` images of one prompt.  Items are handed out in one fixed shuffled order,
  so the first items reach K raters before later ones start: overlap, and so agreement, builds
  from the start of a round.
- **Overlap K.**  An item goes to at most K distinct raters that answer it (a skip does not count,
  so the item goes to someone else).  An item shown to a rater is *leased* to them for
  ``lease_s``; leases count toward K, so concurrent raters never push an item past K.  A rater
  never gets an item they answered, unless they undo that answer.
- **Resume.**  The item a rater was shown stays theirs until they answer it: a refresh, a second
  tab or a new login shows the same item.  Everything else is rebuilt from the store at start-up,
  so a restarted server continues where the raters stopped.
- **Gold.**  With probability ``gold_share`` a rater's next binary item is a gold item they have
  not seen (every rater sees every gold item at most once, outside the K limit); the row is
  stored with ``is_gold=True``.
- **Writes.**  A submission is checked against the rater's current item (an opaque token, so a
  stale tab or a double click cannot label the wrong item or the same item twice), appended
  durably through :class:`data.store.Store` and only then acknowledged.  A rater's operations are
  serialised by a per-rater lock; the shared lock is never held during a disk write, so concurrent
  raters' appends are group-committed.
- **Undo** appends a retraction (:func:`data.labels.retract`) for the rater's last label of a
  task and gives them that item again.

The rater id always comes from the caller (the app passes the login session's user name); the
item and image ids come from the generations table, never from a client.
"""

from __future__ import annotations

import hashlib
import secrets
import threading
import time
import uuid
import zlib
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd

from core.errors import DataError, UserError
from data.generations import check_image
from data.labels import current, retract
from data.schemas import BINARY_LABELS, GENERATIONS, LABELS, RANKINGS, validate_ranks
from data.store import Store
from labeling_app.config import TASKS, LabelConfig
from labeling_app.gold import ensure_gold

TABLE_OF_TASK = {"binary": BINARY_LABELS.name, "ranking": RANKINGS.name}
MAX_REASON_CHARS = 500
REFRESH_EVERY_S = 5.0


class Refused(UserError):
    """A submission the server did not store (nothing was written)."""


class StaleItem(Refused):
    """The answer was for an item that is no longer the rater's current one (answered in another
    tab, a double click, or lost to another rater after its lease ran out)."""


class InvalidAnswer(Refused):
    """The answer itself is not acceptable (an unknown label, ranks that are not an ordering)."""


@dataclass(frozen=True)
class Item:
    task: str                      # binary | ranking
    item_id: str                   # binary: the image_id; ranking: "r-" + hash of its image ids
    prompt_id: str
    prompt: str
    image_ids: tuple[str, ...]     # one for binary, 2..rank_max_images for ranking
    is_gold: bool = False


@dataclass(frozen=True)
class Assignment:
    item: Item
    token: str                     # opaque; a submission must quote it
    shown_at: float                # time.time() when first shown (duration_ms is measured from it)


@dataclass(frozen=True)
class Receipt:
    """An acknowledged label: durable in the store when this is returned."""
    table: str
    row_id: str
    item: Item
    rater_id: str


@dataclass(frozen=True)
class Progress:
    rater_id: str
    own: dict[str, int]            # the rater's current (not undone) labels per task
    round_completion: dict[str, float]  # per task: answers given / (items x K), 0..1
    items: dict[str, int]          # items per task (gold not counted)


@dataclass
class _Entry:
    task: str
    row_id: str
    item_key: tuple[str, str]
    counts: bool                   # a non-skip answer (counts toward K)


@dataclass
class _RaterState:
    lock: threading.Lock = field(default_factory=threading.Lock)
    open: dict[str, Assignment] = field(default_factory=dict)
    history: list[_Entry] = field(default_factory=list)
    rng: np.random.Generator | None = None


def ranking_item_id(image_ids) -> str:
    return "r-" + hashlib.sha1("\n".join(sorted(image_ids)).encode()).hexdigest()[:16]


def build_items(gens: pd.DataFrame, tasks: tuple[str, ...], rank_max_images: int, gold: dict[str, str],
                seed: int) -> dict[str, list[Item]]:
    """The round's items per task, in serving order (a fixed shuffle of ``seed``)."""
    out: dict[str, list[Item]] = {t: [] for t in TASKS}
    if gens.empty:
        return out
    # prompt_id and seed, not the random image_id, break ties, so the same round is served in the
    # same order every time (a rerun of the demo gives the same labels).
    gens = gens.sort_values(["created_at", "prompt_id", "seed", "image_id"], kind="stable")
    if "binary" in tasks:
        out["binary"] = [Item("binary", r.image_id, r.prompt_id, r.prompt, (r.image_id,))
                         for r in gens.itertuples() if r.image_id not in gold]
    if "ranking" in tasks:
        for prompt_id, group in gens.groupby("prompt_id", sort=True):
            ids = group["image_id"].tolist()
            if len(ids) < 2:
                continue
            # Balanced chunks (5 images at most 4 per set: 3 + 2), so no set has a single image.
            n_chunks = -(-len(ids) // rank_max_images)
            for chunk in np.array_split(np.array(ids, dtype=object), n_chunks):
                chunk = tuple(chunk.tolist())
                out["ranking"].append(Item("ranking", ranking_item_id(chunk), prompt_id,
                                           group["prompt"].iloc[0], chunk))
    for i, task in enumerate(TASKS):
        order = np.random.default_rng([seed, 101 + i]).permutation(len(out[task]))
        out[task] = [out[task][j] for j in order]
    return out


class Assigner:
    """Thread-safe assignment and label writing for one round (one dataset root).

    One process serves a round: the in-memory state (leases, who answered what) is rebuilt from
    the store at start-up but not re-read from it afterwards, except for new generations rows.
    """

    def __init__(self, store: Store, *, overlap: int = 3, tasks: tuple[str, ...] = TASKS,
                 rank_max_images: int = 4, gold: dict[str, str] | None = None, gold_share: float = 0.0,
                 lease_s: float = 900.0, guideline_version: str = "unversioned", seed: int = 0,
                 clock=time.time):
        self.store = store
        self.overlap = overlap
        self.tasks = tuple(tasks)
        self.rank_max_images = rank_max_images
        self.gold_answer = dict(gold or {})
        self.gold_share = gold_share if self.gold_answer else 0.0
        self.lease_s = lease_s
        self.guideline_version = guideline_version
        self.seed = seed
        self.clock = clock
        self._lock = threading.RLock()
        self._raters: dict[str, _RaterState] = {}
        self._answered: dict[tuple[str, str], set[str]] = defaultdict(set)   # raters who answered
        self._filled: dict[tuple[str, str], int] = defaultdict(int)          # non-skip answers
        self._pending: dict[tuple[str, str], int] = defaultdict(int)         # being written now
        self._holders: dict[tuple[str, str], dict[str, float]] = defaultdict(dict)  # rater -> lease end
        self._items: dict[str, list[Item]] = {t: [] for t in TASKS}
        self._by_key: dict[tuple[str, str], Item] = {}
        self._full_prefix: dict[str, int] = {t: 0 for t in TASKS}
        self._given: dict[str, int] = {t: 0 for t in TASKS}  # sum over items of min(answers, K)
        self._gold_items: list[Item] = []
        self._image_rows: dict[str, dict] = {}  # image_id -> what check_image compares the file with
        self._gens_signature: tuple | None = None
        self._last_refresh = 0.0
        self._load_generations(force=True)
        self._load_labels()

    @classmethod
    def open(cls, cfg: LabelConfig, guideline_version: str, store: Store | None = None) -> "Assigner":
        """The assigner of a round as configured (creates the gold pool on first use)."""
        store = store or Store(cfg.root)
        gens = store.to_pandas(GENERATIONS)
        if gens.empty:
            raise UserError(f"the round in {store.root} has no images (empty generations table).",
                            "run `make generate` (or `make generate ARGS=source=renderer`) first, "
                            "or point root= at a dataset root with images.")
        gold = ensure_gold(store, cfg.gold, gens, seed=cfg.seed) if cfg.uses_gold else {}
        return cls(store, overlap=cfg.overlap, tasks=cfg.tasks, rank_max_images=cfg.rank_max_images,
                   gold=gold, gold_share=cfg.gold.share if cfg.uses_gold else 0.0, lease_s=cfg.lease_s,
                   guideline_version=guideline_version, seed=cfg.seed)

    # -- loading ---------------------------------------------------------------------------

    def _generations_signature(self) -> tuple:
        d = self.store.table_dir(GENERATIONS)
        names = sorted(p.name for p in d.glob("part-*.parquet")) if d.is_dir() else []
        return (len(names), names[-1] if names else "")

    def _load_generations(self, force: bool = False) -> None:
        sig = self._generations_signature()
        if not force and sig == self._gens_signature:
            return
        gens = self.store.to_pandas(GENERATIONS)
        items = build_items(gens, self.tasks, self.rank_max_images, self.gold_answer, self.seed)
        by_key = {(it.task, it.item_id): it for task in TASKS for it in items[task]}
        gold_rows = gens[gens["image_id"].isin(self.gold_answer.keys())]
        gold_items = [Item("binary", r.image_id, r.prompt_id, r.prompt, (r.image_id,), is_gold=True)
                      for r in gold_rows.itertuples()]
        order = np.random.default_rng([self.seed, 7]).permutation(len(gold_items))
        with self._lock:
            self._items = items
            self._by_key = by_key | {("binary", g.item_id): g for g in gold_items}
            self._gold_items = [gold_items[i] for i in order]
            self._image_rows = gens.set_index("image_id", drop=False)[
                ["image_id", "image_path", "width", "height", "sha256"]].to_dict("index")
            self._full_prefix = {t: 0 for t in TASKS}
            self._gens_signature = sig
            self._given = {t: sum(min(self._filled[(t, it.item_id)], self.overlap) for it in items[t])
                           for t in TASKS}

    def _load_labels(self) -> None:
        binary = current(self.store, BINARY_LABELS.name).to_pandas()
        rankings = current(self.store, RANKINGS.name).to_pandas()
        entries = []
        for r in binary.itertuples():
            entries.append((r.created_at, r.rater_id,
                            _Entry("binary", r.label_id, ("binary", r.image_id), r.label != "skip")))
        for r in rankings.itertuples():
            entries.append((r.created_at, r.rater_id,
                            _Entry("ranking", r.ranking_id, ("ranking", ranking_item_id(r.image_ids)), True)))
        entries.sort(key=lambda e: e[0])
        with self._lock:
            for _, rater_id, entry in entries:
                self._rater(rater_id).history.append(entry)
                self._answered[entry.item_key].add(rater_id)
                self._add_filled(entry.item_key, int(entry.counts))

    def maybe_refresh(self) -> None:
        """Pick up images added to the round (``make generate`` while the app runs)."""
        now = time.monotonic()
        if now - self._last_refresh < REFRESH_EVERY_S:
            return
        self._last_refresh = now
        self._load_generations()

    # -- helpers ---------------------------------------------------------------------------

    def _rater(self, rater_id: str) -> _RaterState:
        with self._lock:
            st = self._raters.get(rater_id)
            if st is None:
                st = self._raters[rater_id] = _RaterState()
                st.rng = np.random.default_rng([self.seed, zlib.crc32(rater_id.encode())])
            return st

    def _live_holders(self, key, now: float, exclude: str | None = None) -> int:
        holders = self._holders.get(key)
        if not holders:
            return 0
        for r in [r for r, end in holders.items() if end <= now]:
            del holders[r]
        return sum(1 for r in holders if r != exclude)

    def _lease(self, st: _RaterState, rater_id: str, item: Item, now: float) -> Assignment:
        a = Assignment(item, secrets.token_hex(8), now)
        st.open[item.task] = a
        self._holders[(item.task, item.item_id)][rater_id] = now + self.lease_s
        return a

    def _release(self, st: _RaterState, rater_id: str, task: str) -> None:
        a = st.open.pop(task, None)
        if a is not None:
            self._holders.get((task, a.item.item_id), {}).pop(rater_id, None)

    def _add_filled(self, key: tuple[str, str], delta: int) -> None:
        """Change an item's count of non-skip answers, keeping the round's completion in step."""
        before = self._filled[key]
        self._filled[key] = before + delta
        item = self._by_key.get(key)
        if item is not None and not item.is_gold:
            self._given[key[0]] += min(before + delta, self.overlap) - min(before, self.overlap)

    def _has_room(self, key, rater_id: str, now: float) -> bool:
        return self._filled[key] + self._pending[key] + self._live_holders(key, now, rater_id) < self.overlap

    def _check_task(self, task: str) -> None:
        if task not in self.tasks:
            raise InvalidAnswer(f"task {task!r} is not part of this round.", f"use one of {list(self.tasks)}.")

    def image_path(self, image_id: str) -> Path:
        """The file of an image of this round (looked up in the generations table; refuses
        anything outside the dataset root, and a file that no longer matches its row)."""
        row = self._image_rows.get(image_id)
        if row is None:
            raise DataError(f"image {image_id!r} is not part of this round.", "ask for an item first.")
        return check_image(self.store.root, row)

    # -- serving ---------------------------------------------------------------------------

    def current(self, rater_id: str, task: str) -> Assignment | None:
        """The rater's open item of ``task``, or a new one; None when they have nothing left."""
        self._check_task(task)
        self.maybe_refresh()
        st = self._rater(rater_id)
        with st.lock, self._lock:
            now = self.clock()
            a = st.open.get(task)
            if a is not None:
                key = (task, a.item.item_id)
                if a.item.is_gold or self._holders[key].get(rater_id, 0) > now or self._has_room(key, rater_id, now):
                    self._holders[key][rater_id] = now + self.lease_s  # still theirs: renew
                    return a
                self._release(st, rater_id, task)  # lease ran out and others filled the item
            item = self._pick(st, rater_id, task, now)
            return None if item is None else self._lease(st, rater_id, item, now)

    def _pick(self, st: _RaterState, rater_id: str, task: str, now: float) -> Item | None:
        if task == "binary" and self.gold_share > 0 and st.rng.random() < self.gold_share:
            for g in self._gold_items:
                if rater_id not in self._answered[("binary", g.item_id)]:
                    return g
        items = self._items[task]
        i = self._full_prefix[task]
        while i < len(items) and self._filled[(task, items[i].item_id)] >= self.overlap:
            i += 1
        self._full_prefix[task] = i
        for item in items[i:]:
            key = (task, item.item_id)
            if rater_id not in self._answered[key] and self._has_room(key, rater_id, now):
                return item
        return None

    # -- answering -------------------------------------------------------------------------

    def _claim(self, st: _RaterState, rater_id: str, task: str, token: str | None, counts: bool) -> Assignment:
        """Check that ``token`` is the rater's current item of ``task`` and reserve its slot."""
        a = st.open.get(task)
        if a is None or not token or token != a.token:
            raise StaleItem("this answer was for an item that is not your current one (answered "
                            "already, maybe in another tab); it was not saved.",
                            "answer the item now shown.")
        key = (task, a.item.item_id)
        if rater_id in self._answered[key]:
            self._release(st, rater_id, task)
            raise StaleItem("you already answered this item; the answer was not saved.",
                            "answer the item now shown.")
        if counts and not a.item.is_gold:
            now = self.clock()
            if self._filled[key] + self._pending[key] >= self.overlap:
                self._release(st, rater_id, task)
                raise StaleItem("other raters completed this item while it was open (over "
                                f"{self.lease_s / 60:.0f} minutes); your answer was not saved.",
                                "answer the item now shown.")
            self._holders[key][rater_id] = now + self.lease_s
        self._pending[key] += counts
        return a

    def _commit(self, st: _RaterState, rater_id: str, a: Assignment, table: str, row: dict, row_id: str,
                counts: bool) -> Receipt:
        key = (a.item.task, a.item.item_id)
        try:
            self.store.append(table, [row])
        except BaseException:
            with self._lock:
                self._pending[key] -= counts
            raise
        with self._lock:
            self._pending[key] -= counts
            self._add_filled(key, int(counts))
            self._answered[key].add(rater_id)
            self._release(st, rater_id, a.item.task)
            st.history.append(_Entry(a.item.task, row_id, key, counts))
        return Receipt(table, row_id, a.item, rater_id)

    def _duration(self, a: Assignment, duration_ms: int | None) -> int:
        if duration_ms is not None:
            return max(0, int(duration_ms))
        return max(0, int(round((self.clock() - a.shown_at) * 1000)))

    def submit_binary(self, rater_id: str, token: str | None, label: str, reason: str | None = None, *,
                      duration_ms: int | None = None) -> Receipt:
        """Store the rater's answer to their current binary item.  ``duration_ms`` defaults to the
        time since the item was first shown (the simulated raters pass their own)."""
        self._check_task("binary")
        if label not in LABELS:
            raise InvalidAnswer(f"label {label!r} is not one of {list(LABELS)}.", "answer good, bad or skip.")
        reason = (reason or "").strip()[:MAX_REASON_CHARS] or None
        st = self._rater(rater_id)
        with st.lock:
            with self._lock:
                a = self._claim(st, rater_id, "binary", token, counts=label != "skip")
            row_id = uuid.uuid4().hex
            row = dict(label_id=row_id, image_id=a.item.item_id, prompt_id=a.item.prompt_id,
                       rater_id=rater_id, label=label, skip_reason=reason if label == "skip" else None,
                       created_at=datetime.now(timezone.utc), duration_ms=self._duration(a, duration_ms),
                       is_gold=a.item.is_gold, guideline_version=self.guideline_version)
            return self._commit(st, rater_id, a, BINARY_LABELS.name, row, row_id, label != "skip")

    def submit_ranking(self, rater_id: str, token: str | None, ranks, *,
                       duration_ms: int | None = None) -> Receipt:
        """Store the rater's ranks (aligned with the item's image_ids; 1 best, ties share a rank)."""
        self._check_task("ranking")
        st = self._rater(rater_id)
        with st.lock:
            with self._lock:
                a = st.open.get("ranking")
                n = len(a.item.image_ids) if a is not None and a.token == token else None
            if n is not None:
                ranks = self._parse_ranks(ranks, n)
            with self._lock:
                a = self._claim(st, rater_id, "ranking", token, counts=True)
            row_id = uuid.uuid4().hex
            row = dict(ranking_id=row_id, prompt_id=a.item.prompt_id, rater_id=rater_id,
                       image_ids=list(a.item.image_ids), ranks=ranks, created_at=datetime.now(timezone.utc),
                       duration_ms=self._duration(a, duration_ms), guideline_version=self.guideline_version)
            return self._commit(st, rater_id, a, RANKINGS.name, row, row_id, True)

    @staticmethod
    def _parse_ranks(ranks, n: int) -> list[int]:
        ranks = list(ranks or [])[:n] + [None] * max(0, n - len(ranks or []))
        missing = [i + 1 for i, r in enumerate(ranks) if r in (None, "")]
        if missing:
            raise InvalidAnswer(f"image(s) {missing} have no rank; nothing was saved.",
                                "give every image a rank (1 is best; equally good images share a rank).")
        try:
            values = [int(r) for r in ranks]
        except (TypeError, ValueError):
            raise InvalidAnswer(f"ranks {ranks} are not whole numbers; nothing was saved.",
                                "give every image a rank 1, 2, 3, ...") from None
        try:
            return validate_ranks(values, n)
        except DataError as e:
            raise InvalidAnswer(f"{e.problem} Nothing was saved.", e.fix) from None

    def undo(self, rater_id: str, task: str) -> Assignment | None:
        """Take back the rater's last label of ``task`` and make its item their current one
        (None if that item is no longer part of the round)."""
        self._check_task(task)
        st = self._rater(rater_id)
        with st.lock:
            with self._lock:
                entry = next((e for e in reversed(st.history) if e.task == task), None)
            if entry is None:
                raise InvalidAnswer(f"you have no {task} answer to undo.", "undo works on answers you gave.")
            retract(self.store, TABLE_OF_TASK[task], entry.row_id, rater_id)
            with self._lock:
                st.history.remove(entry)
                self._answered[entry.item_key].discard(rater_id)
                self._add_filled(entry.item_key, -int(entry.counts))
                self._full_prefix[task] = 0
                self._release(st, rater_id, task)
                item = self._by_key.get(entry.item_key)
                return None if item is None else self._lease(st, rater_id, item, self.clock())

    # -- progress --------------------------------------------------------------------------

    def progress(self, rater_id: str) -> Progress:
        with self._lock:
            st = self._raters.get(rater_id)
            own = {t: 0 for t in self.tasks}
            for e in (st.history if st else []):
                own[e.task] = own.get(e.task, 0) + 1
            completion, n_items = {}, {}
            for t in self.tasks:
                n_items[t] = len(self._items[t])
                slots = n_items[t] * self.overlap
                completion[t] = self._given[t] / slots if slots else 1.0
        return Progress(rater_id, own, completion, n_items)


class Compactor(threading.Thread):
    """Merges the label tables' small part files in the background.

    The store merges inline when an append pushes a table past ``compact_every`` parts, so one
    unlucky rater would wait for the merge (~0.3 s for 256 parts).  The app opens its store with
    ``compact_every=0`` and lets this thread merge every ``every_s`` seconds instead.
    """

    def __init__(self, store: Store, tables: tuple[str, ...] = (BINARY_LABELS.name, RANKINGS.name, "retractions"),
                 every_s: float = 20.0, min_parts: int = 64):
        super().__init__(daemon=True, name="label-compactor")
        self.store, self.tables, self.every_s, self.min_parts = store, tables, every_s, min_parts
        self.stop = threading.Event()

    def run(self):
        while not self.stop.wait(self.every_s):
            for table in self.tables:
                d = self.store.table_dir(table)
                if d.is_dir() and sum(1 for _ in d.glob("part-*.parquet")) >= self.min_parts:
                    try:
                        self.store.compact(table, block=False)
                    except Exception as e:  # noqa: BLE001 - a failed merge loses nothing; retry later
                        print(f"warning: compacting {table} failed ({e}); will retry", flush=True)

