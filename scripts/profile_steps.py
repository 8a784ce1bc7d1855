"""Per-kernel GPU time of one paged_attention / append_attention call, by torch.profiler (CUPTI).

Answers "where does a step's GPU time go" (the step check, the planner, each attention launch, the
merge, the gaps between them) for the benchmark cases, without Paddle (DLPack module, torch as
tensor holder). Usage, after `python3 scripts/build_cuda.py`:

    python3 scripts/profile_steps.py [--cases small_decode,decode_g3] [--calls 20] [--out DIR]
                                     [--time] [--no-profile] [--tag NAME]

Prints, per case and op (and for paged_attention captured in a CUDA graph and replayed): each
kernel's mean duration (µs) and launches per call, and the median span of one call on the GPU
(first kernel start to last kernel end) against the kernels' busy time (the rest is gaps).
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch  # noqa: E402

import bench_cases  # noqa: E402


def _kernel_events(fn, calls):
    """GPU activity records (kernels, memsets, copies) of `calls` calls of fn(), sorted by start."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        for _ in range(calls):
            fn()
            torch.cuda.synchronize()
    events = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    events.sort(key=lambda e: e.time_range.start)
    return events


def _split_by_gap(events, gap_us=20.0):
    groups, cur, last_end = [], [], None
    for e in events:
        if last_end is not None and e.time_range.start - last_end > gap_us:
            groups.append(cur)
            cur = []
        cur.append(e)
        last_end = e.time_range.end if last_end is None else max(last_end, e.time_range.end)
    if cur:
        groups.append(cur)
    return groups


def _short_name(name):
    """A kernel's name without namespaces and parameter list, template arguments kept (they tell the
    decode and prefill configs of the attention kernel apart)."""
    for ns in ("paddle_gqa::cuda::attn::", "paddle_gqa::cuda::", "(anonymous namespace)::", "void "):
        name = name.replace(ns, "")
    depth = 0
    for i, ch in enumerate(name):
        depth += ch == "<"
        depth -= ch == ">"
        if ch == "(" and depth == 0:
            return name[:i]
    return name


