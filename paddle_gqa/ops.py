"""The Paddle ops of paddle_gqa (DESIGN.md §2-§3) on `paddle.Tensor`s, CPU or GPU, in dygraph and
under `paddle.jit.to_static`.

Shapes (per step: B batch slots, T new tokens packed without padding, rows >= T):
  qkv            [rows, Hq*D + Hkv*D + Hkv*Dv]   bf16/fp16 (fp32 on CPU); per token the Hq query heads,
                                                 then the Hkv key heads (width D), then the Hkv value
                                                 heads (width Dv); rows past T are ignored
  key_cache      [num_blocks, Hkv, block_size, D]   dtype of qkv, written in place
  value_cache    [num_blocks, Hkv, block_size, Dv]  dtype of qkv, written in place
  block_tables   int32 [B, max_blocks_per_seq]      physical block of each logical block; -1 = none
  cu_seqlens_q   int32 [B+1]                        prefix sums of new tokens per slot, from 0
  cache_seqlens  int32 [B]                          tokens of each slot already cached
  rotary_cos/sin fp32 [max_position, rotary_dim/2]  optional RoPE tables
  sinks          fp32 [Hq]                          optional per-head sink logits
  plan           int32 [8]                          optional, from `plan` (once per step and spec group)

Bad input raises ValueError (in dygraph and static graphs alike) whose message names the argument,
its value and what was expected; nothing is written then.

On GPU an op checks the step's device-resident data (lengths, block ids) on the device and reads the
result back, which synchronizes. `plan(...)` does that once per step and spec group instead; ops
given its result (`plan=`) still check on the device and write nothing for invalid data, but do not
synchronize: what they find is raised by `check_errors()`, the next `plan` or the next op call
without a plan.

This module imports paddle, and loads the compiled library, only when an op is first called.
"""
from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Optional

if TYPE_CHECKING:  # pragma: no cover - typing only
    import paddle

__all__ = ["append_attention", "rope_write_cache", "paged_attention", "plan", "check_errors",
           "built_with_cuda", "PLAN_WORDS"]

# int32 words of a plan tensor (csrc/include/paddle_gqa/plan.h).
PLAN_WORDS = 8


@functools.lru_cache(maxsize=None)
def _runtime():
    """(paddle, paddle._C_ops, in_dynamic_or_pir_mode), imported, with the op library loaded."""
    import paddle
    from paddle import _C_ops
    from paddle.framework import in_dynamic_or_pir_mode

    from paddle_gqa._load import library

    library()
    return paddle, _C_ops, in_dynamic_or_pir_mode


# Ops that write the caches in place, and ops that list the caches as in-place outputs (paged_attention
# only for ordering; plan has neither).
_WRITES_CACHES = ("append_attention", "rope_write_cache")
_CACHE_OUTPUTS = ("append_attention", "rope_write_cache", "paged_attention")


def _run(op_name, inputs, attrs):
    """Runs custom op `op_name` and returns its first output (the later ones are the in-place
    caches, which the caller already holds)."""
    paddle, _C_ops, in_dynamic_or_pir_mode = _runtime()
    if op_name in _WRITES_CACHES and paddle.in_dynamic_mode():
        _check_caches_contiguous(inputs)
    if not in_dynamic_or_pir_mode():
        return _append_legacy_static_op(op_name, inputs, attrs)
    outs = _C_ops._run_custom_op(op_name, *inputs.values(), *attrs.values())
    return outs[0] if isinstance(outs, (list, tuple)) else outs


def _check_caches_contiguous(inputs):
    """Paddle hands a custom op a contiguous copy of a strided input, so in-place writes into a
    strided cache view would land in that copy and be lost: refuse such a cache up front."""
    for name in ("key_cache", "value_cache"):
        t = inputs[name]
        if not t.is_contiguous():
            raise ValueError(
                f"{name}: shape {list(t.shape)} with strides {list(t.strides)} is not contiguous: "
                f"expected a contiguous tensor, since the op writes it in place (pass the cache "
                f"tensor itself, not a strided view of it)")


