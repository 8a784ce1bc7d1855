"""Float64 NumPy reference of the three ops, written straight from DESIGN.md §2 (shares no kernel code).

Inputs are NumPy arrays (any float dtype; bfloat16 data is passed as float32/float64 values and named
through `cache_dtype`). Everything is computed in float64. What the ops store is rounded to the
storage dtype exactly where the contract says it is stored: the K/V written into the cache, and the
rotated queries (the ops hand attention a q of the input dtype). Outputs are float64; rows >= T are
zero. Imports nothing but NumPy, so it runs on machines without Paddle.
"""
from __future__ import annotations

import math
from typing import Optional, Tuple

import numpy as np

__all__ = [
    "round_to_dtype",
    "apply_rope",
    "split_qkv",
    "visible_range",
    "rope_write_cache",
    "paged_attention",
    "append_attention",
]

# (significand bits including the implicit one, smallest subnormal exponent, largest finite value)
_FLOAT_FORMATS = {
    "float32": (24, -149, float(np.finfo(np.float32).max)),
    "float16": (11, -24, 65504.0),
    "bfloat16": (8, -133, float.fromhex("0x1.fep127")),
}

# Queries per attention chunk are chosen so one chunk's score block holds about this many float64s.
_SCORE_ELEMS_PER_CHUNK = 1 << 22


def round_to_dtype(x, dtype: Optional[str]) -> np.ndarray:
    """Rounds float64 values to the nearest `dtype` value (round half to even), returned as float64.

    dtype None or "float64" leaves values unchanged. Overflow gives +-inf; NaN stays NaN. Done
    directly from float64 (no float32 intermediate), so it is the correctly rounded value.
    """
    x = np.asarray(x, dtype=np.float64)
    if dtype is None or dtype == "float64":
        return x.copy()
    if dtype not in _FLOAT_FORMATS:
        raise ValueError(f"dtype={dtype!r}: expected one of {sorted(_FLOAT_FORMATS)} or 'float64'")
    bits, min_exp, max_finite = _FLOAT_FORMATS[dtype]
    finite = np.isfinite(x)
    xf = np.where(finite, x, 0.0)
    _, e = np.frexp(xf)  # xf = m * 2**e with 0.5 <= |m| < 1, so the leading bit is 2**(e-1)
    quantum_exp = np.maximum(e - bits, min_exp)
    # Scaling by a power of two is exact, and np.round rounds half to even.
    r = np.ldexp(np.round(np.ldexp(xf, -quantum_exp)), quantum_exp)
    r = np.where(np.abs(r) > max_finite, np.copysign(np.inf, r), r)
    return np.where(finite, r, x)


def _storage_dtype(array: np.ndarray, given: Optional[str]) -> str:
    """The dtype the cache stores: `given`, else that of the NumPy array (float64 = no rounding)."""
    if given is not None:
        return given
    name = np.asarray(array).dtype.name
    if name not in ("float32", "float16", "float64"):
        raise ValueError(f"cache dtype {name!r} cannot be inferred: pass cache_dtype="
                         "'float32' | 'float16' | 'bfloat16'")
    return name


def split_qkv(qkv: np.ndarray, num_kv_heads: int, head_dim: int, v_head_dim: int):
    """qkv [rows, Hq*D + Hkv*D + Hkv*Dv] -> q [rows, Hq, D], k [rows, Hkv, D], v [rows, Hkv, Dv]."""
    qkv = np.asarray(qkv, dtype=np.float64)
    rows, width = qkv.shape
    q_width = width - num_kv_heads * (head_dim + v_head_dim)
    if q_width <= 0 or q_width % head_dim:
        raise ValueError(f"qkv width {width} does not hold Hq*{head_dim} + {num_kv_heads}*({head_dim}+{v_head_dim})")
    hq = q_width // head_dim
    q = qkv[:, :q_width].reshape(rows, hq, head_dim)
    k = qkv[:, q_width:q_width + num_kv_heads * head_dim].reshape(rows, num_kv_heads, head_dim)
    v = qkv[:, q_width + num_kv_heads * head_dim:].reshape(rows, num_kv_heads, v_head_dim)
    return q, k, v


def visible_range(p, kv_len: int, causal: bool, sliding_window: int):
    """Keys j a query at position p sees: lo <= j <= hi (DESIGN.md §2). Works elementwise on arrays."""
    p = np.asarray(p, dtype=np.int64)
    hi = np.minimum(p, kv_len - 1) if causal else np.full_like(p, kv_len - 1)
    lo = np.maximum(p - sliding_window + 1, 0) if sliding_window > 0 else np.zeros_like(p)
    return lo, hi


