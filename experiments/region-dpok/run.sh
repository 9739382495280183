#!/usr/bin/env bash
# Region-aware DPOK and RWL (Focus-N-Fix) beside the plain ones on one demo round (issue 57).
# Usage (repository root): bash experiments/region-dpok/run.sh SEED BETA [PY]
#   1. `make demo` at SEED (plain DPOK and RWL, its reward, targets); kept if already there;
#   2. the demo's labels copied, and every bad answer marked by its simulated rater (default MarkProfile);
#   3. the demo's reward recipe retrained on labels + marks: the same scalar head, plus a region head;
#   4. the demo's DPOK and RWL runs again with region.weight=BETA (the region head's masks);
#   5. `make eval` of base, plain and region-aware DPOK and RWL at the demo's evaluation seeds.
set -euo pipefail
S=${1:?seed}
BETA=${2:?region.weight}
PY=${3:-.venv/bin/python}
export PYTHONPATH=$PWD
DEMO=runs/demo-s$S; ROOT=datasets/demo-s$S; OUT=runs/region-dpok-s$S; MARKED=datasets/region-dpok-s$S
[ -f $DEMO/finetune-dpok/metrics.json ] || \
  $PY -m pipelines.demo seed=$S root=$ROOT runs=$DEMO report=reports/demo-s$S
if [ ! -d $MARKED ]; then
  cp -a $ROOT $MARKED
  $PY experiments/region-head/mark_round.py $MARKED $S
fi
[ -f $OUT/reward/metrics.json ] || \
  $PY -m pipelines.train_reward --config $DEMO/reward/config.yaml data.root=$MARKED out_dir=$OUT/reward progress=false
for M in dpok rwl; do
  [ -f $OUT/$M-region-$BETA/metrics.json ] || \
    $PY -m pipelines.finetune --config $DEMO/finetune-$M/config.yaml output_dir=$OUT/$M-region-$BETA \
      reward.path=$OUT/reward region.weight=$BETA
done
$PY -m pipelines.evaluate base=shapes/models/shapes-sd clip=shapes/models/shapes-clip reward.path=$DEMO/reward \
  "models=[dpok=$DEMO/finetune-dpok,dpok-region=$OUT/dpok-region-$BETA,rwl=$DEMO/finetune-rwl,rwl-region=$OUT/rwl-region-$BETA]" \
  prompts_file=$DEMO/targets.txt generalization_split=heldout samples_per_prompt=16 side_samples_per_prompt=4 \
  output_dir=reports/region-dpok-s$S-$BETA
cp reports/region-dpok-s$S-$BETA/metrics.json experiments/region-dpok/region-dpok-seed$S-beta$BETA.json
