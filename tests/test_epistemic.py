"""The reward's epistemic spread (reward.epistemic): the math against numpy, a trained tiny reward's
epistemic part through save and load, the optimistic score, its calibration in metrics.json, and
reward.optimism in fine-tuning."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from core.config import load_config
from core.errors import UserError
from data import Store
from reward.epistemic import Epistemic, logit_std, precision, spread
from reward.metrics import spread_calibration

torch.set_num_threads(2)


# ---------------------------------------------------------------------------------------------
# The math, against numpy


def _rows(n: int, h: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, h)), rng.uniform(0.05, 0.95, size=n)


def test_precision_and_spread_match_numpy():
    phi, p = _rows(40, 6)
    lam, a = 0.5, -1.7  # the spread uses |a|
    want_a = lam * np.eye(6) + sum(pi * (1 - pi) * np.outer(f, f) for f, pi in zip(phi, p))
    got_a = precision(torch.as_tensor(phi, dtype=torch.float32), torch.as_tensor(p), lam)
    assert got_a.dtype == torch.float64 and got_a.shape == (6, 6)
    np.testing.assert_allclose(got_a.numpy(), want_a, rtol=1e-5)
    cov = np.linalg.inv(want_a)
    x = np.random.default_rng(1).normal(size=(5, 6))
    want = abs(a) * np.sqrt(np.einsum("nh,hk,nk->n", x, cov, x))
    got = spread(torch.as_tensor(x), torch.as_tensor(cov), torch.tensor(a, dtype=torch.float64))
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-10)
    np.testing.assert_allclose(logit_std(torch.as_tensor(x), torch.as_tensor(cov)).numpy(), want / abs(a), rtol=1e-10)


def test_an_unseen_direction_is_wider_and_more_rows_shrink_it():
    phi, p = _rows(200, 5)
    phi[:, 3:] = 0  # the training rows span the first three directions only
    cov = torch.linalg.inv(precision(torch.as_tensor(phi), torch.as_tensor(p), 1.0))
    seen, unseen = torch.eye(5)[[0]], torch.eye(5)[[4]]
    assert spread(unseen, cov, 1.0) > 3 * spread(seen, cov, 1.0)
    np.testing.assert_allclose(float(spread(unseen, cov, 1.0)), 1.0)  # the prior's |φ| / sqrt(λ)
    more = torch.linalg.inv(precision(torch.as_tensor(np.concatenate([phi, phi])), torch.as_tensor(np.concatenate([p, p])), 1.0))
    assert (spread(torch.as_tensor(phi), more, 1.0) < spread(torch.as_tensor(phi), cov, 1.0)).all()


def test_spread_calibration_by_quartile():
    from scipy.stats import spearmanr

    s = np.arange(8.0)
    err = np.array([0.1, 0.0, 0.2, 0.1, 0.4, 0.3, 0.9, 0.8])
    p, y = 1 - err, np.ones(8)
    out = spread_calibration(s, p, y)
    assert out["n"] == 8
    np.testing.assert_allclose(out["spearman_spread_vs_abs_error"], spearmanr(s, err).statistic)
    np.testing.assert_allclose(out["spearman_p_uncertainty_vs_abs_error"], spearmanr(p * (1 - p), err).statistic)
    assert out["error_rate_by_spread_quartile"] == [0.0, 0.0, 0.0, 1.0]
    np.testing.assert_allclose(out["abs_error_by_spread_quartile"], [0.05, 0.15, 0.35, 0.85])
    assert out["spread_by_spread_quartile"] == [0.5, 2.5, 4.5, 6.5]
    tiny = spread_calibration(np.array([1.0, 2.0]), np.array([0.9, 0.8]), np.array([1.0, 1.0]))
    assert np.isnan(tiny["spearman_spread_vs_abs_error"]) and np.isnan(tiny["error_rate_by_spread_quartile"][3])


def test_the_partial_correlation_sees_what_the_spread_adds_beyond_p():
    rng = np.random.default_rng(0)
    p = rng.uniform(0.05, 0.95, 2000)
    y = (rng.uniform(size=2000) < p).astype(float)  # errors as p itself predicts them
    blind = spread_calibration(rng.uniform(size=2000), p, y)
    assert abs(blind["partial_spearman_spread_vs_abs_error"]) < 0.05
    s = rng.uniform(size=2000)
    y = np.where(s > 0.75, 1 - (p > 0.5), y)  # the widest quarter: the truth against p, whatever p says
    seen = spread_calibration(s, p, y)
    assert seen["partial_spearman_spread_vs_abs_error"] > 0.3
    assert seen["error_rate_by_spread_quartile"][3] > 0.9 > 0.5 > seen["error_rate_by_spread_quartile"][0]


# ---------------------------------------------------------------------------------------------
# A trained tiny reward


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_clip):
    """A tiny reward trained on a small labelled shapes round: (folder, TrainResult, dataset root)."""
    from labeling_app.simulate import simulate_round
    from reward.train import train_reward
    from shapes.raters import default_panel
    from shapes.render import render_round
    from shapes.world import prompt_set
    from tiny_models import tiny_reward_config

    tmp = tmp_path_factory.mktemp("epistemic")
    root = tmp / "round"
    render_round(Store(root), prompt_set("train")[::9][:10] + prompt_set("heldout")[::10][:4], per_prompt=4,
                 size=32, seed=1, mismatch_rate=0.5)
    simulate_round(Store(root), default_panel(3, flip_rate=0.1), overlap=2)
    out = tmp / "reward"
    result = train_reward(tiny_reward_config(root, tiny_clip, out, "train.epochs=3", "train.baselines=false",
                                             "train.ablate_aux=false"))
    return out, result, root


def _images(root, n: int = 6):
    from data.generations import load_image

    gens = Store(root).to_pandas("generations").iloc[:n]
    return [load_image(root, r) for _, r in gens.iterrows()], gens["prompt"].tolist()


def test_a_trained_folder_carries_its_epistemic_part_through_save_and_load(trained):
    from reward.model import RewardModel

    out, result, root = trained
    assert (out / "epistemic.safetensors").is_file()
    entry = json.loads((out / "reward_config.json").read_text())["epistemic"]
    assert entry["kind"] == "linear-ucb" and entry["hidden"] == 16 and entry["rows"] > 0
    ep = result.model.epistemic
    assert ep.lam == 1.0 and ep.covariance.shape == (16, 16) and ep.rows == entry["rows"]
    rm = RewardModel.from_pretrained(out, device="cpu")
    assert isinstance(rm.epistemic, Epistemic) and rm.epistemic.lam == ep.lam
    torch.testing.assert_close(rm.epistemic.covariance, ep.covariance.cpu(), rtol=0, atol=0)
    images, prompts = _images(root)
    s = rm.spread(images, prompts)
    assert s.shape == (6,) and s.dtype == torch.float32 and not s.requires_grad and (s > 0).all()
    assert torch.equal(s, result.model.spread(images, prompts))  # the saved model spreads as the trained one
    assert rm.spread(images[:0], []).shape == (0,)

    # A folder without it (trained before, or model.epistemic=off) loads with none; the hash differs.
    rm.epistemic = None
    old = rm.save_pretrained(out.parent / "no-epistemic")
    assert not (old / "epistemic.safetensors").exists()
    plain = RewardModel.from_pretrained(old, device="cpu")
    assert plain.epistemic is None and plain.model_id.split("-")[-1] != result.model.model_id.split("-")[-1]
    with pytest.raises(UserError, match="no epistemic part.*make reward"):
        plain.spread(images, prompts)
    with pytest.raises(UserError, match="no epistemic part"):
        plain.score(images, prompts, optimism=1.0)
    assert torch.equal(plain.score(images, prompts), rm.score(images, prompts))


def test_optimism_zero_is_the_score_and_more_is_an_upper_bound(trained):
    from reward.model import RewardModel

    out, _, root = trained
    rm = RewardModel.from_pretrained(out, device="cpu")
    images, prompts = _images(root)
    for logits in (False, True):
        base = rm.score(images, prompts, logits=logits)
        assert torch.equal(rm.score(images, prompts, logits=logits, optimism=0.0), base)
        ucb = rm.score(images, prompts, logits=logits, optimism=0.5)
        assert ucb.dtype == torch.float32 and (ucb >= base).all() and (ucb > base).any()
    a, b = rm.head.calib_scale, rm.head.calib_bias
    r, s = rm.score(images, prompts, logits=True), rm.spread(images, prompts)
    torch.testing.assert_close(rm.score(images, prompts, optimism=2.0), torch.sigmoid(a * r + b + 2.0 * s))
    torch.testing.assert_close(rm.score(images, prompts, logits=True, optimism=2.0), r + 2.0 * s / a.abs())
    with pytest.raises(UserError, match="optimism=-1"):
        rm.score(images, prompts, optimism=-1.0)


def test_the_calibration_is_in_metrics_json(trained):
    from reward.summary import metrics_table

    out, _, _ = trained
    m = json.loads((out / "metrics.json").read_text())["epistemic"]
    assert m["kind"] == "linear-ucb" and m["lambda"] == 1.0 and m["rows"] > 0
    for view in ("val_images", "val_prompts"):
        v = m[view]
        assert v["truth"] == "oracle" and v["n"] > 0
        assert len(v["error_rate_by_spread_quartile"]) == 4 and len(v["spread_by_spread_quartile"]) == 4
        assert {"spearman_spread_vs_abs_error", "spearman_p_uncertainty_vs_abs_error",
                "partial_spearman_spread_vs_abs_error"} <= set(v)
    assert "epistemic spread (linear-ucb" in metrics_table(json.loads((out / "metrics.json").read_text()))


# ---------------------------------------------------------------------------------------------
# reward.optimism in fine-tuning


def _finetune_cfg(tiny_sd, out, *more):
    from finetune.config import FinetuneConfig

    return load_config(FinetuneConfig, None, [
        "method=dpok", f"output_dir={out}", f"model.pipeline={tiny_sd}", "sampling.num_inference_steps=2",
        "dpok.rounds=1", "dpok.prompts_per_round=1", "dpok.samples_per_prompt=2", "dpok.window=[0,null]",
        "dpok.tail_steps=0", "dpok.steps_per_sample=1", "sample_grid_every=0", *more])


def test_optimism_builds_an_optimistic_reward_and_refuses_what_has_no_spread(trained, tmp_path):
    from reward.model import RewardModel
    from reward.reward_fn import RewardSource, check_reward_folder, load_reward

    out, _, root = trained
    images, prompts = _images(root, 4)
    x = torch.stack([torch.as_tensor(np.array(im)).permute(2, 0, 1).float() / 255 for im in images])
    fn = load_reward(RewardSource(path=str(out), optimism=0.5), "cpu")
    plain = load_reward(RewardSource(path=str(out)), "cpu")
    assert torch.equal(fn.score(x, prompts), plain.model.score(x, prompts, optimism=0.5))
    assert (fn.score(x, prompts) >= plain.score(x, prompts)).all()
    assert fn.has_spread and torch.equal(fn.spread(x, prompts), plain.model.spread(x, prompts))
    with pytest.raises(UserError, match="no region head"):  # asked for at load: one error there
        load_reward(RewardSource(path=str(out), optimism=0.5), "cpu", region=True)

    with pytest.raises(UserError, match="reward.kind=oracle.*no epistemic spread"):
        _finetune_cfg("sd", tmp_path / "o", "reward.kind=oracle", "reward.optimism=0.5")
    with pytest.raises(UserError, match="reward.optimism"):
        _finetune_cfg("sd", tmp_path / "o", "reward.optimism=-1")
    rm = RewardModel.from_pretrained(out, device="cpu")
    rm.epistemic = None
    old = rm.save_pretrained(tmp_path / "old")
    with pytest.raises(UserError, match="has no epistemic part.*make reward"):
        check_reward_folder(RewardSource(path=str(old), optimism=0.5))
    check_reward_folder(RewardSource(path=str(old)))  # optimism 0 needs none


def test_a_dpok_round_on_the_optimistic_reward(trained, tiny_sd, tmp_path):
    from finetune.dpok import train_dpok
    from reward.model import RewardModel

    out, _, _ = trained
    learned = [f"reward.path={out}", "reward.optimism=0.5"]
    result = train_dpok(_finetune_cfg(tiny_sd, tmp_path / "dpok", *learned), progress=False)
    assert 0.0 <= result.metrics["final"]["reward_mean"] <= 1.0
    lineage = json.loads((result.output_dir / "lineage.json").read_text())
    assert lineage["reward"]["optimism"] == 0.5
    rm_none = tmp_path / "none"
    rm = RewardModel.from_pretrained(out, device="cpu")
    rm.epistemic = None
    rm.save_pretrained(rm_none)
    with pytest.raises(UserError, match="no epistemic part"):
        train_dpok(_finetune_cfg(tiny_sd, tmp_path / "x", f"reward.path={rm_none}", "reward.optimism=0.5"),
                   progress=False)
    assert not (tmp_path / "x").exists()  # refused before the run wrote anything


def test_the_evaluation_scores_the_reward_itself(trained, tiny_sd, tmp_path, monkeypatch):
    """An eval config that copies a fine-tuning reward section with optimism still reports the mean."""
    import evaluation.compare as compare
    from evaluation.config import EvalConfig

    seen = []

    def stop(source, device):
        seen.append(source)
        raise KeyboardInterrupt  # nothing after the reward is loaded matters here

    monkeypatch.setattr(compare, "load_reward", stop)
    out, _, _ = trained
    cfg = load_config(EvalConfig, None, [f"base={tiny_sd}", "models=[]", f"reward.path={out}",
                                         "reward.optimism=0.5", f"output_dir={tmp_path}/eval"])
    with pytest.raises(KeyboardInterrupt):
        compare.evaluate(cfg, progress=False)
    assert seen[0].optimism == 0.0 and seen[0].path == str(out)