def _append_legacy_static_op(op_name, inputs, attrs):
    """The op in a legacy (non-PIR) static program: caches map to themselves as outputs; the plan
    op's one output is int32."""
    from paddle.base.layer_helper import LayerHelper
    from paddle.utils.cpp_extension.extension_utils import parse_op_info

    in_names, _, out_names = parse_op_info(op_name)
    # Registered input names carry suffixes such as "@OPTIONAL"; absent optionals are left out.
    op_inputs = {name: inputs[name.split("@")[0]] for name in in_names
                 if inputs[name.split("@")[0]] is not None}
    helper = LayerHelper(op_name, **inputs)
    dtype = "int32" if op_name == "plan" else op_inputs[in_names[0]].dtype
    out = helper.create_variable_for_type_inference(dtype=dtype)
    outputs = {out_names[0]: out}
    if op_name in _CACHE_OUTPUTS:
        outputs.update(key_cache_out=inputs["key_cache"], value_cache_out=inputs["value_cache"])
    helper.append_op(type=op_name, inputs=op_inputs, outputs=outputs, attrs=attrs)
    return out


def append_attention(qkv: "paddle.Tensor", key_cache: "paddle.Tensor", value_cache: "paddle.Tensor",
                     block_tables: "paddle.Tensor", cu_seqlens_q: "paddle.Tensor",
                     cache_seqlens: "paddle.Tensor", rotary_cos: Optional["paddle.Tensor"] = None,
                     rotary_sin: Optional["paddle.Tensor"] = None,
                     sinks: Optional["paddle.Tensor"] = None, *, rotary_dim: int = 0,
                     neox_style: bool = True, sliding_window: int = 0, causal: bool = True,
                     softmax_scale: float = 0.0, plan: Optional["paddle.Tensor"] = None) -> "paddle.Tensor":
    """RoPE, cache write and attention for one step, in one call.

    Rotates the first `rotary_dim` dims of each query and key head of `qkv` at its position
    (`cache_seqlens[b] + i`; `rotary_dim=0` with tables means D; `neox_style` pairs dim k with
    k + rotary_dim/2, else 2k with 2k+1), writes keys and values into `key_cache` / `value_cache`
    in place, and attends each query head h with kv head h / (Hq/Hkv) over keys j <= p (`causal`),
    p - sliding_window < j (`sliding_window` > 0), scores scaled by `softmax_scale` (0: 1/sqrt(D)),
    with an optional per-head sink logit added to the softmax denominator.

    `plan`: the step's plan from `plan(...)` (same rows, block tables, window, causal, RoPE tables
    given or not); on GPU the call then does not synchronize (see the module docstring).

    Returns out [rows, Hq*Dv], dtype of qkv; rows past T are zero.
    """
    return _run("append_attention",
                dict(qkv=qkv, key_cache=key_cache, value_cache=value_cache,
                     block_tables=block_tables, cu_seqlens_q=cu_seqlens_q,
                     cache_seqlens=cache_seqlens, rotary_cos=rotary_cos, rotary_sin=rotary_sin,
                     sinks=sinks, plan=plan),
                dict(rotary_dim=int(rotary_dim), neox_style=bool(neox_style),
                     sliding_window=int(sliding_window), causal=bool(causal),
                     softmax_scale=float(softmax_scale)))


def rope_write_cache(qkv: "paddle.Tensor", key_cache: "paddle.Tensor", value_cache: "paddle.Tensor",
                     block_tables: "paddle.Tensor", cu_seqlens_q: "paddle.Tensor",
                     cache_seqlens: "paddle.Tensor", rotary_cos: Optional["paddle.Tensor"] = None,
                     rotary_sin: Optional["paddle.Tensor"] = None, *, rotary_dim: int = 0,
                     neox_style: bool = True, plan: Optional["paddle.Tensor"] = None) -> "paddle.Tensor":
    """The first half of `append_attention`: RoPE and the cache write (caches updated in place).
    `plan` as for `append_attention`.

    Returns the rotated queries q [rows, Hq, D], dtype of qkv, for `paged_attention`.
    """
    return _run("rope_write_cache",
                dict(qkv=qkv, key_cache=key_cache, value_cache=value_cache,
                     block_tables=block_tables, cu_seqlens_q=cu_seqlens_q,
                     cache_seqlens=cache_seqlens, rotary_cos=rotary_cos, rotary_sin=rotary_sin,
                     plan=plan),
                dict(rotary_dim=int(rotary_dim), neox_style=bool(neox_style)))


