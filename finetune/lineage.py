"""Continuing a fine-tuned run, round after round of the closed loop (issue 43): the ``init`` run
a run starts from (:func:`check_init`, :func:`load_init_weights`) and the lineage every run records
(:func:`lineage`, written as ``lineage.json`` and into ``metrics.json``).

The KL term stays anchored to the ORIGINAL base model, not to ``init``: with LoRA the reference is
the UNet with its adapter disabled (the base weights; the init run's adapter is loaded into the
trainable adapter only), with ``parameterisation=full`` it is the copy of the base pipeline's UNet
that :func:`finetune.components.load_components` makes before the init weights are loaded, with a
side network it is the frozen backbone (the init run's side network is loaded into the new one).  So a
chain of rounds is penalised for its total drift from the base (DPOK eq. 8's KL to p_pre), not
for each round's step.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
import yaml

from core.errors import UserError
from core.files import write_text_atomic
from core.families import folder_family
from core.loading import LORA_WEIGHTS as LORA_FILE, check_lora_family, model_fingerprint
from core.side import SIDE_DIR, SIDE_FILE, load_side
from finetune.config import LABEL_METHODS, FinetuneConfig

LINEAGE_FILE = "lineage.json"


def _init_config(init: Path) -> dict:
    """The init run's saved config.yaml, as a plain dict (read leniently: a run of an older
    version with keys since removed still continues)."""
    saved = init / "config.yaml"
    if not init.is_dir() or not saved.is_file():
        raise UserError(f"init={init} is not a fine-tuning run folder (no {saved.name}).",
                        "pass the output_dir of a finished make finetune run, or leave init unset.")
    try:
        cfg = yaml.safe_load(saved.read_text())
    except yaml.YAMLError as e:
        raise UserError(f"{saved} is not valid YAML ({e}).", "pass a finished fine-tuning run as init.") from None
    if not isinstance(cfg, dict) or not isinstance(cfg.get("model"), dict):
        raise UserError(f"{saved} is not the config of a fine-tuning run.", "pass a finished fine-tuning run as init.")
    return cfg


def _weights_present(init: Path, parameterisation: str) -> bool:
    if parameterisation == "lora":
        return (init / LORA_FILE).is_file()
    if parameterisation == "side":
        return (init / SIDE_DIR / SIDE_FILE).is_file()
    return (init / "model_index.json").is_file() and any((init / d).is_dir() for d in ("unet", "transformer"))


def base_fingerprint_of(init: Path, init_cfg: dict) -> str:
    """The fingerprint of the base pipeline the init run trained on: from its lineage.json, or
    (a run without one) of the folder its config names."""
    try:
        return json.loads((init / LINEAGE_FILE).read_text())["base"]["fingerprint"]
    except (OSError, ValueError, KeyError, TypeError):
        pass
    path = Path(str(init_cfg["model"].get("pipeline", "")))
    if not (path / "model_index.json").is_file():
        raise UserError(f"init={init} records no lineage.json and its base pipeline {path} is gone, so "
                        "its base model cannot be checked.", "restore that pipeline folder, or start from the base.")
    return model_fingerprint(path)


def check_init(cfg: FinetuneConfig) -> None:
    """Refuse an ``init`` run that cannot continue into this one (before anything is written): no
    config or weights, another base model, or another parameterisation / LoRA shape."""
    if cfg.init is None:
        return
    init = Path(cfg.init)
    saved = _init_config(init)
    m = saved["model"]
    if not _weights_present(init, str(m.get("parameterisation", "lora"))):
        raise UserError(f"init={init} has no trained weights ({LORA_FILE} for LoRA, unet/ or transformer/ for full, "
                        f"{SIDE_DIR}/ for a side network): "
                        "the run did not finish.", "finish that run (make finetune resumes it), or pass a finished one.")
    ours = cfg.model
    theirs = {"parameterisation": m.get("parameterisation"), "lora_rank": m.get("lora_rank"),
              "lora_alpha": m.get("lora_alpha"), "lora_targets": tuple(m.get("lora_targets") or ()),
              "side_width": m.get("side_width")}
    want = {"parameterisation": ours.parameterisation, "lora_rank": ours.lora_rank,
            "lora_alpha": ours.lora_alpha, "lora_targets": tuple(ours.lora_targets), "side_width": ours.side_width}
    keys = {"full": ["parameterisation"], "side": ["parameterisation", "side_width"],
            "lora": ["parameterisation", "lora_rank", "lora_alpha", "lora_targets"]}[ours.parameterisation]
    if ours.parameterisation == "lora":  # an SD run as init of a flow base, or the other way round
        check_lora_family(init, folder_family(cfg.model.pipeline), cfg.model.pipeline)
    differ = [k for k in keys if theirs[k] != want[k]]
    if differ:
        raise UserError(f"init={init} was trained with " + ", ".join(f"model.{k}={theirs[k]}" for k in differ)
                        + "; this run has " + ", ".join(f"model.{k}={want[k]}" for k in differ) + ".",
                        "continue with the init run's model settings, or leave init unset to start from the base.")
    if base_fingerprint_of(init, saved) != model_fingerprint(cfg.model.pipeline):
        raise UserError(f"init={init} was fine-tuned from another base model than model.pipeline="
                        f"{cfg.model.pipeline} (their fingerprints differ).",
                        f"set model.pipeline to the init run's base ({m.get('pipeline')}), or leave init unset.")


@torch.no_grad()
def load_init_weights(unet, cfg: FinetuneConfig) -> None:
    """The init run's weights into the trainable part of ``unet`` (the bare UNet, before
    accelerate wraps it): its LoRA adapter into the adapter (the base weights, the KL reference,
    untouched), or its whole UNet.  Checked by :func:`check_init` first."""
    init = Path(cfg.init)
    if cfg.model.parameterisation == "side":  # the init run's side network into this one's
        saved = load_side(init / SIDE_DIR, unet.base)
        unet.side.load_state_dict(saved.side.state_dict())
    elif cfg.model.parameterisation == "lora":
        from diffusers.utils import convert_unet_state_dict_to_peft
        from peft import set_peft_model_state_dict
        from safetensors.torch import load_file

        kind = folder_family(cfg.model.pipeline).denoiser  # unet, or a flow family's transformer
        state = {k.removeprefix(f"{kind}."): v for k, v in load_file(init / LORA_FILE).items()}
        if kind == "unet":  # diffusers' UNet names to peft's (a transformer's are peft's already)
            state = convert_unet_state_dict_to_peft(state)
        result = set_peft_model_state_dict(unet, state, adapter_name="default")
        unexpected = list(getattr(result, "unexpected_keys", []) or [])
        if unexpected:
            raise UserError(f"init={init}'s LoRA weights {unexpected[:3]} match nothing in this {kind}.",
                            "continue with the init run's model settings, or leave init unset.")
    else:  # the init run's whole denoiser (unet/ or transformer/), loaded as the class this one has
        kind = folder_family(cfg.model.pipeline).denoiser
        theirs = type(unet).from_pretrained(init / kind).state_dict()
        params = dict(unet.named_parameters())
        for name, value in theirs.items():
            if name in params:
                params[name].copy_(value.to(params[name].dtype))


def _prompt_record(cfg: FinetuneConfig, prompts: list[str]) -> dict:
    if cfg.method in LABEL_METHODS:  # DPO, KTO: the prompts of the labelled images
        source = {"labels": str(Path(cfg.data.root).resolve())}
    elif cfg.prompts.prompts_file:
        source = {"file": str(Path(cfg.prompts.prompts_file).resolve())}
    else:
        source = {"split": cfg.prompts.split}
    return {**source, "count": len(prompts), "sha256": hashlib.sha256("\n".join(prompts).encode()).hexdigest()}


def _reward_record(cfg: FinetuneConfig, custom: bool) -> dict:
    if cfg.method in LABEL_METHODS:  # no reward model: the raters' labels themselves
        return {"kind": "labels", "root": str(Path(cfg.data.root).resolve()), "rounds": cfg.data.rounds}
    if custom:
        return {"kind": "custom"}  # a reward function passed in by the caller, not a config
    if cfg.reward.kind == "oracle":
        return {"kind": "oracle", "oracle": cfg.reward.oracle}
    path = Path(cfg.reward.path)
    try:
        model_id = json.loads((path / "reward_config.json").read_text()).get("model_id")
    except (OSError, ValueError):
        model_id = None
    # optimism: the run maximised the reward's upper bound (reward.epistemic), not the reward itself
    return {"kind": "learned", "path": str(path.resolve()), "model_id": model_id, "optimism": cfg.reward.optimism}


def lineage(cfg: FinetuneConfig, prompts: list[str], custom_reward: bool = False) -> dict:
    """Where this run comes from: base pipeline (path, fingerprint), the init run with its own
    lineage nested (so a chain of rounds reads back to the base), reward, prompts, seed, method."""
    init = None
    if cfg.init is not None:
        path = Path(cfg.init)
        try:
            parent = json.loads((path / LINEAGE_FILE).read_text())
        except (OSError, ValueError):
            parent = None  # a run from before lineage.json
        init = {"path": str(path.resolve()), "lineage": parent}
    return {"method": cfg.method, "seed": cfg.seed,
            "base": {"path": str(Path(cfg.model.pipeline).resolve()), "fingerprint": model_fingerprint(cfg.model.pipeline)},
            "init": init, "reward": _reward_record(cfg, custom_reward), "prompts": _prompt_record(cfg, prompts)}


def write_lineage(out: Path, record: dict) -> None:
    write_text_atomic(out / LINEAGE_FILE, json.dumps(record, indent=2))


def chain(record: dict) -> list[str]:
    """The init runs of a lineage, newest first (empty for a run from the base)."""
    out = []
    while record and record.get("init"):
        out.append(record["init"]["path"])
        record = record["init"].get("lineage")
    return out
