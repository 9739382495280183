"""Fine-tuning on the raters' labels with no reward model (issue 75): Diffusion-DPO on ranking pairs,
Diffusion-KTO on binary answers.  Tier 1: the losses against a hand computation and
torch.nn.functional, and the pairs and answers read from a labelled round; tier 2: both methods
through make finetune's entry on a tiny SD folder and a tiny SD3 folder on CPU, the LoRA loaded by
stock diffusers, and the refusals (exit 2, one error line, nothing written)."""

from __future__ import annotations

import json
import math
import shutil
from datetime import datetime, timezone

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from core.config import load_config
from core.errors import UserError
from data import Store, read_table
from data.schemas import BINARY_LABELS, RANKINGS
from finetune.config import FinetuneConfig
from finetune.label_data import read_labels
from finetune.rl_math import diffusion_dpo_loss, diffusion_kto_loss, kto_reference_point
from pipelines.cli import run
from test_bad_input_cli import one_error_line, tree

PROMPTS = ("one red circle", "two blue squares", "three circles")
TINY = ["sampling.num_inference_steps=2", "sample_grid_every=0", "optim.lr=1e-2", "prompts.eval_prompts=[one circle]",
        "dpo.steps=2", "dpo.batch_size=2", "kto.steps=2", "kto.batch_size=4"]


# -- tier 1: the losses ---------------------------------------------------------------------------------

def test_dpo_loss_by_hand():
    """e_w 0.1, e_l 0.3 (the model fits w better), the base 0.2 on both, beta 10:
    z = -10/2 ((0.1 - 0.3) - 0) = 1, loss = -log sigmoid(1) = log(1 + e^-1)."""
    t = torch.tensor
    loss, z = diffusion_dpo_loss(t([0.1]), t([0.3]), t([0.2]), t([0.2]), beta=10.0)
    assert z.item() == pytest.approx(1.0) and loss.item() == pytest.approx(math.log(1 + math.exp(-1)))
    # the base's own margin is subtracted: a model equal to the base has z = 0, loss log 2
    loss, z = diffusion_dpo_loss(t([0.1]), t([0.3]), t([0.1]), t([0.3]), beta=10.0)
    assert z.item() == 0 and loss.item() == pytest.approx(math.log(2))


def test_dpo_loss_is_the_binary_cross_entropy_of_its_logit():
    g = torch.Generator().manual_seed(0)
    err_w, err_l, ref_w, ref_l = torch.rand(4, 64, generator=g).unbind()
    beta = 2500.0
    z_hand = -0.5 * beta * ((err_w - err_l) - (ref_w - ref_l))
    loss, z = diffusion_dpo_loss(err_w, err_l, ref_w, ref_l, beta)
    torch.testing.assert_close(z, z_hand)
    torch.testing.assert_close(loss, -F.logsigmoid(z_hand))
    y = torch.where(torch.arange(64) % 2 == 0, torch.tensor(1.0), torch.tensor(0.5))  # strict pairs and ties
    loss, _ = diffusion_dpo_loss(err_w, err_l, ref_w, ref_l, beta, y)
    torch.testing.assert_close(loss, F.binary_cross_entropy_with_logits(z_hand, y, reduction="none"))
    # a tie counts each order half: swapping w and l leaves its loss unchanged
    swapped, _ = diffusion_dpo_loss(err_l, err_w, ref_l, ref_w, beta, torch.full((64,), 0.5))
    torch.testing.assert_close(swapped[1::2], loss[1::2])


def test_dpo_gradient_lowers_the_winners_error_and_raises_the_losers():
    err = torch.tensor([0.2, 0.2], requires_grad=True)
    loss, _ = diffusion_dpo_loss(err[:1], err[1:], torch.tensor([0.2]), torch.tensor([0.2]), beta=100.0)
    loss.sum().backward()
    assert err.grad[0] > 0 > err.grad[1]  # descent lowers e_w, raises e_l
    assert err.grad[0].item() == pytest.approx(0.5 * 100 * 0.5)  # beta/2 sigmoid(-z), z = 0


