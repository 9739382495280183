"""The labeling app's logic without a server: raters file, guidelines, assignment, gold, stats,
export, and the generate / label / simulate-raters entry points."""

from __future__ import annotations

import asyncio
import io
import json
import math
import os
import stat
import threading

import numpy as np
import pandas as pd
import pytest

from core.errors import UserError
from data import Store
from data.labels import current
from labeling_app.answers import InvalidAnswer, StaleItem
from labeling_app.assignment import Assigner
from labeling_app.config import DEFAULT_GUIDELINES, GoldConfig, LabelConfig, LoginConfig
from labeling_app.export import export_file, export_round
from labeling_app.gold import ensure_gold, gold_source, read_gold
from labeling_app.guidelines import guidelines_file, load_guidelines
from labeling_app.raters import LoginThrottle, RatersFile, make_auth
from labeling_app.simulate import run_simulated_round
from labeling_app.stats import gold_accuracy, krippendorff_alpha_nominal, labels_over_time, round_report
from shapes.raters import RaterProfile, default_panel
from shapes.render import render_round
from shapes.world import prompt_set


@pytest.fixture
def round_store(tmp_path):
    store = Store(tmp_path / "round")
    render_round(store, prompt_set("train")[:8], per_prompt=3, seed=0, mismatch_rate=0.4)
    return store


def drain(assigner: Assigner, rater: str, task: str = "binary", label: str = "good", limit: int = 1000) -> list[str]:
    """Answer everything the rater is given; return the item ids in order."""
    seen = []
    for _ in range(limit):
        a = assigner.current(rater, task)
        if a is None:
            return seen
        seen.append(a.item.item_id)
        if task == "binary":
            assigner.submit_binary(rater, a.token, label)
        else:
            assigner.submit_ranking(rater, a.token, list(range(1, len(a.item.image_ids) + 1)))
    raise AssertionError("rater never ran out of items")


# -- raters file -------------------------------------------------------------------------------


def test_raters_file_stores_salted_hashes_and_checks_passwords(tmp_path):
    rf = RatersFile(tmp_path / "raters.json")
    rf.add("alice", "correct horse", admin=True)
    rf.add("bob", "correct horse")
    raw = (tmp_path / "raters.json").read_text()
    assert "correct horse" not in raw
    recs = json.loads(raw)["raters"]
    assert recs["alice"]["salt"] != recs["bob"]["salt"] and recs["alice"]["hash"] != recs["bob"]["hash"]
    assert stat.S_IMODE(os.stat(tmp_path / "raters.json").st_mode) == 0o600
    assert rf.verify("alice", "correct horse") and not rf.verify("alice", "correct horsE")
    assert not rf.verify("carol", "correct horse")
    assert rf.is_admin("alice") and not rf.is_admin("bob")
    rf.set_disabled("bob", True)
    assert not rf.verify("bob", "correct horse") and not rf.is_active("bob")
    rf.set_disabled("bob", False)
    rf.set_password("bob", "new password")
    assert rf.verify("bob", "new password") and not rf.verify("bob", "correct horse")
    with pytest.raises(UserError, match="already exists"):
        rf.add("alice", "whatever123")
    with pytest.raises(UserError, match="shorter than 8"):
        rf.add("dave", "short")
    with pytest.raises(UserError, match="not allowed"):
        rf.add("<script>", "long enough")
    # a second reader of the same file (the running app) sees the changes
    assert RatersFile(tmp_path / "raters.json").is_active("bob")


