#!/usr/bin/env bash
# Nsight Compute over the mma.sync attention kernel (paged_attention_kernel) on one timed case of
# scripts/attention_test.cu (name prefix; default "decode_g3 B32"): speed of light, memory workload, warp states,
# occupancy and launch sections of one launch. Builds the driver with attention_smoke.py's compile
# step (CI subset of instantiations, sm_90a) unless build/attention_ncu/attention_test exists.
# Logs under $OUT (else build/attention_ncu/).
set -u -o pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
LOG="${OUT:-$ROOT/build/attention_ncu}"
CASE="${1:-decode_g3 B32}"
BUILD="$ROOT/build/attention_ncu"
mkdir -p "$LOG" "$BUILD"
if [ ! -x "$BUILD/attention_test" ]; then
  (cd "$ROOT/scripts" && python3 -c "
import pathlib, attention_smoke
with open('$LOG/attention_ncu_build.log', 'w') as log:
    attention_smoke.compile_all(pathlib.Path('$BUILD'), log)") || exit 1
fi
NCU="$(command -v ncu || echo /usr/local/cuda/bin/ncu)"
"$NCU" --clock-control none -k regex:paged_attention_kernel -c 1 --launch-skip 3 --section SpeedOfLight \
  --section MemoryWorkloadAnalysis --section WarpStateStats --section SchedulerStats --section Occupancy \
  --section LaunchStats "$BUILD/attention_test" --bench "$CASE" >"$LOG/ncu_attention_kernel.txt" 2>&1
grep -E "paged_attention|Duration|Throughput|Stall|Issue|Eligible|Active Warps|Occupancy|Registers|Grid Size|Block Size|Shared Memory Config|Busy|Bandwidth|Hit Rate|Warp Cycles" \
  "$LOG/ncu_attention_kernel.txt" | head -70