def test_kto_reference_point_is_the_batch_mean_log_ratio_floored_at_zero():
    err, ref = torch.tensor([0.1, 0.3, 0.2]), torch.tensor([0.2, 0.2, 0.5])
    assert kto_reference_point(err, ref).item() == pytest.approx((0.1 - 0.1 + 0.3) / 3)
    assert kto_reference_point(ref, err).item() == 0  # a negative mean is floored: a KL is >= 0
    assert not kto_reference_point(err.requires_grad_(), ref).requires_grad


def test_kto_loss_by_hand():
    """g = e_ref - e = (0.1, -0.1), z_ref = max(0, 0) = 0, beta 10: margins (1, -1); the good image
    (margin 1) and the bad one (margin -1) each lose 1 - sigmoid(1), weighted by lambda_D / lambda_U."""
    t = torch.tensor
    err, ref = t([0.1, 0.3]), t([0.2, 0.2])
    z = kto_reference_point(err, ref)
    loss, margin = diffusion_kto_loss(err, ref, t([1.0, 0.0]), 10.0, z, desirable_weight=2.0, undesirable_weight=0.5)
    torch.testing.assert_close(margin, t([1.0, -1.0]))
    s = 1 / (1 + math.exp(-1))
    torch.testing.assert_close(loss, t([2.0 * (1 - s), 0.5 * (1 - s)]))
    # the reference point shifts every margin: z_ref 0.05 -> beta (g - z_ref) = (0.5, -1.5)
    _, margin = diffusion_kto_loss(err, ref, t([1.0, 0.0]), 10.0, t(0.05))
    torch.testing.assert_close(margin, t([0.5, -1.5]))


def test_kto_loss_against_torch_sigmoid_and_a_soft_target():
    g = torch.Generator().manual_seed(1)
    err, ref = torch.rand(2, 32, generator=g).unbind()
    target = torch.rand(32, generator=g)  # data.binary_aggregation=mean: the share of raters who said good
    z = kto_reference_point(err, ref)
    loss, _ = diffusion_kto_loss(err, ref, target, 500.0, z, 1.5, 0.7)
    m = 500.0 * ((ref - err) - z)
    torch.testing.assert_close(loss, target * 1.5 * (1 - torch.sigmoid(m)) + (1 - target) * 0.7 * torch.sigmoid(m))


# -- tier 1: the labels read --------------------------------------------------------------------------

@pytest.fixture(scope="module")
def labelled(tmp_path_factory):
    """A round 0 of 3 shapes prompts x 3 renders at 32 px, answered and ranked by 3 simulated raters
    (2 a binary item, 2 a ranking)."""
    from labeling_app.simulate import simulate_round
    from shapes.raters import default_panel
    from shapes.render import render_round
    from shapes.world import Prompt

    root = tmp_path_factory.mktemp("labels") / "root"
    store = Store(root)
    render_round(store, [Prompt.parse(t) for t in PROMPTS], per_prompt=3, size=32, mismatch_rate=0.5)
    simulate_round(store, default_panel(3, flip_rate=0.1), overlap=2)
    return root


def _cfg(*overrides: str) -> FinetuneConfig:
    return load_config(FinetuneConfig, None, list(overrides))


def test_dpo_pairs_are_every_pair_of_different_ranks_preferred_first(labelled):
    data = read_labels(_cfg("method=dpo", f"data.root={labelled}"), (32, 32))
    rankings = read_table(labelled, "rankings")
    ids = data.images["image_id"].to_numpy()
    want = set()
    for r in rankings.itertuples():
        for i, (a, ra) in enumerate(zip(r.image_ids, r.ranks)):
            for b, rb in list(zip(r.image_ids, r.ranks))[i + 1:]:
                if ra != rb:
                    want.add((r.ranking_id, a, b) if ra < rb else (r.ranking_id, b, a))
    got = sorted(zip(ids[data.first], ids[data.second]))
    assert got == sorted((a, b) for _, a, b in want) and (data.target == 1).all()
    prompt = data.images["prompt_id"].to_numpy()
    assert (prompt[data.first] == prompt[data.second]).all()
    assert data.pixels.shape == (len(data.images), 3, 32, 32) and data.summary["rankings"] == len(rankings)
    assert set(data.prompts) == set(PROMPTS)


