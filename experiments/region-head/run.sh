#!/usr/bin/env bash
# The region-head study for one seed: a demo-sized labelling round of the shipped shapes model,
# 3 simulated raters an image (as RichHF), their simulated marks, then `make reward` with the
# region head.  Usage (repository root): bash experiments/region-head/run.sh SEED [PY]
set -euo pipefail
S=${1:?seed}
PY=${2:-.venv/bin/python}
ROOT=datasets/region-s$S
export PYTHONPATH=$PWD
$PY -m pipelines.generate root=$ROOT prompts=all per_prompt=8 seed=$S
$PY -m pipelines.simulate_raters label.root=$ROOT label.overlap=3 raters=5 flip_rate=0.1 seed=$S
$PY -c "import sys; from data import Store; from shapes.marking import simulate_marks; print(simulate_marks(Store(sys.argv[1]), seed=int(sys.argv[2])))" $ROOT $S  # marks written
$PY -m pipelines.train_reward data.root=$ROOT out_dir=runs/region-s$S train.seed=$S \
    train.baselines=false train.ablate_aux=false overwrite=true progress=false
cp runs/region-s$S/metrics.json experiments/region-head/region-head-seed$S.json
