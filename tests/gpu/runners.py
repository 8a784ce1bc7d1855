"""Runners: execute a StepCase through one backend so every backend runs the same cases and checks.

- PaddleRunner("cpu" | "gpu"): the Paddle custom ops (paddle_gqa.ops); outputs are allocated by
  the op. The CPU tests use it too.
- TorchDlpackRunner: the DLPack module (paddle_gqa.dlpack_ops) with torch CUDA tensors as holders;
  outputs are preallocated and poisoned with NaN first.

A runner offers: tensor(array, dtype) / int32(array) / fp32(array) to make device tensors,
load(case[, q]) -> {argument name: tensor}, call(op, case, tensors, **attr_overrides) -> output,
the three ops by name, values(t) -> float64 NumPy, bits(t) -> raw unsigned bits (NaN-safe
comparison), and helpers the bad-input matrix uses (raw, cast, noncontiguous).
"""
from __future__ import annotations

import numpy as np

# Positional inputs of each op, in API order (DESIGN.md §3).
OP_INPUTS = {
    "append_attention": ("qkv", "key_cache", "value_cache", "block_tables", "cu_seqlens_q",
                         "cache_seqlens", "rotary_cos", "rotary_sin", "sinks"),
    "rope_write_cache": ("qkv", "key_cache", "value_cache", "block_tables", "cu_seqlens_q",
                         "cache_seqlens", "rotary_cos", "rotary_sin"),
    "paged_attention": ("q", "key_cache", "value_cache", "block_tables", "cu_seqlens_q",
                        "cache_seqlens", "sinks"),
}


class _Runner:
    """What PaddleRunner and TorchDlpackRunner share: building a case's tensors and the op calls."""

    name = "runner"

    def load(self, case, q=None) -> dict:
        t = {
            "qkv": self.tensor(case.qkv, case.dtype),
            "key_cache": self.tensor(case.key_cache, case.dtype),
            "value_cache": self.tensor(case.value_cache, case.dtype),
            "block_tables": self.int32(case.block_tables),
            "cu_seqlens_q": self.int32(case.cu_seqlens_q),
            "cache_seqlens": self.int32(case.cache_seqlens),
            "rotary_cos": None if case.rotary_cos is None else self.fp32(case.rotary_cos),
            "rotary_sin": None if case.rotary_sin is None else self.fp32(case.rotary_sin),
            "sinks": None if case.sinks is None else self.fp32(case.sinks),
        }
        if q is not None:
            t["q"] = self.tensor(q, case.dtype)
        return t

    def append_attention(self, case, t, **attrs):
        return self.call("append_attention", case, t, **attrs)

    def rope_write_cache(self, case, t, **attrs):
        return self.call("rope_write_cache", case, t, **attrs)

    def paged_attention(self, case, t, q=None, **attrs):
        if q is not None:
            t = dict(t, q=q)
        return self.call("paged_attention", case, t, **attrs)

    def fp32(self, arr):
        return self.tensor(np.asarray(arr, np.float64), "float32")


class PaddleRunner(_Runner):
    """paddle_gqa.ops on Paddle tensors on `device` ("cpu" or "gpu")."""

    # Paddle's custom-op runner passes a contiguous copy of a strided input to the op.
    copies_noncontiguous = True

    def __init__(self, device: str = "cpu"):
        import paddle

        from paddle_gqa import ops

        self.paddle, self.ops, self.device = paddle, ops, device
        self.place = paddle.CPUPlace() if device == "cpu" else paddle.CUDAPlace(0)
        self.name = f"paddle-{device}"

    def tensor(self, arr, dtype: str):
        arr = np.asarray(arr, dtype=np.float64)
        if dtype == "bfloat16":  # values are bf16-representable: the cast from fp32 is exact
            return self.paddle.to_tensor(arr.astype(np.float32), place=self.place).astype("bfloat16")
        return self.paddle.to_tensor(arr.astype(dtype), place=self.place)

    def int32(self, arr):
        return self.paddle.to_tensor(np.asarray(arr).astype(np.int32), place=self.place)

    def raw(self, arr):
        """A tensor of exactly this NumPy array's dtype (for wrong-dtype inputs)."""
        return self.paddle.to_tensor(np.asarray(arr), place=self.place)

    def call(self, op, case, t, **attrs):
        kwargs = dict(case.op_kwargs(op), **attrs)
        return getattr(self.ops, op)(*[t.get(a) for a in OP_INPUTS[op]], **kwargs)

    def values(self, t) -> np.ndarray:
        if t.dtype == self.paddle.bfloat16:
            t = t.astype("float32")
        return np.asarray(t.numpy(), dtype=np.float64)

    def bits(self, t) -> np.ndarray:
        """A snapshot (a copy, never a view of t's memory) of t's raw bits."""
        a = np.array(t.numpy(), copy=True)  # bfloat16 comes back as its raw uint16 bits
        if a.dtype == np.uint16:
            return a
        return a.view({2: np.uint16, 4: np.uint32, 8: np.uint64}[a.dtype.itemsize])

    def cast(self, t, dtype: str):
        return t.astype(dtype)

    def noncontiguous(self, t):
        """A view with t's shape and values whose last dim has stride 2."""
        view = self.paddle.stack([t, t], axis=-1)[..., 0]
        assert not view.is_contiguous(), "could not build a non-contiguous view"
        return view