def test_dpo_ties_dropped_or_halved_and_good_bad_pairs(labelled, tmp_path):
    root = tmp_path / "root"
    shutil.copytree(labelled, root)
    store = Store(root)
    gens = read_table(root, "generations")
    one = gens[gens["prompt"] == PROMPTS[0]]["image_id"].tolist()
    pid = gens[gens["prompt"] == PROMPTS[0]]["prompt_id"].iloc[0]
    store.append(RANKINGS, [dict(ranking_id="tied", prompt_id=pid, rater_id="r",
                                 image_ids=one, ranks=[1, 1, 2], created_at=datetime.now(timezone.utc),
                                 duration_ms=1, guideline_version="g")])
    dropped = read_labels(_cfg("method=dpo", f"data.root={root}"), (32, 32))
    halved = read_labels(_cfg("method=dpo", f"data.root={root}", "dpo.ties=half"), (32, 32))
    base = read_labels(_cfg("method=dpo", f"data.root={labelled}"), (32, 32)).summary
    ties = dropped.summary["tied_pairs"]
    assert ties == base["tied_pairs"] + 1 and dropped.summary["ranking_pairs"] == base["ranking_pairs"] + 2
    assert len(halved) == len(dropped) + ties and (halved.target == 0.5).sum() == ties
    both = read_labels(_cfg("method=dpo", f"data.root={root}", "dpo.binary_pairs=true"), (32, 32))
    kto = read_labels(_cfg("method=kto", f"data.root={root}"), (32, 32))
    ids = kto.images["image_id"].to_numpy()
    verdict = dict(zip(ids[kto.first], kto.target))
    prompt = dict(zip(kto.images["image_id"], kto.images["prompt_id"]))
    want = sum(1 for a in verdict for b in verdict if verdict[a] == 1 and verdict[b] == 0 and prompt[a] == prompt[b])
    assert both.summary["binary_pairs"] == want > 0 and len(both) == len(dropped) + want


def test_kto_answers_are_current_non_gold_and_aggregated_per_image(labelled, tmp_path):
    from data.labels import aggregate_binary, retract

    root = tmp_path / "root"
    shutil.copytree(labelled, root)
    store = Store(root)
    labels = read_table(root, "binary_labels")
    first = labels.iloc[0]
    retract(store, "binary_labels", first["label_id"], first["rater_id"])  # an undone answer
    gold = dict(first, label_id="gold-1", label="good" if first["label"] == "bad" else "bad", is_gold=True,
                skip_reason=None)
    store.append(BINARY_LABELS, [gold])  # a gold-check answer
    data = read_labels(_cfg("method=kto", f"data.root={root}"), (32, 32))
    want = aggregate_binary(labels.iloc[1:], "majority")
    ids = data.images["image_id"].to_numpy()
    assert dict(zip(ids[data.first], data.target)) == dict(zip(want["image_id"], want["target"]))
    assert data.second is None and set(np.unique(data.target)) <= {0.0, 1.0}
    mean = read_labels(_cfg("method=kto", f"data.root={root}", "data.binary_aggregation=mean"), (32, 32))
    assert len(mean) >= len(data) and ((mean.target > 0) & (mean.target < 1)).any()


def test_a_prompts_file_keeps_its_prompts_labels_only(labelled, tmp_path):
    (tmp_path / "targets.txt").write_text(PROMPTS[1] + "\n")
    for method in ("dpo", "kto"):
        data = read_labels(_cfg(f"method={method}", f"data.root={labelled}",
                                f"prompts.prompts_file={tmp_path / 'targets.txt'}"), (32, 32))
        assert data.prompts == [PROMPTS[1]] and len(data) > 0


def test_rounds_narrow_the_labels_as_make_reward_does(labelled):
    with pytest.raises(UserError, match=r"round\(s\) \[3\] have no images"):
        read_labels(_cfg("method=dpo", f"data.root={labelled}", "data.rounds=3"), (32, 32))
    assert len(read_labels(_cfg("method=kto", f"data.root={labelled}", "data.rounds=last:1"), (32, 32))) > 0


# -- tier 2: make finetune METHOD=dpo|kto on tiny models -----------------------------------------------

