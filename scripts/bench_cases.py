"""Benchmark cases of scripts/bench.py: shapes, targets, input sets (paged + contiguous) and fp32 checks.

A case is one attention step: slots (cache_len, n_new) grouped into peer groups of equal shape,
heads, head dims, window and sinks. Every input set holds the same values twice: contiguous
[B, H, L, D] tensors for the peers and a paged cache (block size 64, shuffled block ids) for ours.
Imports torch lazily so the case table can be read on machines without a GPU.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import List, Optional, Tuple

BLOCK_SIZE = 64
DTYPE = "bfloat16"
ELEM_BYTES = 2

# Relative Frobenius error above which an output counts as wrong (bf16 outputs land near 3e-3).
REL_ERR_LIMIT = 2e-2


@dataclass(frozen=True)
class Group:
    """`batch` slots of equal shape: each has `cache_len` tokens cached before the step and `n_new` new."""
    batch: int
    cache_len: int
    n_new: int

    @property
    def kv_len(self) -> int:
        return self.cache_len + self.n_new


@dataclass(frozen=True)
class Case:
    name: str
    title: str           # shape in words, for the table
    kind: str            # "decode" (TB/s) | "prefill" (TFLOP/s) | "mixed" | "latency" (time only)
    hq: int
    hkv: int
    d: int
    dv: int
    groups: Tuple[Group, ...]
    window: int = 0
    sinks: bool = False
    target: str = ""
    # Companion steps timed with ours only (same heads/window/sinks), e.g. the SWA step at ctx 256
    # or the two parts of the mixed step run as separate calls.
    companions: Tuple[Tuple[str, Tuple[Group, ...]], ...] = field(default=())

    @property
    def slots(self) -> List[Tuple[int, int]]:
        return [(g.cache_len, g.n_new) for g in self.groups for _ in range(g.batch)]


def _dec(batch, ctx):
    """A decode group: each request holds ctx keys after the step (ctx - 1 cached + 1 new)."""
    return Group(batch, ctx - 1, 1)


def _pre(batch, n):
    return Group(batch, 0, n)


CASES: Tuple[Case, ...] = (
    Case("decode_g3", "decode B=32 ctx 4k, Hq 24/Hkv 8, D 128", "decode", 24, 8, 128, 128,
         (_dec(32, 4096),), target=">= 90% of copy ceiling, >= 1.0x best peer"),
    Case("decode_long", "decode B=8 ctx 32k, Hq 24/Hkv 8, D 128", "decode", 24, 8, 128, 128,
         (_dec(8, 32768),), target=">= 90% of copy ceiling, >= 1.0x best peer"),
    Case("decode_192_128", "decode B=32 ctx 4k, Hq 64/Hkv 4, D 192/Dv 128", "decode", 64, 4, 192, 128,
         (_dec(32, 4096),), target=">= 1.0x best peer that accepts it"),
    Case("decode_swa", "decode B=32 ctx 32k, W=128, Hq 64/Hkv 8, 192/128, sinks", "decode", 64, 8, 192, 128,
         (_dec(32, 32768),), window=128, sinks=True,
         target="time <= 1.2x same step at ctx 256; >= 2x flex",
         companions=(("ctx256", (_dec(32, 256),)),)),
    Case("prefill_g3", "prefill 2 x 8k causal, Hq 24/Hkv 8, D 128", "prefill", 24, 8, 128, 128,
         (_pre(2, 8192),), target=">= 1.1x SDPA-flash, >= 1.0x flex"),
    Case("prefill_192_128", "prefill 8k causal, Hq 64/Hkv 4, D 192/Dv 128", "prefill", 64, 4, 192, 128,
         (_pre(1, 8192),), target=">= 1.2x flex"),
    Case("prefill_swa1024", "prefill 2 x 8k, W=1024, Hq 24/Hkv 8, D 128", "prefill", 24, 8, 128, 128,
         (_pre(2, 8192),), window=1024, target=">= 1.0x flex"),
    Case("prefill_swa128", "prefill 2 x 8k, W=128, Hq 64/Hkv 8, D 192/Dv 128", "prefill", 64, 8, 192, 128,
         (_pre(2, 8192),), window=128, target=">= 1.5x flex"),
    Case("mixed", "2k chunk over 6k prefix + 64 decodes over 4k, Hq 24/Hkv 8, D 128", "mixed", 24, 8, 128, 128,
         (Group(1, 6144, 2048), _dec(64, 4096)),
         target="one call <= 0.9x the two parts as separate calls",
         companions=(("chunk", (Group(1, 6144, 2048),)), ("decodes", (_dec(64, 4096),)))),
    Case("small_decode", "decode B=1 ctx 512, Hq 24/Hkv 8, D 128", "latency", 24, 8, 128, 128,
         (_dec(1, 512),), target="latency <= 1.2x SDPA-flash"),
)


def select_cases(filters: Optional[List[str]]) -> List[Case]:
    """Cases whose name contains any of `filters` (all when None); an unmatched filter is an error."""
    if not filters:
        return list(CASES)
    for f in filters:
        if not any(f in c.name for c in CASES):
            raise SystemExit(f"--cases {f!r} matches no case; cases: {', '.join(c.name for c in CASES)}")
    return [c for c in CASES if any(f in c.name for f in filters)]


# ---- work counted per step -------------------------------------------------------------------

def visible_pairs(cache_len: int, n_new: int, window: int) -> int:
    """(query, key) pairs a slot's new tokens see, causal with optional window (DESIGN.md §2)."""
    total = 0
    for i in range(n_new):
        p = cache_len + i
        lo = max(p - window + 1, 0) if window > 0 else 0
        total += p - lo + 1
    return total


