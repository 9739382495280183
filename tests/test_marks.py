"""Region marks (issue 57): a bad answer carries points on the image and wrong prompt words.

The write path (Assigner.answer_bad / submit_binary with marks), undo taking the marks back,
marks=required, bad input refused with nothing written and the item still the rater's, the
handlers' refusals on the page, overlap K / gold / rounds, the readers (pandas, pyarrow, DuckDB,
`datasets`) and `make migrate`, the Admin heatmap and the HF export's RichHF columns.
"""

from __future__ import annotations

import json
import time
from dataclasses import replace
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from core.errors import DataError
from data import Store
from data.labels import current
from data.marks import (MARKS, check_marks, current_marks, disk_map, heatmap, heatmap_u8, image_marks,
                        prompt_words)
from data.schemas import BINARY_LABELS
from data.store import PART_GLOB, migrate
from labeling_app.answers import MAX_MARK_POINTS, InvalidAnswer
from labeling_app.config import DEFAULT_GUIDELINES
from labeling_app.assignment import Assigner
from labeling_app.guidelines import load_guidelines
from labeling_app.handlers import LabelingHandlers
from labeling_app.marking import MAX_MARKS_CHARS, parse_marks, word_chips_html
from shapes.render import render_round
from shapes.world import prompt_set
from tests.labeling_server import label_config, make_raters


@pytest.fixture
def store(tmp_path):
    s = Store(tmp_path / "round")
    render_round(s, prompt_set("train")[:4], per_prompt=2, seed=0, mismatch_rate=0.5)
    return s


def written(store: Store) -> tuple[int, int]:
    return store.read(BINARY_LABELS).num_rows, store.read(MARKS).num_rows


# -- data.marks ------------------------------------------------------------------------------


def test_check_marks_keeps_good_marks_and_names_the_first_bad_one():
    assert check_marks([[0, 1], (0.5, 0.25)], [2, 0, 2], 3) == ([(0.0, 1.0), (0.5, 0.25)], [0, 2])
    for points, words, message in (([(1.5, 0.5)], [], "outside the image"), ([(0.5, -0.1)], [], "outside"),
                                   ([(0.5,)], [], "not two numbers"), ([("a", 0)], [], "not two numbers"),
                                   ([], [3], "past the prompt's 3 words"), ([], [-1], "past"),
                                   ([], [1.5], "not a whole number"), ([], [True], "not a whole number"),
                                   # issue 74: a string or booleans were read as digits or 0/1
                                   (["01"], [], "not two numbers"), ([[True, False]], [], "not two numbers"),
                                   ([["0.5", "0.5"]], [], "not two numbers"), ([[0.5, 0.5, 0.5]], [], "not two"),
                                   ([[10 ** 400, 0]], [], "not two numbers"), ([], [10 ** 400], "past")):
        with pytest.raises(DataError, match=message):
            check_marks(points, words, 3)


def test_heatmap_averages_the_raters_disks():
    one = disk_map([(0.5, 0.5)], (64, 64))
    assert one[32, 32] == 1 and one[0, 0] == 0 and 0 < one.mean() < 0.02
    avg = heatmap([[(0.5, 0.5)], []], (64, 64))  # the second rater answered without marking
    assert avg[32, 32] == pytest.approx(0.5) and avg.max() == pytest.approx(0.5)
    assert heatmap_u8([[(0.5, 0.5)]], (32, 48)).dtype == np.uint8 and heatmap_u8([], (4, 4)).max() == 0


# -- the write path --------------------------------------------------------------------------


