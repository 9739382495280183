"""One sampler everywhere: make generate and make eval sample the chain fine-tuning trains (DDIM
with sampling.eta on the folder's noise schedule) whatever scheduler the folder ships, the
folder's own only with sampling.scheduler=pipeline, and every report names the one used."""

import json

import numpy as np
import pytest
import torch

from core.config import load_config
from core.errors import UserError
from core.loading import load_sd_pipeline
from core.sampling import SamplingConfig, generate_images
from finetune.scheduler import DDIMSchedule
from tiny_models import make_tiny_clip, make_tiny_sd

PROMPTS = "a photo of a cat on a sofa\nan oil painting of a lighthouse at dusk\n"


@pytest.fixture(scope="module")
def euler(tmp_path_factory):
    """A tiny pipeline folder whose scheduler is Euler, a tiny CLIP, an untrained reward on it."""
    from tools.random_models import build_reward_model

    d = tmp_path_factory.mktemp("euler")
    clip = make_tiny_clip(d / "clip")
    (d / "prompts.txt").write_text(PROMPTS)
    return dict(sd=make_tiny_sd(d / "sd", scheduler="euler"), clip=clip,
                reward=build_reward_model(clip, d / "reward"), prompts=d / "prompts.txt")


def pixels(images) -> np.ndarray:
    return np.stack([np.asarray(im, dtype=int) for im in images])


def test_sampling_is_ddim_with_eta_by_default_and_the_folders_own_when_asked(euler):
    pipe = load_sd_pipeline(euler["sd"], device="cpu")
    assert type(pipe.scheduler).__name__ == "EulerDiscreteScheduler"
    prompts, seeds = ["a cat", "a dog"], [1, 2]

    def images(**keys):
        return pixels(generate_images(pipe, prompts, seeds, SamplingConfig(num_inference_steps=3, batch_size=2, **keys)))

    # DDIM: eta 0 is the deterministic chain, eta 1 the stochastic one fine-tuning trains
    assert np.abs(images(eta=0.0) - images(eta=1.0)).max() > 1
    # the folder's own Euler takes no eta; it samples another chain than DDIM's
    own = images(scheduler="pipeline", eta=1.0)
    assert np.array_equal(own, images(scheduler="pipeline", eta=0.0))
    assert np.abs(own - images(eta=0.0)).max() > 1
    assert type(pipe.scheduler).__name__ == "EulerDiscreteScheduler"  # the caller's pipeline is left as it was
    cfg = SamplingConfig(num_inference_steps=3)
    # the DDIM run is the fine-tuning chain's: the same timesteps and alpha-bars
    chain, used = DDIMSchedule.from_scheduler(pipe.scheduler, 3, 1.0), cfg.sampler(pipe.scheduler)
    used.set_timesteps(3)
    assert torch.equal(used.timesteps.long(), chain.timesteps)
    assert torch.allclose(used.alphas_cumprod[chain.timesteps], chain.abar)
    assert cfg.settings(pipe.scheduler).sampler == "DDIMScheduler" and cfg.settings(pipe.scheduler).eta == 1.0
    own_cfg = SamplingConfig(num_inference_steps=3, scheduler="pipeline")
    assert own_cfg.settings(pipe.scheduler).sampler == "EulerDiscreteScheduler"
    assert own_cfg.settings(pipe.scheduler).eta == 0.0  # Euler has no eta: none recorded


def test_make_generate_samples_and_records_the_sampler_used(euler, tmp_path, capsys):
    from collect.generate import GenerateConfig, generate
    from data.schemas import GENERATIONS
    from data.store import Store

    def rows(root, *keys):
        cfg = load_config(GenerateConfig, None, [f"root={root}", f"pipeline={euler['sd']}", f"prompts_file={euler['prompts']}",
                                                 "per_prompt=1", "sampling.num_inference_steps=3", *keys])
        result = generate(cfg)
        gens = Store(root).to_pandas(GENERATIONS).sort_values("prompt")
        return result, gens, capsys.readouterr().err

    result, ddim, err = rows(tmp_path / "a")
    assert set(ddim["sampler"]) == {"DDIMScheduler"} and set(ddim["eta"]) == {1.0}
    assert "3 DDIM steps, guidance 5, eta 1" in err and result.sampling == "3 DDIM steps, guidance 5, eta 1"
    _, ddim0, _ = rows(tmp_path / "b", "sampling.eta=0")
    assert set(ddim0["eta"]) == {0.0}
    assert list(ddim0["sha256"]) != list(ddim["sha256"])  # eta is obeyed: other images
    result, own, err = rows(tmp_path / "c", "sampling.scheduler=pipeline")
    assert set(own["sampler"]) == {"EulerDiscreteScheduler"} and set(own["eta"]) == {0.0}
    said = "3 EulerDiscreteScheduler steps (the pipeline's own scheduler), guidance 5, no eta"
    assert said in err and result.sampling == said


def eval_report(euler, out, *keys) -> tuple[str, dict]:
    from pipelines.cli import run
    from pipelines.evaluate import main

    args = [f"base={euler['sd']}", f"clip={euler['clip']}", "models=[]", f"reward.path={euler['reward']}",
            f"prompts_file={euler['prompts']}", "samples_per_prompt=2", "sampling.num_inference_steps=3",
            f"output_dir={out}", "grid_prompts=1", *keys]
    assert run(main, args) == 0
    return (out / "results.md").read_text(), json.loads((out / "metrics.json").read_text())


def test_make_eval_samples_and_reports_the_sampler_used(euler, tmp_path, capsys):
    md, metrics = eval_report(euler, tmp_path / "eta1")
    err = capsys.readouterr().err
    said = "3 DDIM steps, guidance 5, eta 1, at the model's native size (as configured)"
    assert said in md and metrics["sampling"] == said and said in err
    assert metrics["models"]["base"]["sampler"] == "DDIMScheduler"
    _, eta0 = eval_report(euler, tmp_path / "eta0", "sampling.eta=0")
    # eta is obeyed: the images, and so the reward, change (the folder's Euler ignored it)
    assert eta0["models"]["base"]["reward"] != metrics["models"]["base"]["reward"]
    md, own = eval_report(euler, tmp_path / "own", "sampling.scheduler=pipeline")
    err = capsys.readouterr().err
    said = "3 EulerDiscreteScheduler steps (the pipeline's own scheduler), guidance 5, no eta, at the model's native size (as configured)"
    assert said in md and own["sampling"] == said and said in err
    assert own["models"]["base"]["sampler"] == "EulerDiscreteScheduler"
    assert own["config"]["sampling"]["scheduler"] == "pipeline"


def test_fine_tuning_refuses_another_sampler_than_ddim(tiny_sd, tmp_path):
    from finetune.config import FinetuneConfig

    with pytest.raises(UserError, match="sampling.scheduler=pipeline"):
        load_config(FinetuneConfig, None, [f"model.pipeline={tiny_sd}", f"output_dir={tmp_path}/run",
                                           "sampling.scheduler=pipeline"])
    assert not (tmp_path / "run").exists()
