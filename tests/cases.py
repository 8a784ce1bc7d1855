"""Framework-neutral step cases (NumPy): named batch specs, a random step builder, result checks.

A StepCase holds one step's inputs as float64 arrays whose values are exactly representable in
the case's dtype, plus everything a check needs (which cache entries the step writes). Runners
(tests/gpu/runners.py) turn it into framework tensors; `check_*` compare what came back with the
float64 reference (paddle_gqa/reference.py).
"""
from __future__ import annotations

import dataclasses
import math
import re
from typing import List, Optional, Sequence, Tuple

import numpy as np

from paddle_gqa import kernel_table
from paddle_gqa import reference

# ---------------------------------------------------------------------------------------------
# Parameter lists: all from the one kernel table.

HEAD_DIMS = tuple(kernel_table.HEAD_DIMS)
BLOCK_SIZES = tuple(kernel_table.BLOCK_SIZES)
FAST_GROUP_SIZES = tuple(kernel_table.FAST_GROUP_SIZES)
CPU_DTYPES = tuple(kernel_table.CPU_DTYPES)
CUDA_DTYPES = tuple(kernel_table.CUDA_DTYPES)
# Group sizes the grids cover: fast paths (incl. 3 and 6) and one the runtime-G path runs.
GROUP_SIZES = (1, 2, 3, 4, 6, 8) + tuple(g for g in (9,) if g not in FAST_GROUP_SIZES)
ROPE_VARIANTS = ("none", "neox", "gptj", "partial", "partial_gptj")

# Largest |error| allowed in an attention output, relative and absolute, per dtype: about twice a
# same-precision naive computation (outputs are averages of N(0,1) values, |out| <~ 3).
OUTPUT_TOL = {"float32": (2e-5, 2e-5), "float16": (1e-2, 1e-2), "bfloat16": (1e-2, 1e-2),
              "float64": (1e-12, 1e-12)}
# Significand bits of each dtype: a rotated key/query computed in fp32 and rounded may sit one
# unit in the last place from the correctly rounded float64 value.
_SIGNIFICAND_BITS = {"float32": 24, "float16": 11, "bfloat16": 8, "float64": 53}


def rounded_tol(dtype: str) -> Tuple[float, float]:
    """(rtol, atol) for values the op rounds to dtype after fp32 math (rotated K and q)."""
    return 2.0 ** -(_SIGNIFICAND_BITS[dtype] - 1), 1e-6


# ---------------------------------------------------------------------------------------------
# Named batch specs: slot layouts [(cache_len, n_new), ...] and extras.

@dataclasses.dataclass(frozen=True)
class BatchSpec:
    name: str
    layout: Tuple[Tuple[int, int], ...]
    pad_rows: int = 0          # rows of qkv past T (ignored, output zero)
    window: int = 0            # sliding_window; 0 = full attention
    causal: bool = True


def named_batches(block_size: int) -> List[BatchSpec]:
    """The named batch compositions; SWA edges are expressed in units of block_size."""
    bs = block_size
    return [
        BatchSpec("decode", ((37, 1), (100, 1), (5, 1), (2 * bs, 1))),
        BatchSpec("prefill", ((0, 45), (0, 17))),
        BatchSpec("chunked_prefill", ((32, 40), (2 * bs + 3, 16))),
        BatchSpec("mixed_idle", ((50, 1), (0, 0), (20, 30), (33, 0), (0, 5), (bs, 1))),
        BatchSpec("padded_rows", ((9, 1), (0, 12), (40, 3)), pad_rows=7),
        BatchSpec("swa_window_1", ((30, 1), (0, 20), (17, 6)), window=1),
        BatchSpec("swa_window_odd", ((3 * bs + 7, 1), (0, 2 * bs + 1), (bs + 2, 9)), window=bs + 5),
        BatchSpec("swa_window_block", ((3 * bs, 1), (bs - 1, bs + 2), (0, 2 * bs)), window=bs),
        BatchSpec("swa_window_huge", ((50, 1), (0, 30), (10, 10)), window=100000),
        BatchSpec("non_causal", ((0, 20), (30, 7), (12, 1)), causal=False),
    ]


def named_batch(name: str, block_size: int) -> BatchSpec:
    for spec in named_batches(block_size):
        if spec.name == name:
            return spec
    raise KeyError(name)


NAMED_BATCH_NAMES = tuple(s.name for s in named_batches(16))
# The sliding-window edges: window 1, a non-multiple of the block size, one block, larger than
# every context; blocks wholly outside every window are -1 (released).
SWA_EDGE_NAMES = ("swa_window_1", "swa_window_odd", "swa_window_block", "swa_window_huge")


# ---------------------------------------------------------------------------------------------
# The step case.

