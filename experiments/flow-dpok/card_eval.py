"""The base-model card's alignment figures (make base's eval stage: train, common, rare-count and held-out
prompts, 4 samples a prompt at the card's seeds) for one shapes-flow folder alone, without the eval
stage's CLIP and shapes-sd evaluations: for a candidate shapes-flow trained into runs/ (issue 73).

    .venv/bin/python experiments/flow-dpok/card_eval.py runs/flowbase3/shapes-flow

Prints one JSON line: overall alignment per prompt set, the seconds it took."""

from __future__ import annotations

import json
import sys
from dataclasses import replace
from pathlib import Path

import torch

from core.loading import load_sd_pipeline
from evaluation.base_model import evaluate_model
from shapes.training.base import BaseConfig
from shapes.training.flow import FLOW_SAMPLING

if __name__ == "__main__":
    torch.set_num_threads(2)
    cfg = BaseConfig().eval
    cfg = replace(cfg, sampling=replace(cfg.sampling, max_sequence_length=FLOW_SAMPLING.max_sequence_length))
    folder = Path(sys.argv[1])
    metrics = evaluate_model(load_sd_pipeline(folder, device="cpu"), cfg, out_dir=folder, progress=False).to_dict()
    print(json.dumps({"folder": str(folder), "seconds": metrics.get("seconds"),
                      **{k: round(v["overall"], 4) for k, v in metrics["sets"].items()}}))
