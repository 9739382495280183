"""A LoRA run loads back as trained at lora_alpha != lora_rank (issue 74.9): the saved weights
carry the adapter's config, so stock diffusers' load_lora_weights scales B A by alpha / r, and so
do core.loading.load_model and a run's init=."""

import pytest
import torch
import yaml

from core.config import load_config, save_config
from finetune.config import FinetuneConfig

RANK, ALPHA = 4, 16.0


def unet_output(unet) -> torch.Tensor:
    """The UNet's prediction on fixed inputs (2, 4, 16, 16) for the tiny SD."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn((2, 4, 16, 16), generator=g)
    text = torch.randn((2, 77, 32), generator=g)
    with torch.no_grad():
        return unet(x, torch.tensor([999, 500]), encoder_hidden_states=text).sample


@pytest.fixture(scope="module")
def trained(tiny_sd, tmp_path_factory):
    """A LoRA run at rank 4, alpha 16 saved by make finetune's save_result, with random (trained-
    like) B matrices, and the trained UNet's output."""
    from finetune.checkpoints import prepare_output_dir, save_result
    from finetune.components import load_components, make_accelerator

    out = tmp_path_factory.mktemp("lora") / "run"
    cfg = load_config(FinetuneConfig, None, [f"model.pipeline={tiny_sd}", f"output_dir={out}", "reward.kind=oracle",
                                             f"model.lora_rank={RANK}", f"model.lora_alpha={ALPHA}"])
    prepare_output_dir(cfg)
    accelerator = make_accelerator(cfg, out)
    comps = load_components(cfg, "cpu", torch.float32)
    torch.manual_seed(1)
    with torch.no_grad():
        for name, p in comps.unet.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.05)
    save_result(accelerator, comps, cfg, out, {})
    return dict(sd=tiny_sd, run=out, cfg=cfg, output=unet_output(comps.unet))


def test_stock_diffusers_loads_the_lora_as_trained(trained):
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(trained["sd"], safety_checker=None, requires_safety_checker=False)
    base = unet_output(pipe.unet)
    pipe.load_lora_weights(trained["run"])
    loaded = unet_output(pipe.unet)
    assert (trained["output"] - base).abs().max() > 1e-2  # the adapter changes the output
    assert (loaded - trained["output"]).abs().max() <= 1e-5


def test_our_loader_and_init_load_it_as_trained(trained, tmp_path):
    from core.loading import load_model, resolve_model
    from finetune.components import load_components
    from finetune.lineage import load_init_weights

    fused = load_model(resolve_model(trained["run"]), device="cpu")
    assert (unet_output(fused.unet) - trained["output"]).abs().max() <= 1e-5
    # init=: the saved weights into a new run's adapter of the same shape
    cfg = load_config(FinetuneConfig, None, [f"model.pipeline={trained['sd']}", f"output_dir={tmp_path}/next",
                                             "reward.kind=oracle", f"init={trained['run']}",
                                             f"model.lora_rank={RANK}", f"model.lora_alpha={ALPHA}"])
    comps = load_components(cfg, "cpu", torch.float32)
    load_init_weights(comps.unet, cfg)
    assert (unet_output(comps.unet) - trained["output"]).abs().max() <= 1e-5


def test_a_run_saved_without_the_adapter_metadata_loads_at_its_configs_scale(trained, tmp_path):
    """Runs saved before the metadata was written: core.loading takes alpha / r from the run's
    config.yaml."""
    from safetensors.torch import load_file, save_file

    from core.loading import LORA_WEIGHTS, load_model, resolve_model

    old = tmp_path / "old-run"
    old.mkdir()
    save_file(load_file(trained["run"] / LORA_WEIGHTS), old / LORA_WEIGHTS, metadata={"format": "pt"})
    save_config(trained["cfg"], old / "config.yaml")
    assert yaml.safe_load((old / "config.yaml").read_text())["model"]["lora_alpha"] == ALPHA
    fused = load_model(resolve_model(old), device="cpu")
    assert (unet_output(fused.unet) - trained["output"]).abs().max() <= 1e-5


def _header(path):
    import json

    raw = path.read_bytes()
    return json.loads(raw[8:8 + int.from_bytes(raw[:8], "little")])


def test_the_saved_lora_is_the_same_bytes_in_every_process(trained):
    """safetensors writes its metadata map in a per-process order and peft's target_modules is a set:
    the saved file's header must come out in one order, or a run's fingerprint (a hash of the file,
    from which its generation seeds derive) changes from one process to the next."""
    import json

    from core.loading import LORA_WEIGHTS

    header = _header(trained["run"] / LORA_WEIGHTS)
    meta = header["__metadata__"]
    assert list(meta) == sorted(meta)
    targets = json.loads(meta["lora_adapter_metadata"])["unet.target_modules"]  # diffusers prefixes the keys
    assert targets == sorted(targets)


def test_sorting_the_metadata_makes_two_orders_one_file(tmp_path):
    from safetensors.torch import load_file, save_file

    from core.files import sort_safetensors_metadata

    tensors = {"b": torch.arange(6.0).reshape(2, 3), "a": torch.ones(5, dtype=torch.float16)}
    metas = [{"format": "pt", "lora_adapter_metadata": '{"r": 4}', "zz": "é"},
             {"zz": "é", "lora_adapter_metadata": '{"r": 4}', "format": "pt"}]
    files = []
    for i, meta in enumerate(metas):
        # write the header by hand in the given order (the writer's own order is not ours to pick)
        import json

        save_file(tensors, tmp_path / "plain.safetensors")
        raw = (tmp_path / "plain.safetensors").read_bytes()
        n = int.from_bytes(raw[:8], "little")
        header = json.loads(raw[8:8 + n])
        header.pop("__metadata__", None)
        text = json.dumps({"__metadata__": meta, **header}, separators=(",", ":")).encode()
        text += b" " * (-len(text) % 8)
        f = tmp_path / f"{i}.safetensors"
        f.write_bytes(len(text).to_bytes(8, "little") + text + raw[8 + n:])
        files.append(f)
    assert files[0].read_bytes() != files[1].read_bytes()
    for f in files:
        sort_safetensors_metadata(f)
    assert files[0].read_bytes() == files[1].read_bytes()
    loaded = load_file(files[0])
    assert set(loaded) == {"a", "b"} and all(torch.equal(loaded[k], tensors[k]) for k in tensors)
    from safetensors import safe_open

    with safe_open(files[0], "pt") as f:
        assert f.metadata() == metas[0]
