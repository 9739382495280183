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
$PY -m pipelines.evaluate base=shapes/models/shapes-sd clip=shapes/models/shapes-clip reward.path=$DEMO/reward \
  "models=[dpok-$TAG=$OUT/dpok-plain-$TAG,dpok-region-$TAG=$OUT/dpok-region-$TAG]" \
  prompts_file=$DEMO/targets.txt generalization_split=heldout samples_per_prompt=16 side_samples_per_prompt=4 \
  output_dir=reports/region-dpok-s$S-$TAG
cp reports/region-dpok-s$S-$TAG/metrics.json experiments/region-dpok/region-dpok-seed$S-$TAG.json
