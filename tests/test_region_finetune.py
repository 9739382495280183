"""Region-aware fine-tuning (Focus-N-Fix): problem masks, the change outside them, and the base
model's image from the same noise as the policy's."""

import pytest
import torch

from finetune.region import keep_loss, keep_masks, latent_keep, outside_change, problem_masks


def test_problem_masks_dilate():
    h = torch.zeros(1, 20, 20)
    h[0, 10, 10] = 0.9
    h[0, 2, 2] = 0.4  # below the threshold
    m = problem_masks(h > 0.5, dilate=0.1)  # 2 px at 20 px
    assert m.shape == (1, 20, 20) and m.dtype == torch.bool
    assert m[0, 8:13, 8:13].all() and m.sum() == 25 and not m[0, 2, 2]
    assert problem_masks(h > 0.5, 0.0).sum() == 1


def test_outside_change_charges_only_change_on_the_keep_region():
    base = torch.zeros(2, 3, 8, 8)
    img = base.clone()
    mask = torch.zeros(2, 8, 8, dtype=torch.bool)
    mask[:, :4] = True  # the top half is the problem region
    img[0, :, :4] = 1.0  # image 0 changed inside only
    img[1, :, 4:] = 1.0  # image 1 changed outside only, all of it
    pen = outside_change(img, base, keep_masks(mask))
    assert pen[0] == 0 and pen[1] == pytest.approx(0.5 ** 0.5)  # half the pixels flipped 0 -> 1
    assert outside_change(img, base, torch.zeros(2, 8, 8, dtype=torch.bool)).abs().max() == 0
    unmarked = keep_masks(torch.zeros(1, 8, 8, dtype=torch.bool))
    assert unmarked.all()  # an image with nothing marked is kept whole


def test_keep_loss_holds_the_prediction_on_the_kept_latent_cells():
    keep = torch.ones(1, 16, 16, dtype=torch.bool)
    keep[0, :3, :3] = False  # a problem region in the corner
    lk = latent_keep(keep, (4, 4))
    assert lk.shape == (1, 1, 4, 4) and lk.sum() == 15 and not lk[0, 0, 0, 0]  # a cell touching it may change
    pred, base = torch.zeros(1, 4, 4, 4, requires_grad=True), torch.zeros(1, 4, 4, 4)
    inside = pred.detach().clone()
    inside[0, :, 0, 0] = 5.0  # a change inside the problem cell costs nothing
    assert keep_loss(inside, base, lk).item() == 0
    outside = pred.detach().clone()
    outside[0, :, 3, 3] = 1.0
    assert keep_loss(outside, base, lk).item() == pytest.approx(1 / 15)  # 1 of the 15 kept cells, all channels
    keep_loss(pred + 1, base, lk).sum().backward()
    assert pred.grad[0, :, 0, 0].abs().sum() == 0 and pred.grad[0, :, 3, 3].abs().sum() > 0
    assert keep_loss(outside, base, torch.zeros_like(lk)).item() == 0  # nothing kept: no term


def test_the_base_policy_draws_the_base_models_image_from_the_same_noise(tiny_sd, tmp_path):
    from core.config import load_config
    from core.loading import load_sd_pipeline
    from finetune.config import FinetuneConfig
    from finetune.policy import DiffusionPolicy, base_policy
    from finetune.run import setup_run
    from finetune.sampler import encode_prompts, sample_trajectories

    cfg = load_config(FinetuneConfig, None, ["method=dpok", f"output_dir={tmp_path / 'run'}", f"model.pipeline={tiny_sd}",
                                             "reward.kind=oracle", "sampling.num_inference_steps=4",
                                             "dpok.steps_per_sample=2", "dpok.window=[0, null]", "dpok.tail_steps=0",
                                             "prompts.eval_prompts=[one circle]"])
    run, _ = setup_run(cfg, None)
    with torch.no_grad():  # move the adapter off zero, so the policy differs from the base
        for name, p in run.policy.unet.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5, generator=torch.Generator().manual_seed(1))
    prompts = ["one circle", "two squares"]
    cond, uncond = encode_prompts(run.comps.pipe, prompts, run.device)

    def sample(policy):
        return sample_trajectories(policy, cond, uncond, run.latent_shape, torch.Generator().manual_seed(0),
                                   prompts).final_latents

    with base_policy(run.policy) as base:
        drawn = sample(base)
    pipe = load_sd_pipeline(tiny_sd, device="cpu")
    fresh = DiffusionPolicy(pipe.unet, run.policy.schedule, run.policy.guidance_scale)
    torch.testing.assert_close(drawn, sample(fresh), atol=1e-5, rtol=1e-5)
    assert not torch.allclose(sample(run.policy), drawn, atol=1e-3)  # the adapter is back on afterwards


