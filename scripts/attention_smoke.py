#!/usr/bin/env python3
"""Device smoke test of the paged attention kernels without the bindings.

Generates the CI subset of instantiations, compiles them with scripts/attention_test.cu into one
program (parallel nvcc, sm_90a), runs its correctness cases, then (with --bench) its timings and a
few torch reference timings (device copy ceiling, SDPA flash prefill) when torch is present.
Usage: python scripts/attention_smoke.py [--bench] [--out DIR]
"""
import argparse
import concurrent.futures
import os
import pathlib
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
NVCC = os.path.join(os.environ.get("CUDA_HOME", "/usr/local/cuda"), "bin", "nvcc")
FLAGS = ["-gencode=arch=compute_90a,code=sm_90a", "-std=c++17", "-O3", "--expt-relaxed-constexpr",
         "-static-global-template-stub=false", "-DPGQA_BUILD_SM90A", f"-I{ROOT / 'csrc/include'}"]


def compile_all(build: pathlib.Path, log, defines=()) -> pathlib.Path:
    subprocess.run([sys.executable, str(ROOT / "scripts/gen_kernels.py"), "--subset", "ci"], check=True)
    sources = sorted((ROOT / "csrc/kernels/generated").glob("attention_*.cu"))
    sources += [ROOT / "csrc/kernels/attention/planner.cu", ROOT / "csrc/kernels/attention/attention_dispatch.cu",
                ROOT / "scripts/attention_test.cu"]
    build.mkdir(parents=True, exist_ok=True)

    def one(src):
        obj = build / (src.stem + ".o")
        r = subprocess.run([NVCC, *FLAGS, *[f"-D{d}" for d in defines], "-Xptxas", "-v", "-c", str(src), "-o", str(obj)],
                           capture_output=True, text=True)
        return src, obj, r

    objs = []
    with concurrent.futures.ThreadPoolExecutor(max_workers=os.cpu_count() or 4) as pool:
        for src, obj, r in pool.map(one, sources):
            log.write(f"== {src.name}\n{r.stdout}{r.stderr}")
            if r.returncode != 0:
                print(r.stderr)
                raise SystemExit(f"compile failed: {src}")
            objs.append(str(obj))
    exe = build / "attention_test"
    subprocess.run([NVCC, "-gencode=arch=compute_90a,code=sm_90a", *objs, "-o", str(exe)], check=True)
    return exe


def time_back_to_back(fn, iters=20, warmup=3):
    """Mean ms of fn() over `iters` calls issued back to back (no L2 flush), by two CUDA events."""
    import torch
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    e0.record()
    for _ in range(iters):
        fn()
    e1.record()
    torch.cuda.synchronize()
    return e0.elapsed_time(e1) / iters


def torch_peers():
    import torch
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel

    timeit = time_back_to_back

    x = torch.empty(1 << 29, dtype=torch.bfloat16, device="cuda")
    y = torch.empty_like(x)
    ms = timeit(lambda: y.copy_(x))
    print(f"peer copy ceiling: {2 * x.numel() * 2 / ms / 1e6:.0f} GB/s")
    del x, y
    for name, hq, hkv, d, n in (("prefill_g3 2x8k SDPA-flash", 24, 8, 128, 8192),):
        q = torch.randn(2, hq, n, d, dtype=torch.bfloat16, device="cuda")
        k = torch.randn(2, hkv, n, d, dtype=torch.bfloat16, device="cuda")
        v = torch.randn_like(k)
        with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
            ms = timeit(lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True))
        flops = 2 * 2.0 * hq * (n * (n + 1) / 2) * (d + d)
        print(f"peer {name}: {ms:.3f} ms {flops / ms / 1e9:.1f} TFLOP/s")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bench", action="store_true")
    ap.add_argument("--out", default=os.environ.get("OUT", "build/attention_smoke"))
    ap.add_argument("--variant", action="append", default=[],
                    help="extra bench build: comma-separated NAME=VALUE defines")
    ap.add_argument("--variant-cases", default="decode_g3,decode_long,decode_192,prefill_g3,prefill_192",
                    help="comma-separated name prefixes of the bench cases the variants run")
    args = ap.parse_args()
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    with open(out / "compile.log", "w") as log:
        exe = compile_all(ROOT / "build/attention_smoke", log)
    print(f"built in {time.time() - t0:.0f}s", flush=True)
    rc = subprocess.run([str(exe)]).returncode
    if args.bench:
        rc |= subprocess.run([str(exe), "--bench"]).returncode
        for i, var in enumerate(args.variant):
            defs = [d for d in var.split(",") if d]
            with open(out / f"compile_v{i}.log", "w") as log:
                vexe = compile_all(ROOT / f"build/attention_smoke_v{i}", log, defs)
            print(f"--- variant {var}", flush=True)
            subprocess.run([str(vexe), "--bench", args.variant_cases])
        try:
            torch_peers()
        except ImportError as e:
            print(f"torch peers skipped: {e}")
    sys.exit(rc)


if __name__ == "__main__":
    main()
