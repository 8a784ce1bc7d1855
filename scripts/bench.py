"""Benchmark of paddle_gqa's CUDA ops against measured ceilings and torch peers (SDPA, flex) on one GPU.

Runs without Paddle: ours through the DLPack module (paddle_gqa.dlpack_ops, torch as tensor holder).
Usage (after `python3 scripts/build_cuda.py`):
    python3 scripts/bench.py [--out DIR] [--cases decode,prefill_g3] [--quick] [--peers-only]
Writes DIR/bench.json, DIR/bench.md (the table, also printed) and DIR/bench.png.
Times are medians of triton.testing.do_bench (CUDA events; it also flushes L2 before every call),
rotating over several input sets so that the step's bytes exceed L2 several times over.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import time
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))

import torch  # noqa: E402

import bench_cases as bc  # noqa: E402

PEER_NAMES = ("SDPA-flash", "SDPA-cuDNN", "flex")

# Where inputs live. Nothing in the repository sets another value; "cpu" is kept for a dry run of the
# harness with stand-in ops on a machine without a GPU.
DEVICE = "cuda"


def _sync():
    if DEVICE == "cuda":
        torch.cuda.synchronize()


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=os.environ.get("OUT") or ".", help="output folder (default $OUT or .)")
    ap.add_argument("--cases", default="", help="comma-separated substrings of case names")
    ap.add_argument("--quick", action="store_true", help="shorter timing (fewer reps)")
    ap.add_argument("--peers-only", action="store_true", help="ceilings and peers only, not ours")
    ap.add_argument("--compile-timeout", type=int, default=150, help="seconds allowed for one flex compile")
    ap.add_argument("--deadline", type=float, default=0.0,
                    help="seconds after start past which no new case starts (0 = none); such cases are listed as not run")
    ap.add_argument("--case-timeout", type=int, default=240, help="seconds one case's child process may take")
    ap.add_argument("--in-process", action="store_true", help="run cases in this process (no isolation)")
    ap.add_argument("--one", default="", help=argparse.SUPPRESS)       # child mode: one case or 'ceilings'
    ap.add_argument("--one-json", default="", help=argparse.SUPPRESS)  # where the child writes its result
    return ap.parse_args()


class Timer:
    """Median ms of fn over rotating input sets, through triton's do_bench (CUDA events)."""

    def __init__(self, quick: bool):
        from triton.testing import do_bench
        self.do_bench = do_bench
        self.warmup, self.rep = (10, 40) if quick else (25, 200)

    def __call__(self, fn, sets) -> float:
        i = [0]

        def step():
            fn(sets[i[0] % len(sets)])
            i[0] += 1
        return float(self.do_bench(step, warmup=self.warmup, rep=self.rep, return_mode="median"))


def environment():
    props = torch.cuda.get_device_properties(0)
    env = {
        "gpu": torch.cuda.get_device_name(0),
        "sms": props.multi_processor_count,
        "l2_bytes": getattr(props, "L2_cache_size", 50 * 2**20),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version(),
        "python": platform.python_version(),
        "date_utc": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
    try:
        import triton
        env["triton"] = triton.__version__
    except ImportError:
        pass
    try:
        env["driver"] = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                       capture_output=True, text=True, timeout=20).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        env["driver"] = "?"
    return env


def ceilings(timer: Timer):
    """Device-to-device copy (TB/s, read + write counted) and an 8192^3 bf16 matmul (TFLOP/s)."""
    n = 2**30 // 2  # 1 GiB of bf16
    src = torch.randn(n, device="cuda", dtype=torch.bfloat16)
    dst = torch.empty_like(src)
    ms = timer(lambda s: dst.copy_(src), [None])
    copy = 2 * src.numel() * 2 / (ms * 1e-3) / 1e12
    del src, dst
    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    ms_mm = timer(lambda s: torch.mm(a, b), [None])
    mm = 2 * 8192**3 / (ms_mm * 1e-3) / 1e12
    del a, b
    torch.cuda.empty_cache()
    return {"copy_tbps": copy, "copy_ms": ms, "matmul_tflops": mm, "matmul_ms": ms_mm}


# ---- ours -----------------------------------------------------------------------------------

def _stream():
    return torch.cuda.current_stream().cuda_stream if DEVICE == "cuda" else None