def apply_rope(x: np.ndarray, positions: np.ndarray, cos: np.ndarray, sin: np.ndarray,
               rotary_dim: int, neox_style: bool) -> np.ndarray:
    """RoPE on the first rotary_dim dims of x [n, H, D] at `positions` [n]; the rest pass through.

    Pairs (a, b) become (a*cos - b*sin, b*cos + a*sin): neox pairs k with k + rotary_dim/2,
    GPT-J pairs 2k with 2k+1.
    """
    half = rotary_dim // 2
    c = np.asarray(cos, dtype=np.float64)[positions][:, None, :]  # [n, 1, half]
    s = np.asarray(sin, dtype=np.float64)[positions][:, None, :]
    out = x.copy()
    if neox_style:
        a, b = x[..., :half], x[..., half:rotary_dim]
        out[..., :half] = a * c - b * s
        out[..., half:rotary_dim] = b * c + a * s
    else:
        a, b = x[..., 0:rotary_dim:2], x[..., 1:rotary_dim:2]
        out[..., 0:rotary_dim:2] = a * c - b * s
        out[..., 1:rotary_dim:2] = b * c + a * s
    return out


def _slots(cu_seqlens_q, cache_seqlens):
    """Yields (b, start_row, n_new, cache_len) per slot."""
    cu = np.asarray(cu_seqlens_q, dtype=np.int64)
    cl = np.asarray(cache_seqlens, dtype=np.int64)
    for b in range(len(cl)):
        yield b, int(cu[b]), int(cu[b + 1] - cu[b]), int(cl[b])


def _cache_location(block_tables, b: int, positions: np.ndarray, block_size: int):
    """Physical (block, offset) of each position of slot b; a -1 or missing block is an error here."""
    positions = np.asarray(positions, dtype=np.int64)
    logical = positions // block_size
    row = np.asarray(block_tables)[b]
    if len(positions) and logical.max() >= len(row):
        raise ValueError(f"slot {b}: position {positions.max()} is past block_tables' {len(row)} blocks")
    blocks = row[logical].astype(np.int64)
    if len(blocks) and blocks.min() < 0:
        raise ValueError(f"slot {b}: a position the step touches lies in a block that is -1")
    return blocks, positions % block_size