def test_login_throttle_grows_per_client_and_per_client_and_name(tmp_path):
    t = LoginThrottle(LoginConfig(free_per_name=2, free_per_client=4, base_delay_s=1, max_delay_s=8, forget_s=100))
    for s in range(2):  # the free tries
        assert t.wait_s("10.0.0.1", "alice", now=s) == 0
        t.record("10.0.0.1", "alice", False, now=s)
    assert t.wait_s("10.0.0.1", "alice", now=2) == 0
    t.record("10.0.0.1", "alice", False, now=2)            # 3rd wrong: wait 1 s
    assert t.wait_s("10.0.0.1", "alice", now=2.5) == pytest.approx(0.5)
    t.record("10.0.0.1", "alice", False, now=3)            # 4th: 2 s, then 4, 8, 8 (the cap)
    assert t.wait_s("10.0.0.1", "alice", now=3) == pytest.approx(2)
    # another client is never delayed, for that name or any other; nor this client for another name
    assert t.wait_s("10.0.0.2", "alice", now=3) == 0 and t.wait_s("10.0.0.1", "bob", now=3) == 0
    t.record("10.0.0.1", "bob", False, now=3)              # the client's 5th wrong password: 1 s for any name
    assert t.wait_s("10.0.0.1", "carol", now=3) == pytest.approx(1)
    for now in (10, 20, 30):
        t.record("10.0.0.1", "alice", False, now=now)
    assert t.wait_s("10.0.0.1", "alice", now=30) == pytest.approx(8)
    t.record("10.0.0.1", "alice", True, now=40)             # the right password clears (client, name)
    assert t.wait_s("10.0.0.1", "alice", now=40) == 0
    t.record("10.0.0.1", "dave", False, now=200)            # forgotten after forget_s: free again
    assert t.wait_s("10.0.0.1", "dave", now=200) == 0
    rf = RatersFile(tmp_path / "r.json")
    rf.add("alice", "password-1")
    auth = make_auth(rf)
    assert asyncio.run(auth("alice", "password-1")) and not asyncio.run(auth("alice", "nope"))


def test_guidelines_follow_the_round(tmp_path):
    assert guidelines_file(None, shapes_round=True) == DEFAULT_GUIDELINES
    with pytest.raises(UserError, match="not shapes-world prompts") as e:
        guidelines_file(None, shapes_round=False)
    assert "guidelines=<file>" in e.value.fix
    own = tmp_path / "ours.md"
    assert guidelines_file(str(own), shapes_round=False) == own
    with pytest.raises(UserError, match="gold.source=file .or auto"):
        LabelConfig(gold=GoldConfig(source="oracle", file="g.csv"))


def test_guidelines_version_follows_the_text(tmp_path):
    packaged = load_guidelines(DEFAULT_GUIDELINES)
    assert packaged.version.startswith("2+") and "Good" in packaged.text and "version:" not in packaged.text
    p = tmp_path / "g.md"
    p.write_text("---\nversion: 7\n---\nBe careful.\n")
    v1 = load_guidelines(p).version
    p.write_text("---\nversion: 7\n---\nBe very careful.\n")
    v2 = load_guidelines(p).version
    assert v1.startswith("7+") and v2.startswith("7+") and v1 != v2
    with pytest.raises(UserError, match="does not exist"):
        load_guidelines(tmp_path / "missing.md")


# -- agreement -------------------------------------------------------------------------------


def test_krippendorff_alpha_matches_the_published_example():
    # Krippendorff (2011), "Computing Krippendorff's alpha-reliability": 4 coders, 12 units,
    # nominal alpha = 0.743.
    coders = [[1, 2, 3, 3, 2, 1, 4, 1, 2, None, None, None],
              [1, 2, 3, 3, 2, 2, 4, 1, 2, 5, None, 3],
              [None, 3, 3, 3, 2, 3, 4, 2, 2, 5, 1, None],
              [1, 2, 3, 3, 2, 4, 4, 1, 2, 5, 1, None]]
    units = [[v for v in unit if v is not None] for unit in zip(*coders)]
    a = krippendorff_alpha_nominal(units)
    assert round(a.alpha, 3) == 0.743 and a.units == 11 and a.values == 40
    assert krippendorff_alpha_nominal([["a", "a"], ["b", "b"]]).alpha == 1.0
    assert math.isnan(krippendorff_alpha_nominal([["a", "a"], ["a"]]).alpha)  # one value: undefined
    assert krippendorff_alpha_nominal([["a", "b"], ["b", "a"]]).alpha < 0


