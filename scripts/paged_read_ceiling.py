#!/usr/bin/env python3
"""The read ceiling of the bench's decode steps: how fast can the step's K / V bytes be read at all?

Kernels of scripts/paged_read_ceiling.cu stream exactly the K / V blocks a decode step reads (no
attention math) under three schedules (static one-wave grid as the decode kernel's, dynamic pieces,
static heads with claimed tails), from the bench's paged caches with shuffled and with consecutive
block ids. Ours (paged_attention) and SDPA-cuDNN (contiguous K / V) run in the same process on the
same input set. Every time: median µs of `--calls` calls by CUDA events, back to back and after the
bench's 256 MB memset, alternating rounds (profile_steps.time_calls), median over rounds.

Usage (on a CUDA machine, after python3 scripts/build_cuda.py --subset ci):
    python3 scripts/paged_read_ceiling.py [--set schedules|habits|pieces] [--cases decode_g3,decode_long]
        [--rounds 2] [--calls 100]
"""
from __future__ import annotations

import argparse
import collections
import ctypes
import os
import statistics
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, ".."))
sys.path.insert(0, HERE)

import torch  # noqa: E402

import bench_cases  # noqa: E402
from decode_flush_probe import cudnn_call  # noqa: E402
from profile_steps import planned_paged_call, time_calls  # noqa: E402

MODES = {"static": 0, "dynamic": 1, "hybrid": 2}


def build(out_dir):
    so = os.path.join(out_dir, "paged_read_ceiling.so")
    src = os.path.join(HERE, "paged_read_ceiling.cu")
    csrc = os.path.join(HERE, "..", "csrc")
    subprocess.run(["nvcc", "-O3", "-std=c++17", "-gencode=arch=compute_90a,code=sm_90a", "-shared",
                    "-Xcompiler", "-fPIC", "--expt-relaxed-constexpr", f"-I{csrc}", f"-I{csrc}/include",
                    f"-I{csrc}/kernels", "-o", so, src], check=True)
    lib = ctypes.CDLL(so)
    lib.paged_read.restype = ctypes.c_int
    return lib


