#!/usr/bin/env python3
"""Where a decode step's time goes after an L2 flush: ours (shuffled and consecutive block ids) vs
SDPA-cuDNN, on the bench's decode shapes, in one process.

bench.py times every call after a 256 MB memset (triton's do_bench); our decode steps lose more to
it than cuDNN's (BENCHMARKS.md, session 5: about 13 µs against 7). This probe answers where:
- `time`: median µs per call by CUDA events, back to back and after the memset, in alternating
  rounds (`profile_steps.time_calls`), for each variant;
- `timeline`: torch.profiler records of calls that each follow the memset: every kernel's start and
  end relative to the memset's end (medians), so a late start, a longer kernel and the hops after it
  are told apart.

Usage (after python3 scripts/build_cuda.py): python3 scripts/decode_flush_probe.py
    [--cases decode_g3,decode_long] [--rounds 3] [--calls 100]
Environment knobs (PADDLE_GQA_*) apply to ours as in the op.
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import statistics
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch.nn.attention import SDPBackend, sdpa_kernel  # noqa: E402

import bench_cases  # noqa: E402
from profile_steps import _short_name, planned_paged_call, time_calls  # noqa: E402

FLUSH_BYTES = 256 * 2**20
# The PGQA_CTA_TIMES buffer's layout (attention_params.h): 4 words per CTA record, and in a
# -D PGQA_TILE_TIMES build the tile landing times after the first CTA_WORDS words, TILES_PER_CTA per CTA.
CTA_WORDS, TILES_PER_CTA = 8192, 512


def with_env(fn, env):
    """fn run with the PADDLE_GQA_* knobs in `env` set (the launchers read them per call)."""
    if not env:
        return fn

    def call():
        saved = {k: os.environ.get(k) for k in env}
        os.environ.update(env)
        try:
            fn()
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
    return call


def parse_knobs(spec):
    """'label:K=V,K=V;label2:K=V' -> {label: {K: V}}."""
    out = {}
    for part in filter(None, spec.split(";")):
        label, _, kvs = part.partition(":")
        out[label] = dict(kv.split("=", 1) for kv in filter(None, kvs.split(",")))
    return out


def cta_times(fn, flush, calls=5, dump=None, tile_dump=None):
    """Per-CTA {start, end, smid, items} of the decode launch of one call (a -D PGQA_CTA_TIMES build),
    the median call by span of `calls`; None in other builds. `dump`: a path where every call's
    records go as JSON, one list per call of [linear CTA id, start, end, smid, items]."""
    buf = torch.zeros(4 * 65536, dtype=torch.int64, device="cuda")
    cache = torch.empty(FLUSH_BYTES // 4 if flush else 1, dtype=torch.int32, device="cuda")
    os.environ["PADDLE_GQA_CTA_TIMES"] = str(buf.data_ptr())
    runs, raw, tiles = [], [], []
    try:
        for _ in range(calls):
            buf.zero_()
            cache.zero_()
            fn()
            torch.cuda.synchronize()
            if tile_dump:  # a -D PGQA_TILE_TIMES build: when each CTA's KV tiles landed
                t = buf[CTA_WORDS:].view(-1, TILES_PER_CTA)
                idx = torch.nonzero(t).cpu()
                vals = t[t != 0].cpu()
                tiles.append(torch.cat([idx, vals[:, None]], dim=1))
            r = (buf[:CTA_WORDS] if tile_dump else buf).view(-1, 4).cpu()
            ids = torch.nonzero(r[:, 1] != 0).flatten()
            r = r[ids]
            if len(r):
                runs.append(r)
                raw.append(torch.cat([ids[:, None], r], dim=1).tolist())
    finally:
        os.environ.pop("PADDLE_GQA_CTA_TIMES", None)
    if dump and raw:
        with open(dump, "w") as f:
            json.dump(raw, f)
    if tile_dump and tiles:
        np.savez_compressed(tile_dump, *[t.numpy() for t in tiles])
    if not runs:
        return None
    runs.sort(key=lambda r: int(r[:, 1].max() - r[:, 0].min()))
    return runs[len(runs) // 2]


def describe_cta_times(r):
    t0 = int(r[:, 0].min())
    start = (r[:, 0] - t0).double() / 1e3
    end = (r[:, 1] - t0).double() / 1e3
    span = float(end.max())
    q = torch.tensor([0.0, 0.1, 0.5, 0.9, 0.99, 1.0], dtype=torch.float64)
    fmt = lambda x: " ".join(f"{v:6.1f}" for v in torch.quantile(x, q).tolist())  # noqa: E731
    ramp = r[:, 3] > t0  # a -D PGQA_CTA_RAMP build: slot 3 holds when the first K / V tile landed
    items = len(r) if ramp.any() else int(r[:, 3].sum())
    lines = [f"{len(r)} CTAs, span {span:.1f} us, items {items}; quantiles 0/10/50/90/99/100%:",
             f"      start {fmt(start)}", f"      end   {fmt(end)}", f"      lasted {fmt(end - start)}"]
    if ramp.any():
        first = (r[ramp, 3] - t0).double() / 1e3
        lines.append(f"      first K/V tile landed {fmt(first)}; after the CTA's start {fmt(first - start[ramp])}")
    issued = r[:, 2] > t0  # -D PGQA_CTA_ISSUE: slot 2 holds when the first copies were issued
    if issued.any():
        first = (r[issued, 2] - t0).double() / 1e3
        lines.append(f"      first copies issued {fmt(first)}; after the CTA's start {fmt(first - start[issued])}")
    # CTAs still running at each tenth of the span, and over the last 10 us.
    marks = [span * i / 10 for i in range(10)] + [span - d for d in (8, 6, 4, 2, 1)]
    active = [int(((start <= m) & (end > m)).sum()) for m in marks]
    lines.append("      running at 0..90% of span: " + " ".join(str(a) for a in active[:10]) +
                 f"; at span-8/6/4/2/1 us: " + " ".join(str(a) for a in active[10:]))
    return lines


def cudnn_call(s):
    q, k, v = s.q[0], s.k[0], s.v[0]

    def call():
        with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
            return F.scaled_dot_product_attention(q, k, v, enable_gqa=True)
    return call


def timeline(fn, iters, flush):
    """Median (start, end) µs of each kernel relative to the end of the memset before it (without
    `flush`, a 4-byte memset marks each call)."""
    cache = torch.empty(FLUSH_BYTES // 4 if flush else 1, dtype=torch.int32, device="cuda")
    for _ in range(3):
        cache.zero_()
        fn()
    torch.cuda.synchronize()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        for _ in range(iters):
            cache.zero_()
            fn()
        torch.cuda.synchronize()
    ev = sorted((e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA),
                key=lambda e: e.time_range.start)
    # The memsets are torch's fill kernels (zero_); each call's records follow its memset.
    flush_idx = [i for i, e in enumerate(ev) if "fill" in e.name.lower()]
    rel = collections.defaultdict(list)
    spans = []
    for j, i in enumerate(flush_idx):
        t0 = ev[i].time_range.end
        stop = flush_idx[j + 1] if j + 1 < len(flush_idx) else len(ev)
        last = t0
        for e in ev[i + 1:stop]:
            rel[_short_name(e.name)[:90]].append((e.time_range.start - t0, e.time_range.end - t0))
            last = max(last, e.time_range.end)
        spans.append(last - t0)
    rows = []
    for name, se in rel.items():
        rows.append((statistics.median(a for a, _ in se), statistics.median(b for _, b in se), len(se), name))
    rows.sort()
    return rows, statistics.median(spans) if spans else 0.0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--cases", default="decode_g3,decode_long")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--calls", type=int, default=100)
    ap.add_argument("--timeline-only", action="store_true", help="ours (shuffled) and cuDNN timelines only")
    ap.add_argument("--knobs", default="", help="more variants of ours (shuffled), 'label:K=V,K=V;label2:K=V'; "
                    "replaces the consecutive-block variant")
    ap.add_argument("--cta-times", action="store_true", help="per-CTA start / end of the decode launch "
                    "(a build with -D PGQA_CTA_TIMES)")
    ap.add_argument("--cta-dump", default="", help="with --cta-times: a folder for every call's raw CTA "
                    "records (JSON per case, variant and flush)")
    ap.add_argument("--no-timeline", action="store_true")
    ap.add_argument("--tile-dump", default="", help="with --cta-times on a -D PGQA_TILE_TIMES build: a folder for "
                    "every call's KV-tile landing times (npz of [cta, tile, ns] rows)")
    ap.add_argument("--no-consecutive", action="store_true", help="skip the consecutive-block variant")
    ap.add_argument("--lone", action="store_true", help="also a step of 32 lone CTAs (B 1, Hkv 1, 32k keys)")
    args = ap.parse_args()
    from paddle_gqa import dlpack_ops as ops
    gen = torch.Generator(device="cuda").manual_seed(0)
    cases = bench_cases.select_cases(args.cases.split(",")) if args.cases else []
    if args.lone:
        # One request, one kv head, 32k keys: the planner's 32 splits give 32 CTAs of 16 KV tiles,
        # each nearly alone on its SM, far from saturating DRAM: a CTA's own streaming rate.
        cases.append(bench_cases.Case("lone_cta", "decode B=1 ctx 32k, Hq 3/Hkv 1, D 128", "decode", 3, 1, 128, 128,
                                      (bench_cases._dec(1, 32768),)))
    for case in cases:
        shuffled = bench_cases.build_set(case, case.groups, gen, "cuda")
        consecutive = bench_cases.build_set(case, case.groups, gen, "cuda", shuffle_blocks=False)
        variants = {"ours shuffled": planned_paged_call(ops, case, shuffled)[1],
                    "ours consecutive": planned_paged_call(ops, case, consecutive)[1],
                    "cuDNN": cudnn_call(shuffled)}
        if case.window:  # SDPA would read every key (the bench hands it the window's slice)
            variants.pop("cuDNN")
        if args.timeline_only or args.knobs or args.no_consecutive:
            variants.pop("ours consecutive")
        for label, env in parse_knobs(args.knobs).items():
            variants[label] = with_env(variants["ours shuffled"], env)
        for name, fn in variants.items():
            if name == "cuDNN" or not args.cta_times:
                continue
            for flush in (False, True):
                dump = (os.path.join(args.cta_dump, f"cta_{case.name}_{name.replace(' ', '_')}_{int(flush)}.json")
                        if args.cta_dump else None)
                tdump = (os.path.join(args.tile_dump, f"tiles_{case.name}_{name.replace(' ', '_')}_{int(flush)}.npz")
                         if args.tile_dump else None)
                r = cta_times(fn, flush, dump=dump, tile_dump=tdump)
                if r is None:
                    print(f"--- {case.name} {name}: no CTA times (not a -D PGQA_CTA_TIMES build)")
                    break
                print(f"--- {case.name} {name}, CTAs of the decode launch{' after the flush' if flush else ''}: " +
                      "\n".join(describe_cta_times(r)), flush=True)
        times = collections.defaultdict(list)
        for _ in range(0 if args.timeline_only else args.rounds):
            for name, fn in variants.items():
                for flush in (False, True):
                    times[(name, flush)].append(time_calls(fn, args.calls, flush))
        for name in variants if not args.timeline_only else ():
            b2b = statistics.median(times[(name, False)])
            fl = statistics.median(times[(name, True)])
            print(f"=== {case.name} {name:17s} back to back {b2b:7.1f} us   after flush {fl:7.1f} us   "
                  f"(+{fl - b2b:.1f})", flush=True)
        for name, fn in variants.items() if not args.no_timeline else ():
            for flush in (False, True):
                rows, span = timeline(fn, 30, flush)
                print(f"--- {case.name} {name}: timeline after the {'256 MB' if flush else '4-byte'} memset "
                      f"(median µs; span {span:.1f})")
                for start, end, n, kname in rows:
                    print(f"    {start:8.1f} .. {end:8.1f}  ({end - start:7.1f})  x{n}  {kname}")
        ops.check_errors(torch.cuda.current_device())
        del shuffled, consecutive, variants
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
