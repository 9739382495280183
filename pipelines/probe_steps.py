"""``make probe-steps``: which denoising steps decide the reward, to choose DPOK's trained window and tail.

    python -m pipelines.probe_steps reward.kind=oracle prompts_file=runs/demo/targets.txt   # shapes world
    python -m pipelines.probe_steps pipeline=/models/sd-v1-5 prompts_file=prompts.txt reward.path=runs/reward \
        finetune_config=finetune/configs/sd15.yaml after_steps=[0,5,10,15,20,25] tail_from=20   # its 50 steps, 7.5

Writes reports/probe/: probe.md (the tables), probe.json and config.yaml (tools.probe).
"""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path

from tqdm.auto import tqdm

from core.config import load_config, save_config
from core.loading import resolve_model
from evaluation.settings import apply_setting, config_setting, describe, given_keys
from tools.probe import ProbeConfig, chain_words, config_noise_level, markdown, probe_steps, write_probe
from pipelines.cli import config_parser, run


def main(argv: list[str] | None = None) -> int:
    args = config_parser(__doc__.splitlines()[0]).parse_args(argv)
    cfg = load_config(ProbeConfig, args.config, args.overrides)
    if cfg.finetune_config:  # the fine-tuning config's setting for every sampling key not given
        source = Path(cfg.finetune_config)
        source = source / "config.yaml" if source.is_dir() else source
        cfg = replace(cfg, sampling=apply_setting(cfg.sampling, config_setting(source),
                                                  given_keys(args.config, args.overrides)))
        level = config_noise_level(source)  # a flow config's SDE noise level, unless the user gave one
        if level is not None and "noise_level" not in given_keys(args.config, args.overrides, section=None):
            cfg = replace(cfg, noise_level=level)
    chain = chain_words(cfg, resolve_model(cfg.pipeline).family)
    print(f"probing at {describe(cfg.sampling, cfg.finetune_config or 'as configured', sampler=chain)}",
          file=sys.stderr, flush=True)
    with tqdm(desc="probe: chains", unit="sample", file=sys.stderr) as bar:
        result = probe_steps(cfg, progress=bar)
    out = write_probe(result, cfg)
    save_config(cfg, f"{out}/config.yaml")
    print(markdown(result, cfg))
    print(f"wrote {Path(out) / 'probe.md'}, probe.json and config.yaml")
    return 0


if __name__ == "__main__":
    sys.exit(run(main))