def step_blocks(case):
    """Blocks each slot of the case's one group reads."""
    return -(-case.groups[0].kv_len // bench_cases.BLOCK_SIZE)


def static_splits(case, sms):
    """Splits per (slot, kv head) of the decode kernel's one-wave grid on this shape: ~2 CTAs per SM."""
    g = case.groups[0]
    return max(1, (2 * sms) // (g.batch * case.hkv))


def read_call(lib, case, s, mode, splits=1, chunk=8, tail=0, grid=0, stages=3, tma=False, spin=0, gap=-1,
              pre=False):
    """A closure launching one read kernel over input set s (every slot of the case has one group)."""
    g = case.groups[0]
    nblk = step_blocks(case)
    counter = torch.zeros(2, dtype=torch.int32, device="cuda")
    sink = torch.zeros(max(grid, g.batch * case.hkv * splits), dtype=torch.int64, device="cuda")
    args = (ctypes.c_void_p(s.key_cache.data_ptr()), ctypes.c_void_p(s.value_cache.data_ptr()),
            ctypes.c_void_p(s.block_tables.data_ptr()), g.batch, case.hkv, nblk, s.block_tables.shape[1],
            s.key_cache.shape[0], case.d, case.dv, bench_cases.BLOCK_SIZE, MODES[mode], splits, chunk, tail, grid,
            stages, int(tma), spin, gap, int(pre), ctypes.c_void_p(counter.data_ptr()),
            ctypes.c_void_p(sink.data_ptr()))

    def call():
        err = lib.paged_read(*args, ctypes.c_void_p(torch.cuda.current_stream().cuda_stream))
        if err:
            raise RuntimeError(f"paged_read({mode}, splits={splits}, chunk={chunk}, tail={tail}, grid={grid}, "
                               f"stages={stages}, tma={tma}, spin={spin}, gap={gap}, pre={pre}): cudaError {err}")
    call.keep = (counter, sink)  # alive as long as the closure
    return call


def variants(lib, case, sets, sms, which):
    """label -> closure. `sets`: {"shuffled": s, "consecutive": s}; `which`: "schedules" (how fast
    the bytes can be read: static / dynamic / hybrid, stages, both layouts), "habits" (the decode
    kernel's habits one at a time on the static grid: its TMA boxes, a tile's math as a spin, the
    step check's launch before it) or "pieces" (balanced schedules with and without the pipeline
    across pieces)."""
    splits = static_splits(case, sms)
    per_split = step_blocks(case) // splits
    out = {}
    if which == "pieces":
        # Balancing with the decode kernel's costs: static heads and claimed tails (hybrid) or all
        # pieces claimed (dynamic), pipelined across pieces or not (gap: each piece drains the
        # pipeline, then waits ~1 / 2 µs for an epilogue and a start).
        s = sets["shuffled"]
        common = dict(stages=3, tma=True, spin=1200)
        out[f"read static x{splits} spin1200"] = read_call(lib, case, s, "static", splits=splits, **common)
        for frac in (8, 16):
            tail = max(1, per_split // frac)
            for chunk in (1, 2, 4):
                for gap in (-1, 2000, 4000):
                    label = f"read hybrid tail{tail} c{chunk} " + ("pipelined" if gap < 0 else f"gap{gap}")
                    out[label] = read_call(lib, case, s, "hybrid", splits=splits, chunk=chunk, tail=tail, gap=gap,
                                           **common)
        for gap in (-1, 2000):
            out["read dynamic c8 2/SM " + ("pipelined" if gap < 0 else f"gap{gap}")] = read_call(
                lib, case, s, "dynamic", chunk=8, grid=2 * sms, gap=gap, **common)
        return out
    if which == "habits":
        s = sets["shuffled"]
        tail = max(1, per_split // 8)
        for tma in (False, True):
            for spin in (0, 700, 1400):
                out[f"read static x{splits} S3 {'tma' if tma else 'bulk'} spin{spin}"] = read_call(
                    lib, case, s, "static", splits=splits, stages=3, tma=tma, spin=spin)
        out[f"read static x{splits} S3 tma spin700 after a PDL pre-launch"] = read_call(
            lib, case, s, "static", splits=splits, stages=3, tma=True, spin=700, pre=True)
        out["read static S4 tma spin700"] = read_call(lib, case, s, "static", splits=splits, stages=4, tma=True,
                                                      spin=700)
        out["read dynamic c2 2/SM S3 tma spin700"] = read_call(lib, case, s, "dynamic", chunk=2, grid=2 * sms,
                                                               stages=3, tma=True, spin=700)
        for spin in (700, 1200):
            out[f"read hybrid tail{tail} c1 S3 tma spin{spin}"] = read_call(
                lib, case, s, "hybrid", splits=splits, chunk=1, tail=tail, stages=3, tma=True, spin=spin)
        out[f"read static x{splits} S3 tma spin1200"] = read_call(lib, case, s, "static", splits=splits, stages=3,
                                                                  tma=True, spin=1200)
        return out
    for layout, s in sets.items():
        tag = "shuf" if layout == "shuffled" else "cons"
        for st in (2, 3, 4):
            out[f"read {tag} static x{splits} S{st}"] = read_call(lib, case, s, "static", splits=splits, stages=st)
        for chunk in (2, 4, 8, 16):
            out[f"read {tag} dynamic c{chunk} 2/SM S3"] = read_call(lib, case, s, "dynamic", chunk=chunk,
                                                                    grid=2 * sms, stages=3)
        out[f"read {tag} dynamic c4 3/SM S2"] = read_call(lib, case, s, "dynamic", chunk=4, grid=3 * sms, stages=2)
        for frac in (8, 4):
            for chunk in (1, 2):
                tail = max(1, per_split // frac)
                out[f"read {tag} hybrid x{splits} tail{tail} c{chunk} S3"] = read_call(
                    lib, case, s, "hybrid", splits=splits, chunk=chunk, tail=tail, stages=3)
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--cases", default="decode_g3,decode_long")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--calls", type=int, default=100)
    ap.add_argument("--build-dir", default="/tmp")
    ap.add_argument("--set", choices=("schedules", "habits", "pieces"), default="schedules")
    ap.add_argument("--no-ours", action="store_true", help="without the DLPack module (read kernels and cuDNN only)")
    args = ap.parse_args()
    lib = build(args.build_dir)
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    gen = torch.Generator(device="cuda").manual_seed(0)
    ops = None
    if not args.no_ours:
        from paddle_gqa import dlpack_ops as ops
    for case in bench_cases.select_cases(args.cases.split(",")):
        assert len(case.groups) == 1 and case.kind == "decode" and not case.window, case.name
        g = case.groups[0]
        step_bytes = g.batch * g.kv_len * case.hkv * (case.d + case.dv) * 2
        sets = {"shuffled": bench_cases.build_set(case, case.groups, gen, "cuda"),
                "consecutive": bench_cases.build_set(case, case.groups, gen, "cuda", shuffle_blocks=False)}
        fns = {"cuDNN (contiguous)": cudnn_call(sets["shuffled"])}
        if ops is not None:
            fns["ours shuf"] = planned_paged_call(ops, case, sets["shuffled"])[1]
            fns["ours cons"] = planned_paged_call(ops, case, sets["consecutive"])[1]
        fns.update(variants(lib, case, sets, sms, args.set))
        times = collections.defaultdict(list)
        for _ in range(args.rounds):
            for name, fn in fns.items():
                for flush in (False, True):
                    times[(name, flush)].append(time_calls(fn, args.calls, flush))
        ref = statistics.median(times[("cuDNN (contiguous)", True)])
        print(f"=== {case.name}: {case.title}; {step_bytes / 1e6:.0f} MB of K / V per step; "
              f"µs per call (median of {args.rounds} rounds x {args.calls} calls)", flush=True)
        print(f"    {'variant':40s} {'b2b':>8s} {'flush':>8s} {'TB/s flush':>10s} {'cuDNN/x flush':>13s}")
        for name in fns:
            b2b = statistics.median(times[(name, False)])
            fl = statistics.median(times[(name, True)])
            print(f"    {name:40s} {b2b:8.1f} {fl:8.1f} {step_bytes / fl / 1e6:10.3f} {ref / fl:13.3f}", flush=True)
        if ops is not None:
            ops.check_errors(torch.cuda.current_device())
        del sets, fns
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