# -- assignment ------------------------------------------------------------------------------


def test_overlap_k_distinct_raters_and_no_repeats(round_store):
    asg = Assigner(round_store, overlap=2, tasks=("binary", "ranking"))
    a_items = drain(asg, "a")
    b_items = drain(asg, "b")
    assert len(a_items) == len(set(a_items)) == 24 and sorted(b_items) == sorted(a_items)
    assert drain(asg, "c") == []  # every image already has two answers
    assert asg.progress("a").round_completion["binary"] == 1.0
    r_a = drain(asg, "a", "ranking")
    assert len(r_a) == 8  # one set of three images per prompt
    labels = round_store.to_pandas("binary_labels")
    assert (labels.groupby("image_id")["rater_id"].nunique() == 2).all()
    assert asg.progress("a").own == {"binary": 24, "ranking": 8}


def test_skips_do_not_count_toward_k(round_store):
    asg = Assigner(round_store, overlap=1, tasks=("binary",))
    first = asg.current("a", "binary")
    asg.submit_binary("a", first.token, "skip", "cannot tell")
    assert first.item.item_id not in drain(asg, "a")  # never shown again to the skipper
    assert drain(asg, "b") == [first.item.item_id]    # but still needs its one real answer
    row = round_store.to_pandas("binary_labels").query("label == 'skip'").iloc[0]
    assert row["skip_reason"] == "cannot tell"


def test_resume_stale_tokens_and_restart(round_store):
    asg = Assigner(round_store, overlap=1, tasks=("binary",), guideline_version="g1")
    a1 = asg.current("a", "binary")
    assert asg.current("a", "binary") == a1  # a refresh or second tab shows the same item
    asg.submit_binary("a", a1.token, "bad")
    with pytest.raises(StaleItem):  # a double click, or the other tab
        asg.submit_binary("a", a1.token, "good")
    with pytest.raises(StaleItem):
        asg.submit_binary("a", "forged-token", "good")
    a2 = asg.current("a", "binary")
    assert a2.item.item_id != a1.item.item_id
    # a restarted server resumes: counts from the store, answered items never come back
    asg2 = Assigner(round_store, overlap=1, tasks=("binary",))
    assert asg2.progress("a").own["binary"] == 1
    rest = drain(asg2, "a")
    assert a1.item.item_id not in rest and len(rest) == 23
    labels = round_store.to_pandas("binary_labels")
    assert len(labels) == 24 and labels["image_id"].is_unique
    assert labels.loc[labels["image_id"] == a1.item.item_id, "label"].item() == "bad"
    assert labels.loc[labels["image_id"] == a1.item.item_id, "guideline_version"].item() == "g1"


def test_an_image_whose_file_changed_is_withdrawn_not_served(round_store, caplog):
    """#44.1 without a browser: the rater holding the item and everyone after get other items,
    its ranking set goes too, the round's size shrinks by it, and one line names the file."""
    from PIL import Image

    asg = Assigner(round_store, overlap=2, tasks=("binary", "ranking"))
    held = asg.current("a", "binary")
    bad = held.item.item_id
    path = round_store.root / round_store.to_pandas("generations").set_index("image_id").loc[bad, "image_path"]
    Image.new("RGB", (32, 32), "white").save(path)
    with caplog.at_level("WARNING", logger="labeling_app"):
        served = asg.serve("a", "binary")
        assert served.assignment.item.item_id != bad and served.paths[0].name != path.name
        assert bad not in drain(asg, "b") and bad not in drain(asg, "a")
        sets = []
        while (r := asg.current("c", "ranking")) is not None:
            sets.append(r.item.image_ids)
            asg.submit_ranking("c", r.token, [1] * len(r.item.image_ids))
        assert len(sets) == 7 and all(bad not in ids for ids in sets)  # 8 prompts, one set gone
    assert [w.image_id for w in asg.withdrawn()] == [bad] and str(path) in asg.withdrawn()[0].problem
    lines = [r.getMessage() for r in caplog.records if "withdrew" in r.getMessage()]
    assert len(lines) == 1 and str(path) in lines[0]
    # the round completes without it
    assert asg.progress("a").items["binary"] == 23 and asg.progress("a").round_completion["binary"] == 1.0


