"""The answer path of a round: storing, checking and undoing a rater's labels.

:class:`AnswerPath` is the part of :class:`~labeling_app.assignment.Assigner` that writes (the
rest serves items); nothing else writes labels.  Its rules:

- **Writes.**  A submission is checked against the rater's current item (an opaque token, so a
  stale tab or a double click cannot label the wrong item or the same item twice), appended
  durably through :class:`data.store.Store` and only then acknowledged.  A rater's operations are
  serialised by a per-rater lock; the shared lock is never held during a disk write, so concurrent
  raters' appends are group-committed.
- **Validation.**  A binary label is good|bad|skip (a skip reason is kept, cut to
  ``MAX_REASON_CHARS``); ranks must order the item's images (:func:`data.schemas.validate_ranks`).
  A refused answer raises a :class:`Refused` error and writes nothing.
- **Marks** (:mod:`data.marks`): a bad answer may carry points on the image and prompt word
  indices (``marks`` off | optional | required, :attr:`LabelConfig.marks`).  They are checked
  with the answer (points in [0, 1], at most ``MAX_MARK_POINTS`` of them, words of the item's
  prompt, marks only on a bad answer, and in required mode a mark or a reason), and their
  ``marks`` row is appended durably just before the label row, in the same claim: a refused
  answer writes neither, and marks whose label never landed are dropped by
  :func:`data.marks.current_marks`, as are those of an undone answer.
- **Undo** appends a retraction (:func:`data.labels.retract`) for the rater's last label of a
  task and gives them that item again (its marks go with it).
"""

from __future__ import annotations

import threading
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Callable

import numpy as np

from core.errors import DataError, UserError
from data.labels import retract
from data.marks import MARKS, check_marks, prompt_words
from data.schemas import BINARY_LABELS, LABELS, RANKINGS, validate_ranks
from data.store import Store
from labeling_app.config import MarksMode
from labeling_app.items import Assignment, Item

TABLE_OF_TASK = {"binary": BINARY_LABELS.name, "ranking": RANKINGS.name}
MAX_REASON_CHARS = 500
# Points one answer may mark.  A rater marks each wrong thing with a click or a few (RichHF; the
# simulated raters click a region at most MarkProfile.max_clicks times), so a hundred covers every
# wrong thing of an image several times over.  Each point is a disk drawn into the image's heatmap
# for every Admin view, export and `make reward`, so without a cap one answer could make those slow.
MAX_MARK_POINTS = 100


class Refused(UserError):
    """A submission the server did not store (nothing was written)."""


class StaleItem(Refused):
    """The answer was for an item that is no longer the rater's current one (answered in another
    tab, a double click, or lost to another rater after its lease ran out)."""


class InvalidAnswer(Refused):
    """The answer itself is not acceptable (an unknown label, ranks that are not an ordering)."""


@dataclass(frozen=True)
class Receipt:
    """An acknowledged label: durable in the store when this is returned."""
    table: str
    row_id: str
    item: Item
    rater_id: str


@dataclass
class AnswerEntry:
    task: str
    row_id: str
    item_key: tuple[str, str]
    counts: bool                   # a non-skip answer (counts toward K)


@dataclass
class RaterState:
    lock: threading.Lock = field(default_factory=threading.Lock)
    open: dict[str, Assignment] = field(default_factory=dict)
    history: list[AnswerEntry] = field(default_factory=list)
    rng: np.random.Generator | None = None


ItemKey = tuple[str, str]  # (task, item_id)


