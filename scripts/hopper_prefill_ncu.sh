#!/usr/bin/env bash
# Nsight Compute over the Hopper prefill kernel on one case (default prefill_g3): speed of light,
# warp states, scheduler, compute and memory sections of one launch. Needs
# build/hopper_prefill_test (scripts/hopper_prefill_check.sh builds it).
set -u -o pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
LOG="${OUT:-$ROOT/build/hopper_prefill}"
CASE="${1:-prefill_g3}"
NCU="$(command -v ncu || echo /usr/local/cuda/bin/ncu)"
"$NCU" --clock-control none -k regex:hopper_prefill_kernel -c 1 --launch-skip 1 --section SpeedOfLight \
  --section WarpStateStats --section SchedulerStats --section ComputeWorkloadAnalysis --section MemoryWorkloadAnalysis \
  "$ROOT/build/hopper_prefill_test" "--only=$CASE" >"$LOG/ncu_hopper_prefill_kernel.txt" 2>&1
grep -E "hopper_prefill|Duration|Throughput|Stall|Issue|Eligible|Active Warps|Pipe|Executed Ipc|L2 Hit|Busy|Warp Cycles" \
  "$LOG/ncu_hopper_prefill_kernel.txt" | head -60
