"""The backend roles: static capabilities (`AttentionBackend`) and the per-layer runner (`AttentionRunner`).

Three objects, one lifetime each:
- `AttentionBackend`: what a kind of kernel can do for one `LayerSpec`; built once per distinct spec
  (`get_backend`), holds no tensors, and `validate` lists every reason a spec is unsupported.
- `StepMetadata` (metadata.py): the step's lengths and block tables, built once per step and shared
  by every layer.
- `AttentionRunner`: one per layer; holds the layer's constant inputs (RoPE tables) and runs
  `forward(qkv, key_cache, value_cache, meta, group, sinks)` every step.
"""
from __future__ import annotations

import abc
from typing import TYPE_CHECKING, List, Optional

from ..spec import LayerSpec

if TYPE_CHECKING:  # paddle is imported lazily: `import paddle_gqa` must not need it
    import paddle

    from .metadata import StepMetadata


class UnsupportedSpec(ValueError):
    """A backend was asked for a spec it cannot run; the message lists every reason."""


def rope_reasons(spec: LayerSpec) -> List[str]:
    """Why `spec.rope` cannot run on any backend: every backend rotates pairs within head_dim."""
    rope = spec.rope
    if rope is not None and (rope.rotary_dim <= 0 or rope.rotary_dim % 2 or rope.rotary_dim > spec.head_dim):
        return [f"rope.rotary_dim={rope.rotary_dim}: expected even, > 0 and <= head_dim={spec.head_dim}"]
    return []


class AttentionBackend(abc.ABC):
    """Static capabilities of one kind of attention kernel, bound to one layer spec."""

    name: str = ""

    def __init__(self, spec: LayerSpec):
        self.spec = spec

    @classmethod
    @abc.abstractmethod
    def validate(cls, spec: LayerSpec, *, dtype: Optional[str] = None, block_size: Optional[int] = None,
                 device: Optional[str] = None) -> List[str]:
        """Every reason `spec` (with the cache dtype, block size and device "cpu"/"gpu" when given)
        cannot run on this backend; [] when it can."""

    def check(self, *, dtype: Optional[str] = None, block_size: Optional[int] = None,
              device: Optional[str] = None) -> None:
        """Raises UnsupportedSpec naming every reason the bound spec cannot run as asked."""
        reasons = self.validate(self.spec, dtype=dtype, block_size=block_size, device=device)
        if reasons:
            raise UnsupportedSpec(f"backend {self.name!r} cannot run {self.spec}: " + "; ".join(reasons))

    @abc.abstractmethod
    def make_runner(self, rotary_cos: Optional["paddle.Tensor"] = None,
                    rotary_sin: Optional["paddle.Tensor"] = None) -> "AttentionRunner":
        """A runner for one layer. rotary_cos / rotary_sin: float32 [max_position, rotary_dim/2] on
        the layer's place, required iff the spec has RoPE."""


class AttentionRunner(abc.ABC):
    """Runs one layer's attention for a step: RoPE on q/k, K/V written into the paged cache in place,
    attention over the cache. Output [rows of qkv, Hq*Dv] in qkv's dtype; rows past T are zero."""

    def __init__(self, spec: LayerSpec, rotary_cos=None, rotary_sin=None):
        rope = spec.rope
        if (rope is None) != (rotary_cos is None) or (rotary_cos is None) != (rotary_sin is None):
            raise ValueError(
                f"rotary_cos/rotary_sin given={rotary_cos is not None}/{rotary_sin is not None}: expected both "
                f"{'given' if rope is not None else 'None'} because spec.rope is "
                f"{'set' if rope is not None else 'None'}")
        if rope is not None:
            half = rope.rotary_dim // 2
            for name, table in (("rotary_cos", rotary_cos), ("rotary_sin", rotary_sin)):
                shape = list(table.shape)
                if len(shape) != 2 or shape[1] != half:
                    raise ValueError(f"{name} shape={shape}: expected [max_position, rotary_dim/2={half}]")
        self.spec = spec
        self.rotary_cos = rotary_cos
        self.rotary_sin = rotary_sin

    @property
    def rotary_dim(self) -> int:
        return self.spec.rope.rotary_dim if self.spec.rope is not None else 0

    @property
    def neox_style(self) -> bool:
        return self.spec.rope.neox_style if self.spec.rope is not None else True

    def check_inputs(self, qkv, key_cache, value_cache, sinks) -> None:
        """Host-side shape/dtype checks against the bound spec (no device data is read)."""
        s = self.spec
        width = s.num_heads * s.head_dim + s.num_kv_heads * (s.head_dim + s.v_head_dim)
        if len(qkv.shape) != 2 or qkv.shape[1] != width:
            raise ValueError(
                f"qkv shape={list(qkv.shape)}: expected [rows, Hq*D + Hkv*(D+Dv) = {width}] for {s}")
        k_shape = list(key_cache.shape)
        v_shape = list(value_cache.shape)
        if len(k_shape) != 4 or k_shape[1] != s.num_kv_heads or k_shape[3] != s.head_dim:
            raise ValueError(f"key_cache shape={k_shape}: expected [num_blocks, {s.num_kv_heads}, block_size, "
                             f"{s.head_dim}]")
        if len(v_shape) != 4 or v_shape[:3] != k_shape[:3] or v_shape[3] != s.v_head_dim:
            raise ValueError(f"value_cache shape={v_shape}: expected {k_shape[:3] + [s.v_head_dim]}")
        if key_cache.dtype != qkv.dtype or value_cache.dtype != qkv.dtype:
            raise ValueError(f"key_cache/value_cache dtype={key_cache.dtype}/{value_cache.dtype}: expected the "
                             f"dtype of qkv ({qkv.dtype})")
        if s.has_sinks != (sinks is not None):
            want = "a float32 [Hq] tensor" if s.has_sinks else "None"
            raise ValueError(f"sinks given={sinks is not None}: expected {want} because spec.has_sinks={s.has_sinks}")
        if sinks is not None and list(sinks.shape) != [s.num_heads]:
            raise ValueError(f"sinks shape={list(sinks.shape)}: expected [{s.num_heads}]")

    @abc.abstractmethod
    def forward(self, qkv: "paddle.Tensor", key_cache: "paddle.Tensor", value_cache: "paddle.Tensor",
                meta: "StepMetadata", group: int, sinks: Optional["paddle.Tensor"] = None) -> "paddle.Tensor":
        """qkv [rows, Hq*D + Hkv*D + Hkv*Dv]; caches of this layer; `group` is the layer's cache group
        (whose block tables in `meta` address these caches); sinks float32 [Hq] iff spec.has_sinks."""
