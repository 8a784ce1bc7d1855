"""Plain-Paddle reference attention backend: RoPE, paged cache write and masked softmax with sinks and
window, from DESIGN.md §2, in ordinary Paddle ops. Works on any place, dtype and head dims.

Per step and cache group it plans once (from the metadata's host copies; no device reads): each new
token's position and cache slot, and per batch slot the range of cache blocks its queries can see.
Per layer it then writes K/V with one `index_put_` and runs one gathered attention per slot.
Scores, softmax and the weighted sum are float32; K/V are read back as stored in the cache (rounded
to its dtype) and rotated queries are rounded to qkv's dtype, as the ops do.
"""
from __future__ import annotations

import dataclasses
import math
from typing import List, Optional, Tuple

import numpy as np
import paddle

from ..spec import LayerSpec
from .base import AttentionBackend, AttentionRunner, rope_reasons
from .metadata import StepMetadata


@dataclasses.dataclass(frozen=True)
class _SlotPlan:
    """Queries [q_lo, q_hi) of one slot see keys [key_start, kv_len) minus the mask."""

    q_lo: int
    q_hi: int
    key_start: int          # absolute position of the first gathered key (block aligned)
    kv_len: int
    blocks: paddle.Tensor   # int64 [nb] physical blocks holding keys [key_start, kv_len)
    mask: paddle.Tensor     # float32 [n, kv_len - key_start]: 0 visible, -inf hidden


@dataclasses.dataclass(frozen=True)
class _GroupPlan:
    positions: paddle.Tensor    # int64 [T]
    write_block: paddle.Tensor  # int64 [T, 1] block of each new token
    write_slot: paddle.Tensor   # int64 [T, 1] slot inside the block
    slots: Tuple[_SlotPlan, ...]


