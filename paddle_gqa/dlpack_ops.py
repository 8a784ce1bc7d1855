"""The CUDA ops on any DLPack tensors (torch, cupy, paddle) through the `paddle_gqa_cuda` module.

Same signatures as `paddle_gqa_cuda` (a preallocated output first; DESIGN.md §3), but `stream=None`
launches on the current stream of the framework that owns `out`. Frameworks are recognised by the
module of the tensor's type and imported only then, so this file imports none of them.

`paddle_gqa_cuda` is found on sys.path, else in $PADDLE_GQA_CUDA_MODULE_DIR, else in
<repo>/build/dlpack (where scripts/build_cuda.py puts it); it is loaded on the first call.
"""
from __future__ import annotations

import functools
import glob
import importlib
import importlib.machinery
import importlib.util
import os

__all__ = ["append_attention", "rope_write_cache", "paged_attention", "plan", "check_errors", "cuda_module",
           "current_stream", "PLAN_WORDS"]

MODULE_NAME = "paddle_gqa_cuda"
# int32 words of a plan tensor (csrc/include/paddle_gqa/plan.h; the module's PLAN_WORDS).
PLAN_WORDS = 8
ENV_DIR = "PADDLE_GQA_CUDA_MODULE_DIR"
_REPO_BUILD_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "build", "dlpack")


def _load_from(directory: str):
    suffixes = importlib.machinery.EXTENSION_SUFFIXES
    for path in sorted(glob.glob(os.path.join(directory, MODULE_NAME + "*"))):
        if any(path.endswith(s) for s in suffixes):
            spec = importlib.util.spec_from_file_location(MODULE_NAME, path)
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
            return module
    return None


@functools.lru_cache(maxsize=None)
def cuda_module():
    """The compiled `paddle_gqa_cuda` module; ImportError naming every place searched."""
    try:
        return importlib.import_module(MODULE_NAME)
    except ImportError:
        pass
    searched = ["sys.path"]
    env_dir = os.environ.get(ENV_DIR)
    for directory in ([env_dir] if env_dir else []) + [_REPO_BUILD_DIR]:
        searched.append(directory)
        module = _load_from(directory)
        if module is not None:
            return module
    raise ImportError(f"{MODULE_NAME} was not found (searched {', '.join(searched)}): build it on a CUDA "
                      f"machine with `python scripts/build_cuda.py`, or set {ENV_DIR} to its directory")


def current_stream(tensor) -> int:
    """The current CUDA stream (as an integer handle) of the framework that owns `tensor`.

    A tensor that is not on a CUDA device gets 0: the op then refuses it with a message naming it.
    """
    root = type(tensor).__module__.split(".")[0]
    if root == "torch":
        import torch

        if tensor.device.type != "cuda":
            return 0
        return torch.cuda.current_stream(tensor.device).cuda_stream
    if root == "paddle":
        import paddle

        if not tensor.place.is_gpu_place():
            return 0
        return paddle.device.current_stream(tensor.place).cuda_stream
    if root == "cupy":
        import cupy

        with tensor.device:
            return cupy.cuda.get_current_stream().ptr
    raise TypeError(f"cannot tell the current stream of a {type(tensor).__module__}.{type(tensor).__name__}: "
                    "pass stream= (a cudaStream_t as an integer, 0 for the default stream)")


def _stream(out, stream):
    return current_stream(out) if stream is None else int(stream)


def _borrow_all(out, stream, launch_stream, tensors):
    """The tensors as the module should receive them. When `out` is a torch CUDA tensor and the
    launch goes on torch's current stream (the stream every torch input is already ordered on), torch
    tensors are handed over as capsules from torch.utils.dlpack.to_dlpack, a C++ call, instead of
    through torch's Python `__dlpack__(stream=...)` handshake, which was most of a call's host time
    (BENCHMARKS.md, "host path"; scripts/host_overhead.py measures it). Anything else passes as is."""
    if type(out).__module__.split(".")[0] != "torch" or out.device.type != "cuda":
        return tensors
    # With stream=None, launch_stream already is torch's current stream (_stream looked it up).
    if stream is not None and launch_stream != current_stream(out):
        return tensors
    from torch.utils.dlpack import to_dlpack

    def borrow(t):
        if type(t).__module__.split(".")[0] == "torch" and t.device.type == "cuda":
            return to_dlpack(t)
        return t
    return [None if t is None else borrow(t) for t in tensors]