def test_leases_keep_concurrent_raters_within_k(round_store):
    clock = [1000.0]
    asg = Assigner(round_store, overlap=1, tasks=("binary",), lease_s=60, clock=lambda: clock[0])
    a = asg.current("a", "binary")
    b = asg.current("b", "binary")
    assert a.item.item_id != b.item.item_id  # a's open item is leased to a
    clock[0] += 61                           # a walks away; the lease runs out
    asg.submit_binary("b", b.token, "good")
    b2 = asg.current("b", "binary")
    assert b2.item.item_id == a.item.item_id  # the item goes to someone else
    asg.submit_binary("b", b2.token, "good")
    with pytest.raises(StaleItem, match="other raters completed"):
        asg.submit_binary("a", a.token, "bad")  # a comes back too late: not stored, K stays 1
    assert asg.current("a", "binary").item.item_id not in (a.item.item_id, b.item.item_id)
    labels = round_store.to_pandas("binary_labels")
    assert (labels.groupby("image_id").size() == 1).all()
    # a duration runs from when the item was first shown to the answer
    assert sorted(labels["duration_ms"].tolist()) == [0, 61_000]


def test_undo_takes_back_the_last_answer(round_store):
    asg = Assigner(round_store, overlap=1, tasks=("binary", "ranking"))
    with pytest.raises(InvalidAnswer, match="no binary answer"):
        asg.undo("a", "binary")
    a1 = asg.current("a", "binary")
    asg.submit_binary("a", a1.token, "good")
    asg.current("a", "binary")
    back = asg.undo("a", "binary")
    assert back.item == a1.item and asg.current("a", "binary") == back
    assert asg.progress("a").own["binary"] == 0
    asg.submit_binary("a", back.token, "bad")
    now = current(round_store, "binary_labels").to_pandas()
    assert now["label"].tolist() == ["bad"] and round_store.read("retractions").num_rows == 1
    r = asg.current("a", "ranking")
    asg.submit_ranking("a", r.token, [1, 2, 2])
    assert asg.undo("a", "ranking").item == r.item
    assert current(round_store, "rankings").num_rows == 0


def test_invalid_rankings_are_refused_and_nothing_is_stored(round_store):
    asg = Assigner(round_store, overlap=1, tasks=("ranking",))
    r = asg.current("a", "ranking")
    for bad, match in (([1, 1, 3], "not an ordering"), ([2, 3, 4], "not an ordering"),
                       ([1, None, 2], "no rank"), (["x", 1, 2], "whole numbers"), ([1, 2], "no rank")):
        with pytest.raises(InvalidAnswer, match=match):
            asg.submit_ranking("a", r.token, bad)
    assert round_store.read("rankings").num_rows == 0
    asg.submit_ranking("a", r.token, [2, 1, 2])
    row = round_store.to_pandas("rankings").iloc[0]
    assert list(row["ranks"]) == [2, 1, 2] and tuple(row["image_ids"]) == r.item.image_ids


