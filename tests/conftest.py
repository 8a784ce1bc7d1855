"""Shared fixtures of the CPU tests: the Paddle CPU runner and the hypothesis profile.

Nothing here imports paddle or torch at import time: the GPU machine (torch only) loads this file too.
"""
import os

import pytest

try:
    from hypothesis import HealthCheck, settings
except ImportError:  # hypothesis is only needed by test_properties.py, which imports it itself
    settings = None

if settings is not None:
    # Each example runs real ops; keep the count small and drop the per-example deadline (the first
    # call loads the op library).
    settings.register_profile("default", max_examples=40, deadline=None,
                              suppress_health_check=[HealthCheck.too_slow])
    settings.register_profile("thorough", max_examples=100, deadline=None,
                              suppress_health_check=[HealthCheck.too_slow])
    settings.load_profile(os.environ.get("PADDLE_GQA_HYPOTHESIS_PROFILE", "default"))


@pytest.fixture(scope="session")
def cpu_runner():
    """paddle_gqa.ops on CPU Paddle tensors. Skips only where Paddle itself is not installed (the
    torch-only GPU machine); a missing op library is an error, not a skip."""
    pytest.importorskip("paddle", reason="Paddle is not installed: the CPU op tests run through Paddle")
    from gpu.runners import PaddleRunner

    return PaddleRunner("cpu")