def test_a_bad_answer_with_marks_lands_and_undo_takes_them_back(store):
    asg = Assigner(store, overlap=1, tasks=("binary",))
    a = asg.current("rita", "binary")
    n = len(prompt_words(a.item.prompt))
    asg.answer_bad("rita", a.token, [(0.25, 0.75), (0.5, 0.5)], [n - 1, 0])
    row, = current_marks(store).to_pylist()
    label, = current(store, "binary_labels").to_pylist()
    assert row["label_id"] == label["label_id"] and label["label"] == "bad"
    assert (row["image_id"], row["rater_id"], row["words"]) == (a.item.item_id, "rita", [0, n - 1])
    assert [(p["x"], p["y"]) for p in row["points"]] == [(0.25, 0.75), (0.5, 0.5)]
    assert image_marks(store)[a.item.item_id].marked

    back = asg.undo("rita", "binary")  # U: the answer and its marks go back
    assert back.item.item_id == a.item.item_id
    assert current_marks(store).num_rows == 0 and store.read(MARKS).num_rows == 1  # append-only, filtered
    assert a.item.item_id not in image_marks(store)
    asg.submit_binary("rita", back.token, "good")  # answered again: no marks
    assert current_marks(store).num_rows == 0


def test_marks_whose_label_never_landed_are_not_read(store, monkeypatch):
    asg = Assigner(store, overlap=1, tasks=("binary",))
    a = asg.current("rita", "binary")
    real = store.append

    def dies_on_labels(table, rows):
        if getattr(table, "name", table) == BINARY_LABELS.name:
            raise OSError("disk full")
        return real(table, rows)

    monkeypatch.setattr(store, "append", dies_on_labels)
    with pytest.raises(OSError):
        asg.answer_bad("rita", a.token, [(0.5, 0.5)])
    monkeypatch.setattr(store, "append", real)
    assert written(store) == (0, 1) and current_marks(store).num_rows == 0
    asg.answer_bad("rita", a.token, [(0.5, 0.5)])  # the item is still the rater's: try again
    assert current_marks(store).num_rows == 1


@pytest.mark.parametrize("label, points, words, message", [
    ("bad", [(1.2, 0.5)], [], "outside the image"),
    ("bad", [(0.5, 0.5)], [99], "past the prompt"),
    ("good", [(0.5, 0.5)], [], "answered good"),
    ("skip", [], [0], "answered skip"),
])
def test_bad_marks_are_refused_with_nothing_written_and_the_item_kept(store, label, points, words, message):
    asg = Assigner(store, overlap=1, tasks=("binary",))
    a = asg.current("rita", "binary")
    with pytest.raises(InvalidAnswer, match=message):
        asg.submit_binary("rita", a.token, label, points=points, words=words)
    assert written(store) == (0, 0)
    assert asg.current("rita", "binary").token == a.token
    asg.submit_binary("rita", a.token, "bad", points=[(0.5, 0.5)])  # the rater goes on
    assert written(store) == (1, 1)


def test_required_marks_need_a_point_a_word_or_a_reason(store):
    asg = Assigner(store, overlap=1, tasks=("binary",), marks="required")
    a = asg.current("rita", "binary")
    with pytest.raises(InvalidAnswer, match="nothing was marked"):
        asg.submit_binary("rita", a.token, "bad")
    assert written(store) == (0, 0)
    asg.submit_binary("rita", a.token, "good")  # good and skip need no marks
    b = asg.current("rita", "binary")
    asg.answer_bad("rita", b.token, note="  the second circle is missing  ")
    row, = current_marks(store).to_pylist()
    assert (row["points"], row["words"], row["note"]) == ([], [], "the second circle is missing")
    c = asg.current("rita", "binary")
    asg.answer_bad("rita", c.token, words=[0])
    assert current_marks(store).num_rows == 2


def test_marks_off_refuses_marks_and_writes_no_marks_rows(store):
    asg = Assigner(store, overlap=1, tasks=("binary",), marks="off")
    a = asg.current("rita", "binary")
    with pytest.raises(InvalidAnswer, match="marking is off"):
        asg.answer_bad("rita", a.token, [(0.5, 0.5)])
    asg.submit_binary("rita", a.token, "bad", "a reason")
    assert written(store) == (1, 0)


