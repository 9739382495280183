#!/usr/bin/env bash
# Region-aware DPOK and RWL (Focus-N-Fix) beside the plain ones on one demo round (issue 57).
# Usage (repository root): bash experiments/region-dpok/run.sh SEED BETA_DPOK BETA_RWL TAG [PY]
#   1. `make demo` at SEED (plain DPOK and RWL, its reward, targets); kept if already there;
#   2. the demo's labels copied, and every bad answer marked by its simulated rater (default MarkProfile);
#   3. the demo's reward recipe retrained on labels + marks: the same scalar head, plus a region head;
#   4. the demo's DPOK and RWL runs again with region.weight=BETA_DPOK / BETA_RWL;
#   5. `make eval` of base and the two region-aware runs (evaluate.sh) at the demo's evaluation seeds (plain DPOK
#      and RWL were evaluated at those seeds by the demo: reports/demo-sSEED/eval).
# TAG names this version's outputs (runs/region-dpok-sSEED/*-TAG).
set -euo pipefail
S=${1:?seed}; BD=${2:?beta dpok}; BR=${3:?beta rwl}; TAG=${4:?tag}
PY=${5:-.venv/bin/python}
export PYTHONPATH=$PWD
DEMO=runs/demo-s$S; ROOT=datasets/demo-s$S; OUT=runs/region-dpok-s$S; MARKED=datasets/region-dpok-s$S
[ -f $DEMO/finetune-dpok/metrics.json ] || \
  $PY -m pipelines.demo seed=$S root=$ROOT runs=$DEMO report=reports/demo-s$S
if [ ! -d $MARKED ]; then
  cp -a $ROOT $MARKED
  $PY -c "import sys; from data import Store; from shapes.marking import simulate_marks; print(simulate_marks(Store(sys.argv[1]), seed=int(sys.argv[2])))" $MARKED $S  # marks written
fi
[ -f $OUT/reward-$TAG/metrics.json ] || \
  $PY -m pipelines.train_reward --config $DEMO/reward/config.yaml data.root=$MARKED out_dir=$OUT/reward-$TAG progress=false
for MB in dpok:$BD rwl:$BR; do
  M=${MB%%:*}; B=${MB#*:}
  [ -f $OUT/$M-region-$TAG/metrics.json ] || \
    $PY -m pipelines.finetune --config $DEMO/finetune-$M/config.yaml output_dir=$OUT/$M-region-$TAG \
      reward.path=$OUT/reward-$TAG region.weight=$B
done
bash experiments/region-dpok/evaluate.sh $S $TAG "dpok-region=$OUT/dpok-region-$TAG,rwl-region=$OUT/rwl-region-$TAG" $PY
