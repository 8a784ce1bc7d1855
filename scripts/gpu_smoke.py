#!/usr/bin/env python3
"""Device smoke test of the DLPack module's CUDA plumbing: rope_write_cache against the float64
reference (both RoPE styles, partial rotary, the 16-byte and the unaligned path), the device step
check (every error kind, lowest slot first, caches untouched), graph capture with a deferred error,
and a few full append/paged attention calls. Small sizes, so it also runs under compute-sanitizer.

Usage: python3 scripts/gpu_smoke.py [--quick]   (after scripts/build_cuda.py; torch on a CUDA GPU)
Exits non-zero when any check fails; prints one line per check and a summary last.
"""
from __future__ import annotations

import argparse
import os
import sys
import traceback

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from paddle_gqa import dlpack_ops as ops  # noqa: E402
from paddle_gqa import reference as ref  # noqa: E402

TORCH_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16}
# One ulp relative to the value, per dtype: the kernel rounds an fp32 result, the reference a float64 one,
# so they may differ by one ulp of the stored value.
ULP = {"bfloat16": 2.0 ** -7, "float16": 2.0 ** -10}

RESULTS = []


def check(name, ok, detail=""):
    RESULTS.append((name, bool(ok)))
    print(f"[{'PASS' if ok else 'FAIL'}] {name}{': ' + detail if detail else ''}", flush=True)


def dev(a, dtype):
    t = torch.from_numpy(np.ascontiguousarray(np.asarray(a, np.float32)))
    return t.to(device="cuda", dtype=TORCH_DTYPES[dtype] if isinstance(dtype, str) else dtype)


def i32(a):
    return torch.from_numpy(np.ascontiguousarray(np.asarray(a, np.int32))).cuda()


def host(t):
    return t.detach().to("cpu", torch.float64).numpy()


def bits(t):
    return t.detach().contiguous().view(torch.int16).cpu().numpy()


