"""Custom-op attention backend: one `paddle_gqa.ops.append_attention` call per layer and step (RoPE,
paged cache write and attention fused; the CPU and CUDA kernels of the package's extension).

A plan (`paddle_gqa.ops.plan`: the check of the step's device data, on GPU one read-back) is made
by the first layer of each cache group and mask (window, causal, RoPE table length) and kept in the
step metadata; every layer passes it, so no layer call synchronizes. A step therefore reads back
once per distinct (cache group, mask), e.g. twice for a hybrid full/sliding-window model."""
from __future__ import annotations

from typing import List, Optional

from .. import kernel_table
from ..spec import LayerSpec
from .base import AttentionBackend, AttentionRunner, rope_reasons
from .metadata import StepMetadata


class CustomOpRunner(AttentionRunner):
    def __init__(self, spec: LayerSpec, rotary_cos=None, rotary_sin=None):
        super().__init__(spec, rotary_cos, rotary_sin)
        from .. import ops  # the compiled extension; imported when a layer is built, not at package import

        self._append_attention = ops.append_attention
        self._plan = ops.plan

    def forward(self, qkv, key_cache, value_cache, meta: StepMetadata, group: int, sinks=None):
        self.check_inputs(qkv, key_cache, value_cache, sinks)
        s = self.spec
        # The plan's words (plan.h) depend on the rows, the group's block tables and cache shape, the
        # mask and whether positions are checked against RoPE tables (and how many rows they have).
        max_position = 0 if self.rotary_cos is None else int(self.rotary_cos.shape[0])
        key = ("custom_op_plan", group, int(qkv.shape[0]), int(key_cache.shape[0]), s.sliding_window, s.causal,
               max_position)
        plan = meta.memo(key, lambda: self._plan(
            qkv, key_cache, value_cache, meta.block_tables[group], meta.cu_seqlens_q, meta.cache_seqlens,
            self.rotary_cos, self.rotary_sin, rotary_dim=self.rotary_dim, sliding_window=s.sliding_window,
            causal=s.causal))
        return self._append_attention(
            qkv, key_cache, value_cache, meta.block_tables[group], meta.cu_seqlens_q, meta.cache_seqlens,
            self.rotary_cos, self.rotary_sin, sinks,
            rotary_dim=self.rotary_dim, neox_style=self.neox_style, sliding_window=s.sliding_window,
            causal=s.causal, softmax_scale=s.softmax_scale, plan=plan)


class CustomOpBackend(AttentionBackend):
    """The head-dim pairs and block sizes of kernel_table.py; fp32 on CPU only."""

    name = "custom_op"

    @classmethod
    def validate(cls, spec: LayerSpec, *, dtype: Optional[str] = None, block_size: Optional[int] = None,
                 device: Optional[str] = None) -> List[str]:
        reasons = []
        pair = (spec.head_dim, spec.v_head_dim)
        if pair not in kernel_table.HEAD_DIMS:
            built = ", ".join(f"{a}/{b}" for a, b in kernel_table.HEAD_DIMS)
            reasons.append(f"head_dim/v_head_dim={pair[0]}/{pair[1]} has no kernel; built: {built}")
        if block_size is not None and block_size not in kernel_table.BLOCK_SIZES:
            reasons.append(f"block_size={block_size} has no kernel; built: "
                           f"{', '.join(map(str, kernel_table.BLOCK_SIZES))}")
        if device not in (None, "cpu", "gpu"):
            reasons.append(f"device={device!r}: expected 'cpu' or 'gpu'")
        if dtype is not None:
            allowed = kernel_table.CUDA_DTYPES if device == "gpu" else kernel_table.CPU_DTYPES
            if dtype not in allowed:
                where = "on GPU" if device == "gpu" else "on CPU"
                reasons.append(f"dtype={dtype!r} is not supported {where}; expected one of {', '.join(allowed)}"
                               + (" (use bfloat16 or float16 on GPU)" if dtype == "float32" else ""))
        return reasons + rope_reasons(spec)

    def make_runner(self, rotary_cos=None, rotary_sin=None) -> CustomOpRunner:
        return CustomOpRunner(self.spec, rotary_cos, rotary_sin)
