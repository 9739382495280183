"""Gold items with reference marks (issue 57 item 1): the oracle's and a lead's file, raters'
marks compared with them in the admin report, old roots, bad input."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from scipy import ndimage

from core.errors import UserError
from data.generations import load_image
from data.schemas import GOLD
from data.store import PART_GLOB, Store, migrate
from labeling_app.assignment import Assigner
from labeling_app.config import GoldConfig
from labeling_app.gold import ensure_gold, read_gold_marks
from labeling_app.simulate import run_simulated_round
from labeling_app.stats import GOLD_HIT_RADIUS, gold_marks, round_report
from shapes.raters import MarkProfile, RaterProfile
from shapes.regions import problem_regions, reference_marks
from shapes.render import render_round
from shapes.world import prompt_set


@pytest.fixture
def round_store(tmp_path):
    store = Store(tmp_path / "round")
    render_round(store, prompt_set("train")[:8], per_prompt=3, seed=0, mismatch_rate=0.6)
    return store


def test_reference_marks_lie_in_every_problem_region(round_store):
    gens = round_store.to_pandas("generations")
    checked = 0
    for g in gens.itertuples():
        truth = problem_regions(load_image(round_store.root, g._asdict()), g.prompt)
        points, words = reference_marks(truth)
        assert words == list(truth.words)
        if not truth.mask.any():
            assert points == []
            continue
        h, w = truth.mask.shape
        cells = {(int(y * h), int(x * w)) for x, y in points}
        assert all(truth.mask[r, c] for r, c in cells)  # every point on a wrong pixel

        labelled, n = ndimage.label(truth.mask)
        assert {labelled[r, c] for r, c in cells} == set(range(1, n + 1))  # every region has one
        checked += 1
    assert checked >= 5


def test_gold_marks_counts_clicks_on_target_and_word_agreement():
    binary = pd.DataFrame({"label_id": ["a", "b", "c", "d", "e"], "rater_id": ["r1", "r1", "r2", "r2", "r2"],
                           "image_id": ["g1", "g2", "g1", "x", "g3"], "label": ["bad"] * 5,
                           "is_gold": [True, True, True, False, True]})
    marks = pd.DataFrame({"label_id": ["a", "c", "d", "e"],
                          "points": [[{"x": 0.5, "y": 0.5}, {"x": 0.9, "y": 0.9}], [{"x": 0.52, "y": 0.5}], [],
                                     [{"x": 0.9, "y": 0.9}]],
                          "words": [[1], [1, 2], [0], [0]]})
    reference = {"g1": ([(0.5, 0.5)], [1]), "g2": ([(0.1, 0.1)], []), "g3": ([], [0])}  # g3: words only
    out = gold_marks(binary, marks, reference).set_index("rater_id")
    # r1: one of two clicks on target on g1, nothing marked on g2 (words agree: both empty)
    assert out.loc["r1", "gold_marked"] == 2 and out.loc["r1", "gold_point_precision"] == 0.5
    assert out.loc["r1", "gold_word_agreement"] == pytest.approx((1.0 + 1.0) / 2)
    # r2: its one click on g1 within the radius, words {1, 2} against {1}; on g3 (no reference
    # points) its click is left out and its words agree; its non-gold answer is not counted
    assert out.loc["r2", "gold_marked"] == 2 and out.loc["r2", "gold_point_precision"] == 1.0
    assert out.loc["r2", "gold_word_agreement"] == pytest.approx((0.5 + 1.0) / 2)
    assert 0.02 < GOLD_HIT_RADIUS  # r2's click is 0.02 off the reference point


def test_oracle_gold_carries_reference_marks_and_the_report_scores_raters_marks(round_store):
    gens = round_store.to_pandas("generations")
    gold = ensure_gold(round_store, GoldConfig(share=0.5), gens, seed=0)
    ref = read_gold_marks(round_store)
    assert set(ref) == {i for i, a in gold.items() if a == "bad"} and ref
    assert all(points or words for points, words in ref.values())
    asg = Assigner(round_store, overlap=1, tasks=("binary",), gold=gold, gold_share=0.9, seed=1)
    run_simulated_round(asg, [RaterProfile("careful", flip_rate=0.0, skip_rate=0.0)], seed=2,
                        marks=MarkProfile(position_noise=0.0, miss_rate=0.0, word_miss_rate=0.0))
    # a rater who answers bad everywhere and clicks in a corner, marking the first word
    for _ in range(len(gens)):
        a = asg.current("corner", "binary")
        if a is None:
            break
        asg.answer_bad("corner", a.token, [(0.01, 0.01)], [0])
    rep = round_report(round_store).gold.set_index("rater_id")
    assert rep.loc["careful", "gold_marked"] > 0 and rep.loc["corner", "gold_marked"] > 0
    assert rep.loc["careful", "gold_point_precision"] == 1.0
    assert rep.loc["careful", "gold_word_agreement"] == 1.0
    assert rep.loc["corner", "gold_point_precision"] < 0.5
    assert rep.loc["corner", "gold_word_agreement"] < 1.0
    summary = round_report(round_store).summary()
    assert summary["gold_marks"]["careful"]["point_precision"] == 1.0


def test_a_gold_file_gives_reference_marks_and_bad_marks_are_one_error(tmp_path, round_store):
    gens = round_store.to_pandas("generations")
    ids = list(gens["image_id"][:3])
    f = tmp_path / "gold.csv"

    def write(points, words, answers=("good", "bad", "bad")):
        pd.DataFrame({"image_id": ids, "answer": list(answers), "points": points, "words": words}).to_csv(f, index=False)
        return GoldConfig(share=0.1, source="file", file=str(f))

    bad_inputs = [
        (["", "[[1.5, 0.2]]", ""], ["", "", ""], "row 2 .*outside the image"),
        (["", "", ""], ["", "[0, 99]", ""], "row 2 .*past the prompt"),
        (["[[0.5, 0.5]]", "", ""], ["", "", ""], "row 1 .*'good' item"),
        (["", "0.5, 0.5", ""], ["", "", ""], "row 2 .*not JSON"),
    ]
    for points, words, match in bad_inputs:
        with pytest.raises(UserError, match=match):
            ensure_gold(round_store, write(points, words), gens)
        assert not round_store.exists(GOLD)  # nothing written
    gold = ensure_gold(round_store, write(["", "[[0.25, 0.5], [0.7, 0.1]]", ""], ["", "[1, 0]", ""]), gens)
    assert gold == dict(zip(ids, ["good", "bad", "bad"]))
    ref = read_gold_marks(round_store)
    assert list(ref) == [ids[1]]
    assert ref[ids[1]][1] == [0, 1] and np.allclose(ref[ids[1]][0], [(0.25, 0.5), (0.7, 0.1)])


def test_a_version_3_gold_part_reads_without_reference_marks_and_migrates(round_store):
    gens = round_store.to_pandas("generations")
    ensure_gold(round_store, GoldConfig(share=0.25), gens, seed=0)
    for part in round_store.table_dir(GOLD).glob(PART_GLOB):  # as version 3 wrote it
        t = pq.read_table(part).drop_columns(["points", "words"])
        pq.write_table(t.replace_schema_metadata({**t.schema.metadata, b"schema_version": b"3"}), part)
    assert round_store.read(GOLD).column("points").null_count == round_store.read(GOLD).num_rows
    assert read_gold_marks(round_store) == {}
    assert migrate(round_store.root)["gold"] == 6
    part, = round_store.table_dir(GOLD).glob(PART_GLOB)
    assert pq.read_table(part).schema.names == GOLD.schema.names
