"""Per-layer attention backends: `get_backend(spec, name)` and the step metadata every layer shares.

Backends: "custom_op" (paddle_gqa.ops.append_attention: the package's CPU/CUDA kernels) and
"reference" (plain Paddle, any spec and place). Importing this package imports no Paddle; the
backend modules do when `get_backend` first asks for them.
"""
from __future__ import annotations

import functools
import importlib
from typing import Optional

from ..spec import LayerSpec
from .base import AttentionBackend, AttentionRunner, UnsupportedSpec
from .metadata import StepMetadata, build_step_metadata

__all__ = ["AttentionBackend", "AttentionRunner", "UnsupportedSpec", "StepMetadata", "build_step_metadata",
           "BACKEND_NAMES", "backend_class", "get_backend"]

# name -> (module, class); the modules import paddle, so they are loaded on first use.
_BACKENDS = {
    "custom_op": (".custom_op", "CustomOpBackend"),
    "reference": (".reference", "ReferenceBackend"),
}
BACKEND_NAMES = tuple(_BACKENDS)


def backend_class(name: str):
    if name not in _BACKENDS:
        raise ValueError(f"backend name={name!r}: expected one of {', '.join(BACKEND_NAMES)}")
    module, cls = _BACKENDS[name]
    return getattr(importlib.import_module(module, __name__), cls)


@functools.lru_cache(maxsize=None)
def _interned(spec: LayerSpec, name: str) -> AttentionBackend:
    # Backends hold only their (frozen) spec, so sharing one per distinct spec is safe.
    return backend_class(name)(spec)


def get_backend(spec: LayerSpec, name: str = "custom_op", *, dtype: Optional[str] = None,
                block_size: Optional[int] = None, device: Optional[str] = None) -> AttentionBackend:
    """The backend `name` bound to `spec` (one instance per distinct spec). Raises UnsupportedSpec
    listing every reason when the spec, with the dtype / block size / device given, cannot run."""
    backend = _interned(spec, name)
    backend.check(dtype=dtype, block_size=block_size, device=device)
    return backend
