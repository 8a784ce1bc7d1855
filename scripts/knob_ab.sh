#!/usr/bin/env bash
# A/B of one launcher knob (an environment variable read per call, e.g. PADDLE_GQA_EARLY_DECODE) on
# paged_attention: profile_steps.py --time (eager and graph replay, back to back and after an L2
# flush; median of 100 calls) with the knob set to 0 and unset, in alternating rounds, one build.
#
# Usage: scripts/knob_ab.sh KNOB CASES [ROUNDS]   (after python3 scripts/build_cuda.py)
# Prints the TIME lines tagged off-R / on-R; json files go to $OUT (else build/knob_ab).
set -u -o pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
KNOB="$1" CASES="$2" ROUNDS="${3:-2}"
LOG="${OUT:-$ROOT/build/knob_ab}"
mkdir -p "$LOG"
export PADDLE_GQA_CUDA_MODULE_DIR="${PADDLE_GQA_CUDA_MODULE_DIR:-$ROOT/build/dlpack}"
for r in $(seq 1 "$ROUNDS"); do
  env "$KNOB=0" python3 scripts/profile_steps.py --time --no-profile --cases "$CASES" --out "$LOG" --tag "off-$r" \
    | grep '^=== TIME'
  env -u "$KNOB" python3 scripts/profile_steps.py --time --no-profile --cases "$CASES" --out "$LOG" --tag "on-$r" \
    | grep '^=== TIME'
done