class TorchDlpackRunner(_Runner):
    """paddle_gqa.dlpack_ops with torch CUDA tensors; outputs preallocated and NaN-poisoned."""

    name = "dlpack-torch"
    device = "cuda"

    def __init__(self):
        import torch

        from paddle_gqa import dlpack_ops

        self.torch, self.mod = torch, dlpack_ops
        self._dt = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}

    def tensor(self, arr, dtype: str):
        host = self.torch.from_numpy(np.ascontiguousarray(np.asarray(arr, np.float64).astype(np.float32)))
        return host.to(device=self.device, dtype=self._dt[dtype])

    def int32(self, arr):
        return self.torch.from_numpy(np.ascontiguousarray(np.asarray(arr).astype(np.int32))).to(self.device)

    def raw(self, arr):
        return self.torch.from_numpy(np.ascontiguousarray(np.asarray(arr))).to(self.device)

    def out_for(self, op, case, t):
        """The poisoned output buffer of `op`: [rows, Hq*Dv] (attention) or [rows, Hq, D] (q)."""
        src = t["q"] if op == "paged_attention" else t["qkv"]
        rows = src.shape[0]
        if op == "rope_write_cache":
            shape = (rows, case.num_q_heads, case.head_dim)
        else:
            shape = (rows, case.num_q_heads * case.v_head_dim)
        return self.torch.full(shape, float("nan"), dtype=self._dt[case.dtype], device=self.device)

    def call(self, op, case, t, out=None, **attrs):
        kwargs = dict(case.op_kwargs(op), **attrs)
        if out is None:
            out = self.out_for(op, case, t)
        getattr(self.mod, op)(out, *[t.get(a) for a in OP_INPUTS[op]], **kwargs)
        self.torch.cuda.synchronize()
        return out

    def values(self, t) -> np.ndarray:
        return t.detach().to("cpu", self.torch.float64).numpy()

    def bits(self, t) -> np.ndarray:
        """A snapshot (a copy, never a view of t's memory) of t's raw bits."""
        size = t.element_size()
        as_int = {2: self.torch.int16, 4: self.torch.int32, 8: self.torch.int64}[size]
        host = t.detach().contiguous().view(as_int).cpu().numpy()
        return np.array(host, copy=True).view({2: np.uint16, 4: np.uint32, 8: np.uint64}[size])

    def cast(self, t, dtype: str):
        torch = self.torch
        return t.to({"float64": torch.float64, "int64": torch.int64, "int32": torch.int32, **self._dt}[dtype])

    def noncontiguous(self, t):
        """A view with t's shape and values whose last dim has stride 2."""
        view = self.torch.stack([t, t], dim=-1)[..., 0]
        assert not view.is_contiguous()
        return view


def dlpack_unavailable_reason():
    """None when torch sees a CUDA device and the DLPack module is built, else why not."""
    try:
        import torch
    except ImportError:
        return "torch is not installed"
    if not torch.cuda.is_available():
        return "torch sees no CUDA device"
    from paddle_gqa import dlpack_ops

    try:
        dlpack_ops.cuda_module()
    except ImportError as e:
        return f"the DLPack module is not built ({e})"
    return None


def paddle_gpu_unavailable_reason():
    """None when a CUDA-enabled Paddle sees a GPU and paddle_gqa's library has CUDA, else why not."""
    try:
        import paddle
    except ImportError:
        return "Paddle is not installed"
    if not paddle.is_compiled_with_cuda():
        return "Paddle is built without CUDA"
    if paddle.device.cuda.device_count() == 0:
        return "Paddle sees no GPU"
    from paddle_gqa import ops

    if not ops.built_with_cuda():
        return "paddle_gqa's op library was built without CUDA"
    return None