def paged_attention(q: "paddle.Tensor", key_cache: "paddle.Tensor", value_cache: "paddle.Tensor",
                    block_tables: "paddle.Tensor", cu_seqlens_q: "paddle.Tensor",
                    cache_seqlens: "paddle.Tensor", sinks: Optional["paddle.Tensor"] = None, *,
                    sliding_window: int = 0, causal: bool = True,
                    softmax_scale: float = 0.0, plan: Optional["paddle.Tensor"] = None) -> "paddle.Tensor":
    """The second half of `append_attention`: attention of q [rows, Hq, D] over the paged cache,
    which must already hold the step's new tokens (`cache_seqlens` counts the tokens cached before
    them, as for the other two ops). The caches are not modified. `plan` as for
    `append_attention` (its RoPE word is not compared: one plan serves both halves).

    Returns out [rows, Hq*Dv], dtype of q; rows past T are zero.
    """
    return _run("paged_attention",
                dict(q=q, key_cache=key_cache, value_cache=value_cache, block_tables=block_tables,
                     cu_seqlens_q=cu_seqlens_q, cache_seqlens=cache_seqlens, sinks=sinks, plan=plan),
                dict(sliding_window=int(sliding_window), causal=bool(causal),
                     softmax_scale=float(softmax_scale)))


def plan(q_or_qkv: "paddle.Tensor", key_cache: "paddle.Tensor", value_cache: "paddle.Tensor",
         block_tables: "paddle.Tensor", cu_seqlens_q: "paddle.Tensor", cache_seqlens: "paddle.Tensor",
         rotary_cos: Optional["paddle.Tensor"] = None, rotary_sin: Optional["paddle.Tensor"] = None, *,
         rotary_dim: int = 0, sliding_window: int = 0, causal: bool = True) -> "paddle.Tensor":
    """The step's plan for one spec group, made once per step and passed as `plan=` to every op of
    that group (DESIGN.md §3).

    Validates the inputs as the ops do, then checks the step's device-resident data (lengths, the
    block ids the step reads or writes, positions against the RoPE tables when given) and raises
    ValueError naming the argument; on GPU this is the step's one read-back. `q_or_qkv` is the
    step's qkv or q [rows, Hq, D]; `rotary_dim`, `sliding_window` and `causal` mean what they mean
    for the ops. Nothing is written but the plan.

    Returns int32 [PLAN_WORDS] on the place of q_or_qkv (layout: csrc/include/paddle_gqa/plan.h).
    """
    return _run("plan",
                dict(q_or_qkv=q_or_qkv, key_cache=key_cache, value_cache=value_cache,
                     block_tables=block_tables, cu_seqlens_q=cu_seqlens_q, cache_seqlens=cache_seqlens,
                     rotary_cos=rotary_cos, rotary_sin=rotary_sin),
                dict(rotary_dim=int(rotary_dim), sliding_window=int(sliding_window), causal=bool(causal)))


def built_with_cuda() -> bool:
    """Whether the loaded op library has the CUDA kernels compiled in."""
    from paddle_gqa._load import library

    return library().built_with_cuda


def check_errors(device_id: Optional[int] = None) -> None:
    """Raises ValueError for an input error the CUDA kernels recorded while a CUDA graph was being
    captured or in an op given a plan (device-resident facts such as an invalid block id cannot
    raise there without a synchronization), and clears it. `device_id` defaults to Paddle's
    current GPU. A no-op for a library built without CUDA or a Paddle without CUDA.
    """
    from paddle_gqa._load import library

    lib = library()
    if not lib.built_with_cuda:
        return
    import paddle

    if not paddle.is_compiled_with_cuda() or paddle.device.cuda.device_count() == 0:
        return
    if device_id is None:
        current = paddle.device.get_device()  # "gpu:N" or "cpu"
        device_id = int(current.split(":")[1]) if current.startswith("gpu:") else 0
    lib.check_errors(device_id)


class _UnifiedMarker:
    """The transform options `paddle.jit.marker.unified` attaches (duck-typed, so this module need
    not import paddle): the ops already run in dygraph and in static graphs, so neither to_static
    translator (AST, SOT) rewrites them; SOT records each call as one graph API call."""

    def need_transform(self, mode) -> bool:
        return False

    def need_capture_control_flow(self) -> bool:
        return False


for _fn in (append_attention, rope_write_cache, paged_attention, plan):
    setattr(_fn, "___jit_transform_options___", _UnifiedMarker())
del _fn
