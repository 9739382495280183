#!/usr/bin/env bash
# `make eval` of this study's models at the demo's evaluation seeds (16 images a target prompt, 4 a
# held-out one; "fixed"/"broken" against the base at the same seed), its metrics.json kept as a record.
# Usage (repository root): bash experiments/region-dpok/evaluate.sh SEED TAG MODELS [PY]
#   MODELS: name=run-folder,name=run-folder
set -euo pipefail
S=${1:?seed}; TAG=${2:?tag}; MODELS=${3:?models}
PY=${4:-.venv/bin/python}
DEMO=runs/demo-s$S
PYTHONPATH=$PWD $PY -m pipelines.evaluate base=shapes/models/shapes-sd clip=shapes/models/shapes-clip \
  reward.path=$DEMO/reward "models=[$MODELS]" prompts_file=$DEMO/targets.txt generalization_split=heldout \
  samples_per_prompt=16 side_samples_per_prompt=4 output_dir=reports/region-dpok-s$S-$TAG
cp reports/region-dpok-s$S-$TAG/metrics.json experiments/region-dpok/region-dpok-seed$S-$TAG.json