@dataclass
class AnswerPath:
    """Answering, a component of :class:`~labeling_app.assignment.Assigner`, which builds it over
    its own round state (the same objects, so both see every change made under ``lock``) and its
    lease operations."""

    store: Store
    lock: threading.RLock  # the assigner's; guards the counts below and every rater's open items
    overlap: int  # K: non-skip answers an item needs
    lease_s: float  # how long an item shown to a rater stays theirs
    guideline_version: str  # stored with every label
    clock: Callable[[], float]  # seconds, as time.time
    answered: dict[ItemKey, set[str]]  # raters who answered each item
    filled: dict[ItemKey, int]  # non-skip answers of each item
    pending: dict[ItemKey, int]  # answers of each item being written now
    holders: dict[ItemKey, dict[str, float]]  # each item's raters -> their lease's end
    rater: Callable[[str], RaterState]  # a rater's state, made on first use
    lease: Callable[[RaterState, str, Item, float], Assignment]  # make an item the rater's current one
    release: Callable[[RaterState, str, str], None]  # drop the rater's current item of a task
    add_filled: Callable[[ItemKey, int], None]  # change an item's non-skip count (and the round's completion)
    check_task: Callable[[str], None]  # refuse a task the round does not have
    item: Callable[[ItemKey], Item | None]  # the round's item of a key; None once it left the round
    rescan: Callable[[str], None]  # serve a task's items from the first again (an undo reopened one)
    marks: MarksMode  # marks on bad answers: off | optional | required

    def _claim(self, st: RaterState, rater_id: str, task: str, token: str | None, counts: bool) -> Assignment:
        """Check that ``token`` is the rater's current item of ``task`` and reserve its slot."""
        a = st.open.get(task)
        if a is None or not token or token != a.token:
            raise StaleItem("this answer was for an item that is not your current one (answered "
                            "already, maybe in another tab); it was not saved.",
                            "answer the item now shown.")
        key = (task, a.item.item_id)
        if rater_id in self.answered[key]:
            self.release(st, rater_id, task)
            raise StaleItem("you already answered this item; the answer was not saved.",
                            "answer the item now shown.")
        if counts and not a.item.is_gold:
            now = self.clock()
            if self.filled[key] + self.pending[key] >= self.overlap:
                self.release(st, rater_id, task)
                raise StaleItem("other raters completed this item while it was open (over "
                                f"{self.lease_s / 60:.0f} minutes); your answer was not saved.",
                                "answer the item now shown.")
            self.holders[key][rater_id] = now + self.lease_s
        self.pending[key] += counts
        return a

    def _commit(self, st: RaterState, rater_id: str, a: Assignment, table: str, row: dict, row_id: str,
                counts: bool, marks: dict | None = None) -> Receipt:
        key = (a.item.task, a.item.item_id)
        try:
            if marks is not None:
                self.store.append(MARKS, [marks])  # first: marks without their label are never read
            self.store.append(table, [row])
        except BaseException:
            with self.lock:
                self.pending[key] -= counts
            raise
        with self.lock:
            self.pending[key] -= counts
            self.add_filled(key, int(counts))
            self.answered[key].add(rater_id)
            self.release(st, rater_id, a.item.task)
            st.history.append(AnswerEntry(a.item.task, row_id, key, counts))
        return Receipt(table, row_id, a.item, rater_id)

    def _duration(self, a: Assignment, duration_ms: int | None) -> int:
        if duration_ms is not None:
            return max(0, int(duration_ms))
        return max(0, int(round((self.clock() - a.shown_at) * 1000)))

    def submit_binary(self, rater_id: str, token: str | None, label: str, reason: str | None = None, *,
                      duration_ms: int | None = None, points=(), words=()) -> Receipt:
        """Store the rater's answer to their current binary item.  ``duration_ms`` defaults to the
        time since the item was first shown (the simulated raters pass their own).  A bad answer
        may carry marks: ``points`` as (x, y) fractions of the image, ``words`` as indices of
        :func:`data.marks.prompt_words` of the item's prompt; its ``reason`` is kept with them (why
        nothing could be marked).  Marks with any other answer are refused."""
        self.check_task("binary")
        if label not in LABELS:
            raise InvalidAnswer(f"label {label!r} is not one of {list(LABELS)}.", "answer good, bad or skip.")
        reason = (reason or "").strip()[:MAX_REASON_CHARS] or None
        points, words = list(points or ()), list(words or ())
        st = self.rater(rater_id)
        with st.lock:
            if label == "bad" and self.marks != "off" or points or words:
                with self.lock:
                    a = st.open.get("binary")
                    prompt = a.item.prompt if a is not None and a.token == token else None
                if prompt is not None:  # else _claim refuses the stale token
                    points, words = self._check_marks(label, prompt, points, words, reason)
            with self.lock:
                a = self._claim(st, rater_id, "binary", token, counts=label != "skip")
            row_id = uuid.uuid4().hex
            now = datetime.now(timezone.utc)
            row = dict(label_id=row_id, image_id=a.item.item_id, prompt_id=a.item.prompt_id,
                       rater_id=rater_id, label=label, skip_reason=reason if label == "skip" else None,
                       created_at=now, duration_ms=self._duration(a, duration_ms),
                       is_gold=a.item.is_gold, guideline_version=self.guideline_version)
            marks = None
            if label == "bad" and self.marks != "off" and (points or words or reason):
                marks = dict(label_id=row_id, image_id=a.item.item_id, prompt_id=a.item.prompt_id,
                             rater_id=rater_id, points=[dict(x=x, y=y) for x, y in points], words=words,
                             note=reason, created_at=now)
            return self._commit(st, rater_id, a, BINARY_LABELS.name, row, row_id, label != "skip", marks)

    def _check_marks(self, label: str, prompt: str, points: list, words: list,
                     reason: str | None) -> tuple[list[tuple[float, float]], list[int]]:
        """The marks of an answer as stored, or :class:`InvalidAnswer` (nothing is written)."""
        if (points or words) and label != "bad":
            raise InvalidAnswer(f"you marked {len(points)} point(s) and {len(words)} word(s) but answered "
                                f"{label}; marks say where a bad image is wrong, so nothing was saved.",
                                "remove the marks (click a dot, or a marked word, again) or answer bad.")
        if (points or words) and self.marks == "off":
            raise InvalidAnswer("marking is off in this round (marks=off), so nothing was saved.",
                                "answer without marks.")
        if len(points) > MAX_MARK_POINTS:
            raise InvalidAnswer(f"you marked {len(points)} points; an answer keeps at most {MAX_MARK_POINTS}, "
                                "so nothing was saved.",
                                "remove some points (click a dot to remove it): a click or a few on each "
                                "wrong thing is enough.")
        try:
            points, words = check_marks(points, words, len(prompt_words(prompt)))
        except DataError as e:
            raise InvalidAnswer(f"{e.problem} Nothing was saved.", e.fix) from None
        if label == "bad" and self.marks == "required" and not (points or words or reason):
            raise InvalidAnswer("this round asks where a bad image is wrong, and nothing was marked; "
                                "nothing was saved.",
                                "click where the image is wrong or a wrong word of the prompt, or say in "
                                "the reason box why nothing can be marked (e.g. an object is missing).")
        return points, words

    def submit_ranking(self, rater_id: str, token: str | None, ranks, *,
                       duration_ms: int | None = None) -> Receipt:
        """Store the rater's ranks (aligned with the item's image_ids; 1 best, ties share a rank)."""
        self.check_task("ranking")
        st = self.rater(rater_id)
        with st.lock:
            with self.lock:
                a = st.open.get("ranking")
                n = len(a.item.image_ids) if a is not None and a.token == token else None
            if n is not None:
                ranks = self._parse_ranks(ranks, n)
            with self.lock:
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
        self.check_task(task)
        st = self.rater(rater_id)
        with st.lock:
            with self.lock:
                entry = next((e for e in reversed(st.history) if e.task == task), None)
            if entry is None:
                raise InvalidAnswer(f"you have no {task} answer to undo.", "undo works on answers you gave.")
            retract(self.store, TABLE_OF_TASK[task], entry.row_id, rater_id)
            with self.lock:
                st.history.remove(entry)
                self.answered[entry.item_key].discard(rater_id)
                self.add_filled(entry.item_key, -int(entry.counts))
                self.rescan(task)
                self.release(st, rater_id, task)
                item = self.item(entry.item_key)
                return None if item is None else self.lease(st, rater_id, item, self.clock())
