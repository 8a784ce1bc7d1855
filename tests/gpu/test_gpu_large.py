"""Large GPU cases through the DLPack module (torch holders; tensors built on the GPU): a 16k-token
prefill, a chunked prefill past a 4k window, 64 decodes over 32k contexts; group 3, D/Dv 192/128,
blocks outside every window -1. Checked against the float64 reference on sampled rows, torch SDPA
(fp32, math backend) on every row where it applies, every untouched cache entry bit-identical."""
import dataclasses
from typing import Optional

import numpy as np
import pytest

import cases
from paddle_gqa import reference

pytestmark = pytest.mark.large

HQ, HKV, D, DV = 6, 2, 192, 128  # group 3, 192/128
DEVICE = "cuda"


@dataclasses.dataclass
class LargeStep:
    layout: list
    block_size: int
    dtype: str
    window: int
    rotary_dim: int
    tables: np.ndarray          # int32 [B, max_blocks]
    cu: np.ndarray              # int32 [B+1]
    cache_lens: np.ndarray      # int32 [B]
    cos: np.ndarray             # fp32 [max_position, rotary_dim/2]
    sin: np.ndarray
    sinks: Optional[np.ndarray]  # fp32 [Hq]
    t: dict                     # argument name -> torch CUDA tensor

    @property
    def num_tokens(self):
        return int(self.cu[-1])

    def kwargs(self):
        return dict(rotary_dim=self.rotary_dim, neox_style=True, sliding_window=self.window, causal=True)


