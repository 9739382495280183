"""Does more base training raise shapes-flow's fine-tuning ceiling (issue 73)?  make base's flow stage
started from the committed shapes-flow's weights (transformer and both text encoders, no adaLN-Zero
re-initialisation) instead of fresh ones, for STEPS more steps at peak learning rate LR (warm-up, cosine
to 5 %), the same renders and seed; the result is a pipeline folder for full_finetune_check.py.

    mkdir -p runs/flowbase-more/shapes-sd && cp -r shapes/models/shapes-sd/vae runs/flowbase-more/shapes-sd/
    .venv/bin/python experiments/flow-dpok/continue_base.py runs/flowbase-more STEPS LR

Writes OUT/shapes-flow; prints the run's steps, seconds and last loss."""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path

import torch

import shapes.training.flow as flow
from core.loading import load_sd_pipeline

if __name__ == "__main__":
    out, steps, lr = Path(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
    torch.set_num_threads(2)
    base = load_sd_pipeline("shapes/models/shapes-flow", device="cpu")
    encoders = iter([base.text_encoder, base.text_encoder_2])  # train_flow builds text, then text_2
    flow.build_text_encoder = lambda arch, tokenizer: next(encoders)
    flow.build_transformer = lambda *args: base.transformer
    flow.adaln_zero_ = lambda transformer: None  # keep the trained modulations
    cfg = replace(flow.FlowConfig(), steps=steps, lr=lr, eval_every=steps // 2, log_every=100)
    res = flow.train_flow(cfg, out / "shapes-sd" / "vae", out / "shapes-flow", progress=False)
    print(res)