def make_plans(ops, case, sets, rope=None):
    """{id(set): the set's step plan} (ops.plan, with its one read-back), made once before timing: a
    plan is per step and spec group, not per layer, so a timed call given it costs what each layer of
    a step pays. Made from qkv, whose rows equal q_rows', so it serves paged_attention too."""
    cos, sin = rope if rope is not None else (None, None)
    plans = {}
    for s in sets:
        plan_out = torch.empty(ops.PLAN_WORDS, dtype=torch.int32, device=DEVICE)
        plans[id(s)] = ops.plan(plan_out, s.qkv, s.key_cache, s.value_cache, s.block_tables, s.cu_seqlens_q,
                                s.cache_seqlens, cos, sin, rotary_dim=case.d if rope else 0,
                                sliding_window=case.window, causal=True, stream=_stream())
    return plans


def _raise_deferred(ops):
    """Calls given a plan defer invalid step data to check_errors: raise it where it is measured."""
    if DEVICE == "cuda":
        ops.check_errors(torch.cuda.current_device())


def ours_paged(ops, case, plans=None):
    """One paged_attention call; with `plans` (make_plans) the set's plan is given, so it does not sync."""
    def run(s):
        ops.paged_attention(s.out, s.q_rows, s.key_cache, s.value_cache, s.block_tables, s.cu_seqlens_q,
                            s.cache_seqlens, s.sinks, sliding_window=case.window, causal=True, stream=_stream(),
                            plan=plans[id(s)] if plans else None)
    return run


def ours_append(ops, case, rope=None, plans=None):
    def run(s):
        cos, sin = rope if rope is not None else (None, None)
        ops.append_attention(s.out, s.qkv, s.key_cache, s.value_cache, s.block_tables, s.cu_seqlens_q,
                             s.cache_seqlens, cos, sin, s.sinks, rotary_dim=case.d if rope else 0,
                             neox_style=True, sliding_window=case.window, causal=True, stream=_stream(),
                             plan=plans[id(s)] if plans else None)
    return run


def rope_tables(case, groups):
    max_pos = max(g.kv_len for g in groups)
    half = case.d // 2
    inv = 1.0 / (10000.0 ** (torch.arange(half, dtype=torch.float64) / half))
    ang = torch.arange(max_pos, dtype=torch.float64)[:, None] * inv[None, :]
    return ang.cos().float().to(DEVICE).contiguous(), ang.sin().float().to(DEVICE).contiguous()


def check_and_time_ours(ops, case, groups, sets, picks, timer, full_reference: bool):
    """paged_attention given the step's plan, checked (poisoned output, fp32 sample, optional full
    float64 reference), then timed; also timed without a plan (each call then reads its check back)."""
    res = {}
    s = sets[0]
    try:
        plans = make_plans(ops, case, sets)
        run = ours_paged(ops, case, plans)
        s.out.fill_(float("nan"))
        run(s)
        _sync()
        _raise_deferred(ops)
        unwritten = int((~torch.isfinite(s.out)).sum())
        err = bc.check_ours(case, groups, s, picks)
        res["paged_rel_err"] = err
        if full_reference:
            res["paged_ref_rel_err"] = bc.check_with_reference(case, groups, s)
        res["paged_unwritten"] = unwritten
        res["correct"] = unwritten == 0 and err <= bc.REL_ERR_LIMIT and res.get("paged_ref_rel_err", 0) <= bc.REL_ERR_LIMIT
        res["paged_ms"] = timer(run, sets)
        _raise_deferred(ops)
        res["paged_noplan_ms"] = timer(ours_paged(ops, case), sets)
    except Exception as e:
        res["paged_error"] = f"{type(e).__name__}: {str(e).strip()[:500]}"
        res["correct"] = False
        return res

    # append_attention: writes the step's K/V (same values already there), then attends.
    run_a = ours_append(ops, case, plans=plans)
    try:
        small = s.key_cache.numel() * s.key_cache.element_size() < 2**31
        before = (s.key_cache.clone(), s.value_cache.clone()) if small else None
        s.out.fill_(float("nan"))
        run_a(s)
        _sync()
        _raise_deferred(ops)
        res["append_rel_err"] = bc.check_ours(case, groups, s, picks)
        res["append_unwritten"] = int((~torch.isfinite(s.out)).sum())
        if before is not None:
            res["append_cache_unchanged"] = bool(torch.equal(before[0], s.key_cache) and torch.equal(before[1], s.value_cache))
            del before
        res["append_correct"] = (res["append_unwritten"] == 0 and res["append_rel_err"] <= bc.REL_ERR_LIMIT
                                 and res.get("append_cache_unchanged", True))
        res["append_ms"] = timer(run_a, sets)
        res["append_noplan_ms"] = timer(ours_append(ops, case), sets)
        # With RoPE tables (rotary_dim = D): the full fused step. Timed only; it rewrites the step's keys
        # rotated, so it comes after every check of this case.
        rope = rope_tables(case, groups)
        run_r = ours_append(ops, case, rope, make_plans(ops, case, sets, rope))
        res["append_rope_ms"] = timer(run_r, sets)
        _raise_deferred(ops)
    except Exception as e:
        res["append_error"] = f"{type(e).__name__}: {str(e).strip()[:500]}"
    return res


