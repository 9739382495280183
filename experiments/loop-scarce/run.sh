#!/usr/bin/env bash
# Issue 59's label-scarce study: one loop arm, one seed, one budget.
#   experiments/loop-scarce/run.sh <arm> <seed> <budget>
# arm:    optimistic (epistemic selection, optimism C, with the one-shot control and the oracle
#         upper bound; ORACLE=false: without it, ONE_SHOT=false: without the control)
#         greedy     (epistemic selection, optimism 0; ONE_SHOT=true: with the one-shot control)
#         random     (random selection, optimism C)
# budget: 32 or 50 (% of the issue-43 loop's 4,609 rater answers, counted as the loop counts them:
#         binary labels and rankings, ~2.6 an image at 2 raters an image).  Round 0 labels whole
#         prompts, rounds 1 and 2 a budget each: 384+96+96 or 608+144+144 images.
# KL=<w>: the second regime, DPOK's KL weight w instead of the shipped 0.01 (named -kl<w>).
# (KLB=<nats>, DPOK's loop-wide KL budget, named -klb<nats>: measured not to help and removed with
#         dpok.kl_budget; its runs need this script and main at 518b4b4.)
# KEEP_BEST=false: the loop continues from every round's model whatever its round check says
#         (named -nokeep).
# SELECT=mix: rounds 1 and 2 buy half their images by the arm's ranking and half at random, the share
#         the round check (keep_best, issue 79) judges a round on (named -mix); default: the arm's.
# Round 0 samples the 110 train prompts only (held-out prompts can never be targets, so labels
# there buy no target); DPOK runs 30 rounds a round (the one-shot control 90) so one loop with its
# control fits 30 min on 2 cores.  Every torch job on this machine runs behind /work/torch.lock.
set -euo pipefail
arm=$1 seed=$2 budget=$3
C=${C:-1.0}
case $budget in
  32) b0=384 bk=96 ;;
  50) b0=608 bk=144 ;;
  *) echo "budget must be 32 or 50" >&2; exit 2 ;;
esac
case $arm in
  optimistic) arm_args="selection=uncertain optimism=$C one_shot=${ONE_SHOT:-true}"
              arm_args+=" oracle_upper_bound=${ORACLE:-true}" ;;
  greedy) arm_args="selection=uncertain optimism=0 one_shot=${ONE_SHOT:-false} oracle_upper_bound=false" ;;
  random) arm_args="selection=random optimism=$C one_shot=false oracle_upper_bound=false" ;;
  *) echo "arm must be optimistic, greedy or random" >&2; exit 2 ;;
esac
case ${SELECT:-} in
  '') ;;
  mix) [ "$arm" != random ] || { echo "SELECT=mix: the random arm is random already" >&2; exit 2; }
       arm_args="${arm_args/selection=uncertain/selection=mix}" ;;
  *) echo "SELECT must be mix or unset" >&2; exit 2 ;;
esac
nokeep=
[ "${KEEP_BEST:-true}" = true ] || { arm_args+=" keep_best=false"; nokeep=-nokeep; }
name=scarce-$arm-b$budget${KL:+-kl$KL}$nokeep${SELECT:+-$SELECT}-s$seed
cd "$(dirname "$0")/../.."
exec flock /work/torch.lock .venv/bin/python -m pipelines.loop seed=$seed rounds=3 \
  round0_budget=$b0 budget=$bk $arm_args min_targets=8 \
  "generate_args=[prompts=train]" "dpok_args=[dpok.rounds=30${KL:+,dpok.kl_weight=$KL}]" \
  root=datasets/$name runs=runs/$name report=reports/$name
