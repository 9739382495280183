"""Which sampling setting a comparison runs at: a fine-tuned run's own, unless the user sets it.

A run samples at the setting it was trained at (its ``config.yaml``'s ``sampling``: 50 steps and
guidance 7.5 for ``finetune/configs/sd15.yaml``, 20 and 5 for the shapes world's configs).  ``make
eval`` compares the base and the runs at one setting, so it takes the runs' setting for every key
the user did not give (``sampling.num_inference_steps=`` etc. on the command line or in
``--config``); runs trained at different settings are one error.  ``make probe-steps`` takes a
fine-tuning config's setting (``finetune_config=``) the same way.
"""

from __future__ import annotations

from dataclasses import fields, replace
from pathlib import Path

import yaml

from core.errors import UserError

# The keys of a setting that decide what a model samples, the image size (pixels; null: the
# model's native size) among them: a run trained at 128x64 is evaluated at 128x64; the rest
# (batch size, compile) only decide how fast.
SETTING_KEYS = ("scheduler", "num_inference_steps", "guidance_scale", "eta", "height", "width")
RUN_CONFIG = "config.yaml"


def given_keys(config_file: str | None, overrides: list[str], section: str | None = "sampling") -> set[str]:
    """The keys of a config's ``section`` (None: its top level) a user set, on the command line
    (``<section>.<key>=``, or ``<key>=``) or in a config file."""
    keys = [o.split("=", 1)[0].strip() for o in overrides]
    if section is None:
        out = {k for k in keys if "." not in k}
    else:
        out = {k[len(section) + 1:] for k in keys if k.startswith(f"{section}.")}
    if config_file:
        data = yaml.safe_load(Path(config_file).read_text()) or {}
        part = data if section is None else data.get(section) if isinstance(data, dict) else None
        out |= set(part.keys()) if isinstance(part, dict) else set()
    return out


def read_config(path: str | Path) -> dict:
    """A fine-tuning config file (a run's config.yaml, or e.g. finetune/configs/sd15.yaml) as a
    mapping; {} when it is empty or not a mapping."""
    try:
        data = yaml.safe_load(Path(path).read_text()) or {}
    except (OSError, yaml.YAMLError) as e:
        raise UserError(f"could not read the config {path} ({e}).", "pass a fine-tuning config YAML file.") from None
    return data if isinstance(data, dict) else {}


def config_setting(path: str | Path) -> dict:
    """``sampling``'s setting keys of a fine-tuning config file (:func:`read_config`); {} when it
    names none."""
    sampling = read_config(path).get("sampling")
    return {k: sampling[k] for k in SETTING_KEYS if isinstance(sampling, dict) and k in sampling}


def runs_setting(runs: dict[str, Path], given: set[str] = frozenset()) -> dict:
    """The one setting the named runs (name -> run folder) were trained at, for the keys not
    ``given`` (those the user set for every model); {} when none has a config.yaml; an error when
    they differ."""
    settings = {name: {k: v for k, v in config_setting(folder / RUN_CONFIG).items() if k not in given}
                for name, folder in runs.items() if (folder / RUN_CONFIG).is_file()}
    settings = {n: s for n, s in settings.items() if s}
    distinct = {tuple(sorted(s.items())) for s in settings.values()}
    if len(distinct) > 1:
        listed = "; ".join(f"{n}: " + ", ".join(f"{k} {v}" for k, v in s.items()) for n, s in settings.items())
        raise UserError(f"the runs were trained at different sampling settings ({listed}), and a comparison "
                        "samples every model at one.",
                        "evaluate them in separate calls, or set sampling.num_inference_steps, "
                        "sampling.guidance_scale and sampling.eta for all of them.")
    return dict(distinct.pop()) if distinct else {}


def apply_setting(sampling, setting: dict, given: set[str]):
    """``sampling`` (a sampling config dataclass) with ``setting``'s values for the keys not ``given``."""
    names = {f.name for f in fields(sampling)}
    take = {k: v for k, v in setting.items() if k in names and k not in given}
    return replace(sampling, **take) if take else sampling


def describe(sampling, source: str, scheduler=None, family=None, sampler: str | None = None) -> str:
    """One line for a report: the sampler and setting every model was sampled at (``sampler``, those
    words; else for a ``family`` pipeline whose scheduler is ``scheduler``,
    core.sampling.describe_sampling; no family: SamplingConfig.describe, the SD family's), the image
    size, and where it came from."""
    if sampler is not None:
        said = sampler
    elif family is None:
        said = sampling.describe(scheduler)
    else:
        from core.sampling import describe_sampling

        said = describe_sampling(sampling, scheduler, family)
    size = ("the model's native size" if sampling.height is None and sampling.width is None
            else f"{sampling.width or 'native'}x{sampling.height or 'native'} (width x height)")
    return f"{said}, at {size} ({source})"


def eval_setting(cfg, given: set[str]):
    """``make eval``'s config with the fine-tuned runs' setting (base and named runs that are runs)
    for the sampling keys not ``given``, and the report's line on it."""
    from core.loading import load_scheduler, resolve_model
    from evaluation.frontier import split_scale

    runs: dict[str, Path] = {}
    base = resolve_model(cfg.base)
    if base.run is not None:
        runs["base"] = base.run
    for item in cfg.models:
        name, _, path = item.partition("=")
        path = split_scale(path, name.strip())[0] if path else path  # runs/x@0.25: the run runs/x
        if path and Path(path).exists():  # one that is not there: evaluate's own error
            ref = resolve_model(path, base=base.base)
            if ref.run is not None:
                runs[name.strip()] = ref.run
    setting = runs_setting(runs, given)
    sampling = apply_setting(cfg.sampling, setting, given)
    taken = sorted(set(setting) - given)
    if not taken:
        source = "as configured" if not runs or not setting else "as configured, overriding the runs' own"
    else:
        source = f"the runs' own ({', '.join(taken)} from their config.yaml)"
        if given & set(SETTING_KEYS):
            source += f"; {', '.join(sorted(given & set(SETTING_KEYS)))} as configured"
    return replace(cfg, sampling=sampling), describe(sampling, source, load_scheduler(base.base), base.family)
