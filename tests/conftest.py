"""Shared fixture of the CPU op tests: the Paddle CPU runner.

Nothing here imports paddle or torch at import time: the GPU machine (torch only) loads this file too.
"""
import pytest


@pytest.fixture(scope="session")
def cpu_runner():
    """paddle_gqa.ops on CPU Paddle tensors. Skips only where Paddle itself is not installed (the
    torch-only GPU machine); a missing op library is an error, not a skip."""
    pytest.importorskip("paddle", reason="Paddle is not installed: the CPU op tests run through Paddle")
    from gpu.runners import PaddleRunner

    return PaddleRunner("cpu")
