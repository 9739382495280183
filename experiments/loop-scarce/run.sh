#!/usr/bin/env bash
# Issue 59's label-scarce study: one loop arm, one seed, one budget.
#   experiments/loop-scarce/run.sh <arm> <seed> <budget>
# arm:    optimistic (epistemic selection, optimism C, with the one-shot control)
#         greedy     (epistemic selection, optimism 0; ONE_SHOT=true: with the one-shot control)
#         random     (random selection, optimism C)
# budget: 25 or 50 (% of the issue-43 loop's ~4,600 answers: round 0 labels whole prompts,
#         rounds 1 and 2 a budget each; 384+96+96 or 768+192+192 images at 2 raters an image)
# Round 0 samples the 110 train prompts only (held-out prompts can never be targets, so labels
# there buy no target); DPOK runs 30 rounds a round (the one-shot control 90) so one loop with its
# control fits 30 min on 2 cores.  Every torch job on this machine runs behind /work/torch.lock.
set -euo pipefail
arm=$1 seed=$2 budget=$3
C=${C:-1.0}
case $budget in
  25) b0=384 bk=96 ;;
  50) b0=768 bk=192 ;;
  *) echo "budget must be 25 or 50" >&2; exit 2 ;;
esac
case $arm in
  optimistic) arm_args="selection=uncertain optimism=$C one_shot=true" ;;
  greedy) arm_args="selection=uncertain optimism=0 one_shot=${ONE_SHOT:-false}" ;;
  random) arm_args="selection=random optimism=$C one_shot=false" ;;
  *) echo "arm must be optimistic, greedy or random" >&2; exit 2 ;;
esac
name=scarce-$arm-b$budget-s$seed
cd "$(dirname "$0")/../.."
exec flock /work/torch.lock .venv/bin/python -m pipelines.loop seed=$seed rounds=3 \
  round0_budget=$b0 budget=$bk $arm_args oracle_upper_bound=false min_targets=8 \
  "generate_args=[prompts=train]" "dpok_args=[dpok.rounds=30]" \
  root=datasets/$name runs=runs/$name report=reports/$name
