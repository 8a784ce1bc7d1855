#!/usr/bin/env python3
"""A/B timing of attention kernel variants on a CUDA machine, without the bindings.

Builds scripts/attention_test.cu once per variant (attention_smoke.compile_all, CI subset of
instantiations, sm_90a), each variant a set of -D defines, then runs the drivers' timed cases
(`attention_test --bench PREFIXES`) in rounds, variant after variant, so that clock and thermal
drift hit every variant alike. Prints each case's times per round and the median per variant.

Usage: python3 scripts/attention_variants.py --cases "decode_g3,decode_long" \
           --variant base= --variant try=MY_SWITCH [--rounds 3] [--out DIR]
(a variant with no defines is the code as it is; MY_SWITCH is a macro that a change under test
guards with #if defined(MY_SWITCH) while it is being measured; BENCHMARKS.md, session 4, lists the
switches measured so and their outcomes).
"""
import argparse
import os
import pathlib
import re
import statistics
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import attention_smoke  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parent.parent


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--variant", action="append", required=True, help="NAME=DEF[,DEF...] (DEF as for -D)")
    ap.add_argument("--cases", required=True, help="comma-separated case-name prefixes of attention_test --bench")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", default=os.environ.get("OUT", str(ROOT / "build" / "attention_variants")))
    args = ap.parse_args()
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    exes = {}
    with open(out / "variants_build.log", "w") as log:
        for spec in args.variant:
            name, _, defs = spec.partition("=")
            defines = [d for d in defs.split(",") if d]
            exes[name] = attention_smoke.compile_all(ROOT / "build" / "variants" / name, log, defines)
            print(f"built {name}: {defines}", flush=True)
    times = {}  # (variant, case) -> [ms]
    line_re = re.compile(r"^(.*?)\s+rows .* (ok|FAIL)\s+([0-9.]+) ms\s+(\d+) GB/s\s+([0-9.]+) TFLOP/s \| graph ([0-9.]+) ms")
    for rnd in range(args.rounds):
        for name, exe in exes.items():
            r = subprocess.run([str(exe), "--bench", args.cases], capture_output=True, text=True)
            with open(out / "variants_runs.log", "a") as log:
                log.write(f"== round {rnd} {name}\n{r.stdout}{r.stderr}")
            for line in r.stdout.splitlines():
                m = line_re.match(line)
                if not m:
                    continue
                if m.group(2) != "ok":
                    print(f"{name}: {line}")
                times.setdefault((name, m.group(1).strip()), []).append((float(m.group(3)), float(m.group(6)), line))
    cases = sorted({c for _, c in times})
    for c in cases:
        print(f"-- {c}")
        for name in exes:
            rows = times.get((name, c), [])
            if not rows:
                print(f"   {name:14s} no result")
                continue
            ms = statistics.median(x[0] for x in rows)
            gm = statistics.median(x[1] for x in rows)
            last = rows[-1][2]
            rate = last.split(" ms ", 1)[1].split("|")[0].strip() if " ms " in last else ""
            print(f"   {name:14s} median {ms:.4f} ms (graph {gm:.4f})  runs {[round(x[0], 4) for x in rows]}  last: {rate}")


if __name__ == "__main__":
    main()