def profile_calls(fn, calls):
    """Kernel events of `calls` calls of fn() (after a warm-up), grouped per call.

    A call's records are counted on one profiled call first; when the long run holds exactly
    calls x that many, it is cut into equal groups (robust to small host gaps inside a call),
    else calls are told apart by idle gaps above 20 us (each call ends with a host sync)."""
    for _ in range(5):
        fn()
    torch.cuda.synchronize()
    per_call = len(_kernel_events(fn, 1))
    events = _kernel_events(fn, calls)
    if per_call > 0 and len(events) == calls * per_call:
        groups = [events[i * per_call:(i + 1) * per_call] for i in range(calls)]
    else:
        groups = _split_by_gap(events)
    spans = []
    per_kernel = collections.defaultdict(list)
    for g in groups:
        span = max(e.time_range.end for e in g) - g[0].time_range.start
        busy = sum(e.time_range.end - e.time_range.start for e in g)
        spans.append((span, busy))
        for e in g:
            per_kernel[_short_name(e.name)[:120]].append(e.time_range.end - e.time_range.start)
    n = max(1, len(groups))
    rows = sorted(((k, sum(v) / len(v), len(v) / n) for k, v in per_kernel.items()), key=lambda r: -r[1])
    span = sorted(s for s, _ in spans)[len(spans) // 2] if spans else 0.0
    busy = sorted(b for _, b in spans)[len(spans) // 2] if spans else 0.0
    return {"kernels": rows, "median_span_us": span, "median_busy_us": busy, "calls_seen": len(groups),
            "records_per_call": per_call}


def time_calls(fn, calls, flush):
    """Median µs of one call of fn() issued back to back (no sync between calls), by CUDA events
    around each call; with `flush`, a 256 MB memset before each call evicts L2 (as bench.py's
    triton do_bench does)."""
    cache = torch.empty(64 * 2**20, dtype=torch.int32, device="cuda") if flush else None
    for _ in range(5):
        fn()
    torch.cuda.synchronize()
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(calls)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(calls)]
    for i in range(calls):
        if flush:
            cache.zero_()
        starts[i].record()
        fn()
        ends[i].record()
    torch.cuda.synchronize()
    times = sorted(a.elapsed_time(b) * 1000.0 for a, b in zip(starts, ends))
    return times[len(times) // 2]


def planned_paged_call(ops, case, s):
    """The step's plan (made once, as a model makes it once for all its layers) and a closure that
    calls paged_attention on input set `s` with it. The stream is looked up per call, so that the
    closure also runs under graph capture."""
    plan = torch.empty(ops.PLAN_WORDS, dtype=torch.int32, device="cuda")
    ops.plan(plan, s.qkv, s.key_cache, s.value_cache, s.block_tables, s.cu_seqlens_q, s.cache_seqlens,
             None, None, rotary_dim=0, sliding_window=case.window, causal=True,
             stream=torch.cuda.current_stream().cuda_stream)

    def paged():
        ops.paged_attention(s.out, s.q_rows, s.key_cache, s.value_cache, s.block_tables, s.cu_seqlens_q,
                            s.cache_seqlens, s.sinks, sliding_window=case.window, causal=True,
                            stream=torch.cuda.current_stream().cuda_stream, plan=plan)
    return plan, paged


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--cases", default="small_decode,decode_g3,decode_swa,decode_192_128,mixed,prefill_g3")
    ap.add_argument("--calls", type=int, default=20)
    ap.add_argument("--out", default=os.environ.get("OUT", "."))
    ap.add_argument("--time", action="store_true", help="also time back-to-back calls (eager and graph replays)")
    ap.add_argument("--no-profile", action="store_true", help="skip the per-kernel profile")
    ap.add_argument("--tag", default="", help="a label for the printed lines and the json file name")
    args = ap.parse_args()
    from paddle_gqa import dlpack_ops as ops
    gen = torch.Generator(device="cuda").manual_seed(0)
    report = {}
    for case in bench_cases.select_cases(args.cases.split(",")):
        s = bench_cases.build_set(case, case.groups, gen, "cuda")
        plan, paged = planned_paged_call(ops, case, s)

        def append():
            ops.append_attention(s.out, s.qkv, s.key_cache, s.value_cache, s.block_tables, s.cu_seqlens_q,
                                 s.cache_seqlens, None, None, s.sinks, rotary_dim=0, neox_style=True,
                                 sliding_window=case.window, causal=True,
                                 stream=torch.cuda.current_stream().cuda_stream, plan=plan)

        paged()
        torch.cuda.synchronize()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            paged()
        if args.time:
            t = {f"{mode}{' flush' if flush else ''}": time_calls(fn, 100, flush)
                 for mode, fn in (("eager", paged), ("graph", graph.replay)) for flush in (False, True)}
            report[f"{case.name}/paged_attention times"] = t
            print(f"=== TIME{(' ' + args.tag) if args.tag else ''} {case.name} paged_attention (us per call, median "
                  f"of 100 back to back): " + ", ".join(f"{k} {v:.1f}" for k, v in t.items()), flush=True)
        for op_name, fn in (("paged_attention", paged), ("append_attention", append),
                            ("paged_attention graph replay", graph.replay)):
            if args.no_profile:
                break
            r = profile_calls(fn, args.calls)
            report[f"{case.name}/{op_name}"] = r
            print(f"--- {case.name} {op_name}: GPU span {r['median_span_us']:.1f} us, kernels busy "
                  f"{r['median_busy_us']:.1f} us, {r['records_per_call']} GPU records per call "
                  f"({r['calls_seen']} calls)")
            for name, us, per_call in r["kernels"]:
                print(f"    {us:9.1f} us  x{per_call:.0f}  {name}")
        ops.check_errors(torch.cuda.current_device())
        del s, graph
        torch.cuda.empty_cache()
    with open(os.path.join(args.out, f"profile_steps{('_' + args.tag) if args.tag else ''}.json"), "w") as f:
        json.dump(report, f, indent=1)


if __name__ == "__main__":
    main()
