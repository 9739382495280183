#!/usr/bin/env bash
# Upper bound: region-aware DPOK with the oracle's exact problem masks (oracle_masks.py) in place of
# the region head's, the same learned reward and beta as the fnf3 runs (run.sh S 3 10 fnf3 first).
# Usage (repository root): bash experiments/region-dpok/run_oracle.sh SEED BETA TAG [PY]
set -euo pipefail
S=${1:?seed}; B=${2:?beta}; TAG=${3:?tag}
PY=${4:-.venv/bin/python}
export PYTHONPATH=$PWD
DEMO=runs/demo-s$S; OUT=runs/region-dpok-s$S
[ -f $OUT/dpok-region-$TAG/metrics.json ] || \
  $PY experiments/region-dpok/oracle_masks.py --config $DEMO/finetune-dpok/config.yaml \
    output_dir=$OUT/dpok-region-$TAG reward.path=$OUT/reward-fnf3 region.weight=$B
$PY -m pipelines.evaluate base=shapes/models/shapes-sd clip=shapes/models/shapes-clip reward.path=$DEMO/reward \
  "models=[dpok-region=$OUT/dpok-region-$TAG]" \
  prompts_file=$DEMO/targets.txt generalization_split=heldout samples_per_prompt=16 side_samples_per_prompt=4 \
  output_dir=reports/region-dpok-s$S-$TAG
cp reports/region-dpok-s$S-$TAG/metrics.json experiments/region-dpok/region-dpok-seed$S-$TAG.json