def test_marks_with_overlap_gold_and_rounds(store):
    gold = {store.to_pandas("generations")["image_id"].iloc[0]: "bad"}
    asg = Assigner(store, overlap=2, tasks=("binary",), gold=gold, gold_share=0.99)
    for rater in ("a", "b"):
        while (it := asg.current(rater, "binary")) is not None:
            asg.answer_bad(rater, it.token, [(0.5, 0.5)] if rater == "a" else [], [0])
    marks = image_marks(store)
    images = store.to_pandas("generations")["image_id"]
    assert set(marks) == set(images)  # every image, the gold one too, answered by both
    for m in marks.values():
        assert m.raters == ["a", "b"] and m.word_labels()[0] == 0
        assert m.heatmap((16, 16)).max() == pytest.approx(0.5)  # one of two raters clicked
    gold_label = current(store, "binary_labels").to_pandas().query("is_gold")
    assert set(gold_label["label_id"]) <= set(current_marks(store)["label_id"].to_pylist())
    # marks belong to their image's round (data.rounds filters on image_id)
    from data import read_table
    assert len(read_table(store.root, "marks", rounds="all", gold=True)) == current_marks(store).num_rows


# -- merging the marks table's parts ---------------------------------------------------------


def answer_all_bad(asg: Assigner, raters) -> set[str]:
    """Every rater answers every item bad with marks, as the page's B does; the label ids."""
    ids = set()
    for rater in raters:
        while (a := asg.current(rater, "binary")) is not None:
            ids.add(asg.answer_bad(rater, a.token, [(0.5, 0.5)], [0]).row_id)
    return ids


def marks_parts(store: Store) -> int:
    return sum(1 for _ in store.table_dir(MARKS).glob(PART_GLOB))


def test_the_app_merges_the_marks_table_at_start_up_and_in_the_background(store):
    """Issue 74: the app opens its store with compact_every=0 and left `marks` out of the tables it
    merges, so every bad answer's marks part stayed (2,487 after one busy round)."""
    from labeling_app.compactor import Compactor, merge_leftovers

    app_store = Store(store.root, compact_every=0)  # as labeling_app.ui.build_app opens it
    asg = Assigner(app_store, overlap=3, tasks=("binary",))
    ids = answer_all_bad(asg, ["a", "b", "c"])
    assert marks_parts(app_store) == len(ids) > 2
    merge_leftovers(app_store)  # start-up
    assert marks_parts(app_store) == 1
    assert set(current_marks(app_store)["label_id"].to_pylist()) == ids

    compactor = Compactor(app_store, every_s=0.01, min_parts=2)
    compactor.start()
    try:  # answers land while the thread merges: none may be lost
        asg = Assigner(app_store, overlap=6, tasks=("binary",))
        ids |= answer_all_bad(asg, ["d", "e", "f"])
        deadline = time.monotonic() + 20
        while marks_parts(app_store) > 1 and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        compactor.stop.set()
        compactor.join()
    assert marks_parts(app_store) == 1
    assert sorted(app_store.read(MARKS)["label_id"].to_pylist()) == sorted(ids)
    assert set(current_marks(app_store)["label_id"].to_pylist()) == ids


# -- the handlers: refusals on the page ------------------------------------------------------


def handlers(store, tmp_path, **kw):
    raters = make_raters(tmp_path / "raters.json", ["rita"])
    cfg = label_config(store.root, raters, **kw)
    asg = Assigner(store, overlap=1, tasks=("binary",), marks=cfg.marks)
    return LabelingHandlers(cfg, asg, raters, load_guidelines(DEFAULT_GUIDELINES)), asg


