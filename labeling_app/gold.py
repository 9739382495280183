"""Gold items: images with a known binary answer, mixed unannounced into raters' streams.

The gold pool is drawn from the images a round serves (:mod:`labeling_app.rounds`: the round's
images, or its selected ones) and fixed the first time that round starts (it lands in the ``gold``
table, so a restart, the simulated raters and the admin statistics all see the same pool; each
round of the closed loop adds its own):

- ``source=oracle`` (shapes world): a ``share`` of the images, half of them ones the oracle judges
  aligned ("good") and half misaligned ("bad") where the round has both, so a rater who always
  answers "good" scores about 50 %, not the round's base rate;
- ``source=file``: a CSV or Parquet file with columns ``image_id`` and ``answer`` (good|bad), and
  optionally the reference marks of a bad item, ``points`` ([[x, y], ...] in [0, 1] of the image;
  JSON text in a CSV) and ``words`` ([i, ...], indices of :func:`data.marks.prompt_words`);
- ``source=auto`` (the default) follows the data: the file when ``gold.file`` is given, else the
  oracle on a round of shapes-world prompts and no gold items on any other round.

A bad gold item can carry **reference marks**: where a careful rater clicks and which words they
mark (the oracle's: :func:`shapes.regions.reference_marks` of its exact problem regions).  The
admin tab compares each rater's marks on gold items with them (:func:`labeling_app.stats.gold_marks`).
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd

from core import seeds
from core.errors import DataError, UserError
from data.generations import load_image
from data.marks import check_marks, prompt_words
from data.schemas import GENERATIONS, GOLD
from data.store import Store
from labeling_app.config import GoldConfig
from labeling_app.rounds import shapes_prompts
from shapes.regions import problem_regions, reference_marks
from shapes.world import Prompt


def read_gold(store: Store) -> dict[str, str]:
    """image_id -> answer, for the round's gold pool (empty if it has none)."""
    t = store.read(GOLD)
    return dict(zip(t["image_id"].to_pylist(), t["answer"].to_pylist()))


def read_gold_marks(store: Store) -> dict[str, tuple[list[tuple[float, float]], list[int]]]:
    """image_id -> (points, words): the reference marks of the gold items that carry them."""
    t = store.read(GOLD).to_pylist()
    return {r["image_id"]: ([(p["x"], p["y"]) for p in r["points"] or ()], list(r["words"] or ()))
            for r in t if r["points"] is not None or r["words"] is not None}


def gold_source(gold: GoldConfig, generations: pd.DataFrame) -> str:
    """The gold source a round uses: ``gold.source``, with ``auto`` resolved on the round's images
    (``generations``: the rows it serves)."""
    if gold.source != "auto":
        return gold.source
    if gold.file:
        return "file"
    return "oracle" if shapes_prompts(generations) else "none"


def ensure_gold(store: Store, gold: GoldConfig, generations: pd.DataFrame, seed: int = 0) -> dict[str, str]:
    """The gold pool of the images ``generations`` (the rows a round serves), creating it on first
    use; empty when gold is switched off.  Gold of other images (another round's) is left out."""
    source = gold_source(gold, generations)
    if source == "none" or gold.share <= 0 or generations.empty:
        return {}
    served = set(generations["image_id"])

    def pool() -> dict[str, str]:
        return {i: a for i, a in read_gold(store).items() if i in served}

    if existing := pool():
        return existing
    if source == "oracle":
        rows = _oracle_gold(store, generations, gold.share, seed)
    else:  # the file may name any image of the root; the served ones are this round's gold
        known = read_gold(store)
        rows = [r for r in _file_gold(Path(gold.file), store.to_pandas(GENERATIONS))
                if r["image_id"] in served and r["image_id"] not in known]
    now = datetime.now(timezone.utc)
    for r in rows:
        r["created_at"] = now
    if rows:
        store.append(GOLD, rows)
    return pool()