def rope_write_cache(qkv, key_cache, value_cache, block_tables, cu_seqlens_q, cache_seqlens,
                     rotary_cos=None, rotary_sin=None, *, rotary_dim: int = 0, neox_style: bool = True,
                     cache_dtype: Optional[str] = None) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Returns (q [rows, Hq, D], new_key_cache, new_value_cache), all float64.

    q is rotated and rounded to the cache dtype (what the op returns and what its attention reads);
    rows >= T are zero. The caches are copies of the inputs with the new tokens' K (rotated) and V
    written, rounded to the cache dtype; nothing else in them changes.
    """
    dtype = _storage_dtype(key_cache, cache_dtype)
    key_cache = np.array(key_cache, dtype=np.float64)
    value_cache = np.array(value_cache, dtype=np.float64)
    _, hkv, block_size, d = key_cache.shape
    dv = value_cache.shape[3]
    q_all, k_all, v_all = split_qkv(qkv, hkv, d, dv)
    if (rotary_cos is None) != (rotary_sin is None):
        raise ValueError("rotary_cos and rotary_sin must be given together")
    if rotary_cos is not None and rotary_dim == 0:
        rotary_dim = d
    q_out = np.zeros_like(q_all)
    for b, start, n, cache_len in _slots(cu_seqlens_q, cache_seqlens):
        if n == 0:
            continue
        positions = np.arange(cache_len, cache_len + n)
        q, k, v = q_all[start:start + n], k_all[start:start + n], v_all[start:start + n]
        if rotary_cos is not None:
            q = apply_rope(q, positions, rotary_cos, rotary_sin, rotary_dim, neox_style)
            k = apply_rope(k, positions, rotary_cos, rotary_sin, rotary_dim, neox_style)
        # The op returns q in the input dtype, so attention sees the rounded rotated query.
        q_out[start:start + n] = round_to_dtype(q, dtype)
        blocks, offsets = _cache_location(block_tables, b, positions, block_size)
        key_cache[blocks, :, offsets, :] = round_to_dtype(k, dtype)
        value_cache[blocks, :, offsets, :] = round_to_dtype(v, dtype)
    return q_out, key_cache, value_cache


def _gather_keys(cache: np.ndarray, block_tables, b: int, lo: int, hi: int, block_size: int) -> np.ndarray:
    """Keys/values lo..hi (inclusive) of slot b from a paged cache [blocks, Hkv, bs, X] -> [Hkv, L, X]."""
    positions = np.arange(lo, hi + 1)
    blocks, offsets = _cache_location(block_tables, b, positions, block_size)
    return np.transpose(cache[blocks, :, offsets, :], (1, 0, 2))


def paged_attention(q, key_cache, value_cache, block_tables, cu_seqlens_q, cache_seqlens, sinks=None, *,
                    sliding_window: int = 0, causal: bool = True, softmax_scale: float = 0.0) -> np.ndarray:
    """Attention of q [rows, Hq, D] over the paged cache, which already holds the step's tokens.

    Returns out [rows, Hq*Dv] float64 (not rounded); rows >= T and queries that see no key are zero.
    Keys and values are read as stored (the caller passes the cache's values).
    """
    q = np.asarray(q, dtype=np.float64)
    key_cache = np.asarray(key_cache, dtype=np.float64)
    value_cache = np.asarray(value_cache, dtype=np.float64)
    rows, hq, d = q.shape
    _, hkv, block_size, _ = key_cache.shape
    dv = value_cache.shape[3]
    if hq % hkv:
        raise ValueError(f"Hq={hq} is not a multiple of Hkv={hkv}")
    if sliding_window < 0 or softmax_scale < 0:
        raise ValueError("sliding_window and softmax_scale must be >= 0")
    if sliding_window > 0 and not causal:
        raise ValueError("sliding_window > 0 requires causal=True")
    g = hq // hkv
    scale = softmax_scale if softmax_scale > 0 else 1.0 / math.sqrt(d)
    sink = None if sinks is None else np.asarray(sinks, dtype=np.float64).reshape(hkv, g)
    out = np.zeros((rows, hq, dv))
    for b, start, n, cache_len in _slots(cu_seqlens_q, cache_seqlens):
        if n == 0:
            continue
        kv_len = cache_len + n
        positions = np.arange(cache_len, kv_len)
        lo_all, hi_all = visible_range(positions, kv_len, causal, sliding_window)
        # Queries in chunks so one chunk's scores [Hkv, rows*G, L] stay a few tens of MB.
        chunk = max(1, _SCORE_ELEMS_PER_CHUNK // (hq * kv_len))
        for c0 in range(0, n, chunk):
            c1 = min(n, c0 + chunk)
            lo, hi = lo_all[c0:c1], hi_all[c0:c1]
            k_lo, k_hi = int(lo.min()), int(hi.max())
            if k_lo > k_hi:
                continue  # no query of the chunk sees any key: zeros
            keys = _gather_keys(key_cache, block_tables, b, k_lo, k_hi, block_size)      # [Hkv, L, D]
            values = _gather_keys(value_cache, block_tables, b, k_lo, k_hi, block_size)  # [Hkv, L, Dv]
            m_rows = c1 - c0
            qc = q[start + c0:start + c1].reshape(m_rows, hkv, g, d).transpose(1, 0, 2, 3)  # [Hkv, m, G, D]
            # Batched matmul over kv heads (BLAS): [Hkv, m*G, D] @ [Hkv, D, L] -> [Hkv, m, G, L].
            scores = scale * np.matmul(qc.reshape(hkv, m_rows * g, d),
                                       keys.transpose(0, 2, 1)).reshape(hkv, m_rows, g, -1)
            j = np.arange(k_lo, k_hi + 1)
            visible = (j[None, :] >= lo[:, None]) & (j[None, :] <= hi[:, None])  # [m, L]
            scores = np.where(visible[None, :, None, :], scores, -np.inf)
            m = scores.max(axis=-1)  # [Hkv, m, G]
            if sink is not None:
                m = np.maximum(m, sink[:, None, :])
            any_visible = visible.any(axis=-1)  # [m]
            m = np.where(any_visible[None, :, None], m, 0.0)
            p = np.exp(scores - m[..., None])  # masked keys give exactly 0
            denom = p.sum(axis=-1)
            if sink is not None:
                denom = denom + np.exp(sink[:, None, :] - m)
            o = np.matmul(p.reshape(hkv, m_rows * g, -1), values).reshape(hkv, m_rows, g, dv) / denom[..., None]
            o = np.where(any_visible[None, :, None, None], o, 0.0)
            out[start + c0:start + c1] = o.transpose(1, 0, 2, 3).reshape(c1 - c0, hq, dv)
    return out.reshape(rows, hq * dv)


def append_attention(qkv, key_cache, value_cache, block_tables, cu_seqlens_q, cache_seqlens,
                     rotary_cos=None, rotary_sin=None, sinks=None, *, rotary_dim: int = 0,
                     neox_style: bool = True, sliding_window: int = 0, causal: bool = True,
                     softmax_scale: float = 0.0, cache_dtype: Optional[str] = None):
    """RoPE + cache write + attention: returns (out [rows, Hq*Dv], new_key_cache, new_value_cache)."""
    dtype = _storage_dtype(key_cache, cache_dtype)
    q, new_k, new_v = rope_write_cache(qkv, key_cache, value_cache, block_tables, cu_seqlens_q,
                                       cache_seqlens, rotary_cos, rotary_sin, rotary_dim=rotary_dim,
                                       neox_style=neox_style, cache_dtype=dtype)
    out = paged_attention(q, new_k, new_v, block_tables, cu_seqlens_q, cache_seqlens, sinks,
                          sliding_window=sliding_window, causal=causal, softmax_scale=softmax_scale)
    return out, new_k, new_v