class Case:
    """One step: random qkv, shuffled block tables with spare poisoned blocks, RoPE tables."""

    def __init__(self, rng, dtype="bfloat16", d=128, dv=128, hkv=2, group=3, bs=16, seqs=((5, 3), (0, 7), (30, 1)),
                 pad_rows=2, rope="neox", rotary_dim=0, max_position=None, sinks=False, window=0):
        self.dtype, self.d, self.dv, self.hkv, self.hq, self.bs = dtype, d, dv, hkv, hkv * group, bs
        self.seqs, self.window = seqs, window
        n_new = [n for _, n in seqs]
        self.cu = np.concatenate([[0], np.cumsum(n_new)]).astype(np.int32)
        self.cache_lens = np.array([c for c, _ in seqs], np.int32)
        t = int(self.cu[-1])
        self.rows = t + pad_rows
        need = [(c + n + bs - 1) // bs for c, n in seqs]
        mbps = max(need) + 1
        num_blocks = sum(need) + 3
        perm = rng.permutation(num_blocks)
        self.block_tables = np.full((len(seqs), mbps), -1, np.int32)
        k = 0
        for b, nb in enumerate(need):
            self.block_tables[b, :nb] = perm[k:k + nb]
            k += nb
        width = self.hq * d + hkv * (d + dv)
        # Values exactly representable in the dtype, so the reference sees what the device holds.
        self.qkv = host(dev(rng.standard_normal((self.rows, width)), dtype))
        self.k_cache = host(dev(rng.standard_normal((num_blocks, hkv, bs, d)), dtype))
        self.v_cache = host(dev(rng.standard_normal((num_blocks, hkv, bs, dv)), dtype))
        self.rotary_dim = rotary_dim
        self.neox = rope != "gptj"
        if rope is None:
            self.cos = self.sin = None
        else:
            rot = rotary_dim or d
            max_pos = max_position or int(max(c + n for c, n in seqs)) + 4
            inv = 1.0 / (10000.0 ** (np.arange(0, rot, 2) / rot))
            ang = np.arange(max_pos)[:, None] * inv[None, :]
            self.cos, self.sin = np.cos(ang).astype(np.float32), np.sin(ang).astype(np.float32)
        self.sinks = rng.standard_normal(self.hq).astype(np.float32) if sinks else None

    def tensors(self):
        t = dict(qkv=dev(self.qkv, self.dtype), key_cache=dev(self.k_cache, self.dtype),
                 value_cache=dev(self.v_cache, self.dtype), block_tables=i32(self.block_tables),
                 cu_seqlens_q=i32(self.cu), cache_seqlens=i32(self.cache_lens))
        t["rotary_cos"] = None if self.cos is None else torch.from_numpy(self.cos).cuda()
        t["rotary_sin"] = None if self.sin is None else torch.from_numpy(self.sin).cuda()
        t["sinks"] = None if self.sinks is None else torch.from_numpy(self.sinks).cuda()
        return t

    def written_mask(self):
        """[num_blocks, bs] True where the step writes a token."""
        mask = np.zeros(self.k_cache.shape[0:1] + (self.bs,), bool)
        for b, (c, n) in enumerate(self.seqs):
            for p in range(c, c + n):
                mask[self.block_tables[b, p // self.bs], p % self.bs] = True
        return mask


def call_rope(case, t, q_out=None, **kw):
    q_out = q_out if q_out is not None else torch.full((case.rows, case.hq, case.d), float("nan"),
                                                       dtype=TORCH_DTYPES[case.dtype], device="cuda")
    ops.rope_write_cache(q_out, t["qkv"], t["key_cache"], t["value_cache"], t["block_tables"], t["cu_seqlens_q"],
                         t["cache_seqlens"], t["rotary_cos"], t["rotary_sin"], rotary_dim=case.rotary_dim,
                         neox_style=case.neox, **kw)
    return q_out


def call_append(case, t, **kw):
    out = torch.full((case.rows, case.hq * case.dv), float("nan"), dtype=TORCH_DTYPES[case.dtype], device="cuda")
    ops.append_attention(out, t["qkv"], t["key_cache"], t["value_cache"], t["block_tables"], t["cu_seqlens_q"],
                         t["cache_seqlens"], t["rotary_cos"], t["rotary_sin"], t["sinks"],
                         rotary_dim=case.rotary_dim, neox_style=case.neox, sliding_window=case.window, **kw)
    return out


def within_ulp(got, want, dtype):
    # The absolute term covers fp32 cancellation in a*c - b*s (|a|, |b| < 8 here) and fp16 subnormals.
    tol = ULP[dtype] * np.abs(want) + 1e-6
    return np.all(np.abs(got - want) <= tol), float(np.mean(got == want))


def test_rope(rng, label, **case_kw):
    case = Case(rng, **case_kw)
    t = case.tensors()
    k_before, v_before = bits(t["key_cache"]), bits(t["value_cache"])
    q_out = call_rope(case, t)
    torch.cuda.synchronize()
    q_ref, k_ref, v_ref = ref.rope_write_cache(case.qkv, case.k_cache, case.v_cache, case.block_tables, case.cu,
                                               case.cache_lens, case.cos, case.sin, rotary_dim=case.rotary_dim,
                                               neox_style=case.neox, cache_dtype=case.dtype)
    T = int(case.cu[-1])
    q = host(q_out)
    ok_q, exact_q = within_ulp(q[:T], q_ref[:T], case.dtype)
    pad_zero = np.all(q[T:] == 0)
    written = case.written_mask()
    k_after, v_after = bits(t["key_cache"]), bits(t["value_cache"])
    untouched = ~written[:, None, :]  # [N, 1, bs] broadcast over heads
    same_k = np.all((k_after == k_before)[np.broadcast_to(untouched, k_after.shape[:3])])
    same_v = np.all((v_after == v_before)[np.broadcast_to(untouched, v_after.shape[:3])])
    k = host(t["key_cache"])
    v = host(t["value_cache"])
    sel = np.broadcast_to(written[:, None, :], k.shape[:3])
    ok_k, exact_k = within_ulp(k[sel], k_ref[sel], case.dtype)
    ok_v = np.array_equal(v[np.broadcast_to(written[:, None, :], v.shape[:3])],
                          v_ref[np.broadcast_to(written[:, None, :], v.shape[:3])])
    check(f"rope_write_cache {label}", ok_q and pad_zero and same_k and same_v and ok_k and ok_v,
          f"q within 1 ulp {ok_q} (bit-exact {exact_q:.4f}), pad rows zero {pad_zero}, k within 1 ulp {ok_k} "
          f"(bit-exact {exact_k:.4f}), v exact {ok_v}, untouched slots identical {same_k and same_v}")


def expect_error(label, fn, t, needle):
    k_before, v_before = bits(t["key_cache"]), bits(t["value_cache"])
    try:
        fn()
        torch.cuda.synchronize()
        check(label, False, "no error raised")
        return
    except ValueError as e:
        msg = str(e)
    same = np.array_equal(bits(t["key_cache"]), k_before) and np.array_equal(bits(t["value_cache"]), v_before)
    check(label, needle in msg and same, f"caches unchanged {same}; message: {msg}")


def test_step_errors(rng):
    # Tables long enough that no mutation below trips the RoPE position check first.
    base = dict(seqs=((20, 3), (0, 5), (33, 2)), bs=16, max_position=1000)
    mutations = [
        ("cu_seqlens_q[0] != 0", lambda c: c.cu.__setitem__(0, 1), "cu_seqlens_q[0] = 1"),
        ("decreasing cu_seqlens_q", lambda c: c.cu.__setitem__(2, 2), "cu_seqlens_q[2] = 2 is less"),
        ("cu_seqlens_q[B] > rows", lambda c: c.cu.__setitem__(3, c.rows + 4), "exceeds the"),
        ("negative cache_seqlens", lambda c: c.cache_lens.__setitem__(1, -3), "cache_seqlens[1] = -3"),
        ("block table overrun", lambda c: c.cache_lens.__setitem__(1, c.block_tables.shape[1] * c.bs),
         "exceeds block_tables capacity"),
        ("written block -1", lambda c: c.block_tables.__setitem__((2, 2), -1), "block_tables[2][2] = -1"),
        ("written block >= num_blocks", lambda c: c.block_tables.__setitem__((0, 1), c.k_cache.shape[0]),
         "block_tables[0][1] = "),
        ("lowest failing slot first", lambda c: (c.block_tables.__setitem__((2, 2), -1),
                                                 c.block_tables.__setitem__((1, 0), -7)), "block_tables[1][0] = -7"),
    ]
    for name, mutate, needle in mutations:
        for op in ("rope_write_cache", "append_attention"):
            case = Case(rng, **base)
            mutate(case)
            t = case.tensors()
            fn = (lambda: call_rope(case, t)) if op == "rope_write_cache" else (lambda: call_append(case, t))
            expect_error(f"step check {op}: {name}", fn, t, needle)
    # Position past the RoPE tables (slot 2 reaches position 34; tables hold 30 positions).
    case = Case(rng, **dict(base, max_position=30))
    t = case.tensors()
    expect_error("step check rope_write_cache: position past RoPE", lambda: call_rope(case, t), t,
                 "past the RoPE tables")
    # A read-only block (slot 0's first block) that is -1: an error for attention, fine for the write.
    case = Case(rng, **base)
    case.block_tables[0, 0] = -1
    t = case.tensors()
    expect_error("step check append_attention: read block -1", lambda: call_append(case, t), t,
                 "block_tables[0][0] = -1")
    try:
        call_rope(case, t)
        torch.cuda.synchronize()
        check("step check rope_write_cache ignores blocks it only would read", True)
    except ValueError as e:
        check("step check rope_write_cache ignores blocks it only would read", False, str(e))
    # A block wholly outside every query's sliding window may be -1 (released).
    case = Case(rng, window=4, **base)
    case.block_tables[0, 0] = -1  # slot 0's queries (positions 20..22) see keys 17..22 only
    t = case.tensors()
    try:
        call_append(case, t)
        torch.cuda.synchronize()
        check("step check append_attention: released block outside the window is allowed", True)
    except ValueError as e:
        check("step check append_attention: released block outside the window is allowed", False, str(e))
    # The op still works after an error (the record is per call).
    test_rope(rng, "after errors (record reset)", seqs=((3, 2), (9, 4)))


def first_step_error(case, reads):
    """A Python reading of check_slot (step_rules.h) over every slot: (needle of the message) or None."""
    cu, cl, bt = case.cu.astype(np.int64), case.cache_lens.astype(np.int64), case.block_tables
    nb, bs, batch, mbps = case.k_cache.shape[0], case.bs, len(case.cache_lens), case.block_tables.shape[1]
    max_pos = 0 if case.cos is None else case.cos.shape[0]
    for b in range(batch):
        if b == 0 and cu[0] != 0:
            return f"cu_seqlens_q[0] = {cu[0]}"
        if cu[b + 1] < cu[b]:
            return f"cu_seqlens_q[{b + 1}] = {cu[b + 1]} is less than"
        if b == batch - 1 and cu[batch] > case.rows:
            return f"cu_seqlens_q[{batch}] = {cu[batch]} (new tokens"
        if cl[b] < 0:
            return f"cache_seqlens[{b}] = {cl[b]} is negative"
        n = cu[b + 1] - cu[b]
        if n == 0:
            continue
        kv = cl[b] + n
        if max_pos > 0 and kv - 1 >= max_pos:
            return f"position {kv - 1} of slot {b}"
        if kv > mbps * bs:
            return f"cache_seqlens[{b}] + new tokens = {kv} exceeds"
        first = cl[b]
        if reads:
            first = min(first, max(0, cl[b] - case.window + 1) if case.window > 0 else 0)
        for lb in range(first // bs, (kv - 1) // bs + 1):
            if bt[b, lb] < 0 or bt[b, lb] >= nb:
                return f"block_tables[{b}][{lb}] = {bt[b, lb]} is not"
    return None


def test_step_fuzz(rng, cases):
    """Random corruptions of a 20-slot step (3 CTAs of the check kernel): the device reports exactly
    the error of the lowest failing slot that check_slot finds, and writes nothing then."""
    agree = 0
    details = []
    for i in range(cases):
        seqs = tuple((int(rng.integers(0, 60)), int(rng.integers(0, 5))) for _ in range(20))
        case = Case(rng, seqs=seqs, group=2, max_position=int(rng.choice([1000, 50])),
                    window=int(rng.choice([0, 5])))
        for _ in range(int(rng.integers(0, 4))):
            b = int(rng.integers(0, 20))
            kind = int(rng.integers(0, 3))
            if kind == 0:
                case.cu[int(rng.integers(0, 21))] = int(rng.integers(-3, case.rows + 5))
            elif kind == 1:
                case.cache_lens[b] = int(rng.integers(-5, 200))
            else:
                nb = case.k_cache.shape[0]
                case.block_tables[b, int(rng.integers(0, case.block_tables.shape[1]))] = int(
                    rng.choice([-1, nb, nb + 7, int(rng.integers(0, nb))]))
        op = "rope_write_cache" if i % 2 == 0 else "append_attention"
        needle = first_step_error(case, reads=op == "append_attention")
        t = case.tensors()
        k_before = bits(t["key_cache"])
        try:
            (call_rope if op == "rope_write_cache" else call_append)(case, t)
            torch.cuda.synchronize()
            ok = needle is None
            got = "no error"
        except ValueError as e:
            got = str(e)
            ok = needle is not None and needle in got and np.array_equal(bits(t["key_cache"]), k_before)
        agree += ok
        if not ok:
            details.append(f"case {i} {op}: expected {needle!r}, got {got!r}")
    check(f"step check fuzz ({cases} random steps)", agree == cases, "; ".join(details[:3]))


def test_graph_capture(rng):
    case = Case(rng, seqs=((4, 2), (10, 3)))
    t = case.tensors()
    q_out = torch.empty((case.rows, case.hq, case.d), dtype=TORCH_DTYPES[case.dtype], device="cuda")
    call_rope(case, t, q_out=q_out)  # uncaptured warm-up allocates the device record
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):
        with torch.cuda.graph(graph, stream=stream):
            call_rope(case, t, q_out=q_out)
    torch.cuda.synchronize()
    ops.check_errors(0)  # a valid capture leaves no error
    graph.replay()
    torch.cuda.synchronize()
    ops.check_errors(0)
    check("graph capture: valid replay raises nothing", True)
    # Corrupt the metadata in place; the replay must write nothing and leave the error for later.
    t["block_tables"][1, 0] = -1
    k_before = bits(t["key_cache"])
    graph.replay()
    torch.cuda.synchronize()
    same = np.array_equal(bits(t["key_cache"]), k_before)
    try:
        ops.check_errors(0)
        check("graph capture: invalid replay raises at check_errors", False, "no error")
    except ValueError as e:
        check("graph capture: invalid replay raises at check_errors", same and "block_tables[1][0] = -1" in str(e),
              f"cache unchanged {same}; message: {e}")
    try:
        ops.check_errors(0)
        check("graph capture: check_errors clears the record", True)
    except ValueError as e:
        check("graph capture: check_errors clears the record", False, str(e))
    # Deferred to the next uncaptured call when check_errors is not called.
    graph.replay()
    torch.cuda.synchronize()
    t["block_tables"][1, 0] = int(case.block_tables[1, 0])
    try:
        call_rope(case, t)
        check("graph capture: next uncaptured call raises the deferred error", False, "no error")
    except ValueError as e:
        check("graph capture: next uncaptured call raises the deferred error", "captured" in str(e), str(e))


def test_attention(rng, label, **case_kw):
    case = Case(rng, **case_kw)
    t = case.tensors()
    out = call_append(case, t)
    torch.cuda.synchronize()
    want, k_ref, _ = ref.append_attention(case.qkv, case.k_cache, case.v_cache, case.block_tables, case.cu,
                                          case.cache_lens, case.cos, case.sin, case.sinks,
                                          rotary_dim=case.rotary_dim, neox_style=case.neox,
                                          sliding_window=case.window, cache_dtype=case.dtype)
    got = host(out)
    T = int(case.cu[-1])
    rel = np.linalg.norm(got[:T] - want[:T]) / max(np.linalg.norm(want[:T]), 1e-30)
    pad_zero = np.all(got[T:] == 0)
    finite = np.all(np.isfinite(got))
    check(f"append_attention {label}", rel < 1e-2 and pad_zero and finite,
          f"rel err {rel:.2e}, pad rows zero {pad_zero}, all finite {finite}")
    # paged_attention over the cache the append just wrote, with the reference's rotated q.
    q_ref = ref.rope_write_cache(case.qkv, case.k_cache, case.v_cache, case.block_tables, case.cu, case.cache_lens,
                                 case.cos, case.sin, rotary_dim=case.rotary_dim, neox_style=case.neox,
                                 cache_dtype=case.dtype)[0]
    out2 = torch.full_like(out, float("nan"))
    ops.paged_attention(out2, dev(q_ref, case.dtype), t["key_cache"], t["value_cache"], t["block_tables"],
                        t["cu_seqlens_q"], t["cache_seqlens"], t["sinks"], sliding_window=case.window)
    torch.cuda.synchronize()
    got2 = host(out2)
    rel2 = np.linalg.norm(got2[:T] - want[:T]) / max(np.linalg.norm(want[:T]), 1e-30)
    check(f"paged_attention {label}", rel2 < 1e-2 and np.all(got2[T:] == 0), f"rel err {rel2:.2e}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="fewer cases (for compute-sanitizer)")
    ap.add_argument("--no-attention", action="store_true", help="skip the attention calls")
    args = ap.parse_args()
    rng = np.random.default_rng(int.from_bytes(os.urandom(4), "little"))
    steps = [
        lambda: test_rope(rng, "bf16 128/128 neox", dtype="bfloat16"),
        lambda: test_rope(rng, "fp16 192/128 gptj", dtype="float16", d=192, dv=128, rope="gptj"),
        lambda: test_rope(rng, "bf16 128/128 neox partial 24 (scalar partners)", rotary_dim=24),
        lambda: test_rope(rng, "bf16 128/64 gptj partial 64, bs 32", d=128, dv=64, rope="gptj", rotary_dim=64, bs=32),
        lambda: test_rope(rng, "bf16 no rope", rope=None),
        lambda: test_step_errors(rng),
        lambda: test_step_fuzz(rng, 6 if args.quick else 40),
        lambda: test_graph_capture(rng),
    ]
    if not args.quick:
        steps[1:1] = [
            lambda: test_rope(rng, "fp16 256/256 neox G=1 bs 64 long", dtype="float16", d=256, dv=256, group=1,
                              bs=64, seqs=((100, 70), (0, 1), (7, 0), (300, 33))),
            lambda: test_rope_unaligned(rng),
        ]
    if not args.no_attention:
        steps += [
            lambda: test_attention(rng, "bf16 128/128 G3 neox"),
            lambda: test_attention(rng, "bf16 192/128 G3 sinks window 8", d=192, dv=128, sinks=True, window=8,
                                   rotary_dim=64),
            lambda: test_attention(rng, "bf16 128/128 G2 (runtime group)", group=2, seqs=((40, 17), (0, 1))),
        ]
    for step in steps:
        try:
            step()
        except Exception:  # one broken step must not hide the others' results
            traceback.print_exc()
            check("step raised", False, traceback.format_exc(limit=1).strip().splitlines()[-1])
    failed = [n for n, ok in RESULTS if not ok]
    print(f"gpu_smoke: {len(RESULTS) - len(failed)}/{len(RESULTS)} checks passed"
          + (f"; FAILED: {', '.join(failed)}" if failed else ""))
    sys.exit(1 if failed else 0)


def test_rope_unaligned(rng):
    """qkv and q_out at an odd element offset: the kernel must take its scalar path and agree."""
    case = Case(rng, seqs=((3, 4), (17, 2)))
    t = case.tensors()
    flat = torch.empty(t["qkv"].numel() + 1, dtype=t["qkv"].dtype, device="cuda")
    qkv = flat[1:].view(t["qkv"].shape)
    qkv.copy_(t["qkv"])
    qflat = torch.full((case.rows * case.hq * case.d + 1,), float("nan"), dtype=t["qkv"].dtype, device="cuda")
    q_out = qflat[1:].view(case.rows, case.hq, case.d)
    t["qkv"] = qkv
    call_rope(case, t, q_out=q_out)
    torch.cuda.synchronize()
    q_ref = ref.rope_write_cache(case.qkv, case.k_cache, case.v_cache, case.block_tables, case.cu, case.cache_lens,
                                 case.cos, case.sin, rotary_dim=case.rotary_dim, neox_style=case.neox,
                                 cache_dtype=case.dtype)[0]
    T = int(case.cu[-1])
    ok, exact = within_ulp(host(q_out)[:T], q_ref[:T], case.dtype)
    check("rope_write_cache unaligned (scalar path)", ok and np.all(host(q_out)[T:] == 0), f"bit-exact {exact:.4f}")


if __name__ == "__main__":
    main()
