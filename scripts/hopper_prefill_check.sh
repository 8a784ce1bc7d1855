#!/usr/bin/env bash
# Builds scripts/hopper_prefill_test.cu for sm_90a, reports registers / spills and the HGMMA count
# of the Hopper prefill kernel, runs its checks and timings, then compute-sanitizer memcheck and
# racecheck over the correctness cases (HOPPER_SANITIZE=0: none; HOPPER_SANITIZE_ONLY=PREFIX: the cases
# whose name starts with PREFIX). Logs under $OUT (else build/hopper_prefill/).
set -u -o pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
LOG="${OUT:-$ROOT/build/hopper_prefill}"
mkdir -p "$LOG"
CUDA_HOME="${CUDA_HOME:-/usr/local/cuda}"
BIN="$ROOT/build/hopper_prefill_test"
mkdir -p "$ROOT/build"
"$CUDA_HOME/bin/nvcc" -gencode=arch=compute_90a,code=sm_90a -std=c++17 -O3 --expt-relaxed-constexpr \
  -static-global-template-stub=false -lineinfo -I"$ROOT/csrc/include" -I"$ROOT/csrc/kernels" -Xptxas -v \
  -o "$BIN" "$ROOT/scripts/hopper_prefill_test.cu" >"$LOG/hopper_build.log" 2>&1 || { cat "$LOG/hopper_build.log"; exit 1; }
grep -E "Used|spill" "$LOG/hopper_build.log" | paste - - | sed 's/ptxas info *: //' | sort | uniq -c
"$CUDA_HOME/bin/cuobjdump" -sass "$BIN" | grep -oE "HGMMA\.[0-9A-Za-z.]+" | sort | uniq -c
echo "local memory instructions: $("$CUDA_HOME/bin/cuobjdump" -sass "$BIN" | grep -cE '\b(LDL|STL)\b')"
"$BIN" "$@" 2>&1 | tee "$LOG/hopper_test.log"
rc=${PIPESTATUS[0]}
if [ "${HOPPER_SANITIZE:-1}" = 1 ]; then
  for tool in memcheck racecheck; do
    "$CUDA_HOME/bin/compute-sanitizer" --tool "$tool" "$BIN" --no-timed ${HOPPER_SANITIZE_ONLY:+--only="$HOPPER_SANITIZE_ONLY"} 2>&1 |
      tail -n 3 | sed "s/^/$tool: /"
  done
fi
exit "$rc"
