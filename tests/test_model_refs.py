"""A fine-tuned run is a model everywhere a model is taken (issue 43): core.loading.resolve_model /
load_model on a real tiny LoRA run, `make generate` from a run recording which model made each
image, and every bad input one clear error with nothing written."""

from __future__ import annotations

import hashlib
import shutil

import numpy as np
import pytest

from core import seeds
from core.errors import UserError
from core.sampling import SamplingConfig
from core.loading import LORA_WEIGHTS, load_model, model_fingerprint, resolve_model
from data.generations import content_id
from data.store import Store
from collect.generate import GenerateConfig, generate
from pipelines.cli import run
from tiny_models import make_tiny_lora_run, make_tiny_sd

PROMPTS = "one red circle\ntwo blue squares\n"


@pytest.fixture(scope="module")
def models(tiny_sd, tmp_path_factory):
    d = tmp_path_factory.mktemp("runs")
    return dict(sd=tiny_sd, lora=make_tiny_lora_run(tiny_sd, d / "lora"),
                adapter=make_tiny_lora_run(tiny_sd, d / "adapter", seed=1, config=False),
                other=make_tiny_sd(d / "other-sd", seed=1), d=d)


def test_resolve_a_base_a_lora_run_and_base_plus_adapter(models):
    sd, lora = models["sd"], models["lora"]
    base = resolve_model(sd)
    assert (base.base, base.adapter, base.run, base.fingerprint) == (sd, None, None, model_fingerprint(sd))
    assert not base.finetuned
    ref = resolve_model(lora)  # the base comes from the run's config.yaml (model.pipeline)
    weights = hashlib.sha256((lora / LORA_WEIGHTS).read_bytes()).hexdigest()
    assert (ref.base, ref.adapter, ref.run) == (sd, lora, lora) and ref.finetuned
    assert ref.fingerprint == f"{model_fingerprint(sd)}+{weights[:16]}"
    assert resolve_model(sd, adapter=lora).fingerprint == ref.fingerprint  # the same model, spelled out
    assert resolve_model(lora, base=sd) == ref  # make eval's base= check passes for its own base
    bare = resolve_model(sd, adapter=models["adapter"])  # weights alone, no config
    assert bare.adapter == models["adapter"] and bare.fingerprint not in (ref.fingerprint, base.fingerprint)
    # a full-pipeline run is its own pipeline; its checkpoints do not change its fingerprint
    full = models["d"] / "full"
    shutil.copytree(sd, full)
    shutil.copy(lora / "config.yaml", full / "config.yaml")
    (full / "checkpoints" / "checkpoint-1").mkdir(parents=True)
    (full / "checkpoints" / "checkpoint-1" / "state.pt").write_bytes(b"x" * 100)
    f = resolve_model(full)
    assert (f.base, f.adapter, f.run) == (full, None, full) and f.fingerprint == model_fingerprint(sd)


def test_load_model_fuses_the_adapter(models):
    from peft.tuners.tuners_utils import BaseTunerLayer

    base = load_model(resolve_model(models["sd"]), device="cpu")
    tuned = load_model(resolve_model(models["lora"]), device="cpu")
    assert not any(isinstance(m, BaseTunerLayer) for m in tuned.unet.modules())
    diff = {n: (a - b).abs().max().item() for (n, a), b in zip(tuned.unet.named_parameters(), base.unet.parameters())}
    assert max(diff.values()) > 0.01 and diff["conv_in.weight"] == 0  # attention projections only


@pytest.mark.parametrize("case, match", [
    ("missing", "does not exist"),
    ("config-only", "holds no fine-tuned model"),
    ("weights-only", "no config.yaml naming the base"),
    ("run-plus-adapter", "was given with the fine-tuned run"),
    ("adapter-without-weights", "holds no pytorch_lora_weights"),
    ("adapter-of-another-base", "another model than the base"),
    ("run-of-another-base", "another model than the base"),
    ("not-a-model", "no model_index.json"),
])
def test_each_bad_model_is_one_clear_error(models, tmp_path, case, match):
    sd, lora, other = models["sd"], models["lora"], models["other"]
    folder = tmp_path / case
    folder.mkdir()
    if case == "config-only":  # a run that stopped before saving
        shutil.copy(lora / "config.yaml", folder)
    if case == "weights-only":
        shutil.copy(lora / LORA_WEIGHTS, folder)
    calls = {
        "missing": lambda: resolve_model(tmp_path / "nowhere"),
        "config-only": lambda: resolve_model(folder),
        "weights-only": lambda: resolve_model(folder),
        "run-plus-adapter": lambda: resolve_model(lora, adapter=models["adapter"]),
        "adapter-without-weights": lambda: resolve_model(sd, adapter=folder),
        "adapter-of-another-base": lambda: resolve_model(other, adapter=lora),  # lora's config names sd
        "run-of-another-base": lambda: resolve_model(lora, base=other),
        "not-a-model": lambda: resolve_model(folder),
    }
    with pytest.raises(UserError, match=match) as e:
        calls[case]()
    assert e.value.fix


def _gen(root, prompts_file, *extra):
    from pipelines.generate import main

    return run(main, [f"root={root}", f"prompts_file={prompts_file}", "per_prompt=2",
                      "sampling.num_inference_steps=2", *extra])