def test_handlers_refuse_bad_marks_in_the_status_line_and_keep_the_item(store, tmp_path):
    h, asg = handlers(store, tmp_path, marks="required")
    req = SimpleNamespace(username="rita")
    _, prompt, _, _, _ = h.next_binary(req)
    a = asg.current("rita", "binary")
    assert 'data-marks="required"' in prompt and prompt.count('class="word-chip"') == len(prompt_words(a.item.prompt))
    for label, marks, message in (("bad", '{"points": [[0.5, 1.5]], "words": []}', "outside the image"),
                                  ("good", '{"points": [[0.5, 0.5]], "words": []}', "answered good"),
                                  ("bad", '{"points": [], "words": [42]}', "past the prompt"),
                                  ("bad", "", "nothing was marked"),
                                  ("bad", "not json", "not readable")):
        image, prompt, status, _, reason = h.answer_binary(label, "", a.token, req, marks)
        assert message in status and 'class="warn"' in status, status
        assert a.token in prompt and image is not None  # the same item, still answerable
    assert written(store) == (0, 0)
    _, prompt, status, _, _ = h.answer_binary("bad", "", a.token, req, '{"points": [[0.5, 0.5]], "words": [0]}')
    assert "Saved: bad with 1 point(s) and 1 word(s) marked." in status and a.token not in prompt
    assert written(store) == (1, 1)


def test_the_page_refuses_oversized_deep_or_mistyped_marks_and_stays_usable(store, tmp_path):
    """Issue 74: 10,000 points were saved, a point "01" became (0, 1) and [true, false] (1, 0), and
    JSON nested deeper than the parser goes raised RecursionError instead of the refusal."""
    h, asg = handlers(store, tmp_path)
    req = SimpleNamespace(username="rita")
    h.next_binary(req)
    a = asg.current("rita", "binary")
    point = [0.1234, 0.5678]
    for marks, message in (
            (json.dumps({"points": [point] * 10_000, "words": []}), "characters long"),
            (json.dumps({"points": [point] * (MAX_MARK_POINTS + 1), "words": []}),
             f"at most {MAX_MARK_POINTS}"),
            ('{"points": ["01"], "words": []}', "not two numbers"),
            ('{"points": [[true, false]], "words": []}', "not two numbers"),
            ('{"points": [[0.5, 0.5]], "words": ["0"]}', "not a whole number"),
            ('{"points": ' + "[" * 5000 + "]" * 5000 + "}", "not readable")):
        assert len(marks) <= MAX_MARKS_CHARS or message == "characters long"
        image, prompt, status, _, _ = h.answer_binary("bad", "", a.token, req, marks)
        assert message in status and 'class="warn"' in status, status
        assert a.token in prompt and image is not None  # the same item, still answerable
    assert written(store) == (0, 0)
    at_cap = json.dumps({"points": [point] * MAX_MARK_POINTS, "words": [0]})
    _, prompt, status, _, _ = h.answer_binary("bad", "", a.token, req, at_cap)
    assert f"Saved: bad with {MAX_MARK_POINTS} point(s)" in status and written(store) == (1, 1)


def test_word_chips_escape_the_prompt_and_follow_the_mode():
    chips = word_chips_html('two <b>red</b> circles', "optional")
    assert "&lt;b&gt;red&lt;/b&gt;" in chips and "<b>" not in chips and "optional" in chips
    assert word_chips_html("a b", "off") == ""
    assert parse_marks("") == ([], []) and parse_marks('{"points": [[0.1, 0.2]]}') == ([[0.1, 0.2]], [])


# -- readers, migration, admin, export -------------------------------------------------------


