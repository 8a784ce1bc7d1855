"""paddle_gqa: paged-KV-cache append-attention ops for PaddlePaddle (GQA, sliding window, D != Dv,
attention sinks).

Importing the package does no work and does not import paddle: submodules load on first access
(`paddle_gqa.ops`, `paddle_gqa.reference`, ...), and the op library loads on the first op call.
"""
import importlib

__version__ = "0.1.0"

# Submodules reachable as attributes of the package (loaded on first access).
_SUBMODULES = ("ops", "dlpack_ops", "kernel_table", "spec", "reference", "rope", "config", "kv_cache",
               "backends", "layers", "demo")


def __getattr__(name):
    if name in _SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + list(_SUBMODULES))