def test_concurrent_raters_never_lose_or_duplicate_labels(round_store):
    asg = Assigner(round_store, overlap=2, tasks=("binary", "ranking"))
    acks: list[str] = []
    lock = threading.Lock()
    errors = []

    def rater(name):
        rng = np.random.default_rng(len(name))
        try:
            while True:
                progressed = False
                for task in ("binary", "ranking"):
                    a = asg.current(name, task)
                    if a is None:
                        continue
                    if task == "binary":
                        rec = asg.submit_binary(name, a.token, str(rng.choice(["good", "bad", "skip"])))
                    else:
                        rec = asg.submit_ranking(name, a.token, list(rng.permutation(len(a.item.image_ids)) + 1))
                    with lock:
                        acks.append(rec.row_id)
                    progressed = True
                if not progressed:
                    return
        except Exception as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=rater, args=(f"r{i}",)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    # A rater who found every open item leased to others stopped early; one more pass each picks
    # up the items those others skipped.
    for i in range(6):
        rater(f"r{i}")
    assert not errors
    b = round_store.to_pandas("binary_labels")
    r = round_store.to_pandas("rankings")
    assert sorted(acks) == sorted(b["label_id"].tolist() + r["ranking_id"].tolist())
    assert not b.duplicated(["image_id", "rater_id"]).any() and not r.duplicated(["prompt_id", "rater_id"]).any()
    answered = b[b["label"] != "skip"].groupby("image_id").size().reindex(b["image_id"].unique(), fill_value=0)
    assert len(answered) == 24 and (answered <= 2).all()  # never more than K answers
    short = answered[answered < 2].index  # fewer only when every rater saw (and skipped) it
    assert (b[b["image_id"].isin(short)].groupby("image_id")["rater_id"].nunique() == 6).all()
    assert (r.groupby("prompt_id").size() == 2).all()


# -- gold ------------------------------------------------------------------------------------


def test_oracle_gold_is_balanced_and_scores_raters(round_store):
    gens = round_store.to_pandas("generations")
    gold = ensure_gold(round_store, GoldConfig(share=0.25), gens, seed=0)
    assert len(gold) == 6 and sorted(gold.values()) == ["bad"] * 3 + ["good"] * 3
    assert ensure_gold(round_store, GoldConfig(share=0.5), gens) == gold  # fixed once created
    asg = Assigner(round_store, overlap=1, tasks=("binary",), gold=gold, gold_share=0.5, seed=1)
    yes_man = drain(asg, "yes-man", label="good")
    assert set(gold) & set(yes_man) and len(set(yes_man)) == len(yes_man)
    run_simulated_round(asg, [RaterProfile("careful", flip_rate=0.0, skip_rate=0.0)], seed=2)
    labels = round_store.to_pandas("binary_labels")
    assert labels.loc[labels["image_id"].isin(gold), "is_gold"].all()
    acc = gold_accuracy(labels, gold).set_index("rater_id")
    seen = labels[labels["is_gold"] & (labels["rater_id"] == "yes-man")]["image_id"]
    assert acc.loc["yes-man", "gold_accuracy"] == pytest.approx(
        np.mean([gold[i] == "good" for i in seen]), abs=1e-3)
    if "careful" in acc.index:
        assert acc.loc["careful", "gold_accuracy"] == 1.0


def test_gold_from_a_file_and_for_non_shapes_prompts(tmp_path, round_store):
    gens = round_store.to_pandas("generations")
    f = tmp_path / "gold.csv"
    pd.DataFrame({"image_id": gens["image_id"][:2], "answer": ["good", "bad"]}).to_csv(f, index=False)
    gold = ensure_gold(round_store, GoldConfig(share=0.1, source="file", file=str(f)), gens)
    assert gold == dict(zip(gens["image_id"][:2], ["good", "bad"]))
    other = Store(tmp_path / "other")
    hostile = gens.assign(prompt="<b>a photo of a cat</b>")
    with pytest.raises(UserError, match="gold.source=file"):  # the oracle named explicitly
        ensure_gold(other, GoldConfig(share=0.1, source="oracle"), hostile)
    assert ensure_gold(other, GoldConfig(share=0.1), hostile) == {}  # auto: no shapes prompts, no gold
    assert not (tmp_path / "other" / "gold").exists()
    assert gold_source(GoldConfig(), gens) == "oracle" and gold_source(GoldConfig(file=str(f)), hostile) == "file"
    pd.DataFrame({"image_id": ["nope"], "answer": ["good"]}).to_csv(f, index=False)
    with pytest.raises(UserError, match="not in this round"):
        ensure_gold(other, GoldConfig(share=0.1, source="file", file=str(f)), gens)


