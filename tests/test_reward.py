"""The reward stage: losses on hand-computed cases, data checks and aggregation, metrics,
preprocessing, and whole paths (train -> save -> load -> score) on tiny CLIPs on CPU."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from core.errors import DataError, UserError
from data import Store
from data.labels import aggregate_binary
from data.schemas import BINARY_LABELS, REWARDS
from labeling_app.simulate import simulate_round
from reward.config import DataConfig, LossConfig
from reward.data import (image_sides, load_reward_data, shapes_perturbations, split_prompts,
                         word_swap_perturbations)
from reward.losses import binary_loss, bradley_terry_loss, per_group_weights, prompt_classification_loss
from reward.metrics import expected_calibration_error, oracle_pair_accuracy, oracle_pairs, pair_accuracy
from reward.model import RewardModel
from reward.preprocess import ClipPreprocess, to_pixel_batches
from shapes.raters import default_panel
from shapes.render import render, render_round
from shapes.world import Prompt, prompt_set
from tiny_models import tiny_reward_config

torch.set_num_threads(2)
ln = math.log


# ---------------------------------------------------------------------------------------------
# Losses, by hand


def test_binary_mse_and_bce_by_hand():
    logits = torch.tensor([0.0, ln(3.0)])  # sigmoid: 0.5, 0.75
    y = torch.tensor([1.0, 0.0])
    assert binary_loss(logits, y, kind="mse").item() == pytest.approx((0.25 + 0.5625) / 2)
    w = torch.tensor([1.0, 3.0])
    assert binary_loss(logits, y, w, kind="mse").item() == pytest.approx((0.25 + 3 * 0.5625) / 4)
    # bce: -log 0.5 and -log(1 - 0.75)
    assert binary_loss(logits, y, kind="bce").item() == pytest.approx((ln(2) + ln(4)) / 2)


def test_bradley_terry_by_hand_with_ties():
    r0, r1 = torch.tensor([1.0, 1.0, 0.3, 2.0]), torch.tensor([0.0, 0.0, 0.3, 0.0])
    y = torch.tensor([1.0, 0.0, 0.5, 0.5])
    per = [ln(1 + math.exp(-1)), ln(1 + math.e), ln(2.0),
           0.5 * (ln(1 + math.exp(-2)) + ln(1 + math.exp(2)))]
    for i in range(4):
        got = bradley_terry_loss(r0[i:i + 1], r1[i:i + 1], y[i:i + 1]).item()
        assert got == pytest.approx(per[i], rel=1e-6)
    w = torch.tensor([1.0, 0.0, 1.0, 2.0])
    assert bradley_terry_loss(r0, r1, y, w).item() == pytest.approx(
        (per[0] + per[2] + 2 * per[3]) / 4, rel=1e-6)
    # A tie between equal rewards is at its minimum: no gradient.
    a, b = torch.tensor([0.7], requires_grad=True), torch.tensor([0.7], requires_grad=True)
    bradley_terry_loss(a, b, torch.tensor([0.5])).backward()
    assert abs(a.grad.item()) < 1e-7 and abs(b.grad.item()) < 1e-7


def test_prompt_classification_by_hand():
    logits = torch.tensor([[2.0, 0.0, 0.0]])
    assert prompt_classification_loss(logits).item() == pytest.approx(ln(1 + 2 * math.exp(-2)))
    assert prompt_classification_loss(logits, temperature=2.0).item() == pytest.approx(ln(1 + 2 / math.e))
    # A masked (padding) candidate takes no probability mass, however large its logit.
    masked = torch.tensor([[2.0, 0.0, 50.0]])
    mask = torch.tensor([[True, True, False]])
    assert prompt_classification_loss(masked, mask).item() == pytest.approx(ln(1 + math.exp(-2)))


def test_per_prompt_weights():
    assert per_group_weights(["a", "a", "b", "a"]).tolist() == pytest.approx([1 / 3, 1 / 3, 1, 1 / 3])


# ---------------------------------------------------------------------------------------------
# Perturbations, aggregation, split


def test_shapes_perturbations_are_one_attribute_away():
    pool = shapes_perturbations("one red circle")
    assert pool == sorted(["two red circles", "three red circles", "four red circles",
                           "one green circle", "one blue circle", "one yellow circle", "one red square"])
    assert shapes_perturbations("a photo of a cat") is None


def test_word_swap_perturbations():
    groups = (("red", "blue"), ("one", "two"))
    got = word_swap_perturbations("One red car, on a blue road.", groups)
    assert got == sorted(["two red car, on a blue road.", "One blue car, on a blue road.",
                          "One red car, on a red road."])
    assert word_swap_perturbations("a cat", groups) == []


def _labels(rows):
    return pd.DataFrame(rows, columns=["image_id", "label"])


def test_binary_aggregation_majority_and_mean():
    labels = _labels([("a", "good"), ("a", "good"), ("a", "bad"), ("b", "good"), ("b", "bad"),
                      ("c", "bad"), ("c", "skip"), ("d", "skip")])
    maj = aggregate_binary(labels, "majority").set_index("image_id")
    assert maj["target"].to_dict() == {"a": 1.0, "c": 0.0}  # b is a tie: dropped; d only skipped
    mean = aggregate_binary(labels, "mean").set_index("image_id")
    assert mean["target"].to_dict() == pytest.approx({"a": 2 / 3, "b": 0.5, "c": 0.0})


def test_split_by_prompt():
    texts = {p.prompt_id: p.text for p in prompt_set("all")}
    val, kind = split_prompts(texts, DataConfig())
    assert kind == "shapes_heldout" and val == {p.prompt_id for p in prompt_set("heldout")}
    general = {f"p{i}": f"a photo number {i}" for i in range(40)}
    val1, kind = split_prompts(general, DataConfig(val_fraction=0.25))
    assert kind == "hash" and 0 < len(val1) < 40
    # Stable as the data grows: a prompt keeps its side.
    more = {**general, **{f"q{i}": f"another photo {i}" for i in range(40)}}
    val2, _ = split_prompts(more, DataConfig(val_fraction=0.25))
    assert val1 == {p for p in val2 if p.startswith("p")}
    with pytest.raises(DataError, match="at least 2"):
        split_prompts({"p": "x"}, DataConfig())


def test_images_split_within_each_trained_prompt():
    ids = np.array([f"img{i}" for i in range(40)])
    prompts = np.array([f"p{i // 8}" for i in range(40)])  # 5 prompts x 8 images
    cfg = DataConfig(val_image_fraction=0.25, select_fraction=0.15)
    side = image_sides(ids, prompts, {"p4"}, cfg)
    for p in ("p0", "p1", "p2", "p3"):
        mine = list(side[prompts == p])
        assert (mine.count("val_images"), mine.count("select"), mine.count("train")) == (2, 1, 5)
    assert set(side[prompts == "p4"]) == {"val_prompts"}
    # seeded by the image ids: the same images fall on the same side in any order
    perm = np.random.default_rng(0).permutation(40)
    assert list(image_sides(ids[perm], prompts[perm], {"p4"}, cfg)) == list(side[perm])
    # a prompt with few images keeps one to train on
    assert list(image_sides(np.array(["a", "b"]), np.array(["q", "q"]), set(),
                            DataConfig(val_image_fraction=0.5, select_fraction=0.5))).count("train") == 1


def test_every_labelled_prompt_trains_and_pairs_follow_their_images(labelled_root):
    from reward.data import SIDES, load_reward_data

    data = load_reward_data(Store(labelled_root), DataConfig(root=str(labelled_root), min_val_prompts=3),
                            LossConfig())
    heldout = {p.prompt_id for p in prompt_set("heldout")}
    trained = set(data.train.prompt_ids)
    assert trained.isdisjoint(heldout) and trained == set(data.val_images.prompt_ids)  # every train prompt
    assert set(data.val_prompts.prompt_ids) <= heldout and len(data.val_prompts.prompt_ids) == 8
    side_of = {}
    for name in SIDES:
        split = data.select if name == "select" else getattr(data, name)
        for i in split.images:
            assert i not in side_of  # an image is on one side only
            side_of[i] = name
        assert set(split.binary.image) <= set(split.images)  # labels go with their image
    rank = {n: r for r, n in enumerate(SIDES)}
    for name in SIDES:
        split = data.select if name == "select" else getattr(data, name)
        for a, b in zip(split.pairs.image_0, split.pairs.image_1):
            assert max(rank[side_of[a]], rank[side_of[b]]) == rank[name]  # a pair touching an image goes with it
    assert len(data.val_images.pairs.image_0) > 0


# ---------------------------------------------------------------------------------------------
# Metrics


def test_metric_helpers():
    assert pair_accuracy(np.array([2.0, 1.0, 1.0]), np.array([1.0, 2.0, 1.0]),
                         np.array([True, True, True])) == pytest.approx(1.5 / 3)
    labels = np.array([1.0, 0.0, 1.0, 1.0])
    probs = np.array([0.95, 0.95, 0.15, 0.12])  # bin 9: acc 0.5 conf 0.95; bin 1: acc 1 conf 0.135
    assert expected_calibration_error(labels, probs) == pytest.approx(0.5 * 0.45 + 0.5 * 0.865)
    hi, lo = oracle_pairs(np.arange(4), np.array(["a", "a", "a", "b"]), np.array([3.0, 1.0, 3.0, 0.0]))
    assert sorted(zip(hi.tolist(), lo.tolist())) == [(0, 1), (2, 1)]  # tie (0, 2) excluded


def test_oracle_pair_accuracy_splits_aligned_from_failure_pairs():
    # One prompt: two aligned images (score 3), two misaligned ones with partial credit 0.75 and 0.5.
    oracle = np.array([3.0, 3.0, 0.75, 0.5])
    hi, lo = oracle_pairs(np.arange(4), np.zeros(4, int), oracle)
    # The reward puts both aligned images first but orders the two failures the wrong way round.
    scores = np.array([2.0, 1.5, -1.0, 0.0])
    out = oracle_pair_accuracy(scores, hi, lo, oracle)
    assert out["oracle_pairs"] == 5 and out["oracle_aligned_pairs"] == 4
    assert out["pairwise_accuracy_vs_oracle_aligned_pairs"] == 1.0
    assert out["pairwise_accuracy_vs_oracle_failure_pairs"] == 0.0
    assert out["pairwise_accuracy_vs_oracle"] == pytest.approx(4 / 5)
    assert np.isnan(oracle_pair_accuracy(scores, hi[:0], lo[:0], oracle)["pairwise_accuracy_vs_oracle"])


def test_one_reward_object_scores_marks_embeds_and_refuses_what_it_lacks(tiny_clip, tmp_path):
    """load_reward gives one object: it scores in batches, marks where an image is wrong (its region
    head's heatmap above the head's threshold, or a run's), embeds; a reward without a region head
    is refused at load when the run asks for one, and a custom reward refuses all but scoring."""
    from reward.reward_fn import OracleReward, Reward, RewardSource, load_reward
    from tools.random_models import build_reward_model

    with_head = build_reward_model(tiny_clip, tmp_path / "with-head", region=True)
    headless = build_reward_model(tiny_clip, tmp_path / "headless")
    images = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    prompts = ["one red circle", "two blue squares", "one red circle"]
    r = load_reward(RewardSource(path=str(with_head), batch_size=2), "cpu", region=True)
    assert r.has_region and not r.has_spread and r.model_id == r.model.model_id
    torch.testing.assert_close(r.score(images, prompts), r.model.score(images, prompts))  # 2 + 1 images a call
    heat = r.heatmap(images, prompts)
    assert heat.shape == (3, 32, 32) and 0 <= heat.min() and heat.max() <= 1
    assert torch.equal(r.masks(images, prompts), heat > r.model.region_head.threshold)
    assert torch.equal(r.masks(images, prompts, threshold=0.0), heat > 0)
    img, txt = r.embed(images, prompts)
    assert img.shape == txt.shape == (3, r.model.head.spec.embed_dim) and not img.requires_grad
    with pytest.raises(UserError, match="no epistemic part"):
        r.spread(images, prompts)

    with pytest.raises(UserError, match=f"{headless} has no region head.*region.weight=0"):
        load_reward(RewardSource(path=str(headless)), "cpu", region=True)
    plain = load_reward(RewardSource(path=str(headless)), "cpu")
    assert not plain.has_region
    with pytest.raises(UserError, match="no region head"):
        plain.masks(images, prompts)

    oracle = load_reward(RewardSource(kind="oracle"), "cpu", region=True)
    assert isinstance(oracle, OracleReward) and oracle.masks(images, prompts).dtype == torch.bool
    custom = Reward(lambda im, pr: im.mean(dim=(1, 2, 3)), batch_size=2)
    torch.testing.assert_close(custom.score(images, prompts), images.mean(dim=(1, 2, 3)))
    for ask, message in ((custom.masks, "no region head"), (custom.spread, "no epistemic spread"),
                         (custom.embed, "not a learned reward"), (oracle.spread, "no epistemic spread")):
        with pytest.raises(UserError, match=message):
            ask(images, prompts)


def test_oracle_reward_graded_or_aligned():
    from core.images import pil_to_tensor
    from reward.reward_fn import OracleReward, RewardSource, load_reward

    # renders of "two red squares": right; "three red squares" and "two blue squares": one attribute off
    images = pil_to_tensor([render(t, 0) for t in ("two red squares", "three red squares", "two blue squares")])
    prompts = ["two red squares"] * 3
    graded = OracleReward("graded").score(images, prompts)
    assert graded[0] == 3.0 and (graded[1:] < 1).all()
    assert graded[1] < graded[2]  # a wrong count also loses a quarter per extra object
    assert OracleReward("aligned").score(images, prompts).tolist() == [1.0, 0.0, 0.0]
    loaded = load_reward(RewardSource(kind="oracle", oracle="aligned"), device=None)
    assert isinstance(loaded, OracleReward) and loaded.score(images, prompts).tolist() == [1.0, 0.0, 0.0]  # config reaches it


# ---------------------------------------------------------------------------------------------
# Preprocessing


def test_torch_preprocessing_matches_the_image_processor(tmp_path):
    from transformers import CLIPImageProcessor

    proc = CLIPImageProcessor(size={"shortest_edge": 40}, crop_size={"height": 32, "width": 32})
    pre = ClipPreprocess.from_processor(proc)
    images = [render(Prompt.parse("two red circles"), s, size=64) for s in range(3)]
    ref = torch.as_tensor(np.array(proc(images, return_tensors="np")["pixel_values"]))
    ours = pre(to_pixel_batches(images, torch.device("cpu"))[0])
    assert ours.shape == ref.shape == (3, 3, 32, 32)
    assert (ours - ref).abs().mean() < 0.03  # resampling kernels differ slightly at edges
    # numpy uint8 and float tensors give identical input; gradients flow to the pixels.
    arr = np.stack([np.asarray(im) for im in images])
    x = torch.as_tensor(arr).permute(0, 3, 1, 2).float().div(255).requires_grad_(True)
    assert torch.equal(pre(to_pixel_batches(arr, torch.device("cpu"))[0]), ours)
    pre(to_pixel_batches(x, torch.device("cpu"))[0]).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_bad_image_inputs_are_clear_errors():
    with pytest.raises(UserError, match=r"\(B, 3, H, W\)"):
        to_pixel_batches(torch.zeros(2, 64, 64, 3), torch.device("cpu"))
    with pytest.raises(UserError, match="uint8"):
        to_pixel_batches(np.zeros((2, 8, 8, 3), np.float32), torch.device("cpu"))


# ---------------------------------------------------------------------------------------------
# Whole paths on tiny CLIPs


@pytest.fixture(scope="module")
def labelled_root(tmp_path_factory):
    """A labelled shapes round: 16 train + 8 held-out prompts, 4 images each, half mismatched,
    5 simulated raters at 10 % noise (binary, 2 per image; rankings, 2 per prompt)."""
    root = tmp_path_factory.mktemp("shapes")
    store = Store(root)
    prompts = prompt_set("train")[::7][:16] + prompt_set("heldout")[::6][:8]
    render_round(store, prompts, per_prompt=4, seed=1, mismatch_rate=0.5)
    simulate_round(store, default_panel(5, flip_rate=0.1), overlap=2)
    return root


def _cfg(root, clip, out, *more):
    return tiny_reward_config(root, clip, out, "train.epochs=3", "train.batch_size=64", "train.ablation_seeds=1", *more)


def test_train_save_load_score_on_tiny_clip(labelled_root, tiny_clip, tmp_path):
    from reward.train import train_reward

    out = tmp_path / "reward"
    result = train_reward(_cfg(labelled_root, tiny_clip, out))
    assert sorted(p.name for p in out.iterdir()) == ["config.yaml", "epistemic.safetensors", "head.safetensors",
                                                    "metrics.json", "reward_config.json"]
    m = json.loads((out / "metrics.json").read_text())
    for view in ("val_images", "val_prompts"):
        for key in ("pairwise_accuracy_vs_oracle", "zero_shot_clip_pairwise_accuracy", "binary_auc", "ece",
                    "untrained_head_pairwise_accuracy", "spearman_vs_oracle", "pairwise_accuracy_vs_labels",
                    "oracle_labels_head_pairwise_accuracy_vs_oracle", "zero_shot_clip_pairwise_accuracy_vs_oracle"):
            assert key in m[view], (view, key)
        assert 0.0 <= m[view]["pairwise_accuracy_vs_oracle"] <= 1.0
    assert m["data"]["split"] == "shapes_heldout" and m["data"]["val_prompts"] == 8
    assert m["data"]["train_prompts"] == 16 and m["data"]["val_images"] == 16  # 1 of each train prompt's 4
    assert m["primary_view"] == "val_images" and m["aux_ablation"]["evaluated_on"] == "val_images"
    assert set(m["aux_ablation"]["with_aux"]) >= {"pairwise_accuracy_vs_oracle"}
    assert m["model_id"].startswith("reward-")
    assert "targets" not in m  # acceptance checks belong to the bench (tools.reward_bench), not the output

    rm = RewardModel.from_pretrained(out, device="cpu")
    assert rm.model_id == result.model.model_id
    gens = Store(labelled_root).to_pandas("generations").iloc[:5]
    from data.generations import load_image

    pil = [load_image(labelled_root, r) for _, r in gens.iterrows()]
    prompts = gens["prompt"].tolist()
    r_pil = rm.score(pil, prompts)
    assert r_pil.shape == (5,) and r_pil.dtype == torch.float32 and not r_pil.requires_grad
    assert ((r_pil >= 0) & (r_pil <= 1)).all()
    arr = np.stack([np.asarray(im) for im in pil])
    x = torch.as_tensor(arr).permute(0, 3, 1, 2).float() / 255
    assert torch.allclose(rm.score(arr, prompts), r_pil, atol=1e-6)
    assert torch.allclose(rm.score(x, prompts), r_pil, atol=1e-6)
    assert set(prompts) <= set(rm._text_cache)  # text embeddings cached per prompt string
    # The saved model gives the rewards the trained one gave.
    assert torch.allclose(result.model.score(pil, prompts), r_pil, atol=1e-6)
    # Differentiable forward for tensors (e.g. decoded VAE outputs).
    x.requires_grad_(True)
    rm(x, prompts).sum().backward()
    assert x.grad.abs().sum() > 0


def test_reward_bench_checks_the_targets_on_the_primary_view():
    from tools.reward_bench import reward_targets

    m = {"primary_view": "val_images", "pairwise_reference": "oracle",
         "val_images": {"pairwise_accuracy_vs_oracle": 0.85, "margin_over_zero_shot_clip": 0.01},
         "aux_ablation": {"paired_delta": {"metric": "pairwise_accuracy_vs_oracle", "mean": 0.03, "sem": 0.01}}}
    assert reward_targets(m) == {"val_images_pairwise_accuracy_vs_oracle>=0.85": True,
                                 "val_images_above_zero_shot_clip": True, "aux_loss_helps": True}
    m["val_images"] = {"pairwise_accuracy_vs_oracle": None, "margin_over_zero_shot_clip": 0.0}  # None: NaN
    m["aux_ablation"]["paired_delta"].update(mean=0.03, sem=0.02)  # not above twice its standard error
    assert not any(reward_targets(m).values())
    m["aux_ablation"]["paired_delta"].update(mean=0.01, sem=None)  # one seed: no standard error
    assert reward_targets(m)["aux_loss_helps"]
    # Without the oracle (pairwise figures against the labels) and the ablation, nothing to check.
    assert reward_targets({**m, "pairwise_reference": "labels", "aux_ablation": None}) == {}


def test_existing_model_is_kept_unless_overwrite(labelled_root, tiny_clip, tmp_path):
    from reward.train import train_reward

    out = tmp_path / "reward"
    first = train_reward(_cfg(labelled_root, tiny_clip, out, "train.baselines=false", "train.ablate_aux=false"))
    before = (out / "head.safetensors").read_bytes()
    with pytest.raises(UserError, match="already holds a trained reward model"):
        train_reward(_cfg(labelled_root, tiny_clip, out, "train.seed=1"))
    assert (out / "head.safetensors").read_bytes() == before
    second = train_reward(_cfg(labelled_root, tiny_clip, out, "train.seed=1", "overwrite=true",
                               "train.baselines=false", "train.ablate_aux=false"))
    assert (out / "head.safetensors").read_bytes() != before
    assert second.model.model_id != first.model.model_id
    assert [p.name for p in tmp_path.iterdir()] == ["reward"]  # no temp folders left


def test_score_rewards_cli_writes_the_rewards_table(labelled_root, tiny_clip, tmp_path, capsys):
    from pipelines.cli import run
    from pipelines.score_rewards import main
    from reward.train import train_reward

    out = tmp_path / "reward"
    train_reward(_cfg(labelled_root, tiny_clip, out, "train.baselines=false", "train.ablate_aux=false"))
    root = tmp_path / "root"
    store = Store(root)
    render_round(store, prompt_set("train")[:3], per_prompt=3, seed=2)
    args = [f"root={root}", f"model={out}", "batch_size=4", "device=cpu", "progress=false"]
    assert run(main, args) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["scored"] == 9 and summary["already_scored"] == 0
    rewards = store.to_pandas(REWARDS)
    assert len(rewards) == 9 and rewards["reward"].between(0, 1).all()
    # Same values as score() directly.
    rm = RewardModel.from_pretrained(out, device="cpu")
    gens = store.to_pandas("generations").set_index("image_id").loc[rewards["image_id"]]
    from data.generations import load_image

    direct = rm.score([load_image(root, r) for _, r in gens.iterrows()], gens["prompt"].tolist())
    assert np.allclose(rewards["reward"].to_numpy(), direct.numpy(), atol=1e-6)
    assert run(main, args) == 0  # resumable: nothing left to score
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["scored"] == 0
    # A new image whose file no longer matches its row: one error naming it, and no score stored.
    new = render_round(store, prompt_set("train")[3:5], per_prompt=1, seed=2)
    Image.new("RGB", (48, 32)).save(root / new[1]["image_path"], format="PNG")
    assert run(main, args) == 2
    err = capsys.readouterr().err
    assert f"image {new[1]['image_id']}" in err and "48x32" in err
    assert len(store.to_pandas(REWARDS)) == 9


# -- a CLIP in the folder layout of openai/clip-vit-large-patch14 ------------------------------


def _bytes_to_unicode() -> dict[int, str]:
    """CLIP's byte -> printable character table (as in the original BPE tokenizer)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def make_vitl_layout_clip(path, image_size: int = 28, patch_size: int = 14):
    """A tiny random CLIPModel saved like CLIP ViT-L/14: BPE vocab.json + merges.txt (no
    tokenizer.json), legacy eos_token_id=2 in the text config (pooling at the highest token id,
    <|endoftext|>, as in the real checkpoint), preprocessor_config.json, model.safetensors."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    path.mkdir(parents=True)
    chars = list(_bytes_to_unicode().values())
    merges = [("o", "n</w>"), ("r", "e"), ("re", "d</w>"), ("c", "i"), ("ci", "r")]
    tokens = chars + [c + "</w>" for c in chars] + ["".join(m) for m in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]  # last, so EOS has the highest id
    vocab = {t: i for i, t in enumerate(tokens)}
    (path / "vocab.json").write_text(json.dumps(vocab))
    (path / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
    (path / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "CLIPTokenizer", "model_max_length": 77, "do_lower_case": True,
        "errors": "replace", "unk_token": "<|endoftext|>", "bos_token": "<|startoftext|>",
        "eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>"}))
    torch.manual_seed(0)
    config = CLIPConfig(
        text_config=dict(vocab_size=len(vocab), hidden_size=32, intermediate_size=64,
                         num_hidden_layers=2, num_attention_heads=2, max_position_embeddings=77,
                         bos_token_id=0, eos_token_id=2, pad_token_id=1),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                           num_attention_heads=2, image_size=image_size, patch_size=patch_size),
        projection_dim=24)
    CLIPModel(config).save_pretrained(path)
    CLIPImageProcessor(size={"shortest_edge": image_size},
                       crop_size={"height": image_size, "width": image_size}).save_pretrained(path)
    return path


def test_vitl_layout_clip_loads_and_trains_last_layers(labelled_root, tmp_path):
    from core.loading import load_clip
    from reward.train import train_reward

    clip_dir = make_vitl_layout_clip(tmp_path / "clip-vit-large-patch14")
    assert not (clip_dir / "tokenizer.json").exists()
    clip = load_clip(clip_dir, device="cpu")
    ids = clip.tokenizer(["one red circle"])["input_ids"][0]
    assert ids[0] == clip.tokenizer.convert_tokens_to_ids("<|startoftext|>")
    assert ids[-1] == max(ids) == clip.tokenizer.convert_tokens_to_ids("<|endoftext|>")
    assert "red</w>" in clip.tokenizer.convert_ids_to_tokens(ids)  # the merges were applied

    out = tmp_path / "reward"
    cfg = _cfg(labelled_root, clip_dir, out, "model.train_last_layers=1", "train.epochs=1",
               "train.ablate_aux=false", "train.baselines=false", "loss.perturbation=word_swap")
    before = {k: v.clone() for k, v in clip.model.state_dict().items()}
    result = train_reward(cfg)
    changed = {k for k, v in result.model.clip.state_dict().items() if not torch.equal(v, before[k])}
    assert any(".layers.1." in k for k in changed) and not any(".layers.0." in k for k in changed)
    assert (out / "clip" / "model.safetensors").is_file()  # the fine-tuned CLIP travels with the head
    rm = RewardModel.from_pretrained(out, device="cpu")
    imgs = np.stack([np.asarray(render(Prompt.parse("two red circles"), s)) for s in range(3)])
    assert torch.allclose(rm.score(imgs, "two red circles"),
                          result.model.score(imgs, "two red circles"), atol=1e-5)


# -- bad data ----------------------------------------------------------------------------------


def test_no_labels_says_which_command_makes_them(tmp_path, tiny_clip, capsys):
    from pipelines.cli import run
    from pipelines.train_reward import main

    args = [f"data.root={tmp_path / 'empty'}", f"model.clip={tiny_clip}", f"out_dir={tmp_path / 'o'}"]
    assert run(main, args) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: no generated images") and "make generate && make simulate-raters" in err
    store = Store(tmp_path / "unlabelled")
    render_round(store, prompt_set("train")[:2], per_prompt=2)
    assert run(main, [f"data.root={store.root}", *args[1:]]) == 2
    err = capsys.readouterr().err
    assert "no labels in" in err and "make generate && make simulate-raters" in err
    assert not (tmp_path / "o").exists()


def _label(image_id, prompt_id, label="good", rater="r1", i=0):
    return dict(label_id=f"l{image_id}{rater}{i}", image_id=image_id, prompt_id=prompt_id,
                rater_id=rater, label=label, skip_reason=None,
                created_at=pd.Timestamp("2026-01-01", tz="UTC"), duration_ms=10, is_gold=False,
                guideline_version="g")


def test_mismatched_or_useless_labels_are_clear_errors(tmp_path):
    store = Store(tmp_path)
    rows = render_round(store, prompt_set("train")[:3], per_prompt=2)
    cfg_d, cfg_l = DataConfig(root=str(tmp_path)), LossConfig()
    store.append(BINARY_LABELS, [_label(r["image_id"], r["prompt_id"], "skip") for r in rows])
    with pytest.raises(UserError, match="nothing to train on.*skips"):
        load_reward_data(store, cfg_d, cfg_l)
    store.append(BINARY_LABELS, [_label("no-such-image", rows[0]["prompt_id"], i=1)])
    with pytest.raises(DataError, match="not in the generations table"):
        load_reward_data(store, cfg_d, cfg_l)

    other = Store(tmp_path / "b")
    rows = render_round(other, prompt_set("train")[:3], per_prompt=2)
    other.append(BINARY_LABELS, [_label(rows[0]["image_id"], rows[3]["prompt_id"])])
    with pytest.raises(DataError, match="says prompt"):
        load_reward_data(other, cfg_d, cfg_l)


def test_cosine_skip_head_starts_as_zero_shot_clip(tiny_clip):
    from core.loading import load_clip

    clip = load_clip(tiny_clip, device="cpu")
    rm = RewardModel.build(clip, cosine_skip=True, hidden=(8,), seed=3)
    img = torch.nn.functional.normalize(torch.randn(20, 16), dim=-1)
    txt = torch.nn.functional.normalize(torch.randn(20, 16), dim=-1)
    rm.head.set_feature_stats(img, txt)
    logits = rm.head(img, txt)
    cos = (img * txt).sum(-1)
    assert torch.equal(torch.argsort(logits), torch.argsort(cos))


def test_pick_perturbed_takes_only_real_candidates():
    from reward.fit import _pick_perturbed

    pool = torch.tensor([[5, 6, 7, -1], [8, -1, -1, -1]])
    got = _pick_perturbed(pool, 2, torch.Generator().manual_seed(0))
    assert set(got[0].tolist()) <= {5, 6, 7} and len(set(got[0].tolist())) == 2
    assert sorted(got[1].tolist()) == [-1, 8]  # one real candidate; the other slot is padding


@pytest.mark.gpu
def test_score_on_cuda_with_cuda_tensors(tiny_clip, tmp_path):
    from core.loading import load_clip

    rm = RewardModel.build(load_clip(tiny_clip, device="cuda"))
    rm.save_pretrained(tmp_path / "rm")
    rm = RewardModel.from_pretrained(tmp_path / "rm")  # default device: CUDA
    x = torch.rand(64, 3, 64, 64, device="cuda", dtype=torch.float16)
    r = rm.score(x, ["two red circles"] * 64)
    assert r.device.type == "cuda" and r.dtype == torch.float32 and r.shape == (64,)
    cpu = RewardModel.from_pretrained(tmp_path / "rm", device="cpu").score(x.float().cpu(), "two red circles")
    assert torch.allclose(r.cpu(), cpu, atol=1e-3)


def test_relabel_with_oracle_keeps_the_examples_and_replaces_the_labels(labelled_root):
    from reward.config import DataConfig, LossConfig
    from reward.data import load_reward_data
    from reward.oracle import relabel_with_oracle

    data = load_reward_data(Store(labelled_root), DataConfig(root=str(labelled_root), min_val_prompts=3),
                            LossConfig())
    truth = np.arange(len(data.images), dtype=float) % 4  # graded scores 0, 1, 2, 3, 0, ...
    ideal = relabel_with_oracle(data, truth)
    b, p = ideal.train.binary, ideal.train.pairs
    assert np.array_equal(b.image, data.train.binary.image)
    assert np.array_equal(b.target, (truth[b.image] >= 2).astype(np.float32))
    assert np.array_equal(p.image_0, data.train.pairs.image_0)
    o0, o1 = truth[p.image_0], truth[p.image_1]
    assert np.array_equal(p.label_0, np.where(o0 > o1, 1.0, np.where(o0 < o1, 0.0, 0.5)))
    assert (truth[ideal.train.aux.image] >= 2).all() and len(ideal.train.aux.image)
    assert ideal.val_images is data.val_images and ideal.val_prompts is data.val_prompts  # untouched


@pytest.mark.slow
def test_oracle_labels_train_the_same_head_on_noise_free_labels(labelled_root, tiny_clip, tmp_path):
    from reward.train import train_reward

    raters = train_reward(_cfg(labelled_root, tiny_clip, tmp_path / "r", "train.ablate_aux=false"))
    oracle = train_reward(_cfg(labelled_root, tiny_clip, tmp_path / "o", "train.ablate_aux=false",
                               "data.labels=oracle"))
    assert oracle.metrics["data"]["labels"] == "oracle" and raters.metrics["data"]["labels"] == "raters"
    # The model is the oracle-labelled head itself: same seed, same labels, same figures.
    for view in ("val_images", "val_prompts"):
        assert oracle.metrics[view]["pairwise_accuracy_vs_oracle"] == \
            raters.metrics[view]["oracle_labels_head_pairwise_accuracy_vs_oracle"]
    with pytest.raises(UserError, match="data.labels=oracle"):
        train_reward(_cfg(labelled_root, tiny_clip, tmp_path / "n", "data.labels=oracle", "data.oracle=none"))


def test_a_reward_saved_before_the_shipped_clip_moved_still_loads(tiny_clip, tmp_path):
    """A reward folder records where its CLIP was.  The shipped shapes CLIP moved (data/models/ ->
    shapes/models/): a folder that recorded the old place finds it by its fingerprint; any other
    CLIP that is gone is still one clear error."""
    from core.loading import load_clip
    from reward.model import CONFIG_FILE
    from shapes import SHAPES_CLIP

    for clip_dir, found in ((SHAPES_CLIP, True), (tiny_clip, False)):
        out = tmp_path / f"rm-{found}"
        RewardModel.build(load_clip(clip_dir, device="cpu")).save_pretrained(out)
        cfg = json.loads((out / CONFIG_FILE).read_text())
        cfg["clip_path"], cfg["clip_path_relative"] = str(tmp_path / "data/models/shapes-clip"), "../gone"
        (out / CONFIG_FILE).write_text(json.dumps(cfg))
        if found:
            rm = RewardModel.from_pretrained(out, device="cpu")
            assert rm.clip_path == SHAPES_CLIP and rm.score(torch.rand(2, 3, 64, 64), "one red circle").shape == (2,)
        else:
            with pytest.raises(UserError, match="the CLIP folder this reward model was built on is gone"):
                RewardModel.from_pretrained(out, device="cpu")