def build_large(torch, layout, *, block_size, dtype, window, sinks, seed) -> LargeStep:
    """Random step built on the GPU: prefix entries random, every other cache entry NaN."""
    rng = np.random.default_rng(seed)
    gen = torch.Generator(device=DEVICE).manual_seed(seed)
    tdt = {"bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]
    bs = block_size
    tables, num_blocks = cases.allocate_blocks(layout, bs, window=window, rng=rng)
    k = torch.full((num_blocks, HKV, bs, D), float("nan"), dtype=tdt, device=DEVICE)
    v = torch.full((num_blocks, HKV, bs, DV), float("nan"), dtype=tdt, device=DEVICE)
    full_ids = []
    for b, (cache_len, _) in enumerate(layout):
        for lb in range((cache_len + bs - 1) // bs):
            blk = int(tables[b, lb])
            if blk < 0:
                continue
            filled = min(bs, cache_len - lb * bs)
            if filled == bs:
                full_ids.append(blk)
            else:
                k[blk, :, :filled] = torch.randn((HKV, filled, D), generator=gen, device=DEVICE).to(tdt)
                v[blk, :, :filled] = torch.randn((HKV, filled, DV), generator=gen, device=DEVICE).to(tdt)
    ids = torch.tensor(full_ids, dtype=torch.long, device=DEVICE)
    k[ids] = torch.randn((len(full_ids), HKV, bs, D), generator=gen, device=DEVICE).to(tdt)
    v[ids] = torch.randn((len(full_ids), HKV, bs, DV), generator=gen, device=DEVICE).to(tdt)
    news = [n for _, n in layout]
    cu = np.concatenate([[0], np.cumsum(news)]).astype(np.int32)
    cache_lens = np.array([c for c, _ in layout], np.int32)
    rows = int(cu[-1])
    qkv = torch.randn((rows, HQ * D + HKV * (D + DV)), generator=gen, device=DEVICE).to(tdt)
    rotary_dim = 64  # partial rotary of 192 (MiMo-style)
    cos, sin = cases.rope_tables(int((cache_lens + np.array(news)).max()) + 64, rotary_dim)
    sink_arr = (rng.standard_normal(HQ) * 2).astype(np.float32) if sinks else None

    def dev(a):
        return torch.from_numpy(np.ascontiguousarray(a)).to(DEVICE)

    t = dict(qkv=qkv, key_cache=k, value_cache=v, block_tables=dev(tables), cu_seqlens_q=dev(cu),
             cache_seqlens=dev(cache_lens), rotary_cos=dev(cos), rotary_sin=dev(sin),
             sinks=None if sink_arr is None else dev(sink_arr))
    return LargeStep(list(layout), bs, dtype, window, rotary_dim, tables, cu, cache_lens, cos, sin, sink_arr, t)


def host64(torch, x):
    return x.detach().to("cpu", torch.float64).numpy()


def slot_reference(torch, step: LargeStep, b: int, k_before, v_before, sample_rows):
    """Float64 reference for slot b: its written K/V at every new position and its output at
    `sample_rows` (indices into the slot's new tokens), from host copies of the slot's blocks only.

    Each sampled query at position p is the same computation as a decode at cache_len p over the
    reference-written cache (causal), so the sampled rows run as a batch of decodes.
    """
    bs = step.block_size
    cache_len, n = step.layout[b]
    kv_len = cache_len + n
    row = step.tables[b, :(kv_len + bs - 1) // bs]
    valid = np.nonzero(row >= 0)[0]
    compact = np.full(step.tables.shape[1], -1, np.int32)
    compact[valid] = np.arange(len(valid))
    ids = torch.tensor(row[valid].astype(np.int64), device=DEVICE)
    kc, vc = host64(torch, k_before[ids]), host64(torch, v_before[ids])
    start = int(step.cu[b])
    qkv = host64(torch, step.t["qkv"][start:start + n])
    q_ref, k_ref, v_ref = reference.rope_write_cache(
        qkv, kc, vc, compact[None, :], np.array([0, n], np.int32), np.array([cache_len], np.int32),
        step.cos, step.sin, rotary_dim=step.rotary_dim, neox_style=True, cache_dtype=step.dtype)
    s = len(sample_rows)
    out = reference.paged_attention(
        q_ref[sample_rows], k_ref, v_ref, np.repeat(compact[None, :], s, axis=0),
        np.arange(s + 1, dtype=np.int32), (cache_len + np.asarray(sample_rows)).astype(np.int32), step.sinks,
        sliding_window=step.window, causal=True)
    positions = np.arange(cache_len, kv_len)
    lb, off = positions // bs, positions % bs
    return dict(out=out, q=q_ref, k_new=k_ref[compact[lb], :, off], v_new=v_ref[compact[lb], :, off],
                k_logical=k_ref, v_logical=v_ref, compact=compact)


def sample_rows(n, window, rng, count=48):
    """First, last, around the window edge, and random rows of a slot's n new tokens."""
    picks = {0, n - 1, n // 2}
    if window:
        picks |= {min(n - 1, window - 2), min(n - 1, window - 1), min(n - 1, window), min(n - 1, window + 1)}
    picks |= set(rng.integers(0, n, size=count).tolist())
    return np.array(sorted(p for p in picks if 0 <= p < n))


def run_and_check(torch, step: LargeStep, sampled_slots, *, sdpa_slot=None):
    from paddle_gqa import dlpack_ops

    t = step.t
    k_before, v_before = t["key_cache"].clone(), t["value_cache"].clone()
    rows = t["qkv"].shape[0]
    out = torch.full((rows, HQ * DV), float("nan"), dtype=t["qkv"].dtype, device=DEVICE)
    dlpack_ops.append_attention(out, t["qkv"], t["key_cache"], t["value_cache"], t["block_tables"],
                                t["cu_seqlens_q"], t["cache_seqlens"], t["rotary_cos"], t["rotary_sin"],
                                t["sinks"], **step.kwargs())
    torch.cuda.synchronize()
    assert not torch.isnan(out).any(), "NaN in the output: a poisoned cache entry was read"

    # Untouched entries bit-identical; the written set is every new token's (block, slot).
    bs = step.block_size
    written = torch.zeros((t["key_cache"].shape[0], bs), dtype=torch.bool, device=DEVICE)
    for b, (cache_len, n) in enumerate(step.layout):
        pos = np.arange(cache_len, cache_len + n)
        blk = torch.tensor(step.tables[b, pos // bs].astype(np.int64), device=DEVICE)
        written[blk, torch.tensor(pos % bs, device=DEVICE)] = True
    for name, before in (("key_cache", k_before), ("value_cache", v_before)):
        changed = (before.view(torch.int16) != t[name].view(torch.int16)).any(dim=(1, 3))  # [blocks, bs]
        stray = changed & ~written
        assert not stray.any(), f"{name}: {int(stray.sum())} entries the step does not write changed"

    rtol, atol = cases.OUTPUT_TOL[step.dtype]
    k_rtol, k_atol = cases.rounded_tol(step.dtype)
    rng = np.random.default_rng(0)
    for b in sampled_slots:
        cache_len, n = step.layout[b]
        picks = sample_rows(n, step.window, rng)
        ref = slot_reference(torch, step, b, k_before, v_before, picks)
        start = int(step.cu[b])
        got = host64(torch, out[start + picks])
        cases.assert_close(got, ref["out"], rtol, atol, f"slot {b} sampled rows {picks[:8]}...")
        pos = np.arange(cache_len, cache_len + n)
        blk = torch.tensor(step.tables[b, pos // bs].astype(np.int64), device=DEVICE)
        off = torch.tensor(pos % bs, device=DEVICE)
        cases.assert_close(host64(torch, t["key_cache"][blk, :, off]), ref["k_new"], k_rtol, k_atol,
                           f"slot {b} written keys")
        cases.assert_close(host64(torch, t["value_cache"][blk, :, off]), ref["v_new"], 0, 0,
                           f"slot {b} written values")
        if b == sdpa_slot:
            check_sdpa(torch, step, b, ref, host64(torch, out[start:start + n]))
    return out


def check_sdpa(torch, step, b, ref, got):
    """Every row of slot b (a prefill from 0, no sinks) against torch SDPA, fp32, math backend,
    fed the reference's rotated q and written K/V."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    assert step.sinks is None and step.layout[b][0] == 0
    n = step.layout[b][1]
    bs = step.block_size
    pos = np.arange(n)
    kl = ref["k_logical"][ref["compact"][pos // bs], :, pos % bs]  # [n, Hkv, D]
    vl = ref["v_logical"][ref["compact"][pos // bs], :, pos % bs]
    g = HQ // HKV
    q = torch.tensor(ref["q"], dtype=torch.float32, device=DEVICE).transpose(0, 1)[None]        # [1, Hq, n, D]
    k = torch.tensor(kl, dtype=torch.float32, device=DEVICE).transpose(0, 1).repeat_interleave(g, 0)[None]
    v = torch.tensor(vl, dtype=torch.float32, device=DEVICE).transpose(0, 1).repeat_interleave(g, 0)[None]
    mask = None
    if step.window:
        i = torch.arange(n, device=DEVICE)
        mask = (i[None, :] <= i[:, None]) & (i[:, None] - step.window < i[None, :])
    with sdpa_kernel(SDPBackend.MATH):
        o = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=mask is None)
    want = o[0].transpose(0, 1).reshape(n, HQ * DV).double().cpu().numpy()
    rtol, atol = cases.OUTPUT_TOL[step.dtype]
    cases.assert_close(got, want, rtol, atol, f"slot {b} vs torch SDPA (fp32, math)")


# Windows 300 (on sm_90a: the narrow Hopper tile, windows <= 512) and 4096 (the wide tile).
@pytest.mark.parametrize("window", [0, 300, 4096])
def test_prefill_16k(dlpack_runner, window):
    import torch

    step = build_large(torch, [(0, 16384), (3000, 1)], block_size=64, dtype="bfloat16", window=window,
                       sinks=False, seed=16 + window)
    run_and_check(torch, step, sampled_slots=[0, 1], sdpa_slot=0)


def test_prefill_16k_sinks_fp16(dlpack_runner):
    import torch

    step = build_large(torch, [(0, 16384)], block_size=128, dtype="float16", window=0, sinks=True, seed=17)
    run_and_check(torch, step, sampled_slots=[0])


def test_chunked_prefill_past_window(dlpack_runner):
    # 12k cached + 4k new with a 4k window: the first ~8k cached keys lie outside every window,
    # their blocks are -1 and their physical blocks do not exist; decodes ride along.
    import torch

    step = build_large(torch, [(12288, 4096), (20000, 1), (5000, 1), (0, 0)], block_size=32,
                       dtype="bfloat16", window=4096, sinks=True, seed=18)
    assert (step.tables[0, :8192 // 32 - 1] == -1).all()
    run_and_check(torch, step, sampled_slots=[0, 1, 2])


def test_chunked_prefill_narrow_window_bs16(dlpack_runner):
    # A 384-key window (the narrow Hopper tile on sm_90a) over 16-key blocks: 16-row copy boxes,
    # blocks before every window -1, sinks, and decodes beside the chunks.
    import torch

    step = build_large(torch, [(2000, 3000), (9000, 1), (0, 700), (5000, 1)], block_size=16,
                       dtype="bfloat16", window=384, sinks=True, seed=19)
    assert (step.tables[0, :(2000 - 384) // 16] == -1).all()
    run_and_check(torch, step, sampled_slots=[0, 1, 2, 3])


@pytest.mark.parametrize("window", [0, 4096])
def test_64_decodes_over_32k(dlpack_runner, window):
    import torch

    rng = np.random.default_rng(window)
    layout = [(int(c), 1) for c in rng.integers(30000, 32767, size=64)]
    step = build_large(torch, layout, block_size=64, dtype="bfloat16", window=window, sinks=True,
                       seed=64 + window)
    if window:
        assert (step.tables[:, 0] == -1).all()
    out = run_and_check(torch, step, sampled_slots=[0, 17, 42, 63])
    # Every slot (not only the sampled ones) against a torch fp32 dense decode.
    check_all_decodes_dense(torch, step, out)


def check_all_decodes_dense(torch, step, out):
    """Each decode slot in fp32 torch: its visible keys gathered through block_tables from the
    written cache (checked above), the reference's rotated q, scores with the sink column."""
    bs, g = step.block_size, HQ // HKV
    t = step.t
    rtol, atol = cases.OUTPUT_TOL[step.dtype]
    new_rows = host64(torch, t["qkv"])
    q_all = new_rows[:, :HQ * D].reshape(-1, HQ, D)
    pos = step.cache_lens.astype(np.int64)
    q_rot = reference.round_to_dtype(
        reference.apply_rope(q_all, pos, step.cos, step.sin, step.rotary_dim, True), step.dtype)
    scale = 1.0 / np.sqrt(D)
    for b, (cache_len, _) in enumerate(step.layout):
        lo, hi = reference.visible_range(cache_len, cache_len + 1, True, step.window)
        j = torch.arange(int(lo), int(hi) + 1, device=DEVICE)
        blk = torch.tensor(step.tables[b].astype(np.int64), device=DEVICE)[j // bs]
        keys = t["key_cache"][blk, :, j % bs].float()      # [L, Hkv, D]
        vals = t["value_cache"][blk, :, j % bs].float()
        q = torch.tensor(q_rot[b], dtype=torch.float32, device=DEVICE).view(HKV, g, D)
        s = torch.einsum("hgd,lhd->hgl", q, keys) * scale
        sink = torch.tensor(step.sinks, device=DEVICE).view(HKV, g, 1)
        w = torch.softmax(torch.cat([s, sink], dim=-1), dim=-1)[..., :-1]
        o = torch.einsum("hgl,lhv->hgv", w, vals).reshape(HQ * DV)
        cases.assert_close(host64(torch, out[b]), o.double().cpu().numpy(), rtol, atol,
                           f"decode slot {b} vs torch fp32")
