#!/usr/bin/env python3
"""Times torch SDPA (cuDNN and flash backends) on the decode_g3 / decode_long shapes two ways:
back to back (no L2 flush, as scripts/attention_test.cu --bench times ours) and through
triton's do_bench (L2 flushed before every call, as scripts/bench.py times everyone), so that the
two drivers' numbers can be compared. With --ncu-loop it only runs the cuDNN call in a loop (for
Nsight Compute).

Usage: python3 scripts/peer_decode_probe.py [--ncu-loop]
"""
import argparse
import os
import sys

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from attention_smoke import time_back_to_back  # noqa: E402

SHAPES = {"decode_g3 B32 4k": (32, 4096), "decode_long B8 32k": (8, 32768)}
HQ, HKV, D = 24, 8, 128


def tensors(batch, ctx):
    q = torch.randn(batch, HQ, 1, D, dtype=torch.bfloat16, device="cuda")
    k = torch.randn(batch, HKV, ctx, D, dtype=torch.bfloat16, device="cuda")
    v = torch.randn_like(k)
    return q, k, v


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--ncu-loop", action="store_true")
    args = ap.parse_args()
    from triton.testing import do_bench
    for name, (batch, ctx) in SHAPES.items():
        q, k, v = tensors(batch, ctx)
        kv_bytes = 2 * batch * HKV * ctx * D * 2
        for backend, label in ((SDPBackend.CUDNN_ATTENTION, "cuDNN"), (SDPBackend.FLASH_ATTENTION, "flash")):
            def call():
                with sdpa_kernel(backend):
                    return F.scaled_dot_product_attention(q, k, v, enable_gqa=True)
            if args.ncu_loop:
                if label == "cuDNN":
                    for _ in range(6):
                        call()
                    torch.cuda.synchronize()
                continue
            b2b = time_back_to_back(call, iters=30, warmup=5)
            flushed = do_bench(call, warmup=25, rep=200, return_mode="median")
            print(f"{name:20s} {label:6s} back-to-back {b2b:.4f} ms ({kv_bytes / b2b / 1e9:.2f} TB/s)  "
                  f"do_bench (L2 flushed) {flushed:.4f} ms ({kv_bytes / flushed / 1e9:.2f} TB/s)", flush=True)
        del q, k, v


if __name__ == "__main__":
    main()