def append_attention(out, qkv, key_cache, value_cache, block_tables, cu_seqlens_q, cache_seqlens,
                     rotary_cos=None, rotary_sin=None, sinks=None, *, rotary_dim=0, neox_style=True,
                     sliding_window=0, causal=True, softmax_scale=0.0, stream=None, plan=None):
    """RoPE + cache write + attention into out [rows, Hq*Dv]; returns out. With `plan` (from `plan`)
    the call does not synchronize; invalid step data is then raised by `check_errors`."""
    launch_stream = _stream(out, stream)
    *args, plan = _borrow_all(out, stream, launch_stream, [out, qkv, key_cache, value_cache, block_tables, cu_seqlens_q,
                                            cache_seqlens, rotary_cos, rotary_sin, sinks, plan])
    cuda_module().append_attention(*args, rotary_dim=rotary_dim, neox_style=neox_style,
                                   sliding_window=sliding_window, causal=causal, softmax_scale=softmax_scale,
                                   stream=launch_stream, plan=plan)
    return out


def rope_write_cache(q_out, qkv, key_cache, value_cache, block_tables, cu_seqlens_q, cache_seqlens,
                     rotary_cos=None, rotary_sin=None, *, rotary_dim=0, neox_style=True, stream=None,
                     plan=None):
    """RoPE + cache write; rotated queries into q_out [rows, Hq, D]; returns q_out. `plan` as for
    append_attention."""
    launch_stream = _stream(q_out, stream)
    *args, plan = _borrow_all(q_out, stream, launch_stream, [q_out, qkv, key_cache, value_cache, block_tables, cu_seqlens_q,
                                              cache_seqlens, rotary_cos, rotary_sin, plan])
    cuda_module().rope_write_cache(*args, rotary_dim=rotary_dim, neox_style=neox_style, stream=launch_stream,
                                   plan=plan)
    return q_out


def paged_attention(out, q, key_cache, value_cache, block_tables, cu_seqlens_q, cache_seqlens, sinks=None, *,
                    sliding_window=0, causal=True, softmax_scale=0.0, stream=None, plan=None):
    """Attention of q [rows, Hq, D] over the paged cache into out [rows, Hq*Dv]; returns out. `plan`
    as for append_attention."""
    launch_stream = _stream(out, stream)
    *args, plan = _borrow_all(out, stream, launch_stream, [out, q, key_cache, value_cache, block_tables, cu_seqlens_q,
                                            cache_seqlens, sinks, plan])
    cuda_module().paged_attention(*args, sliding_window=sliding_window, causal=causal,
                                  softmax_scale=softmax_scale, stream=launch_stream, plan=plan)
    return out


def plan(plan_out, q_or_qkv, key_cache, value_cache, block_tables, cu_seqlens_q, cache_seqlens, rotary_cos=None,
         rotary_sin=None, *, rotary_dim=0, sliding_window=0, causal=True, stream=None):
    """Checks one step's data for one spec group (the ops' validation, and the device data with
    the step's one read-back: ValueError naming the argument) and writes the plan into plan_out,
    int32 [PLAN_WORDS] on the step's device; returns plan_out. Pass it as `plan=` to every op of the
    step with the same sliding_window / causal (and RoPE tables given or not), so they do not
    synchronize. q_or_qkv: the step's qkv or q [rows, Hq, D]."""
    launch_stream = _stream(plan_out, stream)
    args = _borrow_all(plan_out, stream, launch_stream, [plan_out, q_or_qkv, key_cache, value_cache, block_tables, cu_seqlens_q,
                                          cache_seqlens, rotary_cos, rotary_sin])
    cuda_module().plan(*args, rotary_dim=rotary_dim, sliding_window=sliding_window, causal=causal,
                       stream=launch_stream)
    return plan_out


def check_errors(device_id=0):
    """Raises ValueError for invalid step data recorded on `device_id` by a call captured in a CUDA
    graph or given a plan, and clears the record. Synchronizes the device: call it outside graph
    capture."""
    cuda_module().check_errors(device_id)
