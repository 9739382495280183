"""Simulated raters mark their bad answers through the labeling app's write path
(labeling_app.simulate with a MarkProfile): the marks land as the app writes them, the answers are
the ones given without marks, and they are the marks shapes.marking adds to a round afterwards."""

import shutil

import pytest

from core.errors import UserError
from data import Store
from data.marks import MARKS, current_marks, prompt_words
from labeling_app.assignment import Assigner
from labeling_app.config import LabelConfig
from labeling_app.simulate import NOTHING_MARKED, SimulateConfig, run_simulated_round, simulate, simulate_round
from shapes.marking import simulate_marks
from shapes.raters import MarkProfile, default_panel
from shapes.render import render_round
from shapes.world import prompt_set

ANSWER = ["image_id", "rater_id", "label", "skip_reason", "duration_ms", "is_gold"]


@pytest.fixture
def twin_roots(tmp_path):
    """The same rendered round in two roots, to label once without marks and once with."""
    a = tmp_path / "plain"
    render_round(Store(a), prompt_set("train")[:6], per_prompt=3, seed=1, mismatch_rate=0.6)
    shutil.copytree(a, tmp_path / "marked")
    return Store(a), Store(tmp_path / "marked")


def _answers(store: Store, table: str, cols: list[str]) -> list[tuple]:
    return sorted(map(tuple, store.to_pandas(table)[cols].astype(str).values.tolist()))


def test_marks_go_through_the_app_path_and_leave_the_answers_as_they_were(twin_roots):
    plain, marked = twin_roots
    panel = default_panel(3, flip_rate=0.1)
    simulate_round(plain, panel, overlap=2, seed=3)
    summary = simulate_round(marked, panel, overlap=2, seed=3, marks=MarkProfile())
    # the answers themselves are byte for byte those given without marks (ids and times aside)
    assert _answers(marked, "binary_labels", ANSWER) == _answers(plain, "binary_labels", ANSWER)
    assert _answers(marked, "rankings", ["rater_id", "image_ids", "ranks", "duration_ms"]) == \
        _answers(plain, "rankings", ["rater_id", "image_ids", "ranks", "duration_ms"])
    assert not plain.exists(MARKS) or plain.read(MARKS).num_rows == 0
    # one row per marked bad answer, every one readable as the app's marks
    labels = marked.to_pandas("binary_labels").set_index("label_id")
    marks = marked.to_pandas(MARKS)
    assert summary.marks == len(marks) == current_marks(marked).num_rows > 0
    assert (labels.loc[marks["label_id"], "label"] == "bad").all()
    assert (labels.loc[marks["label_id"], "rater_id"].values == marks["rater_id"].values).all()
    prompts = marked.to_pandas("generations").set_index("image_id")["prompt"]
    for r in marks.itertuples():
        assert all(0 <= p["x"] <= 1 and 0 <= p["y"] <= 1 for p in r.points)
        assert all(0 <= w < len(prompt_words(prompts[r.image_id])) for w in r.words)
        assert len(r.points) or len(r.words)
    # marking the unmarked round afterwards (shapes.marking) gives each answer the same marks
    simulate_marks(plain, seed=3)

    def by_answer(store):
        return {(r.rater_id, r.image_id): ([(p["x"], p["y"]) for p in r.points], list(r.words))
                for r in store.to_pandas(MARKS).itertuples()}

    assert by_answer(plain) == by_answer(marked)


def test_marking_follows_the_rounds_mode(twin_roots):
    plain, marked = twin_roots
    never = MarkProfile(miss_rate=1.0, word_miss_rate=1.0)  # clicks and marks nothing
    asg = Assigner(marked, overlap=1, tasks=("binary",), marks="required", seed=0)
    summary = run_simulated_round(asg, default_panel(2, flip_rate=0.0), seed=0, marks=never)
    bad = marked.to_pandas("binary_labels").query("label == 'bad'")
    notes = marked.to_pandas(MARKS)
    assert summary.marks == len(bad) == len(notes) > 0 and set(notes["note"]) == {NOTHING_MARKED}
    with pytest.raises(UserError, match="marks=off"):
        run_simulated_round(Assigner(plain, overlap=1, tasks=("binary",), marks="off"), default_panel(1), marks=never)


def test_make_simulate_raters_marks_unless_the_round_has_marking_off(twin_roots):
    plain, marked = twin_roots
    off = simulate(SimulateConfig(label=LabelConfig(root=str(plain.root), overlap=2, marks="off"), raters=3))
    on = simulate(SimulateConfig(label=LabelConfig(root=str(marked.root), overlap=2), raters=3))
    assert off["added_marks"] == 0 and (not plain.exists(MARKS) or plain.read(MARKS).num_rows == 0)
    assert on["added_marks"] == marked.read(MARKS).num_rows > 0
    assert off["added_binary"] == on["added_binary"]
