#!/usr/bin/env bash
# Diffusion Controller's regularisers (issue 60) against today's, on one demo round: DPOK with the
# chi^2 and the squared-Hellinger step divergence, RWL with exp and chi2 regulariser-set weights.
# Usage (repository root): bash experiments/diffcon/run.sh SEED [PY]
#   1. `make demo` at SEED (its targets, reward, plain DPOK and RWL, evaluated); kept if already there;
#   2. the demo's DPOK config with dpok.divergence=chi2 / hellinger, kl_weight matched to the KL's
#      strength at small delta (chi2 = e^d - 1 ~ d = 2 KL: weight / 2; hellinger = 1 - e^(-d/8) ~ d/8
#      = KL / 4: weight x 4), so that the runs differ in the divergence's shape, not its scale;
#   3. the demo's RWL config with rwl.weighting=exp / chi2 at temperature 0.25 (the reward's scale is
#      [0, 1]; at T = 1 both weightings are nearly uniform);
#   4. `make eval` of the four at the demo's evaluation seeds (the demo evaluated base, RWL, DPOK there).
set -euo pipefail
S=${1:?seed}
PY=${2:-.venv/bin/python}
export PYTHONPATH=$PWD
DEMO=runs/demo-s$S; OUT=runs/diffcon-s$S; ROOT=datasets/demo-s$S
[ -f $DEMO/finetune-dpok/metrics.json ] || \
  $PY -m pipelines.demo seed=$S root=$ROOT runs=$DEMO report=reports/demo-s$S
KL=$($PY -c "import yaml; print(yaml.safe_load(open('$DEMO/finetune-dpok/config.yaml'))['dpok']['kl_weight'])")
for V in chi2:$($PY -c "print($KL / 2)") hellinger:$($PY -c "print($KL * 4)"); do
  D=${V%%:*}; W=${V#*:}
  [ -f $OUT/dpok-$D/metrics.json ] || \
    $PY -m pipelines.finetune --config $DEMO/finetune-dpok/config.yaml output_dir=$OUT/dpok-$D \
      dpok.divergence=$D dpok.kl_weight=$W
done
for WT in exp chi2; do
  [ -f $OUT/rwl-$WT/metrics.json ] || \
    $PY -m pipelines.finetune --config $DEMO/finetune-rwl/config.yaml output_dir=$OUT/rwl-$WT \
      rwl.weighting=$WT rwl.temperature=0.25
done
$PY -m pipelines.evaluate base=shapes/models/shapes-sd clip=shapes/models/shapes-clip reward.path=$DEMO/reward \
  "models=[dpok-chi2=$OUT/dpok-chi2,dpok-hellinger=$OUT/dpok-hellinger,rwl-exp=$OUT/rwl-exp,rwl-chi2=$OUT/rwl-chi2]" \
  prompts_file=$DEMO/targets.txt generalization_split=heldout samples_per_prompt=16 side_samples_per_prompt=4 \
  output_dir=reports/diffcon-s$S
cp reports/diffcon-s$S/metrics.json experiments/diffcon/diffcon-seed$S.json
cp reports/demo-s$S/eval/metrics.json experiments/diffcon/baseline-seed$S.json
