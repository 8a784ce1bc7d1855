#!/usr/bin/env bash
# A/B of kernel builds on the production call path: builds the DLPack module once per variant (each
# a set of -D switches, scripts/build_cuda.py --subset ci), then runs one command under every
# variant in alternating rounds (PADDLE_GQA_CUDA_MODULE_DIR points at the variant's module), so that
# clock and thermal drift hit every variant alike. Output lines are prefixed with "[VARIANT ROUND]".
#
# Usage: scripts/module_ab.sh [--rounds N] [--subset ci|full] VARIANT... -- COMMAND...
#   VARIANT: NAME=DEF[,DEF...] (DEF as for -D; "NAME=" builds the tree as it is)
# e.g. scripts/module_ab.sh base=MY_OLD_PATH new= -- python3 scripts/decode_flush_probe.py --cases decode_g3
set -u -o pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
ROUNDS=1 SUBSET=ci VARIANTS=()
while [ $# -gt 0 ]; do
  case "$1" in
    --rounds) ROUNDS="$2"; shift 2 ;;
    --subset) SUBSET="$2"; shift 2 ;;
    --) shift; break ;;
    *) VARIANTS+=("$1"); shift ;;
  esac
done
[ ${#VARIANTS[@]} -gt 0 ] && [ $# -gt 0 ] || { sed -n 2,9p "$0"; exit 2; }
for spec in "${VARIANTS[@]}"; do
  name="${spec%%=*}" defs="${spec#*=}"
  args=()
  for d in ${defs//,/ }; do args+=(-D "$d"); done
  python3 scripts/build_cuda.py --subset "$SUBSET" "${args[@]}" | tail -n 1 | sed "s/^/[$name build] /" || exit 1
  mkdir -p "build/ab/$name"
  cp build/dlpack/paddle_gqa_cuda*.so "build/ab/$name/"
done
for r in $(seq 1 "$ROUNDS"); do
  for spec in "${VARIANTS[@]}"; do
    name="${spec%%=*}"
    PADDLE_GQA_CUDA_MODULE_DIR="$ROOT/build/ab/$name" "$@" 2>&1 | sed "s/^/[$name $r] /"
  done
done
