"""Region-aware fine-tuning (Focus-N-Fix): problem masks, the change outside them, and the base
model's image from the same noise as the policy's."""

import pytest
import torch

from finetune.region import keep_loss, latent_masks, outside_change, problem_masks


def test_problem_masks_threshold_and_dilate():
    h = torch.zeros(1, 20, 20)
    h[0, 10, 10] = 0.9
    h[0, 2, 2] = 0.4  # below the threshold
    m = problem_masks(h, threshold=0.5, dilate=0.1)  # 2 px at 20 px
    assert m.shape == (1, 20, 20) and m.dtype == torch.bool
    assert m[0, 8:13, 8:13].all() and m.sum() == 25 and not m[0, 2, 2]
    assert problem_masks(h, 0.5, 0.0).sum() == 1


def test_outside_change_charges_only_change_outside_the_mask():
    base = torch.zeros(2, 3, 8, 8)
    img = base.clone()
    mask = torch.zeros(2, 8, 8, dtype=torch.bool)
    mask[:, :4] = True  # the top half is the problem region
    img[0, :, :4] = 1.0  # image 0 changed inside only
    img[1, :, 4:] = 1.0  # image 1 changed outside only, all of it
    pen = outside_change(img, base, mask)
    assert pen[0] == 0 and pen[1] == pytest.approx(0.5 ** 0.5)  # half the pixels flipped 0 -> 1
    assert outside_change(img, base, torch.ones(2, 8, 8, dtype=torch.bool)).abs().max() == 0


def test_keep_loss_holds_the_prediction_outside_the_latent_mask():
    masks = torch.zeros(1, 16, 16, dtype=torch.bool)
    masks[0, :3, :3] = True
    lm = latent_masks(masks, (4, 4))
    assert lm.shape == (1, 1, 4, 4) and lm.sum() == 1 and lm[0, 0, 0, 0]  # any covered pixel marks the cell
    pred, base = torch.zeros(1, 4, 4, 4, requires_grad=True), torch.zeros(1, 4, 4, 4)
    inside = pred.detach().clone()
    inside[0, :, 0, 0] = 5.0  # a change inside the problem cell costs nothing
    assert keep_loss(inside, base, lm).item() == 0
    outside = pred.detach().clone()
    outside[0, :, 3, 3] = 1.0
    assert keep_loss(outside, base, lm).item() == pytest.approx(1 / 15)  # 1 of the 15 kept cells, all channels
    keep_loss(pred + 1, base, lm).sum().backward()
    assert pred.grad[0, :, 0, 0].abs().sum() == 0 and pred.grad[0, :, 3, 3].abs().sum() > 0


def test_the_base_policy_draws_the_base_models_image_from_the_same_noise(tiny_sd, tmp_path):
    from core.config import load_config
    from core.loading import load_sd_pipeline
    from finetune.config import FinetuneConfig
    from finetune.policy import DiffusionPolicy, base_policy
    from finetune.run import setup_run
    from finetune.sampler import encode_prompts, sample_trajectories

    cfg = load_config(FinetuneConfig, None, ["method=dpok", f"output_dir={tmp_path / 'run'}", f"model.pipeline={tiny_sd}",
                                             "reward.kind=oracle", "sampling.num_inference_steps=4",
                                             "dpok.steps_per_sample=2", "prompts.eval_prompts=[one circle]"])
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