def test_generate_from_a_run_records_the_model_and_round(models, tmp_path, capsys):
    sd, lora = models["sd"], models["lora"]
    prompts = tmp_path / "prompts.txt"
    prompts.write_text(PROMPTS)
    root = tmp_path / "root"
    assert _gen(root, prompts, f"pipeline={sd}") == 0
    assert _gen(root, prompts, f"pipeline={lora}", "round=1") == 0
    out = __import__("json").loads(capsys.readouterr().out.strip().splitlines()[-1])
    ref = resolve_model(lora)
    assert (out["model_fingerprint"], out["run"], out["round"], out["images_added"]) == (ref.fingerprint, str(lora), 1, 4)
    gens = Store(root).to_pandas("generations")
    base, tuned = gens[gens["round"] == 0], gens[gens["round"] == 1]
    # the default path keys images as before runs were models: model_key = model_fingerprint(pipeline)
    assert (base["model_fingerprint"] == model_fingerprint(sd)).all() and base["run"].isna().all()
    assert (base["model_id"] == str(sd)).all()
    for r in base.itertuples():
        settings = type("S", (), dict(sampler=r.sampler, num_inference_steps=r.num_inference_steps,
                                      guidance_scale=r.guidance_scale, eta=r.eta))
        assert r.image_id == content_id(model_fingerprint(sd), r.prompt_id, r.prompt, r.seed, settings, r.sha256)
    assert sorted(set(base["seed"])) == sorted(seeds.round_image_seed(0, i) for i in range(2))
    assert (tuned["model_fingerprint"] == ref.fingerprint).all() and (tuned["run"] == str(lora)).all()
    # the run's seeds are its own (keyed by fingerprint), so it samples the same seeds as the base:
    # same prompts and seeds, other images (the fine-tuning is in them), other ids
    pair = base.merge(tuned, on=["prompt_id", "seed"], suffixes=("_b", "_t"))
    assert len(pair) == 4 and (pair["sha256_b"] != pair["sha256_t"]).all()
    assert not set(base["image_id"]) & set(tuned["image_id"])
    # base + adapter is the same model as the run: its seeds are taken, so new ones are drawn
    assert _gen(root, prompts, f"pipeline={sd}", f"adapter={lora}", "round=1", "per_prompt=1") == 0
    again = Store(root).to_pandas("generations")
    added = again[~again["image_id"].isin(gens["image_id"])]
    assert len(added) == 2 and not set(added["seed"]) & set(tuned["seed"])
    assert (added["model_fingerprint"] == ref.fingerprint).all()


def test_raters_are_not_shown_which_model_made_an_image(models, tmp_path):
    """The app's item (prompt html, image file names) carries no model id, run or fingerprint."""
    from labeling_app.assignment import Assigner
    from labeling_app.views import prompt_html

    root = tmp_path / "root"
    cfg = GenerateConfig(root=str(root), pipeline=str(models["lora"]), prompts="train", max_prompts=1,
                         per_prompt=2, sampling=SamplingConfig(num_inference_steps=2))
    generate(cfg)
    asg = Assigner(Store(root), overlap=1, tasks=("binary", "ranking"))
    ref = resolve_model(models["lora"])
    for task in ("binary", "ranking"):
        served = asg.serve("alice", task)
        shown = prompt_html(served.assignment, served.paths) + " ".join(p.name for p in served.paths)
        for secret in (str(models["lora"]), models["lora"].name, ref.fingerprint.split("+")[0],
                       ref.fingerprint.split("+")[1], str(models["sd"])):
            assert secret not in shown


@pytest.mark.parametrize("args, match", [
    (["pipeline={lora}", "adapter={adapter}"], "was given with the fine-tuned run"),
    (["pipeline={empty}"], "holds no fine-tuned model"),
    (["pipeline={other}", "adapter={lora}"], "another model than the base"),
    (["pipeline={sd}", "round=-1"], "round=-1 must be >= 0"),
    (["source=renderer", "adapter={lora}"], "source=renderer, which uses no model"),
])
def test_generate_refuses_a_bad_model_before_writing(models, tmp_path, capsys, args, match):
    empty = tmp_path / "empty"
    empty.mkdir()
    shutil.copy(models["lora"] / "config.yaml", empty)
    names = dict(lora=models["lora"], adapter=models["adapter"], sd=models["sd"], other=models["other"], empty=empty)
    prompts = tmp_path / "prompts.txt"
    prompts.write_text(PROMPTS)
    root = tmp_path / "root"
    assert _gen(root, prompts, *[a.format(**names) for a in args]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("error: ") and match in err and " Fix: " in err
    assert not root.exists()


def test_eval_and_probe_take_a_run_for_a_model(models, tmp_path):
    """make eval's base= takes a run too, and refuses runs of another base; the step probe loads
    a run through the same resolve_model."""
    from core.config import load_config
    from evaluation.compare import evaluate
    from evaluation.config import EvalConfig

    cfg = load_config(EvalConfig, None, [
        f"base={models['lora']}", f"models=[other={models['other']}]", "reward.kind=oracle",
        "samples_per_prompt=1", "sampling.num_inference_steps=2", f"output_dir={tmp_path / 'out'}"])
    with pytest.raises(UserError, match="another model than the base"):
        evaluate(cfg)
    assert not (tmp_path / "out").exists()
    from tools.probe import ProbeConfig, probe_steps

    prompts = tmp_path / "p.txt"
    prompts.write_text("one red circle\n")
    cfg = load_config(ProbeConfig, None, [f"pipeline={models['lora']}", f"prompts_file={prompts}",
                                          "samples_per_prompt=2", "sampling.num_inference_steps=2",
                                          "tail_from=null", "after_steps=[0]"])
    result = probe_steps(cfg, reward_fn=lambda images, texts: images.float().mean(dim=(1, 2, 3)))
    assert result.samples == 2 and np.isfinite(result.mean_reward)