def _visible_pairs_fast(g: Group, window: int) -> int:
    """visible_pairs in closed form (prefill 8k has 8k queries; the loop would be slow but fine)."""
    if window <= 0:
        a, b = g.cache_len + 1, g.kv_len  # key counts of the first and last query
        return (a + b) * g.n_new // 2
    return visible_pairs(g.cache_len, g.n_new, window)


def kv_bytes_read(case: Case, groups: Optional[Tuple[Group, ...]] = None) -> int:
    """Bytes of K and V the step must read: each slot's keys in the union of its queries' windows."""
    total = 0
    for g in groups or case.groups:
        lo = max(g.cache_len - case.window + 1, 0) if case.window > 0 else 0
        total += g.batch * (g.kv_len - lo) * case.hkv * (case.d + case.dv) * ELEM_BYTES
    return total


def flops(case: Case, groups: Optional[Tuple[Group, ...]] = None) -> int:
    """2 * Hq * visible_pairs * (D + Dv): the two matrix products of attention."""
    pairs = sum(g.batch * _visible_pairs_fast(g, case.window) for g in groups or case.groups)
    return 2 * case.hq * pairs * (case.d + case.dv)


# ---- input sets ------------------------------------------------------------------------------

@dataclass
class InputSet:
    """One set of step inputs, identical values for peers (contiguous) and ours (paged)."""
    q: List["object"]          # per group [B, Hq, n, D] bf16
    k: List["object"]          # per group [B, Hkv, kv_len, D]
    v: List["object"]          # per group [B, Hkv, kv_len, Dv]
    sinks: Optional["object"]  # fp32 [Hq]
    q_rows: "object"           # [T, Hq, D], rows packed slot by slot
    qkv: "object"              # [T, Hq*D + Hkv*D + Hkv*Dv]: the step's new tokens (no RoPE applied)
    key_cache: "object"        # [N, Hkv, 64, D]
    value_cache: "object"      # [N, Hkv, 64, Dv]
    block_tables: "object"     # int32 [B, max_blocks]
    cu_seqlens_q: "object"     # int32 [B+1]
    cache_seqlens: "object"    # int32 [B]
    out: "object"              # [T, Hq*Dv] bf16, preallocated output of ours

    def nbytes(self) -> int:
        ts = self.q + self.k + self.v + [self.q_rows, self.qkv, self.key_cache, self.value_cache, self.out]
        return sum(t.numel() * t.element_size() for t in ts)