def _finetune(*args: str) -> int:
    from pipelines.finetune import main

    return run(main, list(args))


@pytest.mark.parametrize("method", ["dpo", "kto"])
def test_sd_run_trains_a_lora_stock_diffusers_loads(tiny_sd, labelled, tmp_path, method):
    from diffusers import StableDiffusionPipeline

    out = tmp_path / "run"
    assert _finetune(f"method={method}", f"output_dir={out}", f"model.pipeline={tiny_sd}",
                     f"data.root={labelled}", *TINY) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["method"] == method and len(m["history"]) == 2 and m["final"]["grad_norm"] > 0
    assert all(np.isfinite(h["loss"]) for h in m["history"])
    assert m["lineage"]["reward"] == {"kind": "labels", "root": str(labelled.resolve()), "rounds": "all"}
    assert (m["final"]["reference_point"] is None) == (method == "dpo")
    stock = StableDiffusionPipeline.from_pretrained(tiny_sd, safety_checker=None)
    g = torch.Generator().manual_seed(0)
    x, emb = torch.randn(1, 4, 8, 8, generator=g), torch.randn(1, 7, stock.unet.config.cross_attention_dim, generator=g)
    with torch.no_grad():
        before = stock.unet(x, 500, encoder_hidden_states=emb).sample
        stock.load_lora_weights(out)
        after = stock.unet(x, 500, encoder_hidden_states=emb).sample
    # the adapter was trained (lora_B starts at zero) and changes the stock UNet's output
    assert torch.isfinite(after).all() and not torch.allclose(before, after)


