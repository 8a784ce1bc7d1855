#!/usr/bin/env bash
# One command on a CUDA machine: build the DLPack module (timed), run tests/gpu and the device smoke
# test, compute-sanitizer memcheck + racecheck over the small smoke run, tests/gpu, optionally the benchmark.
#
# Usage: scripts/gpu_check.sh [--subset full|ci] [--arch 90a] [--cudart static|shared] [--bench]
#                              [--no-tests] [--no-sanitizer]
#                              [-k PYTEST_EXPR] [--step-timeout SECONDS]
# Logs go to $OUT when it is set (else build/gpu_check/); a short summary is printed last.
set -u -o pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
SUBSET=full ARCH=90a CUDART=static BENCH=0 TESTS=1 SANITIZER=1 PYTEST_K="" STEP_TIMEOUT=0
while [ $# -gt 0 ]; do
  case "$1" in
    --subset) SUBSET="$2"; shift 2 ;;
    --arch) ARCH="$2"; shift 2 ;;
    --cudart) CUDART="$2"; shift 2 ;;
    --bench) BENCH=1; shift ;;
    --no-tests) TESTS=0; shift ;;
    --no-sanitizer) SANITIZER=0; shift ;;
    -k) PYTEST_K="$2"; shift 2 ;;
    --step-timeout) STEP_TIMEOUT="$2"; shift 2 ;;
    -h|--help) sed -n 2,7p "$0"; exit 0 ;;
    *) echo "gpu_check.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done

LOG="${OUT:-$ROOT/build/gpu_check}"
mkdir -p "$LOG"
PY="${PYTHON:-python3}"
export PYTHONUNBUFFERED=1
export PADDLE_GQA_CUDA_MODULE_DIR="$ROOT/build/dlpack"
export CUDA_HOME="${CUDA_HOME:-/usr/local/cuda}"
SANITIZER_BIN="$(command -v compute-sanitizer || echo "$CUDA_HOME/bin/compute-sanitizer")"
SUMMARY=()
FAILED=0

# step NAME LOGFILE CMD...: runs CMD with output to the console and LOGFILE, records status + time.
# With --step-timeout each step after the build is stopped after that many seconds (exit 124).
step() {
  local name="$1" logfile="$2"; shift 2
  local t0=$SECONDS
  echo "=== $name: $*"
  if [ "$STEP_TIMEOUT" -gt 0 ] && [ "$logfile" != "$LOG/build.log" ]; then
    set -- timeout "$STEP_TIMEOUT" "$@"
  fi
  "$@" 2>&1 | tee "$logfile"
  local rc=${PIPESTATUS[0]}
  local status="ok"
  [ "$rc" -ne 0 ] && { status="FAILED (exit $rc)"; FAILED=1; }
  SUMMARY+=("$(printf '%-28s %-18s %5ss  %s' "$name" "$status" "$((SECONDS - t0))" "$(basename "$logfile")")")
  return "$rc"
}

nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null | sed 's/^/GPU: /'
"$CUDA_HOME/bin/nvcc" --version | tail -n 2 | head -n 1

if ! step "build ($SUBSET, sm_$ARCH)" "$LOG/build.log" \
    "$PY" scripts/build_cuda.py --subset "$SUBSET" --arch "$ARCH" --cudart "$CUDART" --lineinfo --ptxas-report; then
  printf '%s\n' "--- gpu_check summary" "${SUMMARY[@]}"
  exit 1
fi
BUILD_LINE="$(grep -E '^(built |ptxas: )' "$LOG/build.log" | tail -n 2)"

if [ "$TESTS" = 1 ]; then
  step "gpu_smoke" "$LOG/smoke.log" "$PY" scripts/gpu_smoke.py
fi

if [ "$SANITIZER" = 1 ]; then
  # Without torch's caching allocator every tensor is its own allocation, so memcheck sees an
  # access past a tensor's end instead of landing in a neighbour inside one pooled block.
  step "memcheck (smoke --quick)" "$LOG/memcheck.log" env PYTORCH_NO_CUDA_MEMORY_CACHING=1 \
    "$SANITIZER_BIN" --tool memcheck --error-exitcode 3 "$PY" scripts/gpu_smoke.py --quick
  step "racecheck (smoke --quick)" "$LOG/racecheck.log" env PYTORCH_NO_CUDA_MEMORY_CACHING=1 \
    "$SANITIZER_BIN" --tool racecheck --error-exitcode 3 "$PY" scripts/gpu_smoke.py --quick
  # Bad block ids met by every launch variant, the early decode tiles (TMA reads before the step
  # check completes) included: no access outside a tensor.
  if [ -f tests/gpu/test_gpu_launch.py ]; then
    step "memcheck (bad step data)" "$LOG/memcheck_bad_step.log" env PYTORCH_NO_CUDA_MEMORY_CACHING=1 \
      "$SANITIZER_BIN" --tool memcheck --error-exitcode 3 "$PY" -m pytest -q -p no:cacheprovider \
      tests/gpu/test_gpu_launch.py -k bad_step_data
    # Persistent decode CTAs reuse their shared memory from item to item (mixed batch, every variant).
    step "racecheck (mixed launches)" "$LOG/racecheck_mixed.log" env PYTORCH_NO_CUDA_MEMORY_CACHING=1 \
      "$SANITIZER_BIN" --tool racecheck --error-exitcode 3 "$PY" -m pytest -q -p no:cacheprovider \
      tests/gpu/test_gpu_launch.py -k "match_reference and mixed_splits"
  fi
fi

if [ "$TESTS" = 1 ]; then
  if [ -d tests/gpu ]; then
    K_ARGS=()
    [ -n "$PYTEST_K" ] && K_ARGS=(-k "$PYTEST_K")
    step "pytest tests/gpu" "$LOG/pytest.log" "$PY" -m pytest -q --tb=short tests/gpu "${K_ARGS[@]}"
  else
    SUMMARY+=("$(printf '%-28s %s' "pytest tests/gpu" "not run: tests/gpu is missing")")
    FAILED=1
  fi
fi

if [ "$BENCH" = 1 ]; then
  if [ -f scripts/bench.py ]; then
    step "bench" /dev/null "$PY" scripts/bench.py --out "$LOG/bench"
  else
    SUMMARY+=("$(printf '%-28s %s' "bench" "not run: scripts/bench.py is missing")")
  fi
fi

echo "--- gpu_check summary (logs in $LOG)"
echo "$BUILD_LINE"
[ -f "$LOG/pytest.log" ] && grep -E '(passed|failed|error)' "$LOG/pytest.log" | tail -n 1 | sed 's/^/pytest: /'
[ -f "$LOG/smoke.log" ] && tail -n 1 "$LOG/smoke.log"
for f in memcheck racecheck memcheck_bad_step racecheck_mixed; do
  [ -f "$LOG/$f.log" ] && grep -E 'ERROR SUMMARY' "$LOG/$f.log" | tail -n 1 | sed "s/^/$f: /"
done
printf '%s\n' "${SUMMARY[@]}"
exit "$FAILED"
