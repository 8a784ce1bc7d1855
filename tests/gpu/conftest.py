"""GPU fixtures: one runner per available CUDA backend (DLPack + torch, Paddle GPU ops), each skipped
with its reason where that backend is absent (no CUDA device, module not built, no CUDA Paddle)."""
import functools

import pytest

from gpu import runners


@functools.lru_cache(maxsize=None)
def _reason(kind):
    return {"dlpack": runners.dlpack_unavailable_reason,
            "paddle": runners.paddle_gpu_unavailable_reason}[kind]()


@functools.lru_cache(maxsize=None)
def _runner(kind):
    return runners.TorchDlpackRunner() if kind == "dlpack" else runners.PaddleRunner("gpu")


def _get(kind):
    reason = _reason(kind)
    if reason is not None:
        pytest.skip(f"{kind} GPU runner unavailable: {reason}")
    return _runner(kind)


@pytest.fixture(params=["dlpack", "paddle"], ids=["dlpack-torch", "paddle-gpu"])
def gpu_runner(request):
    """Every available CUDA backend in turn."""
    return _get(request.param)


@pytest.fixture
def dlpack_runner():
    """The DLPack module with torch tensors (preallocated outputs; needed by the out-argument checks
    and the large cases)."""
    return _get("dlpack")


def pytest_configure(config):
    config.addinivalue_line("markers", "large: multi-GB GPU cases (16k prefill, 64 x 32k decodes); "
                                       "deselect with -m 'not large' for a quick run")