@pytest.mark.slow
@pytest.mark.parametrize("method", ["dpo", "kto"])
def test_a_resumed_run_ends_like_an_uninterrupted_one(tiny_sd, labelled, tmp_path, method):
    """Interrupted after its step-2 checkpoint, a 4-step run resumes there and ends with the history
    and weights of one never interrupted (each step's batch and noise come from (seed, step))."""
    from finetune.config import FinetuneConfig
    from finetune.preference import train_on_labels
    from core.config import load_config

    def cfg(out):
        return load_config(FinetuneConfig, None, [f"method={method}", f"output_dir={out}", f"model.pipeline={tiny_sd}",
                                                  f"data.root={labelled}", *TINY, f"{method}.steps=4",
                                                  f"{method}.checkpoint_every_steps=2"])

    def stop_at_2(row):
        if row.step == 2:
            raise KeyboardInterrupt

    straight = train_on_labels(cfg(tmp_path / "a"), progress=False)
    with pytest.raises(KeyboardInterrupt):
        train_on_labels(cfg(tmp_path / "b"), progress=False, on_step=stop_at_2)
    assert not (tmp_path / "b" / "metrics.json").exists()
    resumed = train_on_labels(cfg(tmp_path / "b"), progress=False)
    drop = lambda h: [{k: v for k, v in r.items() if not k.startswith("seconds")} for r in h]  # noqa: E731
    assert drop(resumed.history) == drop(straight.history) and len(resumed.history) == 4
    from safetensors.torch import load_file

    a, b = (load_file(tmp_path / d / "pytorch_lora_weights.safetensors") for d in ("a", "b"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
@pytest.mark.parametrize("method", ["dpo", "kto"])
def test_flow_run_trains_a_transformer_lora_stock_diffusers_loads(labelled, tmp_path, method):
    """Flow-DPO / Flow-KTO on a tiny SD3 folder: the velocity error in place of the noise error."""
    from diffusers import StableDiffusion3Pipeline
    from test_flow_finetune import transformer_output
    from tools.random_models import build_tiny_sd3

    base = build_tiny_sd3(tmp_path / "sd3", image_size=32)
    out = tmp_path / "run"
    assert _finetune(f"method={method}", f"output_dir={out}", f"model.pipeline={base}", f"data.root={labelled}",
                     "sampling.height=32", "sampling.width=32", *TINY) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert len(m["history"]) == 2 and m["final"]["grad_norm"] > 0
    stock = StableDiffusion3Pipeline.from_pretrained(base)
    before = transformer_output(stock.transformer, "sd3")
    stock.load_lora_weights(out)
    after = transformer_output(stock.transformer, "sd3")
    assert torch.isfinite(after).all() and not torch.allclose(before, after)


def test_kto_micro_batches_keep_the_whole_batchs_reference_point(tiny_sd, labelled, tmp_path):
    """compute.micro_batch changes how a KTO step runs, not what: z_ref is the whole batch's."""
    rows = []
    for name, extra in (("one", []), ("parts", ["compute.micro_batch=1"])):
        assert _finetune("method=kto", f"output_dir={tmp_path / name}", f"model.pipeline={tiny_sd}",
                         f"data.root={labelled}", *TINY, "kto.steps=1", *extra) == 0
        rows.append(json.loads((tmp_path / name / "metrics.json").read_text())["final"])
    for key in ("loss", "accuracy", "error", "ref_error", "reference_point", "grad_norm"):
        assert rows[0][key] == pytest.approx(rows[1][key], rel=1e-4, abs=1e-7), key


# -- refusals, before anything is written ---------------------------------------------------------------

def _refused(capsys, tiny_sd, root, out, method, *parts, extra=()):
    before = tree(root)
    assert _finetune(f"method={method}", f"output_dir={out}", f"model.pipeline={tiny_sd}", f"data.root={root}",
                     *TINY, *extra) == 2
    one_error_line(capsys, *parts)
    assert not out.exists() and tree(root) == before


def test_refusals_before_anything_is_written(tiny_sd, labelled, tmp_path, capsys):
    from labeling_app.simulate import simulate_round
    from shapes.raters import default_panel
    from shapes.render import render_round
    from shapes.world import Prompt

    out = tmp_path / "run"
    unranked = tmp_path / "unranked"  # binary answers only
    render_round(Store(unranked), [Prompt.parse(t) for t in PROMPTS[:2]], per_prompt=2, size=32)
    simulate_round(Store(unranked), default_panel(2, flip_rate=0.0), overlap=1, ranking=False)
    _refused(capsys, tiny_sd, unranked, out, "dpo", "no rankings in", "dpo.binary_pairs=true", "METHOD=kto")

    unanswered = tmp_path / "unanswered"  # rankings only
    render_round(Store(unanswered), [Prompt.parse(t) for t in PROMPTS[:2]], per_prompt=2, size=32)
    simulate_round(Store(unanswered), default_panel(2, flip_rate=0.0), overlap=1, binary=False)
    _refused(capsys, tiny_sd, unanswered, out, "kto", "no binary answers", "METHOD=dpo")
    _refused(capsys, tiny_sd, tmp_path / "nothing", out, "kto", "no generated images", "data.root")

    across = tmp_path / "across"  # a ranking of two prompts' images: its pairs would cross prompts
    shutil.copytree(labelled, across)
    gens = read_table(across, "generations")
    mixed = [gens[gens["prompt"] == p]["image_id"].iloc[0] for p in PROMPTS[:2]]
    Store(across).append(RANKINGS, [dict(ranking_id="mixed", prompt_id=gens[gens["prompt"] == PROMPTS[0]]
                                         ["prompt_id"].iloc[0], rater_id="r", image_ids=mixed, ranks=[1, 2],
                                         created_at=datetime.now(timezone.utc), duration_ms=1,
                                         guideline_version="g")])
    _refused(capsys, tiny_sd, across, out, "dpo", "ranking mixed is for prompt", "rank images of one prompt")

    missing = tmp_path / "missing"  # an image file gone from disk
    shutil.copytree(labelled, missing)
    kto = read_labels(_cfg("method=kto", f"data.root={missing}"), (32, 32))
    row = kto.images.iloc[kto.first[0]]  # an image KTO learns from
    (missing / row["image_path"]).unlink()
    _refused(capsys, tiny_sd, missing, out, "kto", f"image {row['image_id']} is missing")

    _refused(capsys, tiny_sd, labelled, out, "kto", "is 32x32", "fine-tuned at 64x64", extra=["sampling.height=64",
                                                                                      "sampling.width=64"])
    with pytest.raises(UserError, match="region-aware"):
        _cfg("method=dpo", "region.weight=0.5")