def test_readers_agree_on_the_marks_table(store, tmp_path, monkeypatch):
    duckdb = pytest.importorskip("duckdb")
    datasets = pytest.importorskip("datasets")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    asg = Assigner(store, overlap=1, tasks=("binary",))
    for i in range(3):
        a = asg.current("rita", "binary")
        asg.answer_bad("rita", a.token, [(0.1 * i, 0.5)] * i, [0])
    folder = store.table_dir(MARKS)
    ours = store.to_pandas(MARKS).sort_values("label_id").reset_index(drop=True)
    assert len(ours) == 3
    plain = pd.read_parquet(folder).sort_values("label_id").reset_index(drop=True)
    arrow = pq.read_table(folder).to_pandas().sort_values("label_id").reset_index(drop=True)
    duck = duckdb.sql(f"SELECT label_id, len(points) AS n, words FROM read_parquet('{folder}/*.parquet') "
                      "ORDER BY label_id").fetchall()
    ds = datasets.load_dataset("parquet", data_dir=str(folder), cache_dir=str(tmp_path / "hf"))["train"]
    ds = sorted(ds, key=lambda r: r["label_id"])
    for frame in (plain, arrow):
        assert frame["label_id"].tolist() == ours["label_id"].tolist()
        assert [len(p) for p in frame["points"]] == [len(p) for p in ours["points"]]
    assert [(r[0], r[1], list(r[2])) for r in duck] == [(r.label_id, len(r.points), list(r.words))
                                                        for r in ours.itertuples()]
    assert [(r["label_id"], [(p["x"], p["y"]) for p in r["points"]]) for r in ds] == \
        [(r.label_id, [(p["x"], p["y"]) for p in r.points]) for r in ours.itertuples()]


def test_a_word_index_past_its_prompt_is_refused_by_every_reader_before_anything_is_written(store, tmp_path):
    """Issue 74: only negative word indices were refused, so a marks part with word 999 passed the
    exports and `make reward`; the HF export carried it while prompt_misalignment_label dropped it."""
    from data import read_table
    from labeling_app.export import export_round
    from reward.region.data import has_marks

    asg = Assigner(store, overlap=1, tasks=("binary",))
    a = asg.current("rita", "binary")
    asg.answer_bad("rita", a.token, [(0.5, 0.5)], [0])  # a good row before the bad one
    b = asg.current("rita", "binary")
    n = len(prompt_words(b.item.prompt))
    label_id = asg.submit_binary("rita", b.token, "bad").row_id
    store.append(MARKS, [dict(label_id=label_id, image_id=b.item.item_id, prompt_id=b.item.prompt_id,
                              rater_id="rita", points=[], words=[1, 999], created_at=pd.Timestamp.now(tz="UTC"))])
    part = max(store.table_dir(MARKS).glob(PART_GLOB))
    readers = (lambda: current_marks(store), lambda: image_marks(store), lambda: has_marks(store),
               lambda: read_table(store.root, "marks"), lambda: export_round(store),
               lambda: export_round(store, format="hf"))
    for read in readers:
        with pytest.raises(DataError) as e:
            read()
        message = str(e.value)
        assert f"{part}, row 0 (label_id {label_id})" in message and f"word index 999 is past the {n}" in message
        assert "Fix:" in message
    exports = store.root / "exports"
    assert not exports.exists() or not any(exports.iterdir())  # nothing written
    store.compact(MARKS)  # merged, the row is named in the merged part
    with pytest.raises(DataError, match=r"part-.*\.parquet, row 1 \(label_id"):
        current_marks(store)


def test_migrate_gives_a_version_2_root_an_empty_marks_table(store):
    for part in store.table_dir("generations").glob(PART_GLOB):  # as version 2 wrote it
        t = pq.read_table(part)
        pq.write_table(t.replace_schema_metadata({**t.schema.metadata, b"schema_version": b"2"}), part)
    assert store.read(MARKS).num_rows == 0  # reading never needs the migration
    out = migrate(store.root)
    assert out["marks"] == 0 and out["generations"] == len(store.to_pandas("generations"))
    part, = store.table_dir(MARKS).glob(PART_GLOB)
    assert pq.read_table(part).schema.names == MARKS.schema.names and store.read(MARKS).num_rows == 0
    duckdb = pytest.importorskip("duckdb")
    folder = store.table_dir(MARKS)
    assert duckdb.sql(f"SELECT count(*) FROM read_parquet('{folder}/*.parquet')").fetchall() == [(0,)]
    assert migrate(store.root) == {}


