"""Who labels what next: the one assignment and write path of a labeling round.

The Gradio app, the simulated raters (``make simulate-raters``) and the load test all go through
:class:`Assigner`; nothing else writes labels.  Its rules:

- **Rounds.**  An assigner serves one round of the root (``round``; None: the newest with images),
  and of it only the selected images when the round has ``selections`` rows
  (:func:`labeling_app.rounds.served_round`); no other image is handed out or opened.
- **Items.**  A *binary* item is one served image; a *ranking* item is a set of
  2..``rank_max_images`` served images of one prompt.  Items are handed out in one fixed shuffled order,
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
- **Writes and undo** go through :class:`~labeling_app.answers.AnswerPath`, a component of this class:
  checked against the rater's current item, durable before acknowledged, an undo a retraction.
- **Broken images.**  An item is served only with its image files checked against their
  generations rows (:meth:`Assigner.serve`).  An image whose file was replaced, edited or removed
  after its row was written is *withdrawn*: every item showing it leaves the round for this run
  (one log line naming the file; :meth:`Assigner.withdrawn` lists them for the admin tab) and the
  rater gets their next item, so one bad file never leaves anybody stuck on it.

The rater id always comes from the caller (the app passes the login session's user name); the
item and image ids come from the generations table, never from a client.
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from core import seeds
from core.errors import DataError, UserError
from data.generations import check_image
from data.labels import current
from data.schemas import BINARY_LABELS, GENERATIONS, RANKINGS
from data.store import Store
from labeling_app.answers import AnswerEntry, AnswerPath, InvalidAnswer, RaterState, Receipt
from labeling_app.config import TASKS, LabelConfig, MarksMode
from labeling_app.gold import ensure_gold
from labeling_app.items import Assignment, Item, build_items, ranking_item_id
from labeling_app.rounds import round_signature, served_round

REFRESH_EVERY_S = 5.0

log = logging.getLogger("labeling_app")


@dataclass(frozen=True)
class Progress:
    rater_id: str
    own: dict[str, int]            # the rater's current (not undone) labels per task
    round_completion: dict[str, float]  # per task: answers given / (items x K), 0..1
    items: dict[str, int]          # items per task (gold not counted)


@dataclass(frozen=True)
class Served:
    """An item to show and its image files, checked against their generations rows."""
    assignment: Assignment | None  # None: nothing left for this rater
    paths: tuple[Path, ...] = ()   # aligned with assignment.item.image_ids


@dataclass(frozen=True)
class Withdrawn:
    """An image taken out of serving because its file no longer matches its row."""
    image_id: str
    prompt: str
    image_path: str                # as in the generations row (relative to the root)
    problem: str                   # what the check found, naming the file
    at: datetime


class _BrokenImage(Exception):
    def __init__(self, image_id: str, error: DataError):
        super().__init__(image_id)
        self.image_id, self.error = image_id, error


class Assigner:
    """Thread-safe assignment and label writing for one round (one dataset root).

    One process serves a round: the in-memory state (leases, who answered what) is rebuilt from
    the store at start-up but not re-read from it afterwards, except for new generations rows.
    """

    def __init__(self, store: Store, *, overlap: int = 3, tasks: tuple[str, ...] = TASKS,
                 rank_max_images: int = 4, gold: dict[str, str] | None = None, gold_share: float = 0.0,
                 lease_s: float = 900.0, guideline_version: str = "unversioned", seed: int = 0,
                 clock=time.time, round: int | None = None, marks: MarksMode = "optional"):
        self.store = store
        self.round = round  # None until the root has images: then its newest round
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
        self._raters: dict[str, RaterState] = {}
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
        self._withdrawn: dict[str, Withdrawn] = {}
        self._gens_signature: tuple | None = None
        self._last_refresh = 0.0
        self.answers = AnswerPath(
            store=store, lock=self._lock, overlap=overlap, lease_s=lease_s, guideline_version=guideline_version,
            clock=clock, answered=self._answered, filled=self._filled, pending=self._pending, holders=self._holders,
            rater=self._rater, lease=self._lease, release=self._release, add_filled=self._add_filled,
            check_task=self._check_task, item=lambda key: self._by_key.get(key), rescan=self._rescan, marks=marks)
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
        served = served_round(store, cfg.round, gens)  # a round with no images: the error
        gold = ensure_gold(store, cfg.gold, served.images, seed=cfg.seed) if cfg.uses_gold else {}
        return cls(store, overlap=cfg.overlap, tasks=cfg.tasks, rank_max_images=cfg.rank_max_images,
                   gold=gold, gold_share=cfg.gold.share if cfg.uses_gold else 0.0, lease_s=cfg.lease_s,
                   guideline_version=guideline_version, seed=cfg.seed, round=served.round, marks=cfg.marks)

    # -- loading ---------------------------------------------------------------------------

    def _load_generations(self, force: bool = False) -> None:
        sig = round_signature(self.store)
        if not force and sig == self._gens_signature:
            return
        served = served_round(self.store, self.round)
        self.round = served.round
        all_gens = served.images  # the served images only: nothing else is handed out or opened
        gens = all_gens[~all_gens["image_id"].isin(list(self._withdrawn))]
        items = build_items(gens, self.tasks, self.rank_max_images, self.gold_answer, self.seed)
        by_key = {(it.task, it.item_id): it for task in TASKS for it in items[task]}
        gold_rows = gens[gens["image_id"].isin(self.gold_answer.keys())]
        gold_items = [Item("binary", r.image_id, r.prompt_id, r.prompt, (r.image_id,), is_gold=True)
                      for r in gold_rows.itertuples()]
        order = seeds.rng(self.seed, seeds.Stream.GOLD_SERVING).permutation(len(gold_items))
        with self._lock:
            self._items = items
            self._by_key = by_key | {("binary", g.item_id): g for g in gold_items}
            self._gold_items = [gold_items[i] for i in order]
            self._image_rows = all_gens.set_index("image_id", drop=False)[
                ["image_id", "prompt", "image_path", "width", "height", "sha256"]].to_dict("index")
            self._full_prefix = {t: 0 for t in TASKS}
            self._gens_signature = sig
            self._recount_given()

    def _recount_given(self) -> None:
        self._given = {t: sum(min(self._filled[(t, it.item_id)], self.overlap) for it in self._items[t])
                       for t in TASKS}

    def _load_labels(self) -> None:
        binary = current(self.store, BINARY_LABELS.name).to_pandas()
        rankings = current(self.store, RANKINGS.name).to_pandas()
        entries = []
        for r in binary.itertuples():
            entries.append((r.created_at, r.rater_id,
                            AnswerEntry("binary", r.label_id, ("binary", r.image_id), r.label != "skip")))
        for r in rankings.itertuples():
            entries.append((r.created_at, r.rater_id,
                            AnswerEntry("ranking", r.ranking_id, ("ranking", ranking_item_id(r.image_ids)), True)))
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

    def _rater(self, rater_id: str) -> RaterState:
        with self._lock:
            st = self._raters.get(rater_id)
            if st is None:
                st = self._raters[rater_id] = RaterState()
                st.rng = seeds.rng(self.seed, seeds.Stream.RATER_SERVING, seeds.text_key(rater_id))
            return st

    def _live_holders(self, key, now: float, exclude: str | None = None) -> int:
        holders = self._holders.get(key)
        if not holders:
            return 0
        for r in [r for r, end in holders.items() if end <= now]:
            del holders[r]
        return sum(1 for r in holders if r != exclude)

    def _lease(self, st: RaterState, rater_id: str, item: Item, now: float) -> Assignment:
        a = Assignment(item, secrets.token_hex(8), now)
        st.open[item.task] = a
        self._holders[(item.task, item.item_id)][rater_id] = now + self.lease_s
        return a

    def _release(self, st: RaterState, rater_id: str, task: str) -> None:
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

    def _rescan(self, task: str) -> None:
        """Serve ``task``'s items from the first again (an undo reopened an earlier one)."""
        self._full_prefix[task] = 0

    # -- answering: the answer path's (labeling_app.answers) --------------------------------

    def submit_binary(self, rater_id: str, token: str | None, label: str, reason: str | None = None, *,
                      duration_ms: int | None = None, points=(), words=()) -> Receipt:
        """:meth:`AnswerPath.submit_binary <labeling_app.answers.AnswerPath.submit_binary>`."""
        return self.answers.submit_binary(rater_id, token, label, reason, duration_ms=duration_ms,
                                          points=points, words=words)

    def answer_bad(self, rater_id: str, token: str | None, points=(), words=(), note: str | None = None, *,
                   duration_ms: int | None = None) -> Receipt:
        """Answer bad with marks, the one write path of the page's B and the simulated raters:
        ``points`` (x, y) fractions of the image where it is wrong, ``words`` indices of
        :func:`data.marks.prompt_words` of the prompt, ``note`` why nothing could be marked."""
        return self.submit_binary(rater_id, token, "bad", note, duration_ms=duration_ms, points=points, words=words)

    def submit_ranking(self, rater_id: str, token: str | None, ranks, *, duration_ms: int | None = None) -> Receipt:
        """:meth:`AnswerPath.submit_ranking <labeling_app.answers.AnswerPath.submit_ranking>`."""
        return self.answers.submit_ranking(rater_id, token, ranks, duration_ms=duration_ms)

    def undo(self, rater_id: str, task: str) -> Assignment | None:
        """:meth:`AnswerPath.undo <labeling_app.answers.AnswerPath.undo>`."""
        return self.answers.undo(rater_id, task)

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
        return self.serve(rater_id, task).assignment

    def serve(self, rater_id: str, task: str, a: Assignment | None = None) -> Served:
        """The item to show the rater (``a``, e.g. the item an undo gave back, else their open
        item or a new one) with its checked image files.  An image that fails the check is
        withdrawn (:meth:`withdrawn`) and the rater's next item is served instead."""
        self._check_task(task)
        for _ in range(2 + sum(len(v) for v in self._items.values()) + len(self._gold_items)):
            a = a or self._open_or_pick(rater_id, task)
            if a is None:
                return Served(None)
            try:
                return Served(a, tuple(self._checked_path(i) for i in a.item.image_ids))
            except _BrokenImage as e:
                self._withdraw(e.image_id, e.error)
                a = None
        raise RuntimeError("serve: withdrawing broken images did not end")  # each pass withdraws one

    def _checked_path(self, image_id: str) -> Path:
        try:
            return self.image_path(image_id)
        except DataError as e:
            raise _BrokenImage(image_id, e) from None

    def _withdraw(self, image_id: str, error: DataError) -> None:
        """Take every item showing ``image_id`` out of serving, for this run of the app."""
        with self._lock:
            if image_id in self._withdrawn:
                return
            row = self._image_rows.get(image_id, {})
            self._withdrawn[image_id] = Withdrawn(image_id, str(row.get("prompt", "")), str(row.get("image_path", "")),
                                                  error.problem, datetime.now(timezone.utc))

            def keep(item: Item) -> bool:
                return image_id not in item.image_ids

            self._items = {t: [it for it in items if keep(it)] for t, items in self._items.items()}
            self._gold_items = [g for g in self._gold_items if keep(g)]
            self._by_key = {k: it for k, it in self._by_key.items() if keep(it)}
            self._full_prefix = {t: 0 for t in TASKS}
            self._recount_given()
            for rater_id, st in self._raters.items():
                for task in [t for t, a in st.open.items() if not keep(a.item)]:
                    self._release(st, rater_id, task)
        log.warning("withdrew image %s from serving: %s", image_id, error.problem)

    def withdrawn(self) -> list[Withdrawn]:
        """The images withdrawn from serving since the app started, oldest first."""
        with self._lock:
            return list(self._withdrawn.values())

    def _open_or_pick(self, rater_id: str, task: str) -> Assignment | None:
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

    def _pick(self, st: RaterState, rater_id: str, task: str, now: float) -> Item | None:
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
