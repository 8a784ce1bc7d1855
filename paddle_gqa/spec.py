"""Frozen per-layer attention specs: what a layer's attention and its KV cache need to know."""
from __future__ import annotations

import dataclasses
from typing import Optional, Tuple


@dataclasses.dataclass(frozen=True)
class RopeSpec:
    """Rotary embedding of one layer. `scaling` is a sorted tuple of (key, value) pairs from HF's
    `rope_scaling` / `rope_parameters` (e.g. (("factor", 8.0), ("rope_type", "llama3"), ...)), so the
    spec stays hashable; () means plain RoPE."""

    theta: float
    rotary_dim: int            # even, <= head_dim; dims past it pass through
    max_position: int          # rows of the cos/sin tables
    neox_style: bool = True    # HF rotate_half pairing (k, k + rotary_dim/2)
    scaling: Tuple[Tuple[str, object], ...] = ()


@dataclasses.dataclass(frozen=True)
class KVCacheSpec:
    """What a layer's paged cache looks like. Layers with equal specs share one allocator group
    (one set of block tables); page bytes are derived, never stored."""

    num_kv_heads: int
    head_dim: int
    v_head_dim: int
    sliding_window: int = 0    # 0 = full attention; W > 0 lets blocks older than the window go

    def bytes_per_token(self, dtype_bytes: int) -> int:
        return self.num_kv_heads * (self.head_dim + self.v_head_dim) * dtype_bytes

    def page_bytes(self, block_size: int, dtype_bytes: int) -> int:
        return block_size * self.bytes_per_token(dtype_bytes)


@dataclasses.dataclass(frozen=True)
class LayerSpec:
    """Attention of one decoder layer, as the ops see it after tensor-parallel sharding is undone
    (the full model's heads; `layers.py` divides by tp)."""

    num_heads: int             # Hq
    num_kv_heads: int          # Hkv; Hq % Hkv == 0
    head_dim: int              # D (query/key)
    v_head_dim: int            # Dv
    sliding_window: int = 0    # 0 = full attention
    rope: Optional[RopeSpec] = None
    has_sinks: bool = False    # learnable per-head sink logit
    value_scale: float = 1.0   # multiplies V before it is cached (MiMo's attention_value_scale)
    softmax_scale: float = 0.0  # 0 = 1/sqrt(head_dim)
    causal: bool = True

    def __post_init__(self):
        if self.num_heads <= 0 or self.num_kv_heads <= 0:
            raise ValueError(f"num_heads={self.num_heads}, num_kv_heads={self.num_kv_heads}: expected both > 0")
        if self.num_heads % self.num_kv_heads:
            raise ValueError(
                f"num_heads={self.num_heads} is not a multiple of num_kv_heads={self.num_kv_heads}")
        if self.sliding_window < 0:
            raise ValueError(f"sliding_window={self.sliding_window}: expected >= 0")
        if self.sliding_window and not self.causal:
            raise ValueError("sliding_window > 0 requires causal=True")

    @property
    def group_size(self) -> int:
        return self.num_heads // self.num_kv_heads

    @property
    def cache_spec(self) -> KVCacheSpec:
        return KVCacheSpec(self.num_kv_heads, self.head_dim, self.v_head_dim, self.sliding_window)
