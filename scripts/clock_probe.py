#!/usr/bin/env python3
"""SM clock and board power while a decode step runs back to back: ours, SDPA-cuDNN and the read
kernels of scripts/paged_read_ceiling.py (no math, or a spin standing in for it), on the bench's
decode shapes. Asks whether our step's tensor-core math costs clock (power) rather than time.

nvidia-smi samples every 50 ms while each variant runs for `--seconds`; the report gives the median
SM clock, memory clock and power of the samples, and the median µs per call.

Usage (on a CUDA machine, after python3 scripts/build_cuda.py --subset ci):
    python3 scripts/clock_probe.py [--cases decode_g3] [--seconds 3]
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, ".."))
sys.path.insert(0, HERE)

import torch  # noqa: E402

import bench_cases  # noqa: E402
from decode_flush_probe import cudnn_call  # noqa: E402
from paged_read_ceiling import build, read_call, static_splits  # noqa: E402
from profile_steps import planned_paged_call  # noqa: E402


def run_sampled(fn, seconds):
    """(median SM MHz, median memory MHz, median W, µs per call) while fn() runs back to back."""
    for _ in range(20):
        fn()
    torch.cuda.synchronize()
    smi = subprocess.Popen(["nvidia-smi", "--query-gpu=clocks.sm,clocks.mem,power.draw", "--format=csv,noheader,nounits",
                            "-lms", "50"], stdout=subprocess.PIPE, text=True)
    calls, t0 = 0, time.time()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    while time.time() - t0 < seconds:
        for _ in range(50):
            fn()
        calls += 50
        torch.cuda.synchronize()
    end.record()
    torch.cuda.synchronize()
    smi.terminate()
    out, _ = smi.communicate()
    rows = [list(map(float, line.split(","))) for line in out.strip().splitlines() if line.count(",") == 2]
    rows = rows[len(rows) // 5:]  # the first samples may predate the load
    med = [statistics.median(r[i] for r in rows) for i in range(3)] if rows else [0.0, 0.0, 0.0]
    return med[0], med[1], med[2], start.elapsed_time(end) * 1000.0 / calls


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--cases", default="decode_g3")
    ap.add_argument("--seconds", type=float, default=3.0)
    args = ap.parse_args()
    from paddle_gqa import dlpack_ops as ops
    lib = build("/tmp")
    gen = torch.Generator(device="cuda").manual_seed(0)
    for case in bench_cases.select_cases(args.cases.split(",")):
        s = bench_cases.build_set(case, case.groups, gen, "cuda")
        splits = static_splits(case, torch.cuda.get_device_properties(0).multi_processor_count)
        fns = {"ours": planned_paged_call(ops, case, s)[1], "cuDNN": cudnn_call(s)}
        for spin in (0, 1200):
            fns[f"read static tma spin{spin}"] = read_call(lib, case, s, "static", splits=splits, stages=3, tma=True,
                                                           spin=spin)
        print(f"=== {case.name}: back to back, median of nvidia-smi samples every 50 ms", flush=True)
        for name, fn in fns.items():
            sm, mem, watts, us = run_sampled(fn, args.seconds)
            print(f"    {name:28s} SM {sm:6.0f} MHz  memory {mem:6.0f} MHz  {watts:6.1f} W  {us:7.1f} us/call",
                  flush=True)
        ops.check_errors(torch.cuda.current_device())


if __name__ == "__main__":
    main()
