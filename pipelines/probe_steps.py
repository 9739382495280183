"""``make probe-steps``: which denoising steps decide the reward, to choose DPOK's trained window and tail.

    python -m pipelines.probe_steps reward.kind=oracle prompts_file=runs/demo/targets.txt   # shapes world
    python -m pipelines.probe_steps pipeline=/models/sd-v1-5 prompts_file=prompts.txt reward.path=runs/reward \
        sampling.num_inference_steps=50 sampling.guidance_scale=7.5 after_steps=[0,5,10,15,20,25] tail_from=20

Writes reports/probe/: probe.md (the tables), probe.json and config.yaml (tools.probe).
"""

from __future__ import annotations

import sys
from pathlib import Path

from tqdm.auto import tqdm

from core.config import save_config
from tools.probe import ProbeConfig, markdown, probe_steps, write_probe
from pipelines.cli import config_parser, parse_config, run


def main(argv: list[str] | None = None) -> int:
    cfg = parse_config(ProbeConfig, config_parser(__doc__.splitlines()[0]), argv)
    with tqdm(desc="probe: chains", unit="sample", file=sys.stderr) as bar:
        result = probe_steps(cfg, progress=bar)
    out = write_probe(result, cfg)
    save_config(cfg, f"{out}/config.yaml")
    print(markdown(result, cfg))
    print(f"wrote {Path(out) / 'probe.md'}, probe.json and config.yaml")
    return 0


if __name__ == "__main__":
    sys.exit(run(main))
