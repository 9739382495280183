"""Pilot of a shapes-flow training recipe (issue 73): `make base`'s flow stage with overrides, the
one-sample quick evaluation every 500 steps, stopped after STOP steps (the learning-rate schedule
is the full run's: steps=FlowConfig.steps, so the early curve matches a full run's).

    .venv/bin/python experiments/flow-dpok/arch_pilot.py LABEL STOP '{"arch": {...}, "zero": false, ...}'

"arch": shapes.training.flow.TransformerArch fields; "zero": false trains without adaLN-Zero (the
first shapes-flow's initialisation); other keys are FlowConfig fields.  Writes nothing but /tmp."""

from __future__ import annotations

import json
import sys
import time

import torch

import shapes.training.flow as flow

torch.set_num_threads(2)
label, stop = sys.argv[1], int(sys.argv[2])
over = json.loads(sys.argv[3]) if len(sys.argv) > 3 else {}
if not over.pop("zero", True):
    flow.adaln_zero_ = lambda transformer: None
cfg = flow.FlowConfig(transformer=flow.TransformerArch(**over.pop("arch", {})), eval_every=500, log_every=100, **over)
quick_eval, t0 = flow.quick_eval, time.time()


class Stop(Exception):
    pass


def timed_eval(pipe, step, name, sampling):
    quick_eval(pipe, step, name, sampling)
    print(f"[{label}] step {step} wall {time.time() - t0:.0f} s", flush=True)
    if step >= stop:
        raise Stop


flow.quick_eval = timed_eval
try:
    flow.train_flow(cfg, "shapes/models/shapes-sd/vae", f"/tmp/pilot-{label}")
except Stop:
    pass