# -- report, export, entry points --------------------------------------------------------------


def test_simulated_round_report_and_export(round_store, tmp_path):
    asg = Assigner(round_store, overlap=3, tasks=("binary", "ranking"),
                   gold=ensure_gold(round_store, GoldConfig(share=0.2), round_store.to_pandas("generations")),
                   gold_share=0.2)
    summary = run_simulated_round(asg, default_panel(4, flip_rate=0.05), seed=0)
    rep = round_report(round_store)
    assert rep.binary_labels == summary.binary_labels and rep.rankings == summary.rankings == 24
    assert rep.binary_agreement.alpha > 0.5 and rep.binary_agreement.units >= 20
    assert not math.isnan(rep.ranking_agreement.alpha) and rep.median_ms["binary"] > 0
    assert set(rep.counts["rater_id"]) == {p.rater_id for p in default_panel(4)}
    assert (rep.gold["gold_accuracy"] > 0.5).all()
    out = export_round(round_store)
    assert pd.read_parquet(out.directory / "binary_labels.parquet").shape[0] == rep.binary_labels
    assert pd.read_parquet(out.directory / "pairs.parquet").shape[0] == 24 * 3
    assert json.loads((out.directory / "summary.json").read_text())["rankings"] == 24
    assert out.zip_path.stat().st_size > 0
    # the owner's alone: folders 0700, files 0600, nothing left under a temporary name
    exports = round_store.root / "exports"
    assert out.directory.parent == exports and [p.name for p in exports.iterdir()] == [out.directory.name]
    assert {stat.S_IMODE(d.stat().st_mode) for d in (exports, out.directory)} == {0o700}
    assert {stat.S_IMODE(f.stat().st_mode) for f in out.directory.iterdir()} == {0o600}
    # the download route's lookup: a finished export's files, nothing else
    assert export_file(round_store.root, out.directory.name, out.zip_path.name) == out.zip_path.resolve()
    for stamp, name in ((out.directory.name, "missing.zip"), ("..", "raters.json"), (out.directory.name, ".."),
                        ("../..", out.zip_path.name), (f".{out.directory.name}.tmp", out.zip_path.name)):
        assert export_file(round_store.root, stamp, name) is None, (stamp, name)

    # answers per rater over time: every bucket for every rater, summing to the answers
    timeline = rep.timeline
    assert set(timeline["rater_id"]) == set(rep.counts["rater_id"])
    assert timeline["answers"].sum() == rep.binary_labels + rep.rankings
    assert timeline.groupby("start").size().eq(len(rep.counts)).all()


def test_labels_over_time_buckets_and_charts():
    from labeling_app.charts import pass_rate_chart, timeline_chart

    t0 = pd.Timestamp("2025-01-01 09:00", tz="UTC")
    at = lambda minutes: [t0 + pd.Timedelta(minutes=m) for m in minutes]  # noqa: E731
    binary = pd.DataFrame({"rater_id": ["a", "a", "b", "b"], "created_at": at([1, 2, 3, 62])})
    rankings = pd.DataFrame({"rater_id": ["a"], "created_at": at([125])})
    hourly = labels_over_time(binary, rankings, freq="h")
    assert hourly["start"].tolist() == [t0, t0, t0 + pd.Timedelta(hours=1), t0 + pd.Timedelta(hours=1),
                                        t0 + pd.Timedelta(hours=2), t0 + pd.Timedelta(hours=2)]
    assert hourly["rater_id"].tolist() == ["a", "b"] * 3 and hourly["answers"].tolist() == [2, 1, 0, 1, 1, 0]
    starts = pd.Series(labels_over_time(binary, rankings)["start"].unique())  # span 2 h: 5-minute buckets
    assert len(starts) == 26 and starts.diff().dropna().eq(pd.Timedelta(minutes=5)).all()
    empty = labels_over_time(binary.iloc[:0], rankings.iloc[:0])
    assert empty.empty and list(empty.columns) == ["start", "rater_id", "answers"]

    from PIL import Image

    rates = pd.DataFrame({"prompt_id": ["p1", "p2", "p3"], "prompt": ["one", "two", "three"],
                          "labelled_images": [4, 5, 0], "good_images": [1, 5, 0], "good_rate": [0.25, 1.0, np.nan],
                          "labels": [12, 15, 0], "picked": [True, False, False]})
    for png in (pass_rate_chart(rates), timeline_chart(hourly), pass_rate_chart(rates.iloc[:0]), timeline_chart(empty)):
        img = Image.open(io.BytesIO(png))
        assert img.format == "PNG" and img.width >= 600 and img.height >= 100