@dataclasses.dataclass
class StepCase:
    """One step's inputs. Arrays are float64 holding values representable in `dtype`
    (NaN marks poisoned cache entries and padding rows)."""

    name: str
    dtype: str
    num_q_heads: int
    num_kv_heads: int
    head_dim: int
    v_head_dim: int
    block_size: int
    qkv: np.ndarray            # [rows, Hq*D + Hkv*(D+Dv)]; rows >= T are NaN
    key_cache: np.ndarray      # [num_blocks, Hkv, bs, D]
    value_cache: np.ndarray    # [num_blocks, Hkv, bs, Dv]
    block_tables: np.ndarray   # int32 [B, max_blocks_per_seq]
    cu_seqlens_q: np.ndarray   # int32 [B+1]
    cache_seqlens: np.ndarray  # int32 [B]
    rotary_cos: Optional[np.ndarray] = None  # float32 [max_position, rotary_dim/2]
    rotary_sin: Optional[np.ndarray] = None
    sinks: Optional[np.ndarray] = None       # float32 [Hq]
    rotary_dim: int = 0        # as passed to the op (0 with tables = D)
    neox_style: bool = True
    sliding_window: int = 0
    causal: bool = True
    softmax_scale: float = 0.0
    rope: str = "none"
    # Cached prefix of each slot in logical order (for the dense cross-check).
    prefix_k: List[np.ndarray] = dataclasses.field(default_factory=list)  # [cache_len, Hkv, D]
    prefix_v: List[np.ndarray] = dataclasses.field(default_factory=list)  # [cache_len, Hkv, Dv]

    @property
    def rows(self) -> int:
        return self.qkv.shape[0]

    @property
    def num_tokens(self) -> int:
        return int(self.cu_seqlens_q[-1])

    @property
    def batch(self) -> int:
        return len(self.cache_seqlens)

    @property
    def group(self) -> int:
        return self.num_q_heads // self.num_kv_heads

    @property
    def num_blocks(self) -> int:
        return self.key_cache.shape[0]

    def layout(self) -> List[Tuple[int, int]]:
        n = np.diff(self.cu_seqlens_q)
        return [(int(c), int(k)) for c, k in zip(self.cache_seqlens, n)]

    def written_mask(self) -> np.ndarray:
        """bool [num_blocks, block_size]: cache entries (all heads) this step writes."""
        mask = np.zeros((self.num_blocks, self.block_size), dtype=bool)
        for b, (cache_len, n) in enumerate(self.layout()):
            for p in range(cache_len, cache_len + n):
                mask[self.block_tables[b, p // self.block_size], p % self.block_size] = True
        return mask

    def op_kwargs(self, op: str) -> dict:
        """Keyword attributes of `op` for this case."""
        rope = dict(rotary_dim=self.rotary_dim, neox_style=self.neox_style)
        mask = dict(sliding_window=self.sliding_window, causal=self.causal, softmax_scale=self.softmax_scale)
        return {"append_attention": {**rope, **mask}, "rope_write_cache": rope, "paged_attention": mask}[op]

    # The float64 reference on this case.
    def ref_rope_write_cache(self):
        return reference.rope_write_cache(
            self.qkv, self.key_cache, self.value_cache, self.block_tables, self.cu_seqlens_q,
            self.cache_seqlens, self.rotary_cos, self.rotary_sin, rotary_dim=self.rotary_dim,
            neox_style=self.neox_style, cache_dtype=self.dtype)

    def ref_paged_attention(self, q, key_cache, value_cache):
        return reference.paged_attention(
            q, key_cache, value_cache, self.block_tables, self.cu_seqlens_q, self.cache_seqlens,
            self.sinks, sliding_window=self.sliding_window, causal=self.causal,
            softmax_scale=self.softmax_scale)

    def ref_append_attention(self):
        return reference.append_attention(
            self.qkv, self.key_cache, self.value_cache, self.block_tables, self.cu_seqlens_q,
            self.cache_seqlens, self.rotary_cos, self.rotary_sin, self.sinks,
            rotary_dim=self.rotary_dim, neox_style=self.neox_style,
            sliding_window=self.sliding_window, causal=self.causal,
            softmax_scale=self.softmax_scale, cache_dtype=self.dtype)

    def describe(self) -> str:
        return (f"{self.name}: {self.dtype} Hq={self.num_q_heads} Hkv={self.num_kv_heads} "
                f"D={self.head_dim} Dv={self.v_head_dim} bs={self.block_size} layout={self.layout()} "
                f"rows={self.rows} window={self.sliding_window} causal={self.causal} rope={self.rope} "
                f"sinks={self.sinks is not None} scale={self.softmax_scale}")


def rope_tables(max_position: int, rotary_dim: int, theta: float = 10000.0):
    """fp32 cos/sin [max_position, rotary_dim/2] of plain RoPE (HF's inv_freq)."""
    inv_freq = theta ** (-np.arange(0, rotary_dim, 2, dtype=np.float64) / rotary_dim)
    angles = np.arange(max_position, dtype=np.float64)[:, None] * inv_freq[None, :]
    return np.cos(angles).astype(np.float32), np.sin(angles).astype(np.float32)


def rope_params(variant: str, head_dim: int) -> Tuple[int, bool, int]:
    """(rotary_dim passed to the op, neox_style, effective rotary dim; 0 = no RoPE) of a variant."""
    partial = head_dim // 2 - (head_dim // 2) % 2
    return {
        "none": (0, True, 0),
        "neox": (0, True, head_dim),          # rotary_dim 0 with tables = D
        "gptj": (head_dim, False, head_dim),
        "partial": (partial, True, partial),
        "partial_gptj": (partial, False, partial),
    }[variant]


def _random(rng, shape, dtype: str, scale: float = 1.0) -> np.ndarray:
    """Normal values rounded to dtype, never exactly zero."""
    x = rng.standard_normal(shape) * scale
    x = np.where(np.abs(x) < 1e-3, 1e-3 + np.abs(x), x)
    return reference.round_to_dtype(x, dtype)


def allocate_blocks(layout: Sequence[Tuple[int, int]], block_size: int, *, window: int = 0,
                    causal: bool = True, spare_blocks: int = 3, rng=None) -> Tuple[np.ndarray, int]:
    """Block tables [B, max_blocks_per_seq] int32 over shuffled physical ids, and num_blocks.

    Every logical block up to kv_len gets a block, except (window > 0) those wholly before the
    first key any of the slot's new queries sees: -1, as if released. One spare column of -1, and
    `spare_blocks` physical blocks no table references.
    """
    rng = np.random.default_rng(0) if rng is None else rng
    bs = block_size
    needed = []
    for cache_len, n in layout:
        kv_len = cache_len + n
        first = 0
        if window > 0 and n > 0:
            lo, _ = reference.visible_range(cache_len, kv_len, causal, window)
            first = int(lo) // bs
        needed.append(range(first, (kv_len + bs - 1) // bs))
    max_blocks = max([r.stop for r in needed] + [1]) + 1
    total = sum(len(r) for r in needed) + spare_blocks
    physical = iter(rng.permutation(total))
    tables = np.full((len(layout), max_blocks), -1, dtype=np.int32)
    for b, r in enumerate(needed):
        for lb in r:
            tables[b, lb] = next(physical)
    return tables, total


def build_step(*, num_q_heads: int, num_kv_heads: int, head_dim: int, v_head_dim: int,
               block_size: int, dtype: str, layout: Sequence[Tuple[int, int]], window: int = 0,
               causal: bool = True, sinks: bool = False, rope: str = "none",
               softmax_scale: float = 0.0, pad_rows: int = 0, spare_blocks: int = 3,
               release_out_of_window: bool = True, seed: int = 0, name: str = "step") -> StepCase:
    """A random step over `layout` [(cache_len, n_new), ...].

    Physical blocks are shuffled; every cache entry that holds no cached token (unused blocks,
    tails of partly filled blocks, released blocks) is NaN, so reading one shows up as NaN in an
    output. With a window, logical blocks wholly before every new query's window are -1 in
    block_tables (released). Table columns past a slot's last block are -1 too.
    """
    rng = np.random.default_rng(seed)
    hq, hkv, d, dv, bs = num_q_heads, num_kv_heads, head_dim, v_head_dim, block_size
    assert hq % hkv == 0
    batch = len(layout)
    cache_lens = np.array([c for c, _ in layout], dtype=np.int64)
    news = np.array([n for _, n in layout], dtype=np.int64)
    kv_lens = cache_lens + news
    tables, total = allocate_blocks(layout, bs, window=window if release_out_of_window else 0,
                                    causal=causal, spare_blocks=spare_blocks, rng=rng)
    k_cache = np.full((total, hkv, bs, d), np.nan)
    v_cache = np.full((total, hkv, bs, dv), np.nan)
    prefix_k, prefix_v = [], []
    for b in range(batch):
        c = int(cache_lens[b])
        pk, pv = _random(rng, (c, hkv, d), dtype), _random(rng, (c, hkv, dv), dtype)
        prefix_k.append(pk)
        prefix_v.append(pv)
        for p in range(c):
            blk = tables[b, p // bs]
            if blk >= 0:
                k_cache[blk, :, p % bs] = pk[p]
                v_cache[blk, :, p % bs] = pv[p]
    t = int(news.sum())
    width = hq * d + hkv * (d + dv)
    qkv = np.full((t + pad_rows, width), np.nan)
    qkv[:t] = _random(rng, (t, width), dtype)
    cu = np.zeros(batch + 1, dtype=np.int32)
    cu[1:] = np.cumsum(news)

    rotary_dim, neox, eff = rope_params(rope, d)
    cos = sin = None
    if eff:
        max_position = int(kv_lens.max()) + 17
        cos, sin = rope_tables(max_position, eff)
    sink_arr = None
    if sinks:
        sink_arr = (rng.standard_normal(hq) * 2.0).astype(np.float32)
    return StepCase(
        name=name, dtype=dtype, num_q_heads=hq, num_kv_heads=hkv, head_dim=d, v_head_dim=dv,
        block_size=bs, qkv=qkv, key_cache=k_cache, value_cache=v_cache, block_tables=tables,
        cu_seqlens_q=cu, cache_seqlens=cache_lens.astype(np.int32), rotary_cos=cos, rotary_sin=sin,
        sinks=sink_arr, rotary_dim=rotary_dim, neox_style=neox, sliding_window=window, causal=causal,
        softmax_scale=softmax_scale, rope=rope, prefix_k=prefix_k, prefix_v=prefix_v)


def build_named(spec: BatchSpec, **kw) -> StepCase:
    """build_step over a named batch spec; kw as build_step (window/causal come from the spec)."""
    kw.setdefault("name", spec.name)
    return build_step(layout=spec.layout, pad_rows=spec.pad_rows, window=spec.window,
                      causal=spec.causal, **kw)


def sampled_grid(count: int, seed: int, dtypes: Sequence[str], head_dims=HEAD_DIMS,
                 block_sizes=BLOCK_SIZES, group_sizes=GROUP_SIZES) -> List[dict]:
    """`count` build_named keyword sets, a sample of the grid (not the cartesian product) in
    which every listed value of each axis appears once count reaches the axis length."""
    rng = np.random.default_rng(seed)
    axes = {
        "dtype": list(dtypes),
        "dims": list(head_dims),
        "block_size": list(block_sizes),
        "group": list(group_sizes),
        "batch": list(NAMED_BATCH_NAMES),
        "rope": list(ROPE_VARIANTS),
        "sinks": [False, True],
        "scale": [0.0, 0.0, 0.07],
        "hkv": [1, 2],
    }
    # Per axis: independent shuffles laid end to end, so each value appears once per pass and
    # values of different axes pair at random.
    orders = {}
    for k, v in axes.items():
        seq = []
        while len(seq) < count:
            seq += [v[i] for i in rng.permutation(len(v))]
        orders[k] = seq
    grid = []
    for i in range(count):
        pick = {k: orders[k][i] for k in axes}
        d, dv = pick["dims"]
        hkv = pick["hkv"]
        spec = named_batch(pick["batch"], pick["block_size"])
        grid.append(dict(spec=spec, num_q_heads=hkv * pick["group"], num_kv_heads=hkv, head_dim=d,
                         v_head_dim=dv, block_size=pick["block_size"], dtype=pick["dtype"],
                         sinks=pick["sinks"], rope=pick["rope"], softmax_scale=pick["scale"],
                         seed=seed * 1000 + i))
    return grid


def build_grid_case(params: dict) -> StepCase:
    """The StepCase of one sampled_grid entry."""
    kw = dict(params)
    return build_named(kw.pop("spec"), **kw)


def grid_id(params: dict) -> str:
    return (f"{params['spec'].name}-{params['dtype']}-G{params['num_q_heads'] // params['num_kv_heads']}"
            f"-Hkv{params['num_kv_heads']}-{params['head_dim']}x{params['v_head_dim']}"
            f"-bs{params['block_size']}-{params['rope']}{'-sinks' if params['sinks'] else ''}"
            f"{'-scale' if params['softmax_scale'] else ''}")


# ---------------------------------------------------------------------------------------------
# Checks (NumPy in, AssertionError out).

def assert_close(actual: np.ndarray, expected: np.ndarray, rtol: float, atol: float, what: str):
    """|actual - expected| <= atol + rtol*|expected| everywhere, NaN in actual is an error."""
    actual = np.asarray(actual, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape}, expected {expected.shape}"
    err = np.abs(actual - expected)
    bad = ~(err <= atol + rtol * np.abs(expected))  # NaN counts as bad
    if bad.any():
        idx = tuple(int(i) for i in np.argwhere(bad)[0])
        worst = np.nanmax(np.where(np.isnan(err), np.inf, err))
        raise AssertionError(
            f"{what}: {int(bad.sum())} of {bad.size} entries off (rtol={rtol}, atol={atol}); first at "
            f"{idx}: got {actual[idx]!r}, expected {expected[idx]!r}; max error {worst:.3g}")


def check_output(case: StepCase, out: np.ndarray, expected: np.ndarray, what: str = "out"):
    """An attention output [rows, Hq*Dv] against the reference; rows >= T exactly zero."""
    rows, t = case.rows, case.num_tokens
    assert out.shape == (rows, case.num_q_heads * case.v_head_dim), \
        f"{what}: shape {out.shape}, expected {(rows, case.num_q_heads * case.v_head_dim)}"
    rtol, atol = OUTPUT_TOL[case.dtype]
    assert_close(out[:t], expected[:t], rtol, atol, f"{what} rows < T [{case.describe()}]")
    if rows > t:
        assert np.all(out[t:] == 0), f"{what}: padding rows >= T={t} are not zero [{case.describe()}]"


def check_q(case: StepCase, q: np.ndarray, expected: np.ndarray):
    """rope_write_cache's q [rows, Hq, D]: rotated and rounded; rows >= T zero."""
    t = case.num_tokens
    assert q.shape == (case.rows, case.num_q_heads, case.head_dim), f"q: shape {q.shape}"
    rtol, atol = rounded_tol(case.dtype)
    assert_close(q[:t], expected[:t], rtol, atol, f"q [{case.describe()}]")
    if case.rows > t:
        assert np.all(q[t:] == 0), f"q: padding rows >= T={t} are not zero [{case.describe()}]"


def check_cache(case: StepCase, which: str, bits_before: np.ndarray, bits_after: np.ndarray,
                values_after: np.ndarray, expected: np.ndarray, writes: bool = True):
    """Every entry the step does not write is bit-identical to before (NaN-safe: raw bits);
    written entries match the reference (V and un-rotated K exactly, rotated K to one ulp)."""
    written = case.written_mask() if writes else np.zeros((case.num_blocks, case.block_size), bool)
    changed = bits_before != bits_after
    stray = changed & ~written[:, None, :, None]
    if stray.any():
        idx = tuple(int(i) for i in np.argwhere(stray)[0])
        raise AssertionError(f"{which}: {int(stray.sum())} entries the step does not write changed; "
                             f"first at [block, head, slot, dim] = {idx} [{case.describe()}]")
    if not written.any():
        return
    blk, off = np.nonzero(written)
    got, exp = values_after[blk, :, off, :], expected[blk, :, off, :]
    rotated = which == "key_cache" and case.rotary_cos is not None
    rtol, atol = rounded_tol(case.dtype) if rotated else (0.0, 0.0)
    assert_close(got, exp, rtol, atol, f"{which} written entries [{case.describe()}]")


def cache_bits(runner, t) -> Tuple[np.ndarray, np.ndarray]:
    """Snapshots of the raw bits of both caches in `t` (key, value), for check_caches."""
    return runner.bits(t["key_cache"]), runner.bits(t["value_cache"])


def check_caches(runner, case: StepCase, t, bits_before, expected_k: np.ndarray, expected_v: np.ndarray,
                 writes: bool = True):
    """check_cache on both caches of `t` after an op; bits_before from cache_bits before the op."""
    for which, before, expected in zip(("key_cache", "value_cache"), bits_before, (expected_k, expected_v)):
        check_cache(case, which, before, runner.bits(t[which]), runner.values(t[which]), expected, writes)


# ---------------------------------------------------------------------------------------------
# Drivers: run an op through a runner and check everything. A runner (tests/gpu/runners.py)
# provides load(case) -> dict of tensors, the three ops, values(t) -> float64, bits(t) -> uint.

def run_append_and_check(runner, case: StepCase):
    t = runner.load(case)
    before = cache_bits(runner, t)
    out = runner.append_attention(case, t)
    ref_out, ref_k, ref_v = case.ref_append_attention()
    check_output(case, runner.values(out), ref_out)
    check_caches(runner, case, t, before, ref_k, ref_v)
    return out, t


def run_rope_write_and_check(runner, case: StepCase):
    t = runner.load(case)
    before = cache_bits(runner, t)
    q = runner.rope_write_cache(case, t)
    ref_q, ref_k, ref_v = case.ref_rope_write_cache()
    check_q(case, runner.values(q), ref_q)
    check_caches(runner, case, t, before, ref_k, ref_v)
    return q, t


def paged_case(case: StepCase) -> Tuple[StepCase, np.ndarray]:
    """The same step with the new tokens already in the cache (reference write), and its q."""
    ref_q, ref_k, ref_v = case.ref_rope_write_cache()
    q = ref_q.copy()
    q[case.num_tokens:] = np.nan  # padding rows of q are ignored
    return dataclasses.replace(case, key_cache=ref_k, value_cache=ref_v), q


def run_paged_and_check(runner, case: StepCase):
    pcase, q_np = paged_case(case)
    t = runner.load(pcase)
    q = runner.tensor(q_np, case.dtype)
    before = cache_bits(runner, t)
    out = runner.paged_attention(pcase, t, q)
    ref = pcase.ref_paged_attention(q_np, pcase.key_cache, pcase.value_cache)
    check_output(pcase, runner.values(out), ref)
    # paged_attention writes nothing.
    check_caches(runner, pcase, t, before, pcase.key_cache, pcase.value_cache, writes=False)
    return out, t


def run_split_matches_fused(runner, case: StepCase):
    """append_attention == rope_write_cache then paged_attention on the op's own q and caches:
    caches bit-identical, outputs equal within the output tolerance."""
    fused = runner.load(case)
    out_fused = runner.append_attention(case, fused)
    split = runner.load(case)
    q = runner.rope_write_cache(case, split)
    out_split = runner.paged_attention(case, split, q)
    for which in ("key_cache", "value_cache"):
        assert np.array_equal(runner.bits(fused[which]), runner.bits(split[which])), \
            f"{which} differs between append_attention and rope_write_cache [{case.describe()}]"
    rtol, atol = OUTPUT_TOL[case.dtype]
    assert_close(runner.values(out_split), runner.values(out_fused), rtol, atol,
                 f"split vs fused output [{case.describe()}]")


def dense_attention(case: StepCase, cache_dtype: Optional[str] = "float64") -> np.ndarray:
    """An independent dense formulation of §2 for cross-checking the reference: per slot the
    logical K/V sequence (prefix + new tokens), RoPE as complex rotation, an explicit
    [n, kv_len] mask matrix, and softmax over the scores with an extra sink column."""
    hq, hkv, d, dv = case.num_q_heads, case.num_kv_heads, case.head_dim, case.v_head_dim
    g = hq // hkv
    rows = case.rows
    qkv = case.qkv
    out = np.zeros((rows, hq, dv))
    _, neox, rd = rope_params(case.rope, d)
    scale = case.softmax_scale if case.softmax_scale > 0 else 1.0 / math.sqrt(d)

    def rot(x, pos):  # x [n, H, D]
        if not rd:
            return x
        half = rd // 2
        ang = np.asarray(case.rotary_cos, np.float64)[pos] + 1j * np.asarray(case.rotary_sin, np.float64)[pos]
        y = x.copy()
        if neox:
            z = (x[..., :half] + 1j * x[..., half:rd]) * ang[:, None, :]
            y[..., :half], y[..., half:rd] = z.real, z.imag
        else:
            z = (x[..., 0:rd:2] + 1j * x[..., 1:rd:2]) * ang[:, None, :]
            y[..., 0:rd:2], y[..., 1:rd:2] = z.real, z.imag
        return y

    for b, (cache_len, n) in enumerate(case.layout()):
        if n == 0:
            continue
        s0 = int(case.cu_seqlens_q[b])
        tok = qkv[s0:s0 + n]
        pos = np.arange(cache_len, cache_len + n)
        q = reference.round_to_dtype(rot(tok[:, :hq * d].reshape(n, hq, d), pos), cache_dtype)
        k_new = reference.round_to_dtype(rot(tok[:, hq * d:hq * d + hkv * d].reshape(n, hkv, d), pos), cache_dtype)
        v_new = reference.round_to_dtype(tok[:, hq * d + hkv * d:].reshape(n, hkv, dv), cache_dtype)
        kv_len = cache_len + n
        keys = np.concatenate([case.prefix_k[b], k_new])    # [kv_len, Hkv, D]
        vals = np.concatenate([case.prefix_v[b], v_new])
        mask = np.zeros((n, kv_len), dtype=bool)
        for i in range(n):
            for j in range(kv_len):
                ok = (j <= pos[i]) if case.causal else True
                if case.sliding_window > 0:
                    ok = ok and (pos[i] - case.sliding_window < j)
                mask[i, j] = ok
        for h in range(hq):
            s = scale * q[:, h, :] @ keys[:, h // g, :].T                    # [n, kv_len]
            sink_col = np.full((n, 1), case.sinks[h] if case.sinks is not None else -np.inf)
            logits = np.concatenate([np.where(mask, s, -np.inf), sink_col], axis=1)
            for i in range(n):
                if not mask[i].any():
                    continue
                w = np.exp(logits[i] - logits[i].max())
                w = w / w.sum()
                out[s0 + i, h] = w[:kv_len] @ vals[:, h // g, :]
    return out.reshape(rows, hq * dv)


# ---------------------------------------------------------------------------------------------
# The bad-input matrix (DESIGN.md §4), framework-neutral: each entry mutates a valid step's
# tensors `t` (argument name -> tensor) and attribute overrides `a` through runner helpers, and
# says which argument the error must name. Ops: A = append_attention, R = rope_write_cache,
# P = paged_attention.

@dataclasses.dataclass(frozen=True)
class BadInput:
    id: str
    ops: str          # subset of "ARP"
    match: str        # regex the error message must match (names the argument)
    mutate: object    # (runner, case, t, a) -> None
    device_data: bool = False  # a fact in device-resident data (checked where the data lives)
    # A strided view: a framework that hands the op a contiguous copy (Paddle's custom-op runner
    # does) may run it instead of raising, but then the caller's tensors must hold the right result.
    may_copy: bool = False


OP_LETTERS = {"A": "append_attention", "R": "rope_write_cache", "P": "paged_attention"}


def bad_input_case(dtype: str) -> StepCase:
    """The valid step every bad input starts from: RoPE, sinks, three slots, one spare column."""
    return build_step(num_q_heads=6, num_kv_heads=2, head_dim=128, v_head_dim=128, block_size=16,
                      dtype=dtype, layout=[(20, 3), (0, 5), (40, 1)], rope="neox", sinks=True,
                      seed=31, name="bad_input_base")


def _other_float(dtype: str) -> str:
    return "float16" if dtype != "float16" else "bfloat16"


def _set(name, fn):
    """A mutation replacing t[name] by fn(runner, case, t)."""
    def mutate(r, c, t, a):
        t[name] = fn(r, c, t)
    return mutate


def _attrs(**kw):
    def mutate(r, c, t, a):
        a.update(kw)
    return mutate


def _new_qkv(hq_width_heads=None, extra=0):
    """qkv with a different number of query heads or extra columns (random values)."""
    def fn(r, c, t):
        hq = c.num_q_heads if hq_width_heads is None else hq_width_heads
        width = hq * c.head_dim + c.num_kv_heads * (c.head_dim + c.v_head_dim) + extra
        return r.tensor(np.random.default_rng(0).standard_normal((c.rows, width)), c.dtype)
    return fn


def _odd_dims(d, dv):
    """Caches (and qkv / q) of head dims (d, dv) that have no kernel."""
    def mutate(r, c, t, a):
        rng = np.random.default_rng(1)
        nb, hkv, bs = c.num_blocks, c.num_kv_heads, c.block_size
        t["key_cache"] = r.tensor(rng.standard_normal((nb, hkv, bs, d)), c.dtype)
        t["value_cache"] = r.tensor(rng.standard_normal((nb, hkv, bs, dv)), c.dtype)
        t["qkv"] = r.tensor(rng.standard_normal((c.rows, c.num_q_heads * d + hkv * (d + dv))), c.dtype)
        t["q"] = r.tensor(rng.standard_normal((c.rows, c.num_q_heads, d)), c.dtype)
        t["rotary_cos"] = r.fp32(np.ones((64, d // 2)))
        t["rotary_sin"] = r.fp32(np.zeros((64, d // 2)))
    return mutate


def _block_size(bs):
    def mutate(r, c, t, a):
        rng = np.random.default_rng(2)
        nb, hkv = c.num_blocks, c.num_kv_heads
        t["key_cache"] = r.tensor(rng.standard_normal((nb, hkv, bs, c.head_dim)), c.dtype)
        t["value_cache"] = r.tensor(rng.standard_normal((nb, hkv, bs, c.v_head_dim)), c.dtype)
    return mutate


def _table(fn):
    """A block_tables mutation: fn(tables copy, case) edits it in place."""
    def build(r, c, t):
        tables = c.block_tables.copy()
        fn(tables, c)
        return r.int32(tables)
    return build


def _ints(name, fn):
    return _set(name, lambda r, c, t: r.int32(fn(getattr(c, name).astype(np.int64).copy(), c)))


def _with(arr, idx, value):
    arr[idx] = value
    return arr


def _merged_heads(name):
    """A cache with its Hkv and block_size dims merged: rank 3."""
    return lambda r, c, t: r.tensor(getattr(c, name).reshape(c.num_blocks, -1, getattr(c, name).shape[3]), c.dtype)


def _zero_slots_starting_at(start):
    """A step of B = 0 slots whose only cu_seqlens_q entry is `start` (must be 0)."""
    def mutate(r, c, t, a):
        t.update(block_tables=r.int32(c.block_tables[:0]), cu_seqlens_q=r.int32(np.array([start])),
                 cache_seqlens=r.int32(np.zeros(0, np.int64)))
    return mutate


def _short_rope_tables(r, c, t, a):
    # RoPE tables of 40 rows: slot 2 writes position 40.
    t.update(rotary_cos=r.fp32(c.rotary_cos[:40]), rotary_sin=r.fp32(c.rotary_sin[:40]))


def _overrun_block_tables(r, c, t, a):
    # Slot 0's kv_len exceeds max_blocks_per_seq * block_size. Without RoPE tables, else the
    # position check (which comes first) fires instead.
    _ints("cache_seqlens", lambda x, c: _with(x, 0, c.block_tables.shape[1] * c.block_size))(r, c, t, a)
    t.update(rotary_cos=None, rotary_sin=None)


BAD_INPUTS = [
    # dtypes
    BadInput("qkv_float64", "AR", r"\bqkv\b", _set("qkv", lambda r, c, t: r.cast(t["qkv"], "float64"))),
    BadInput("qkv_int32", "AR", r"\bqkv\b", _set("qkv", lambda r, c, t: r.raw(np.ones(c.qkv.shape, np.int32)))),
    BadInput("q_float64", "P", r"\bq\b", _set("q", lambda r, c, t: r.cast(t["q"], "float64"))),
    BadInput("key_cache_dtype", "ARP", r"\bkey_cache\b",
             _set("key_cache", lambda r, c, t: r.cast(t["key_cache"], _other_float(c.dtype)))),
    BadInput("value_cache_dtype", "ARP", r"\bvalue_cache\b",
             _set("value_cache", lambda r, c, t: r.cast(t["value_cache"], _other_float(c.dtype)))),
    BadInput("block_tables_int64", "ARP", r"\bblock_tables\b",
             _set("block_tables", lambda r, c, t: r.cast(t["block_tables"], "int64"))),
    BadInput("cu_seqlens_q_int64", "ARP", r"\bcu_seqlens_q\b",
             _set("cu_seqlens_q", lambda r, c, t: r.cast(t["cu_seqlens_q"], "int64"))),
    BadInput("cache_seqlens_float32", "ARP", r"\bcache_seqlens\b",
             _set("cache_seqlens", lambda r, c, t: r.fp32(c.cache_seqlens))),
    BadInput("rotary_cos_float16", "AR", r"\brotary_cos\b",
             _set("rotary_cos", lambda r, c, t: r.cast(t["rotary_cos"], "float16"))),
    BadInput("rotary_sin_bfloat16", "AR", r"\brotary_sin\b",
             _set("rotary_sin", lambda r, c, t: r.cast(t["rotary_sin"], "bfloat16"))),
    BadInput("sinks_float16", "AP", r"\bsinks\b", _set("sinks", lambda r, c, t: r.cast(t["sinks"], "float16"))),
    # ranks
    BadInput("qkv_rank3", "AR", r"\bqkv\b",
             _set("qkv", lambda r, c, t: r.tensor(c.qkv.reshape(c.rows, 1, -1), c.dtype))),
    BadInput("q_rank2", "P", r"\bq\b",
             _set("q", lambda r, c, t: r.tensor(np.zeros((c.rows, c.num_q_heads * c.head_dim)), c.dtype))),
    BadInput("key_cache_rank3", "ARP", r"\bkey_cache\b", _set("key_cache", _merged_heads("key_cache"))),
    BadInput("value_cache_rank3", "ARP", r"\bvalue_cache\b", _set("value_cache", _merged_heads("value_cache"))),
    BadInput("block_tables_rank1", "ARP", r"\bblock_tables\b",
             _set("block_tables", lambda r, c, t: r.int32(c.block_tables.reshape(-1)))),
    BadInput("cu_seqlens_q_rank2", "ARP", r"\bcu_seqlens_q\b",
             _set("cu_seqlens_q", lambda r, c, t: r.int32(c.cu_seqlens_q.reshape(1, -1)))),
    BadInput("cache_seqlens_rank2", "ARP", r"\bcache_seqlens\b",
             _set("cache_seqlens", lambda r, c, t: r.int32(c.cache_seqlens.reshape(1, -1)))),
    BadInput("sinks_rank2", "AP", r"\bsinks\b", _set("sinks", lambda r, c, t: r.fp32(c.sinks.reshape(2, -1)))),
    BadInput("rotary_cos_rank1", "AR", r"\brotary_cos\b",
             _set("rotary_cos", lambda r, c, t: r.fp32(c.rotary_cos.reshape(-1)))),
    # shapes
    BadInput("value_cache_num_blocks", "ARP", r"\bvalue_cache\b",
             _set("value_cache", lambda r, c, t: r.tensor(c.value_cache[:-1], c.dtype))),
    BadInput("value_cache_heads", "ARP", r"\bvalue_cache\b",
             _set("value_cache", lambda r, c, t: r.tensor(c.value_cache[:, :1], c.dtype))),
    BadInput("value_cache_block_size", "ARP", r"\bvalue_cache\b",
             _set("value_cache", lambda r, c, t: r.tensor(c.value_cache[:, :, :8], c.dtype))),
    BadInput("cu_seqlens_q_length", "ARP", r"\bcu_seqlens_q\b",
             _set("cu_seqlens_q", lambda r, c, t: r.int32(c.cu_seqlens_q[:-1]))),
    BadInput("cache_seqlens_length", "ARP", r"\bcache_seqlens\b",
             _set("cache_seqlens", lambda r, c, t: r.int32(c.cache_seqlens[:-1]))),
    BadInput("sinks_length", "AP", r"\bsinks\b", _set("sinks", lambda r, c, t: r.fp32(c.sinks[:-1]))),
    BadInput("hq_not_multiple_of_hkv", "AR", r"\bqkv\b", _set("qkv", _new_qkv(hq_width_heads=5))),
    BadInput("qkv_width", "AR", r"\bqkv\b", _set("qkv", _new_qkv(extra=1))),
    BadInput("q_heads_not_multiple_of_hkv", "P", r"\bq\b",
             _set("q", lambda r, c, t: r.tensor(np.ones((c.rows, 5, c.head_dim)), c.dtype))),
    BadInput("q_head_dim", "P", r"\bq\b",
             _set("q", lambda r, c, t: r.tensor(np.ones((c.rows, c.num_q_heads, c.head_dim + 2)), c.dtype))),
    BadInput("unsupported_head_dim", "ARP", r"\bkey_cache\b", _odd_dims(80, 80)),
    BadInput("unsupported_head_dim_pair", "ARP", r"\bkey_cache\b", _odd_dims(128, 96)),
    BadInput("unsupported_block_size", "ARP", r"block_size", _block_size(8)),
    # non-contiguous
    *[BadInput(f"{name}_noncontiguous", ops, rf"\b{name}\b",
               _set(name, lambda r, c, t, name=name: r.noncontiguous(t[name])), may_copy=True)
      for name, ops in (("qkv", "AR"), ("q", "P"), ("key_cache", "ARP"), ("value_cache", "ARP"),
                        ("block_tables", "ARP"), ("cu_seqlens_q", "ARP"), ("cache_seqlens", "ARP"),
                        ("rotary_cos", "AR"), ("sinks", "AP"))],
    # attributes
    BadInput("window_without_causal", "AP", r"sliding_window", _attrs(sliding_window=4, causal=False)),
    BadInput("negative_window", "AP", r"sliding_window", _attrs(sliding_window=-1)),
    BadInput("negative_softmax_scale", "AP", r"softmax_scale", _attrs(softmax_scale=-0.5)),
    BadInput("nan_softmax_scale", "AP", r"softmax_scale", _attrs(softmax_scale=float("nan"))),
    BadInput("rotary_dim_odd", "AR", r"rotary_dim", _attrs(rotary_dim=63)),
    BadInput("rotary_dim_above_d", "AR", r"rotary_dim", _attrs(rotary_dim=130)),
    BadInput("rotary_dim_negative", "AR", r"rotary_dim", _attrs(rotary_dim=-2)),
    BadInput("rotary_dim_without_tables", "AR", r"rotary_dim",
             lambda r, c, t, a: (t.update(rotary_cos=None, rotary_sin=None), a.update(rotary_dim=64))),
    BadInput("table_width_mismatch", "AR", r"\brotary_cos\b", _attrs(rotary_dim=64)),
    BadInput("cos_without_sin", "AR", r"\brotary_sin\b", lambda r, c, t, a: t.update(rotary_sin=None)),
    BadInput("sin_without_cos", "AR", r"\brotary_cos\b", lambda r, c, t, a: t.update(rotary_cos=None)),
    BadInput("sin_shape_differs", "AR", r"\brotary_sin\b",
             _set("rotary_sin", lambda r, c, t: r.fp32(c.rotary_sin[:-1]))),
    # device-resident data (layout [(20, 3), (0, 5), (40, 1)]: cu_seqlens_q = [0, 3, 8, 9])
    BadInput("cu_seqlens_q_start", "ARP", r"\bcu_seqlens_q\b",
             _ints("cu_seqlens_q", lambda x, c: _with(x, 0, 1)), device_data=True),
    BadInput("cu_seqlens_q_start_zero_slots", "ARP", r"\bcu_seqlens_q\b", _zero_slots_starting_at(1),
             device_data=True),
    BadInput("cu_seqlens_q_decreasing", "ARP", r"\bcu_seqlens_q\b",
             _ints("cu_seqlens_q", lambda x, c: np.array([0, 6, 4, 9])),
             device_data=True),
    BadInput("cu_seqlens_q_past_rows", "ARP", r"\bcu_seqlens_q\b",
             _ints("cu_seqlens_q", lambda x, c: _with(x, -1, c.rows + 1)), device_data=True),
    BadInput("cache_seqlens_negative", "ARP", r"\bcache_seqlens\b",
             _ints("cache_seqlens", lambda x, c: _with(x, 1, -1)), device_data=True),
    BadInput("position_past_max_position", "AR", r"\brotary_cos\b", _short_rope_tables, device_data=True),
    BadInput("lengths_overrun_block_tables", "ARP", r"\bblock_tables\b", _overrun_block_tables, device_data=True),
    BadInput("written_block_minus_1", "ARP", r"\bblock_tables\b",
             _set("block_tables", _table(lambda tb, c: _with(tb, (0, 1), -1))), device_data=True),
    BadInput("written_block_past_num_blocks", "ARP", r"\bblock_tables\b",
             _set("block_tables", _table(lambda tb, c: _with(tb, (1, 0), c.num_blocks))), device_data=True),
    BadInput("read_block_minus_1", "AP", r"\bblock_tables\b",
             _set("block_tables", _table(lambda tb, c: _with(tb, (2, 0), -1))), device_data=True),
    BadInput("read_block_past_num_blocks", "AP", r"\bblock_tables\b",
             _set("block_tables", _table(lambda tb, c: _with(tb, (2, 1), c.num_blocks + 5))), device_data=True),
]

BAD_INPUT_PARAMS = [(bad, OP_LETTERS[op]) for bad in BAD_INPUTS for op in bad.ops]


def bad_input_id(param) -> str:
    bad, op = param
    return f"{op}-{bad.id}"


def run_bad_input(runner, dtype: str, bad: BadInput, op: str, raises):
    """Applies `bad` to a valid step, calls `op`, expects an error matching bad.match (through
    `raises`, pytest.raises), then checks both caches bit-identical to before the call."""
    case = bad_input_case(dtype)
    q_np = None
    if op == "paged_attention":
        case, q_np = paged_case(case)
    t = runner.load(case, q=q_np)
    a = {}
    bad.mutate(runner, case, t, a)
    kb, vb = runner.bits(t["key_cache"]), runner.bits(t["value_cache"])
    if bad.may_copy and getattr(runner, "copies_noncontiguous", False):
        try:
            out = runner.call(op, case, t, **a)
        except Exception as e:  # raising is right too; then it must name the argument
            assert re.search(bad.match, str(e)), f"{bad.id}: error does not match {bad.match!r}: {e}"
        else:
            _check_full_result(runner, case, op, q_np, t, out, kb, vb)
            return
    else:
        with raises(Exception, match=bad.match):
            runner.call(op, case, t, **a)
    assert np.array_equal(kb, runner.bits(t["key_cache"])), f"{bad.id}: key_cache changed by a failed {op}"
    assert np.array_equal(vb, runner.bits(t["value_cache"])), f"{bad.id}: value_cache changed by a failed {op}"


def _check_full_result(runner, case, op, q_np, t, out, kb, vb):
    """The op ran on inputs `t` holding case's values: its output and the caller's caches are right."""
    if op == "paged_attention":
        check_output(case, runner.values(out), case.ref_paged_attention(q_np, case.key_cache, case.value_cache))
        ref_k, ref_v, writes = case.key_cache, case.value_cache, False
    elif op == "append_attention":
        ref_out, ref_k, ref_v = case.ref_append_attention()
        check_output(case, runner.values(out), ref_out)
        writes = True
    else:
        ref_q, ref_k, ref_v = case.ref_rope_write_cache()
        check_q(case, runner.values(out), ref_q)
        writes = True
    check_caches(runner, case, t, (kb, vb), ref_k, ref_v, writes)
