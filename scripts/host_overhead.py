"""Where the host time of one DLPack op call goes (H100 follow-up of BENCHMARKS.md's host-time gap).

For a few bench cases: host time per paged_attention call given a plan (a loop of async calls),
and its parts: the `__dlpack__(stream=...)` handshakes alone, `torch.utils.dlpack.to_dlpack` alone,
the module call on ready-made capsules (bindings + validation + launches), and the GPU time of one
call as a CUDA-graph replay. Usage: python3 scripts/host_overhead.py (after scripts/build_cuda.py).
"""
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))

import torch  # noqa: E402

import bench_cases as bc  # noqa: E402
from paddle_gqa import dlpack_ops as ops  # noqa: E402

N = 300


def per_call_us(fn, n=N):
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    host = (time.perf_counter() - t0) / n * 1e6
    torch.cuda.synchronize()
    return host


def main():
    mod = ops.cuda_module()
    rows = []
    for name in ("small_decode", "decode_swa", "decode_g3"):
        case = next(c for c in bc.CASES if c.name == name)
        gen = torch.Generator(device="cuda").manual_seed(0)
        s = bc.build_set(case, case.groups, gen, "cuda")
        stream = torch.cuda.current_stream().cuda_stream
        dl_stream = stream or 1  # DLPack names the legacy default stream 1
        plan = ops.plan(torch.empty(ops.PLAN_WORDS, dtype=torch.int32, device="cuda"), s.qkv, s.key_cache,
                        s.value_cache, s.block_tables, s.cu_seqlens_q, s.cache_seqlens,
                        sliding_window=case.window, causal=True)
        tensors = [s.out, s.q_rows, s.key_cache, s.value_cache, s.block_tables, s.cu_seqlens_q, s.cache_seqlens,
                   s.sinks, plan]
        present = [t for t in tensors if t is not None]

        def call():
            ops.paged_attention(s.out, s.q_rows, s.key_cache, s.value_cache, s.block_tables, s.cu_seqlens_q,
                                s.cache_seqlens, s.sinks, sliding_window=case.window, causal=True, plan=plan)

        call()
        full = per_call_us(call)
        handshakes = per_call_us(lambda: [t.__dlpack__(stream=dl_stream) for t in present])
        from torch.utils.dlpack import to_dlpack
        capsules = per_call_us(lambda: [to_dlpack(t) for t in present])
        stream_q = per_call_us(lambda: torch.cuda.current_stream(s.out.device).cuda_stream)
        # The module on ready-made capsules: bindings + validation + launches only.
        made = [[None if t is None else t.__dlpack__(stream=dl_stream) for t in tensors] for _ in range(N)]
        it = iter(made)

        def module_only():
            c = next(it)
            mod.paged_attention(*c[:8], sliding_window=case.window, causal=True, softmax_scale=0.0,
                                stream=stream, plan=c[8])
        module = per_call_us(module_only)

        def via_to_dlpack():
            c = [None if t is None else to_dlpack(t) for t in tensors]
            mod.paged_attention(*c[:8], sliding_window=case.window, causal=True, softmax_scale=0.0,
                                stream=stream, plan=c[8])
        via_caps = per_call_us(via_to_dlpack)
        g = torch.cuda.CUDAGraph()
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            call()
            torch.cuda.synchronize()
            with torch.cuda.graph(g, stream=side):
                call()
        torch.cuda.synchronize()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(N):
            g.replay()
        end.record()
        torch.cuda.synchronize()
        gpu = start.elapsed_time(end) / N * 1e3
        rows.append((name, len(present), full, handshakes, capsules, stream_q, module, via_caps, gpu))
    print("| case | tensors | host us per call | __dlpack__ handshakes | to_dlpack | current_stream | "
          "module on capsules | to_dlpack + module | GPU us (graph replay) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r[0]} | {r[1]} | " + " | ".join(f"{x:.1f}" for x in r[2:]) + " |")


if __name__ == "__main__":
    main()