def graph_ms(run, sets, timer):
    """Median ms of `run` replayed from CUDA graphs (one per input set, up to 4): the GPU time of a call
    without its host-side work (under capture the op also skips its per-call error read-back)."""
    graphs = []
    for s in sets[:4]:
        run(s)  # warm-up outside capture
        torch.cuda.synchronize()
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g):
            run(s)
        graphs.append(g)
    torch.cuda.synchronize()
    return timer(lambda g: g.replay(), graphs)


# ---- one case -------------------------------------------------------------------------------

def n_sets_for(case, groups, l2_bytes, alloc_bytes):
    """Enough sets that the step's bytes exceed 4x L2, within 12 GiB of inputs and 64 sets."""
    step_bytes = bc.kv_bytes_read(case, groups) + sum(g.batch * g.n_new for g in groups) * case.hq * case.d * 2
    want = max(1, math.ceil(4 * l2_bytes / max(step_bytes, 1)))
    fit = max(1, (12 * 2**30) // max(alloc_bytes, 1))
    return int(min(want, fit, 64))


def run_case(case, args, env, timer, ops, gen):
    groups = case.groups
    peers_only = ops is None
    first = bc.build_set(case, groups, gen, DEVICE, with_ours=not peers_only)
    n = n_sets_for(case, groups, env["l2_bytes"], first.nbytes())
    sets = [first] + [bc.build_set(case, groups, gen, DEVICE, with_ours=not peers_only) for _ in range(n - 1)]
    picks = bc.sample_rows(case, groups)
    r = {"name": case.name, "title": case.title, "kind": case.kind, "target": case.target, "sets": n,
         "kv_bytes": bc.kv_bytes_read(case), "flops": bc.flops(case), "peers": {}, "companions": {}}

    if not peers_only:
        full_ref = case.kind == "latency"
        r["ours"] = check_and_time_ours(ops, case, groups, sets, picks, timer, full_ref)
        for cname, cgroups in case.companions:
            cset = bc.build_set(case, cgroups, gen, DEVICE)
            cn = n_sets_for(case, cgroups, env["l2_bytes"], cset.nbytes())
            csets = [cset] + [bc.build_set(case, cgroups, gen, DEVICE) for _ in range(cn - 1)]
            cres = check_and_time_ours(ops, case, cgroups, csets, bc.sample_rows(case, cgroups), timer, False)
            r["companions"][cname] = {k: v for k, v in cres.items() if k.startswith(("paged", "correct"))}
            del csets, cset

    import bench_peers
    for peer in bench_peers.PEERS:
        p = {}
        try:
            run, outs, notes, with_sinks = bench_peers.try_first_call(peer, case, groups, sets[0], args.compile_timeout)
            p["notes"] = notes
            p["rel_err"] = bc.check_peer(case, groups, sets[0], outs, picks, with_sinks)
            del outs
            with peer.context():
                p["ms"] = timer(run, sets)
            del run
            torch.cuda.empty_cache()
        except Exception as e:
            p["error"] = str(e) if isinstance(e, RuntimeError) and e.__cause__ else f"{type(e).__name__}: {e}"[:600]
        r["peers"][peer.name] = p
    if not peers_only and r["ours"].get("paged_ms") and DEVICE == "cuda":
        # Last in the case (its own process), with the figures so far saved first: a failed or hung
        # capture cannot cost the other figures.
        if getattr(args, "one_json", ""):
            with open(args.one_json, "w") as f:
                json.dump(dict(r, seconds=0.0), f, default=str)
        try:
            r["ours"]["paged_graph_ms"] = graph_ms(ours_paged(ops, case), sets, timer)
        except Exception as e:
            r["ours"]["paged_graph_error"] = f"{type(e).__name__}: {str(e).strip()[:300]}"
    del sets, first
    return r


# ---- metrics and targets --------------------------------------------------------------------

def value_of(r, ms):
    """The case's figure of merit for a time: TB/s (decode), TFLOP/s (prefill, mixed), us (latency)."""
    if ms is None:
        return None
    if r["kind"] == "decode":
        return r["kv_bytes"] / (ms * 1e-3) / 1e12
    if r["kind"] in ("prefill", "mixed"):
        return r["flops"] / (ms * 1e-3) / 1e12
    return ms * 1e3


def unit_of(r):
    return {"decode": "TB/s", "prefill": "TFLOP/s", "mixed": "TFLOP/s", "latency": "us"}[r["kind"]]


def our_ms(r):
    o = r.get("ours") or {}
    return o.get("paged_ms")


def peer_ms(r, name):
    return r["peers"].get(name, {}).get("ms")


def speedup(r, name):
    """peer time / our time (> 1: ours is faster)."""
    a, b = our_ms(r), peer_ms(r, name)
    return b / a if a and b else None


def evaluate(r, ceil):
    """(met: True/False/None, detail) for the case's target; None when it cannot be judged."""
    o = r.get("ours")
    if o is None:
        return None, "n/a (peers only)"
    if our_ms(r) is None:
        return False, "ours failed: " + o.get("paged_error", "?")
    if not o.get("correct"):
        return False, "ours is incorrect"
    name = r["name"]
    accepted = {k: v["ms"] for k, v in r["peers"].items() if v.get("ms")}
    best = min(accepted.values()) / our_ms(r) if accepted else None

    def need(peer, factor):
        s = speedup(r, peer)
        if s is None:
            return None, f"{peer} has no time"
        return s >= factor, f"{s:.2f}x {peer} (need {factor}x)"

    parts = []
    if name in ("decode_g3", "decode_long"):
        frac = value_of(r, our_ms(r)) / ceil["copy_tbps"]
        parts.append((frac >= 0.9, f"{100 * frac:.0f}% of copy (need 90%)"))
        parts.append((None, "no peer accepts") if best is None else (best >= 1.0, f"{best:.2f}x best peer"))
    elif name == "decode_192_128":
        parts.append((None, "no peer accepts") if best is None else (best >= 1.0, f"{best:.2f}x best accepting peer"))
    elif name == "decode_swa":
        c = r["companions"].get("ctx256", {}).get("paged_ms")
        if c:
            ratio = our_ms(r) / c
            parts.append((ratio <= 1.2, f"{ratio:.2f}x the ctx-256 step (need <= 1.2)"))
        else:
            parts.append((None, "ctx-256 step has no time"))
        parts.append(need("flex", 2.0))
    elif name == "prefill_g3":
        parts += [need("SDPA-flash", 1.1), need("flex", 1.0)]
    elif name == "prefill_192_128":
        parts.append(need("flex", 1.2))
    elif name == "prefill_swa1024":
        parts.append(need("flex", 1.0))
    elif name == "prefill_swa128":
        parts.append(need("flex", 1.5))
    elif name == "mixed":
        a = r["companions"].get("chunk", {}).get("paged_ms")
        b = r["companions"].get("decodes", {}).get("paged_ms")
        if a and b:
            ratio = our_ms(r) / (a + b)
            parts.append((ratio <= 0.9, f"{ratio:.2f}x the two separate calls (need <= 0.9)"))
        else:
            parts.append((None, "separate calls have no time"))
    elif name == "small_decode":
        f = peer_ms(r, "SDPA-flash")
        if f:
            ratio = our_ms(r) / f
            parts.append((ratio <= 1.2, f"{ratio:.2f}x SDPA-flash latency (need <= 1.2)"))
        else:
            parts.append((None, "SDPA-flash has no time"))
    oks = [p[0] for p in parts]
    met = False if False in oks else (None if None in oks else True)
    return met, "; ".join(p[1] for p in parts)


# ---- report ---------------------------------------------------------------------------------

def _fmt(x, nd=2):
    if x is None:
        return "-"
    return f"{x:.{nd}f}" if abs(x) < 1000 else f"{x:.0f}"


def markdown(results, ceil, env, args):
    lines = [f"GPU: {env['gpu']} ({env['sms']} SMs, L2 {env['l2_bytes'] / 2**20:.0f} MiB), driver {env.get('driver')}, "
             f"torch {env['torch']} (CUDA {env['cuda']}, cuDNN {env['cudnn']}), triton {env.get('triton', '?')}, "
             f"{env['date_utc']}{', quick' if args.quick else ''}{', peers only' if args.peers_only else ''}",
             "",
             f"Ceilings: device copy {ceil['copy_tbps']:.2f} TB/s (read + write), "
             f"bf16 8192^3 matmul {ceil['matmul_tflops']:.0f} TFLOP/s.",
             "",
             "Figures: decode TB/s = K+V bytes the step must read / time; prefill and mixed TFLOP/s = "
             "2*Hq*visible_pairs*(D+Dv) / time; latency in us. Ours = `paged_attention` on a cache that "
             "already holds the step's tokens (block size 64, shuffled block ids), one call per timing, given "
             "the step's plan (made once per step before timing, as a model makes it once for all its layers: "
             "the call does not synchronize); `no plan` = the same call without it (each call reads its "
             "step check back); `(graph X)` = the call replayed from a CUDA graph (GPU time without host "
             "work, not used for targets); `(Nx)` = peer time / our time (with the plan).",
             "",
             "| case | unit | ours | no plan | % ceiling | SDPA-flash | SDPA-cuDNN | flex | target | met |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    notes = []
    for r in results:
        if "skipped" in r:
            lines.append(f"| {r['name']} | | not run: {r['skipped']} | | | | | | {r.get('target', '')} | |")
            continue
        if "error" in r:
            lines.append(f"| {r['name']} | | case failed: {r['error'][:120]} | | | | | | {r.get('target', '')} | missed |")
            continue
        u = unit_of(r)
        ms = our_ms(r)
        ours = "-" if r.get("ours") is None else (_fmt(value_of(r, ms)) if ms else "error")
        if r.get("ours") and ms and not r["ours"].get("correct"):
            ours += " (WRONG)"
        if r.get("ours") and r["ours"].get("paged_graph_ms"):
            ours += f" (graph {_fmt(value_of(r, r['ours']['paged_graph_ms']))})"
        noplan_ms = (r.get("ours") or {}).get("paged_noplan_ms")
        noplan = _fmt(value_of(r, noplan_ms)) if noplan_ms else "-"
        pct = "-"
        if ms and r["kind"] == "decode":
            pct = f"{100 * value_of(r, ms) / ceil['copy_tbps']:.0f}%"
        elif ms and r["kind"] in ("prefill", "mixed"):
            pct = f"{100 * value_of(r, ms) / ceil['matmul_tflops']:.0f}%"
        cells = []
        for pn in PEER_NAMES:
            p = r["peers"].get(pn, {})
            if "error" in p:
                cells.append("refuses")
                notes.append(f"- {r['name']} / {pn} refuses: `{p['error']}`")
            elif p.get("ms"):
                s = speedup(r, pn)
                cell = _fmt(value_of(r, p["ms"]))
                if s:
                    cell += f" ({s:.2f}x)"
                if p.get("rel_err", 0) > bc.REL_ERR_LIMIT:
                    cell += " (differs)"
                cells.append(cell)
            else:
                cells.append("-")
            for n in p.get("notes", []):
                notes.append(f"- {r['name']} / {pn}: {n}")
        met, detail = r.get("met"), r.get("met_detail", "")
        mtxt = {True: "met", False: "missed", None: "n/a"}[met]
        lines.append(f"| {r['name']}: {r['title']} | {u} | {ours} | {noplan} | {pct} | " + " | ".join(cells)
                     + f" | {r['target']} | {mtxt}: {detail} |")
    lines.append("")
    lines.append("Per case (ms; errors are relative Frobenius errors vs fp32 attention on sampled rows):")
    lines.append("")
    for r in results:
        if "ours" in r or r.get("peers"):
            o = r.get("ours") or {}
            bits = [f"sets {r.get('sets')}"]
            if o:
                bits.append(f"paged {_fmt(o.get('paged_ms'), 4)} ms err {_fmt(o.get('paged_rel_err'), 5)} "
                            f"(without a plan {_fmt(o.get('paged_noplan_ms'), 4)} ms)")
                if "paged_graph_ms" in o:
                    bits.append(f"paged as CUDA-graph replay {_fmt(o['paged_graph_ms'], 4)} ms")
                if "paged_graph_error" in o:
                    bits.append(f"graph capture failed `{o['paged_graph_error']}`")
                if "paged_ref_rel_err" in o:
                    bits.append(f"float64 reference err {_fmt(o['paged_ref_rel_err'], 5)}")
                if o.get("paged_unwritten"):
                    bits.append(f"{o['paged_unwritten']} output elements not written")
                if "paged_error" in o:
                    bits.append(f"paged error `{o['paged_error']}`")
                if "append_ms" in o:
                    bits.append(f"append_attention {_fmt(o['append_ms'], 4)} ms{'' if o.get('append_correct') else ' (WRONG)'} "
                            f"(err {_fmt(o.get('append_rel_err'), 5)}, "
                                f"cache unchanged: {o.get('append_cache_unchanged', 'not checked')}), "
                                f"without a plan {_fmt(o.get('append_noplan_ms'), 4)} ms, "
                                f"with RoPE {_fmt(o.get('append_rope_ms'), 4)} ms")
                if "append_error" in o:
                    bits.append(f"append error `{o['append_error']}`")
            for cn, c in r.get("companions", {}).items():
                bits.append(f"{cn}: {_fmt(c.get('paged_ms'), 4)} ms" + ("" if c.get("correct") else " (WRONG or failed)"))
            for pn, p in r.get("peers", {}).items():
                if p.get("ms"):
                    bits.append(f"{pn} {_fmt(p['ms'], 4)} ms err {_fmt(p.get('rel_err'), 5)}")
            lines.append(f"- {r['name']}: " + "; ".join(bits))
    if notes:
        lines += ["", "Peer notes:", ""] + sorted(set(notes))
    return "\n".join(lines) + "\n"


def plot(results, ceil, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    rs = [r for r in results if "peers" in r]
    if not rs:
        return
    cols = 5
    rows = math.ceil(len(rs) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 3.4 * rows), squeeze=False)
    for ax in axes.flat[len(rs):]:
        ax.axis("off")
    for ax, r in zip(axes.flat, rs):
        names, vals, colors = [], [], []
        if r.get("ours") is not None:
            names.append("ours")
            vals.append(value_of(r, our_ms(r)) or 0.0)
            colors.append("tab:red")
        for pn in PEER_NAMES:
            names.append(pn)
            vals.append(value_of(r, peer_ms(r, pn)) or 0.0)
            colors.append("tab:gray" if pn != "flex" else "tab:blue")
        ax.bar(names, vals, color=colors)
        for i, (n, v) in enumerate(zip(names, vals)):
            if v == 0.0:
                ax.text(i, 0, "refuses" if "error" in r["peers"].get(n, {}) else "n/a",
                        ha="center", va="bottom", fontsize=7, rotation=90)
        if r["kind"] == "decode":
            ax.axhline(ceil["copy_tbps"], color="k", ls="--", lw=0.8)
        ax.set_title(r["name"], fontsize=9)
        ax.set_ylabel(unit_of(r) + (" (lower is better)" if r["kind"] == "latency" else ""), fontsize=8)
        ax.tick_params(axis="x", labelsize=7, rotation=30)
    fig.suptitle(f"paddle_gqa vs peers (bf16); dashed: copy ceiling {ceil['copy_tbps']:.2f} TB/s", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def setup_child(args):
    """Per-process setup: the op module (unless peers only) and dynamo's recompile limits."""
    # Every case shape compiles flex once; the default recompile limit (8) would drop later ones to eager.
    import importlib
    dynamo_config = importlib.import_module("torch._dynamo").config
    for key in ("cache_size_limit", "recompile_limit", "accumulated_cache_size_limit", "accumulated_recompile_limit"):
        if hasattr(dynamo_config, key):
            setattr(dynamo_config, key, 256)
    if args.peers_only:
        return None
    from paddle_gqa import dlpack_ops  # the built DLPack module; run scripts/build_cuda.py first
    return dlpack_ops


def run_one(name, args):
    """'ceilings' -> {env, ceilings}; a case name -> that case's result dict (errors caught and recorded)."""
    if name == "ceilings":
        return {"env": environment(), "ceilings": ceilings(Timer(args.quick))}
    case = next(c for c in bc.CASES if c.name == name)
    t = time.time()
    try:
        ops = setup_child(args)
        gen = torch.Generator(device=DEVICE).manual_seed(20261124)
        r = run_case(case, args, environment(), Timer(args.quick), ops, gen)
    except Exception as e:
        traceback.print_exc()
        r = {"name": case.name, "title": case.title, "target": case.target, "error": f"{type(e).__name__}: {e}"[:600]}
    r["seconds"] = time.time() - t
    return r


def run_isolated(name, args, tmp, timeout):
    """run_one in a child process, so a kernel fault or a hang in one case cannot take the others down."""
    path = os.path.join(tmp, f"{name}.json")
    cmd = [sys.executable, os.path.abspath(__file__), "--one", name, "--one-json", path,
           "--compile-timeout", str(args.compile_timeout)]
    cmd += ["--quick"] * args.quick + ["--peers-only"] * args.peers_only
    t = time.time()
    try:
        rc = subprocess.run(cmd, timeout=timeout).returncode
    except subprocess.TimeoutExpired:
        rc = f"killed after {timeout} s (--case-timeout)"
    if os.path.exists(path):
        with open(path) as f:
            return json.load(f)
    return {"error": f"child process for {name} ended without a result (exit {rc})", "seconds": time.time() - t}


def write_reports(results, ceil, env, args, t0, final):
    doc = {"env": env, "ceilings": ceil, "args": vars(args), "cases": results, "seconds": time.time() - t0,
           "complete": final}
    with open(os.path.join(args.out, "bench.json"), "w") as f:
        json.dump(doc, f, indent=1, default=str)
    md = markdown(results, ceil, env, args)
    with open(os.path.join(args.out, "bench.md"), "w") as f:
        f.write(md)
    return md


def main():
    args = parse_args()
    if args.one:
        res = run_one(args.one, args)
        with open(args.one_json, "w") as f:
            json.dump(res, f, default=str)
        return
    t0 = time.time()
    os.makedirs(args.out, exist_ok=True)
    cases = bc.select_cases([c for c in args.cases.split(",") if c] or None)
    import tempfile
    tmp = tempfile.mkdtemp(prefix="bench_")
    one = (lambda n, timeout: run_isolated(n, args, tmp, timeout)) if not args.in_process else \
        (lambda n, timeout: run_one(n, args))
    head = one("ceilings", 300)
    if "ceilings" not in head:
        raise SystemExit(f"ceilings failed: {head.get('error')}")
    env, ceil = head["env"], head["ceilings"]
    print(f"[bench] {env['gpu']}: copy {ceil['copy_tbps']:.2f} TB/s, matmul {ceil['matmul_tflops']:.0f} TFLOP/s", flush=True)
    results = []
    for case in cases:
        left = args.deadline - (time.time() - t0) if args.deadline else None
        if left is not None and left < 20:
            results.append({"name": case.name, "title": case.title, "target": case.target,
                            "skipped": f"--deadline {args.deadline:.0f} s reached"})
            continue
        timeout = int(min(args.case_timeout, left)) if left is not None else args.case_timeout
        r = one(case.name, timeout)
        r.setdefault("name", case.name)
        r.setdefault("title", case.title)
        r.setdefault("target", case.target)
        if "peers" in r:
            r["met"], r["met_detail"] = evaluate(r, ceil)
        results.append(r)
        summary = {k: (v.get("ms") if "ms" in v else v.get("error", "")[:60]) for k, v in r.get("peers", {}).items()}
        print(f"[bench] {case.name} ({r.get('seconds', 0):.0f} s): ours "
              f"{our_ms(r) if 'peers' in r else r.get('error')} ms; peers {summary}", flush=True)
        write_reports(results, ceil, env, args, t0, final=False)  # partial results survive a later crash
    md = write_reports(results, ceil, env, args, t0, final=True)
    try:
        plot(results, ceil, os.path.join(args.out, "bench.png"))
    except Exception as e:  # the numbers are written already; say why the picture is missing
        print(f"[bench] plot failed: {type(e).__name__}: {e}")
    print(md)


if __name__ == "__main__":
    main()