def test_generate_samples_a_pipeline_and_adds_to_the_round(tmp_path, capsys):
    from pipelines import generate as gen
    from pipelines.cli import run
    from tests.tiny_models import make_tiny_sd

    import torch

    # One thread: on a shared 2-core machine, two OpenMP threads spin against each other and a
    # 50 ms sampling call takes seconds.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        _generate_twice(tmp_path, capsys, gen, run, make_tiny_sd)
    finally:
        torch.set_num_threads(threads)


def _generate_twice(tmp_path, capsys, gen, run, make_tiny_sd):
    import torch

    sd = make_tiny_sd(tmp_path / "sd")
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("two red circles\n<script>alert(1)</script> a cat\n")
    args = [f"root={tmp_path / 'ds'}", f"pipeline={sd}", f"prompts_file={prompts}", "per_prompt=2",
            "sampling.num_inference_steps=2", "sampling.batch_size=4"]
    assert run(gen.main, args) == 0
    first = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert first["images_added"] == 4 and first["images_in_round"] == 4
    assert run(gen.main, [*args, "mixed_precision=bf16"]) == 0  # a re-run adds, with new seeds
    gens = Store(tmp_path / "ds").to_pandas("generations")
    assert len(gens) == 8 and not gens.duplicated(["prompt_id", "seed"]).any()
    if not torch.cuda.is_available():  # refused before the round is touched
        capsys.readouterr()
        assert run(gen.main, [*args, "mixed_precision=fp16"]) == 2
        assert "fp16 needs a CUDA device" in capsys.readouterr().err
        assert len(Store(tmp_path / "ds").to_pandas("generations")) == 8
    assert set(gens["category"]) == {"combination", "other"} and (gens["num_inference_steps"] == 2).all()
    assert list((tmp_path / "ds" / "configs").glob("generate-*.yaml"))
    # a missing model folder: one clear error naming it and the fix
    capsys.readouterr()
    assert run(gen.main, [f"root={tmp_path / 'ds2'}", f"pipeline={tmp_path / 'no-such-sd'}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no-such-sd" in err[0] and "Fix:" in err[0]


def test_entry_points_report_missing_pieces(tmp_path, capsys, round_store):
    from pipelines import label, simulate_raters
    from pipelines.cli import run

    assert run(label.main, [f"root={round_store.root}", f"raters_file={tmp_path / 'none.json'}"]) == 2
    assert "rater-add" in capsys.readouterr().err
    rf = RatersFile(tmp_path / "r.json")
    rf.add("alice", "password-1")
    assert run(label.main, [f"root={tmp_path / 'empty'}", f"raters_file={rf.path}"]) == 2
    assert "make generate" in capsys.readouterr().err
    assert run(simulate_raters.main, [f"label.root={round_store.root}", "raters=3", "label.overlap=2"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["round_completion"] == {"binary": 1.0, "ranking": 1.0} and out["added_rankings"] == 16
    assert out["added_gold"] > 0 and out["binary_alpha"] is not None


def test_raters_command_adds_disables_and_lists(tmp_path, capsys, monkeypatch):
    from pipelines import raters as raters_cli
    from pipelines.cli import run

    f = str(tmp_path / "raters.json")
    monkeypatch.setattr("sys.stdin", io.StringIO("a long password\n"))
    assert run(raters_cli.main, ["--file", f, "add", "lead", "--admin", "--password-stdin"]) == 0
    assert run(raters_cli.main, ["--file", f, "disable", "lead"]) == 0
    assert run(raters_cli.main, ["--file", f, "list"]) == 0
    out = capsys.readouterr().out
    assert "added lead (admin)" in out and "lead\tadmin, disabled" in out
    assert RatersFile(f).account("lead").disabled and not RatersFile(f).verify("lead", "a long password")
    assert run(raters_cli.main, ["--file", f, "disable", "nobody"]) == 2
    assert "no rater 'nobody'" in capsys.readouterr().err
    # no terminal: the password comes from --password-file, or from stdin without any flag
    pw = tmp_path / "pw.txt"
    pw.write_text("from a file 1\n")
    assert run(raters_cli.main, ["--file", f, "add", "ann", "--password-file", str(pw)]) == 0
    monkeypatch.setattr("sys.stdin", io.StringIO("piped in 1\n"))
    assert run(raters_cli.main, ["--file", f, "add", "ben"]) == 0
    assert RatersFile(f).verify("ann", "from a file 1") and RatersFile(f).verify("ben", "piped in 1")
    assert run(raters_cli.main, ["--file", f, "add", "cid", "--password-file", str(tmp_path / "nope")]) == 2
    assert "cannot read the password file" in capsys.readouterr().err


def test_make_rater_add_works_without_a_terminal(tmp_path):
    """`make rater-add RATER=x PASSWORD_FILE=f` with no terminal (stdin closed), and with the
    password piped in; `-o install` skips the venv set-up, PY= is this interpreter."""
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    if shutil.which("make") is None:
        pytest.skip("no make")
    repo = Path(__file__).resolve().parents[1]
    f = tmp_path / "raters.json"
    pw = tmp_path / "pw"
    pw.write_text("secret password\n")
    base = ["make", "-s", "-C", str(repo), "-o", "install", f"PY={sys.executable}", f"RATERS_FILE={f}", "rater-add"]
    r = subprocess.run(base + ["RATER=lead", "ADMIN=1", f"PASSWORD_FILE={pw}"], stdin=subprocess.DEVNULL,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    r = subprocess.run(base + ["RATER=amy"], input="piped password\n", capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    rf = RatersFile(f)
    assert rf.is_admin("lead") and rf.verify("lead", "secret password") and rf.verify("amy", "piped password")


@pytest.mark.slow
def test_the_same_round_is_labelled_the_same_way_twice(tmp_path):
    """A rerun of the same round with the same seed gets the same labels (the demo's rerun
    target)."""
    from data.labels import current
    from labeling_app.config import LabelConfig
    from core.config import load_config
    from collect.generate import GenerateConfig, generate
    from labeling_app.simulate import SimulateConfig, simulate

    rounds = []
    for k in range(2):
        root = tmp_path / f"r{k}"
        generate(load_config(GenerateConfig, None, [f"root={root}", "source=renderer", "per_prompt=3",
                                                    "max_prompts=12"]))
        simulate(SimulateConfig(label=LabelConfig(root=str(root), overlap=2), raters=4, flip_rate=0.2))
        store = Store(root)
        gens = store.to_pandas("generations").set_index("image_id")
        labels = current(store, "binary_labels").to_pandas()
        rounds.append(sorted((gens.loc[i, "prompt_id"], int(gens.loc[i, "seed"]), r, lab)
                             for i, r, lab in zip(labels["image_id"], labels["rater_id"], labels["label"])))
    assert rounds[0] == rounds[1] and len(rounds[0]) > 36
