#!/usr/bin/env bash
# Region-aware DPOK with the policy gradient over the whole start of the chain: dpok.window=[0, END)
# (the demo's is [4, 8)), plain and region-aware (beta BETA, the fnf3 reward's region head), so that
# the penalty can act on the early steps that set an image's layout.  run.sh S 3 10 fnf3 first.
# Usage (repository root): bash experiments/region-dpok/run_window.sh SEED BETA END TAG [PY]
set -euo pipefail
S=${1:?seed}; B=${2:?beta}; END=${3:?window end}; TAG=${4:?tag}
PY=${5:-.venv/bin/python}
export PYTHONPATH=$PWD
DEMO=runs/demo-s$S; OUT=runs/region-dpok-s$S
for V in plain:0 region:$B; do
  N=${V%%:*}; W=${V#*:}
  [ -f $OUT/dpok-$N-$TAG/metrics.json ] || \
    $PY -m pipelines.finetune --config $DEMO/finetune-dpok/config.yaml output_dir=$OUT/dpok-$N-$TAG \
      reward.path=$OUT/reward-fnf3 region.weight=$W "dpok.window=[0, $END]"
done
bash experiments/region-dpok/evaluate.sh $S $TAG "dpok-$TAG=$OUT/dpok-plain-$TAG,dpok-region-$TAG=$OUT/dpok-region-$TAG" $PY
