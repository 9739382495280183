#!/usr/bin/env bash
# Diffusion Controller's side network (issue 60) against LoRA, on one demo round: the demo's DPOK
# and RWL configs (their targets, reward, lengths and learning rates) with model.parameterisation=side,
# evaluated at the demo's evaluation seeds (the demo evaluated base, RWL and LoRA DPOK there).
# Usage (repository root): bash experiments/diffcon/run_side.sh SEED [PY]   (after run.sh SEED made the demo)
set -euo pipefail
S=${1:?seed}
PY=${2:-.venv/bin/python}
export PYTHONPATH=$PWD
DEMO=runs/demo-s$S; OUT=runs/diffcon-s$S
[ -f $OUT/dpok-side/metrics.json ] || \
  $PY -m pipelines.finetune --config $DEMO/finetune-dpok/config.yaml output_dir=$OUT/dpok-side model.parameterisation=side
[ -f $OUT/rwl-side/metrics.json ] || \
  $PY -m pipelines.finetune --config $DEMO/finetune-rwl/config.yaml output_dir=$OUT/rwl-side model.parameterisation=side
$PY -m pipelines.evaluate base=shapes/models/shapes-sd clip=shapes/models/shapes-clip reward.path=$DEMO/reward \
  "models=[dpok-side=$OUT/dpok-side,rwl-side=$OUT/rwl-side]" \
  prompts_file=$DEMO/targets.txt generalization_split=heldout samples_per_prompt=16 side_samples_per_prompt=4 \
  output_dir=reports/diffcon-side-s$S
cp reports/diffcon-side-s$S/metrics.json experiments/diffcon/side-seed$S.json