def build_set(case: Case, groups: Tuple[Group, ...], gen, device, with_ours: bool = True,
              shuffle_blocks: bool = True) -> InputSet:
    """Random bf16 data (never zeros) for `groups`, written into both layouts. `shuffle_blocks=False`
    gives each slot consecutive block ids in slot order (a layout probe; the benchmark shuffles)."""
    import torch
    bf16 = torch.bfloat16
    qs, ks, vs = [], [], []
    for g in groups:
        qs.append(torch.randn(g.batch, case.hq, g.n_new, case.d, generator=gen, device=device, dtype=bf16))
        ks.append(torch.randn(g.batch, case.hkv, g.kv_len, case.d, generator=gen, device=device, dtype=bf16))
        vs.append(torch.randn(g.batch, case.hkv, g.kv_len, case.dv, generator=gen, device=device, dtype=bf16))
    sinks = (torch.randn(case.hq, generator=gen, device=device, dtype=torch.float32) + 1.0) if case.sinks else None
    # Rows packed slot by slot: [B, Hq, n, D] -> [B*n, Hq, D].
    q_rows = torch.cat([q.permute(0, 2, 1, 3).reshape(-1, case.hq, case.d) for q in qs]).contiguous()
    if not with_ours:
        empty = torch.empty(0, device=device)
        return InputSet(qs, ks, vs, sinks, q_rows, empty, empty, empty, empty, empty, empty, empty)

    nblk = [math.ceil(g.kv_len / BLOCK_SIZE) for g in groups for _ in range(g.batch)]
    used = sum(nblk)
    num_blocks = used + max(8, used // 8)  # spare blocks the step never references
    perm = (torch.randperm(num_blocks, generator=torch.Generator().manual_seed(used), device="cpu")
            if shuffle_blocks else torch.arange(num_blocks))
    key_cache = torch.randn(num_blocks, case.hkv, BLOCK_SIZE, case.d, generator=gen, device=device, dtype=bf16)
    value_cache = torch.randn(num_blocks, case.hkv, BLOCK_SIZE, case.dv, generator=gen, device=device, dtype=bf16)
    bt = torch.full((len(nblk), max(nblk)), -1, dtype=torch.int32)
    cursor, slot = 0, 0
    k_new, v_new = [], []
    for g, k, v in zip(groups, ks, vs):
        nb = math.ceil(g.kv_len / BLOCK_SIZE)
        pad = nb * BLOCK_SIZE - g.kv_len
        ids = perm[cursor:cursor + g.batch * nb].view(g.batch, nb)
        cursor += g.batch * nb
        bt[slot:slot + g.batch, :nb] = ids.to(torch.int32)
        slot += g.batch
        idx = ids.reshape(-1).to(device)
        for src, cache in ((k, key_cache), (v, value_cache)):
            x = torch.nn.functional.pad(src, (0, 0, 0, pad)) if pad else src  # [B, H, nb*64, X]
            x = x.view(g.batch, case.hkv, nb, BLOCK_SIZE, -1).permute(0, 2, 1, 3, 4)
            cache[idx] = x.reshape(g.batch * nb, case.hkv, BLOCK_SIZE, -1)
        # The step's new tokens as qkv rows: [B, H, n, X] -> [B*n, H*X].
        k_new.append(k[:, :, g.cache_len:].permute(0, 2, 1, 3).reshape(g.batch * g.n_new, -1))
        v_new.append(v[:, :, g.cache_len:].permute(0, 2, 1, 3).reshape(g.batch * g.n_new, -1))
    qkv = torch.cat([q_rows.reshape(q_rows.shape[0], -1), torch.cat(k_new), torch.cat(v_new)], dim=1).contiguous()
    slots = [(g.cache_len, g.n_new) for g in groups for _ in range(g.batch)]
    cu = [0]
    for _, n in slots:
        cu.append(cu[-1] + n)
    return InputSet(
        qs, ks, vs, sinks, q_rows, qkv, key_cache, value_cache, bt.to(device),
        torch.tensor(cu, dtype=torch.int32, device=device),
        torch.tensor([c for c, _ in slots], dtype=torch.int32, device=device),
        torch.full((cu[-1], case.hq * case.dv), float("nan"), dtype=bf16, device=device),
    )


# ---- fp32 check on a sample of rows ----------------------------------------------------------

def sample_rows(case: Case, groups: Tuple[Group, ...], per_slot: int = 48, max_slots: int = 8):
    """(group index, batch index, list of new-token indices) to check: first, last and random rows."""
    import random
    rnd = random.Random(1234)
    picks = []
    for gi, g in enumerate(groups):
        for b in sorted(rnd.sample(range(g.batch), min(g.batch, max_slots))):
            if g.n_new <= per_slot:
                rows = list(range(g.n_new))
            else:
                edge = per_slot // 4
                middle = rnd.sample(range(edge, g.n_new - edge), per_slot - 2 * edge)
                rows = sorted(set(range(edge)) | set(middle) | set(range(g.n_new - edge, g.n_new)))
            picks.append((gi, b, rows))
    return picks


def fp32_attention(case: Case, g: Group, q, k, v, sinks, rows):
    """fp32 attention for new tokens `rows` of one slot: q [Hq, n, D], k [Hkv, L, D] -> [len(rows), Hq, Dv]."""
    import torch
    rows_t = torch.tensor(rows, device=q.device)
    qf = q[:, rows_t].float()                                          # [Hq, r, D]
    grp = case.hq // case.hkv
    kf = k.float().repeat_interleave(grp, dim=0)                       # [Hq, L, D]
    vf = v.float().repeat_interleave(grp, dim=0)
    s = torch.einsum("hrd,hld->hrl", qf, kf) / math.sqrt(case.d)
    p = (g.cache_len + rows_t)[:, None]                                # positions [r, 1]
    j = torch.arange(g.kv_len, device=q.device)[None, :]
    visible = j <= p
    if case.window > 0:
        visible &= j > p - case.window
    s = s.masked_fill(~visible[None], float("-inf"))
    m = s.amax(dim=-1, keepdim=True)
    if sinks is not None:
        m = torch.maximum(m, sinks[:, None, None])
    e = torch.exp(s - m)
    den = e.sum(-1, keepdim=True)
    if sinks is not None:
        den = den + torch.exp(sinks[:, None, None] - m)
    return (torch.einsum("hrl,hlv->hrv", e, vf) / den).transpose(0, 1)


def rel_err(x, ref) -> float:
    """||x - ref|| / ||ref|| in float64; NaN anywhere gives inf."""
    import torch
    x, ref = x.double(), ref.double()
    if not torch.isfinite(x).all():
        return float("inf")
    return float((x - ref).norm() / ref.norm().clamp_min(1e-30))


def check_ours(case: Case, groups, s: InputSet, picks) -> float:
    """Worst relative error of our packed output rows against fp32 attention on the sampled rows."""
    worst = 0.0
    row0 = [0]
    for g in groups:
        row0.append(row0[-1] + g.batch * g.n_new)
    out = s.out.view(-1, case.hq, case.dv)
    for gi, b, rows in picks:
        g = groups[gi]
        ref = fp32_attention(case, g, s.q[gi][b], s.k[gi][b], s.v[gi][b], s.sinks, rows)
        base = row0[gi] + b * g.n_new
        got = out[[base + r for r in rows]]
        worst = max(worst, rel_err(got, ref))
    return worst


def check_peer(case: Case, groups, s: InputSet, outs, picks, with_sinks: bool = True) -> float:
    """Worst relative error of a peer's per-group outputs [B, Hq, n, Dv] on the sampled rows.

    with_sinks=False checks against attention without the sink term (a peer that cannot add sinks).
    """
    worst = 0.0
    sinks = s.sinks if with_sinks else None
    for gi, b, rows in picks:
        g = groups[gi]
        ref = fp32_attention(case, g, s.q[gi][b], s.k[gi][b], s.v[gi][b], sinks, rows)
        got = outs[gi][b][:, rows].transpose(0, 1)
        worst = max(worst, rel_err(got, ref))
    return worst


def check_with_reference(case: Case, groups, s: InputSet) -> float:
    """Our output against paddle_gqa.reference (float64 NumPy) on the whole step; small steps only."""
    import numpy as np
    import torch
    from paddle_gqa import reference
    f = lambda t: t.float().cpu().numpy().astype(np.float64)
    ref = reference.paged_attention(
        f(s.q_rows), f(s.key_cache), f(s.value_cache), s.block_tables.cpu().numpy(),
        s.cu_seqlens_q.cpu().numpy(), s.cache_seqlens.cpu().numpy(),
        None if s.sinks is None else s.sinks.cpu().numpy(), sliding_window=case.window)
    return rel_err(s.out, torch.from_numpy(ref).to(s.out.device))