def test_admin_heatmap_and_picker(store, tmp_path):
    h, asg = handlers(store, tmp_path)
    raters = make_raters(tmp_path / "lead.json", ["lead"], admins=("lead",))
    h = LabelingHandlers(replace(h.cfg, raters_file=str(raters.path)), asg, raters, h.guidelines)
    a = asg.current("lead", "binary")
    asg.answer_bad("lead", a.token, [(0.5, 0.5)], [0])
    req = SimpleNamespace(username="lead")
    choices = h.marked_images(req)["choices"]
    assert [c[1] for c in choices] == [a.item.item_id]
    page = h.marks_heatmap(a.item.item_id, req)
    assert 'id="admin-heatmap-image"' in page and "data:image/png;base64," in page and "1 of 1" in page
    assert "Pick a marked image" in h.marks_heatmap(None, req)


def test_admin_picker_clips_long_prompts():
    """#74.7: the marks picker clips a long prompt (as the charts do), so a 2,000-character prompt
    does not make an entry of 2,000 characters; the image id and counts stay whole."""
    from data.marks import ImageMarks
    from labeling_app.marks_admin import picker_choices

    long = ("one red circle on a white background, " * 60)[:2000]
    marks = {i: ImageMarks(i, p, raters=["r1", "r2"], points=[[(0.5, 0.5)], []], words=[[0], []])
             for i, p in (("a" * 16, long), ("b" * 16, "x" * 2000), ("c" * 16, "two red circles"))}
    choices = dict((v, label) for label, v in picker_choices(marks))
    assert choices["c" * 16] == "two red circles · cccccccc · marked by 1 of 2"
    for i, p in (("a" * 16, long), ("b" * 16, "x" * 2000)):
        assert choices[i].endswith(f"… · {i[:8]} · marked by 1 of 2") and len(choices[i]) < 100, choices[i]
        assert choices[i].startswith(p[:40])


def test_hf_export_has_richhf_columns(store, tmp_path, monkeypatch):
    datasets = pytest.importorskip("datasets")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    from labeling_app.hf_export import write_hf_dataset

    asg = Assigner(store, overlap=2, tasks=("binary",))
    a = asg.current("r1", "binary")
    n = len(prompt_words(a.item.prompt))
    asg.answer_bad("r1", a.token, [(0.5, 0.5)], [n - 1])
    b = asg.current("r2", "binary")
    assert b.item.item_id == a.item.item_id
    asg.submit_binary("r2", b.token, "good")
    write_hf_dataset(store, tmp_path / "hf")
    ds = datasets.load_dataset("parquet", data_files=str(tmp_path / "hf/binary_labels/*.parquet"),
                               cache_dir=str(tmp_path / "cache"))["train"]
    rows = [r for r in ds if r["image_id"] == a.item.item_id]
    assert len(rows) == 2
    for r in rows:
        heat = np.asarray(r["misalignment_map"])
        assert heat.shape == np.asarray(r["image"]).shape[:2] and heat.dtype == np.uint8
        assert heat.max() == 128 and heat[heat.shape[0] // 2, heat.shape[1] // 2] == 128  # 1 of 2 raters
        assert r["prompt_misalignment_label"] == " ".join(["1"] * (n - 1) + ["0"])
    own = {r["rater_id"]: (r["mark_points"], r["mark_words"]) for r in rows}
    assert own["r1"][1] == [n - 1] and len(own["r1"][0]) == 1 and own["r2"] == ([], [])


def test_label_config_marks_is_a_mode(tmp_path):
    from core.errors import UserError
    from labeling_app.config import LabelConfig
    from pipelines.cli import config_parser, parse_config

    assert LabelConfig().marks == "optional"
    assert parse_config(LabelConfig, config_parser("x"), ["marks=required"]).marks == "required"
    with pytest.raises(UserError):
        parse_config(LabelConfig, config_parser("x"), ["marks=sometimes"])