def _plan_group(meta: StepMetadata, group: int, num_blocks: int, sliding_window: int,
                causal: bool) -> _GroupPlan:
    """Host-side planning; raises ValueError naming the slot on every invalid length or block id."""
    bs = meta.block_size
    table = meta.block_tables_host[group]
    cu = meta.cu_seqlens_q_host.astype(np.int64)
    cached = meta.cache_seqlens_host.astype(np.int64)
    positions = np.zeros(meta.num_tokens, dtype=np.int64)
    blocks_w = np.zeros(meta.num_tokens, dtype=np.int64)
    slots: List[_SlotPlan] = []
    place = meta.place

    def blocks_at(b: int, logical: np.ndarray, why: str) -> np.ndarray:
        """Physical blocks of slot b's logical blocks; raises on a missing, -1 or out-of-range one."""
        if len(logical) and logical.max() >= table.shape[1]:
            raise ValueError(f"block_tables[{group}] width={table.shape[1]}: slot {b} needs logical block "
                             f"{logical.max()} to {why}")
        blk = table[b, logical].astype(np.int64)
        bad = np.nonzero((blk < 0) | (blk >= num_blocks))[0]
        if len(bad):
            i = bad[0]
            raise ValueError(f"block_tables[{group}][{b}][{logical[i]}]={blk[i]}: expected a block id in "
                             f"[0, {num_blocks}) to {why}")
        return blk

    for b in range(meta.batch_size):
        lo, hi = int(cu[b]), int(cu[b + 1])
        if hi == lo:
            continue
        kv_len = int(cached[b]) + hi - lo
        pos = np.arange(int(cached[b]), kv_len, dtype=np.int64)
        positions[lo:hi] = pos
        blocks_w[lo:hi] = blocks_at(b, pos // bs, f"write positions {pos[0]}..{pos[-1]}")
        # The first query (position cached[b]) sees the oldest key; with a window W that is p0 - W + 1.
        first_key = 0 if sliding_window == 0 else max(0, int(cached[b]) - sliding_window + 1)
        first_block = first_key // bs
        last_block = (kv_len - 1) // bs
        ids = blocks_at(b, np.arange(first_block, last_block + 1), f"read keys up to {kv_len}")
        key_start = first_block * bs
        keys = np.arange(key_start, kv_len, dtype=np.int64)[None, :]
        visible = np.ones((hi - lo, kv_len - key_start), dtype=bool)
        if causal:
            visible &= keys <= pos[:, None]
        if sliding_window:
            visible &= keys > pos[:, None] - sliding_window
        mask = np.where(visible, 0.0, -np.inf).astype(np.float32)
        slots.append(_SlotPlan(lo, hi, key_start, kv_len,
                               paddle.to_tensor(ids, place=place),
                               paddle.to_tensor(mask, place=place)))
    return _GroupPlan(paddle.to_tensor(positions, place=place),
                      paddle.to_tensor(blocks_w[:, None], place=place),
                      paddle.to_tensor((positions % bs)[:, None], place=place),
                      tuple(slots))


def _rotate(x: paddle.Tensor, cos: paddle.Tensor, sin: paddle.Tensor, rotary_dim: int,
            neox_style: bool) -> paddle.Tensor:
    """x float32 [T, H, D]; cos/sin float32 [T, 1, rotary_dim/2]. Dims past rotary_dim pass through."""
    half = rotary_dim // 2
    rot, rest = x[..., :rotary_dim], x[..., rotary_dim:]
    if neox_style:
        x1, x2 = rot[..., :half], rot[..., half:]
        out = paddle.concat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
    else:
        pairs = rot.reshape(rot.shape[:-1] + [half, 2])
        x1, x2 = pairs[..., 0], pairs[..., 1]
        out = paddle.stack([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1).reshape(rot.shape)
    return paddle.concat([out, rest], axis=-1) if rest.shape[-1] else out


class ReferenceRunner(AttentionRunner):
    def forward(self, qkv, key_cache, value_cache, meta: StepMetadata, group: int, sinks=None):
        self.check_inputs(qkv, key_cache, value_cache, sinks)
        s = self.spec
        if qkv.shape[0] < meta.num_tokens:
            raise ValueError(f"qkv rows={qkv.shape[0]}: expected >= the step's {meta.num_tokens} new tokens")
        if key_cache.shape[2] != meta.block_size:
            raise ValueError(f"key_cache block_size={key_cache.shape[2]}: expected the metadata's {meta.block_size}")
        num_blocks = key_cache.shape[0]
        plan = meta.memo(("reference", group, num_blocks, s.sliding_window, s.causal),
                         lambda: _plan_group(meta, group, num_blocks, s.sliding_window, s.causal))
        if self.rotary_cos is not None and plan.slots:
            longest = max(p.kv_len for p in plan.slots)
            if longest > self.rotary_cos.shape[0]:
                raise ValueError(f"position {longest - 1} of this step: expected < max_position="
                                 f"{self.rotary_cos.shape[0]} of rotary_cos")
        hq, hkv, d, dv = s.num_heads, s.num_kv_heads, s.head_dim, s.v_head_dim
        t = meta.num_tokens
        dtype = qkv.dtype
        out_rows = qkv.shape[0]
        if t == 0:
            return paddle.zeros([out_rows, hq * dv], dtype=dtype)

        x = qkv[:t].astype("float32")
        q = x[:, :hq * d].reshape([t, hq, d])
        k = x[:, hq * d:(hq + hkv) * d].reshape([t, hkv, d])
        v = x[:, (hq + hkv) * d:].reshape([t, hkv, dv])
        if self.rotary_cos is not None:
            cos = paddle.gather(self.rotary_cos, plan.positions).unsqueeze(1)
            sin = paddle.gather(self.rotary_sin, plan.positions).unsqueeze(1)
            q = _rotate(q, cos, sin, self.rotary_dim, self.neox_style)
            k = _rotate(k, cos, sin, self.rotary_dim, self.neox_style)
        q = q.astype(dtype).astype("float32")  # the ops attend with q rounded to qkv's dtype

        heads = paddle.arange(hkv, dtype="int64").unsqueeze(0)
        paddle.index_put_(key_cache, (plan.write_block, heads, plan.write_slot), k.astype(dtype))
        paddle.index_put_(value_cache, (plan.write_block, heads, plan.write_slot), v.astype(dtype))

        scale = s.softmax_scale if s.softmax_scale > 0 else 1.0 / math.sqrt(d)
        g = hq // hkv
        sink_logits = None if sinks is None else sinks.astype("float32").reshape([hkv, g, 1, 1])
        outs = []
        for sp in plan.slots:
            n, length = sp.q_hi - sp.q_lo, sp.kv_len - sp.key_start
            nb = sp.blocks.shape[0]
            kb = paddle.gather(key_cache, sp.blocks).astype("float32")      # [nb, Hkv, bs, D]
            vb = paddle.gather(value_cache, sp.blocks).astype("float32")    # [nb, Hkv, bs, Dv]
            kb = kb.transpose([1, 0, 2, 3]).reshape([hkv, nb * meta.block_size, d])[:, :length]
            vb = vb.transpose([1, 0, 2, 3]).reshape([hkv, nb * meta.block_size, dv])[:, :length]
            qb = q[sp.q_lo:sp.q_hi].reshape([n, hkv, g, d]).transpose([1, 2, 0, 3]).reshape([hkv, g * n, d])
            scores = paddle.matmul(qb, kb, transpose_y=True).reshape([hkv, g, n, length]) * scale + sp.mask
            m = scores.max(axis=-1, keepdim=True)                            # [Hkv, G, n, 1]
            if sink_logits is not None:
                m = paddle.maximum(m, sink_logits)
            e = paddle.exp(scores - m)
            denom = e.sum(axis=-1, keepdim=True)
            if sink_logits is not None:
                denom = denom + paddle.exp(sink_logits - m)
            o = paddle.matmul(e.reshape([hkv, g * n, length]), vb).reshape([hkv, g, n, dv]) / denom
            outs.append(o.transpose([2, 0, 1, 3]).reshape([n, hq * dv]))
        out = paddle.concat(outs, axis=0)
        if out_rows > t:
            out = paddle.concat([out, paddle.zeros([out_rows - t, hq * dv], dtype="float32")], axis=0)
        return out.astype(dtype)


class ReferenceBackend(AttentionBackend):
    """Any spec, any dtype, any place."""

    name = "reference"

    @classmethod
    def validate(cls, spec: LayerSpec, *, dtype: Optional[str] = None, block_size: Optional[int] = None,
                 device: Optional[str] = None) -> List[str]:
        reasons = []
        if dtype is not None and dtype not in ("float32", "float16", "bfloat16", "float64"):
            reasons.append(f"dtype={dtype!r}: expected float32, float16, bfloat16 or float64")
        if block_size is not None and block_size <= 0:
            reasons.append(f"block_size={block_size}: expected > 0")
        return reasons + rope_reasons(spec)

    def make_runner(self, rotary_cos=None, rotary_sin=None) -> ReferenceRunner:
        return ReferenceRunner(self.spec, rotary_cos, rotary_sin)
