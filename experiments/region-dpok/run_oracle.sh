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
bash experiments/region-dpok/evaluate.sh $S $TAG "dpok-region=$OUT/dpok-region-$TAG" $PY