def _oracle_gold(store: Store, gens: pd.DataFrame, share: float, seed: int) -> list[dict]:
    def parse(text):
        try:
            return Prompt.parse(text)
        except UserError:
            return None

    prompts = {t: parse(t) for t in gens["prompt"].unique()}
    eligible = gens[gens["prompt"].map(lambda t: prompts[t] is not None)]
    if eligible.empty:
        raise UserError(
            "gold.source=oracle needs shapes-world prompts, and no prompt of this round is one.",
            "give a gold file (gold.source=file gold.file=<csv with image_id,answer>) or turn gold "
            "items off (gold.share=0).")
    n = max(1, int(round(share * len(gens))))
    rng = seeds.rng(seed, seeds.Stream.ORACLE_GOLD)
    order = rng.permutation(len(eligible))
    picked: dict[str, list[dict]] = {"good": [], "bad": []}
    # Judge candidates in random order until both halves are full or 4n images were tried.
    for tried, i in enumerate(order):
        if all(len(v) >= (n + 1) // 2 for v in picked.values()) or tried >= 4 * n:
            break
        row = eligible.iloc[int(i)]
        truth = problem_regions(load_image(store.root, row), prompts[row["prompt"]])
        answer = "good" if truth.aligned else "bad"
        if len(picked[answer]) < n:
            points, words = reference_marks(truth) if answer == "bad" else (None, None)
            picked[answer].append(dict(image_id=row["image_id"], prompt_id=row["prompt_id"],
                                       answer=answer, source="oracle", words=words,
                                       points=None if points is None else [{"x": x, "y": y} for x, y in points]))
    good, bad = picked["good"], picked["bad"]
    half = min(len(good), len(bad), n // 2)
    rows = good[:half] + bad[:half]
    rows += (good[half:] + bad[half:])[: n - len(rows)]  # one class short: fill up with the other
    return rows


def _file_gold(path: Path, gens: pd.DataFrame) -> list[dict]:
    if not path.is_file():
        raise UserError(f"gold file {path} does not exist.", "pass gold.file=<csv or parquet file>.")
    try:
        df = pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path)
    except Exception as e:  # noqa: BLE001 - any parse failure is the user's file
        raise UserError(f"gold file {path} could not be read ({e}).",
                        "write a CSV or Parquet file with columns image_id, answer.") from None
    missing = {"image_id", "answer"} - set(df.columns)
    if missing:
        raise UserError(f"gold file {path} lacks column(s) {sorted(missing)}.",
                        "give it columns image_id and answer (good or bad).")
    df = df.astype({"image_id": str, "answer": str})
    bad = sorted(set(df["answer"]) - {"good", "bad"})
    if bad:
        raise UserError(f"gold file {path} has answers {bad}.", "answers are 'good' or 'bad'.")
    prompt_of = dict(zip(gens["image_id"], gens["prompt_id"]))
    unknown = sorted(set(df["image_id"]) - set(prompt_of))
    if unknown:
        raise UserError(f"gold file {path} names {len(unknown)} image(s) not in this round (dataset root), e.g. {unknown[:3]}.",
                        "use image_id values of the round's generations table.")
    text_of = dict(zip(gens["image_id"], gens["prompt"]))
    rows = []
    for n, r in enumerate(df.to_dict("records")):
        row = dict(image_id=r["image_id"], prompt_id=prompt_of[r["image_id"]], answer=r["answer"], source="file")
        try:
            row |= _file_marks(r, len(prompt_words(text_of[r["image_id"]])))
        except DataError as e:
            raise UserError(f"gold file {path}, row {n + 1} (image {r['image_id']}): {e.problem}", e.fix) from None
        rows.append(row)
    return rows


def _file_marks(r: dict, n_words: int) -> dict:
    """A gold file row's reference marks (``points``, ``words``; a missing or empty cell: none), checked
    as a rater's are; a CSV cell holds them as JSON text: [[0.25, 0.5], [0.7, 0.1]] and [2]."""
    def cell(name):
        v = r.get(name)
        if isinstance(v, str):
            try:
                return json.loads(v) if v.strip() else None
            except json.JSONDecodeError:
                raise DataError(f"its {name} {v!r} is not JSON.", f"write {name} as JSON, e.g. "
                                + ("[[0.25, 0.5]]" if name == "points" else "[0, 2]") + ".") from None
        return None if v is None or (isinstance(v, float) and v != v) else list(v)

    points, words = cell("points"), cell("words")
    if points is None and words is None:
        return {}
    if r["answer"] != "bad":
        raise DataError("it gives reference marks for a 'good' item.", "mark only items whose answer is 'bad'.")
    points, words = check_marks(points or [], words or [], n_words)
    return {"points": [{"x": x, "y": y} for x, y in points], "words": words}
