#!/usr/bin/env bash
# A/B of one launcher knob (an environment variable read per call, e.g. PADDLE_GQA_EARLY_DECODE) on
# paged_attention: profile_steps.py --time (eager and graph replay, back to back and after an L2
# flush; median of 100 calls) under each value, in alternating rounds, one build.
#
# Usage: scripts/knob_ab.sh KNOB CASES [ROUNDS] [VALUES]   (after python3 scripts/build_cuda.py)
#   VALUES: comma-separated values of KNOB, "unset" for the default (default "0,unset").
# Prints the TIME lines tagged VALUE-ROUND; json files go to $OUT (else build/knob_ab).
set -u -o pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
KNOB="$1" CASES="$2" ROUNDS="${3:-2}" VALUES="${4:-0,unset}"
LOG="${OUT:-$ROOT/build/knob_ab}"
mkdir -p "$LOG"
export PADDLE_GQA_CUDA_MODULE_DIR="${PADDLE_GQA_CUDA_MODULE_DIR:-$ROOT/build/dlpack}"
for r in $(seq 1 "$ROUNDS"); do
  for v in ${VALUES//,/ }; do
    if [ "$v" = unset ]; then set_knob=(-u "$KNOB"); else set_knob=("$KNOB=$v"); fi
    env "${set_knob[@]}" python3 scripts/profile_steps.py --time --no-profile --cases "$CASES" --out "$LOG" \
      --tag "$v-$r" | grep '^=== TIME'
  done
done
