"""Tier 2: reward-weighted likelihood end to end on a tiny random SD-format pipeline on CPU."""

import json

import numpy as np
import pytest
import torch

from core.config import load_config
from core.errors import UserError
from data import Store
from finetune.config import FinetuneConfig
from finetune.rwl import train_rwl




def rwl_cfg(sd, out, *extra):
    return load_config(FinetuneConfig, None, [
        "method=rwl", f"output_dir={out}", f"model.pipeline={sd}", "reward.kind=oracle",
        "sampling.num_inference_steps=3", "prompts.prompts_file=" + str(PROMPTS), "rwl.samples_per_prompt=2",
        "rwl.pretrain_per_prompt=2", "rwl.steps=4", "rwl.batch_size=4", "optim.lr=1e-2",
        "sample_grid_every=0", "rwl.checkpoint_every_steps=0", "prompts.eval_prompts=[one circle]", *extra])


PROMPTS = None


@pytest.fixture(autouse=True)
def prompts_file(tmp_path):
    global PROMPTS
    PROMPTS = tmp_path / "prompts.txt"
    PROMPTS.write_text("one red circle\ntwo blue squares on a white background\nthree circles\n")


def test_rwl_step_end_to_end_and_lora_loads(tiny_sd, tmp_path):
    from core.loading import load_sd_pipeline

    result = train_rwl(rwl_cfg(tiny_sd, tmp_path / "run", "sample_grid_every=1"), progress=False)
    out = result.output_dir
    m = json.loads((out / "metrics.json").read_text())
    # D_pre: renders of the 110 train prompts (the base model's data), not of the prompts fine-tuned on
    assert m["d_model"]["images"] == 6 and m["d_pre"]["images"] == 2 * 110
    assert len(m["history"]) == 4 and all(np.isfinite(h["loss"]) for h in m["history"])
    assert m["final"]["grad_norm"] > 0
    assert (out / "samples" / "step-000004.png").exists()
    pipe = load_sd_pipeline(tiny_sd, device="cpu")
    pipe.load_lora_weights(out)
    img = pipe(["one circle"], num_inference_steps=2, output_type="np", generator=torch.Generator().manual_seed(0)).images
    assert np.isfinite(img).all()


def test_rwl_learns_from_labeled_good_images_and_a_dataset_pretrain_source(tiny_sd, tmp_path):
    from shapes.raters import default_panel
    from labeling_app.simulate import simulate_round
    from shapes.render import render_round
    from shapes.world import Prompt

    root = tmp_path / "ds"
    store = Store(root)
    render_round(store, [Prompt.parse(t) for t in ("one red circle", "three circles")], per_prompt=3,
                 size=32, mismatch_rate=0.3)
    simulate_round(store, default_panel(3, flip_rate=0.0), overlap=2, ranking=False)
    cfg = rwl_cfg(tiny_sd, tmp_path / "run2", "rwl.include_labeled_good=true", f"rwl.dataset_root={root}",
                  f"rwl.pretrain_source={root}")
    m = train_rwl(cfg, progress=False).metrics
    assert m["d_model"]["images"] > 6  # generated images plus the ones labelled good
    assert m["d_pre"]["images"] == 6


def test_rwl_bad_inputs(tiny_sd, tmp_path):
    with pytest.raises(UserError, match="no usable images"):
        train_rwl(rwl_cfg(tiny_sd, tmp_path / "a", f"rwl.pretrain_source={tmp_path}/empty"), progress=False)
    with pytest.raises(UserError, match="reward weight 0"):
        train_rwl(rwl_cfg(tiny_sd, tmp_path / "b", "rwl.weighting=threshold", "rwl.threshold=100"), progress=False)
    root = tmp_path / "big"
    from shapes.render import render_round
    from shapes.world import Prompt

    render_round(Store(root), [Prompt.parse("one circle")], per_prompt=1, size=64)
    with pytest.raises(UserError, match=r"64x64 \(width x height\), the model is fine-tuned at 32x32"):
        train_rwl(rwl_cfg(tiny_sd, tmp_path / "c", f"rwl.pretrain_source={root}"), progress=False)


def test_guided_denoising_loss_is_the_mse_of_the_samplers_prediction(tiny_sd):
    """w = 1 is the plain conditional loss; w > 1 puts the MSE on u + w (c - u), the guided output."""
    from types import SimpleNamespace

    from core.loading import load_sd_pipeline
    from finetune.objective import DenoisingObjective
    from finetune.sampler import encode_prompts

    pipe = load_sd_pipeline(tiny_sd, device="cpu")
    run = SimpleNamespace(device=torch.device("cpu"), comps=SimpleNamespace(pipe=pipe, unet=pipe.unet))
    objective = DenoisingObjective(pipe.scheduler)
    sched = objective.scheduler
    x0 = torch.randn(2, 4, 4, 4)
    prompts = ["one red circle", "two squares"]

    def by_hand(seed, w):
        gen = torch.Generator().manual_seed(seed)
        noise = torch.randn(x0.shape, generator=gen)
        t = torch.randint(0, sched.config.num_train_timesteps, (2,), generator=gen)
        x_t = sched.add_noise(x0, noise, t)
        target = sched.get_velocity(x0, noise, t) if sched.config.prediction_type == "v_prediction" else noise
        cond, uncond = encode_prompts(pipe, prompts, "cpu")
        with torch.no_grad():
            c = pipe.unet(x_t, t, encoder_hidden_states=cond.embeds).sample
            u = pipe.unet(x_t, t, encoder_hidden_states=uncond.embeds).sample
        pred = u + w * (c - u)
        return ((pred - target) ** 2).flatten(1).mean(1)

    def noise(seed):
        return objective.draw(2, x0.shape[1:], torch.Generator().manual_seed(seed), "cpu")

    text = encode_prompts(pipe, prompts, "cpu")
    with torch.no_grad():
        for w in (1.0, 5.0):
            got, no_keep = objective.loss(run, x0, *text, *noise(3), guidance_scale=w)
            assert no_keep is None
            torch.testing.assert_close(got, by_hand(3, w), rtol=1e-4, atol=1e-5)
        plain = objective.loss(run, x0, text[0], None, *noise(3))[0]
        guided = objective.loss(run, x0, *text, *noise(3), guidance_scale=5.0)[0]
    assert not torch.allclose(plain, guided)


def test_rwl_unguided_loss_and_no_uncond_dropout_run(tiny_sd, tmp_path):
    m = train_rwl(rwl_cfg(tiny_sd, tmp_path / "run", "rwl.guided_loss=false", "rwl.pretrain_uncond=0"),
                  progress=False).metrics
    assert all(np.isfinite(h["loss"]) for h in m["history"])


def test_rwl_pretrain_uncond_must_be_a_share(tiny_sd, tmp_path):
    with pytest.raises(UserError, match=r"rwl.pretrain_uncond=1.0 must be in \[0, 1\)"):
        train_rwl(rwl_cfg(tiny_sd, tmp_path / "run", "rwl.pretrain_uncond=1.0"), progress=False)
    assert not (tmp_path / "run").exists()  # refused before anything is written