def test_region_aware_dpok_runs_and_charges_change_outside_the_problem_regions(tiny_sd, tmp_path):
    """DPOK with region.weight > 0 on the oracle's masks (reward.kind=oracle) records the change
    outside the problem regions each round; with another divergence it trains too; a learned reward
    without a region head is one clear error."""
    from core.config import load_config
    from core.errors import UserError
    from finetune.config import FinetuneConfig
    from finetune.dpok import train_dpok

    def cfg(out, *extra):
        return load_config(FinetuneConfig, None, [
            "method=dpok", f"output_dir={out}", f"model.pipeline={tiny_sd}", "reward.kind=oracle",
            "sampling.num_inference_steps=4", "dpok.window=[0, null]", "dpok.tail_steps=0", "dpok.rounds=2",
            "dpok.prompts_per_round=2", "dpok.samples_per_prompt=2", "dpok.steps_per_sample=2",
            "dpok.minibatch_size=4", "dpok.checkpoint_every_rounds=0", "sample_grid_every=0",
            "prompts.eval_prompts=[one circle]", *extra])

    result = train_dpok(cfg(tmp_path / "region", "region.weight=1.0", "dpok.divergence=chi2"), progress=False)
    changes = [row["outside_change"] for row in result.history]
    assert len(changes) == 2 and all(c is not None and 0 <= c <= 1 for c in changes)
    plain = train_dpok(cfg(tmp_path / "plain"), progress=False)
    assert all(row["outside_change"] is None for row in plain.history)
    from tiny_models import make_tiny_clip
    from tools.random_models import build_reward_model

    headless_reward = build_reward_model(make_tiny_clip(tmp_path / "clip"), tmp_path / "reward")  # no region head
    with pytest.raises(UserError, match="region.weight=0"):
        train_dpok(cfg(tmp_path / "headless", "reward.kind=learned", f"reward.path={headless_reward}",
                       "region.weight=1.0"), progress=False)


def test_region_aware_rwl_holds_d_model_to_the_base_on_its_keep_region(tiny_sd, tmp_path):
    """RWL with region.weight > 0 keeps a latent keep mask per D_model image and logs its keep term,
    which starts at 0 (the adapter starts as the base) and grows as the model moves."""
    from core.config import load_config
    from finetune.config import FinetuneConfig
    from finetune.rwl import train_rwl

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("one red circle\ntwo blue squares on a white background\n")
    cfg = load_config(FinetuneConfig, None, [
        "method=rwl", f"output_dir={tmp_path / 'run'}", f"model.pipeline={tiny_sd}", "reward.kind=oracle",
        f"prompts.prompts_file={prompts}", "sampling.num_inference_steps=3", "prompts.eval_prompts=[one circle]",
        "rwl.samples_per_prompt=2", "rwl.pretrain_per_prompt=2", "rwl.steps=3", "rwl.batch_size=4", "optim.lr=1e-2",
        "sample_grid_every=0", "rwl.checkpoint_every_steps=0", "rwl.weighting=exp", "region.weight=1.0"])
    m = train_rwl(cfg, progress=False).metrics
    keep = [h["loss_keep"] for h in m["history"]]
    assert len(keep) == 3 and keep[0] == pytest.approx(0, abs=1e-8) and all(k is not None and k >= 0 for k in keep)
    assert keep[-1] > 0
    import torch as t
    saved = t.load(tmp_path / "run" / "rwl_data.pt", weights_only=False)["model"]
    assert saved["keep"].dtype == t.bool and saved["keep"].shape[0] == len(saved["prompts"])


@pytest.mark.parametrize("method", ["dpok", "rwl"])
def test_a_refused_region_run_writes_nothing_and_the_corrected_command_runs(tiny_sd, tmp_path, method):
    """A reward without a region head, or with a corrupt one, is refused before the run writes
    config.yaml or lineage.json into output_dir, so the corrected command into the same folder runs
    (it used to be refused as "a different config")."""
    from core.config import load_config
    from core.errors import UserError
    from finetune.config import FinetuneConfig
    from finetune.dpok import train_dpok
    from finetune.rwl import train_rwl
    from tiny_models import make_tiny_clip
    from tools.random_models import build_reward_model

    clip = make_tiny_clip(tmp_path / "clip")
    headless = build_reward_model(clip, tmp_path / "headless")
    corrupt = build_reward_model(clip, tmp_path / "corrupt", region=True)
    (corrupt / "region_head.safetensors").write_bytes(b"not a safetensors file")
    out = tmp_path / "run"
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("one red circle\ntwo blue squares\n")
    train = {"dpok": train_dpok, "rwl": train_rwl}[method]
    every = {"dpok": ["sampling.num_inference_steps=2", "dpok.window=[0, null]", "dpok.tail_steps=0", "dpok.rounds=1",
                      "dpok.prompts_per_round=1", "dpok.samples_per_prompt=2", "dpok.steps_per_sample=1",
                      "dpok.minibatch_size=2", "dpok.checkpoint_every_rounds=0"],
             "rwl": ["sampling.num_inference_steps=2", "rwl.samples_per_prompt=1", "rwl.pretrain_per_prompt=1",
                     "rwl.steps=1", "rwl.batch_size=2", "rwl.checkpoint_every_steps=0", "rwl.weighting=exp"]}[method]

    def cfg(reward, *extra):
        return load_config(FinetuneConfig, None, [
            f"method={method}", f"output_dir={out}", f"model.pipeline={tiny_sd}", f"reward.path={reward}",
            f"prompts.prompts_file={prompts}", "prompts.eval_prompts=[one circle]", "sample_grid_every=0",
            *every, *extra])

    with pytest.raises(UserError, match="no region head.*region.weight=0"):
        train(cfg(headless, "region.weight=1.0"), progress=False)
    assert not out.exists()
    with pytest.raises(UserError, match="could not load the region head"):
        train(cfg(corrupt, "region.weight=1.0"), progress=False)
    assert not out.exists()
    result = train(cfg(headless), progress=False)  # the corrected command, into the same folder
    assert (out / "pytorch_lora_weights.safetensors").is_file() and result.output_dir == out
