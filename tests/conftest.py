"""Shared fixtures of the CPU tests: the Paddle CPU runner, and a fresh Python process for code that
must start from a clean interpreter (import-time behaviour, legacy static programs).

Nothing here imports paddle or torch at import time: the GPU machine (torch only) loads this file too.
"""
import os
import subprocess
import sys
import textwrap

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="session")
def cpu_runner():
    """paddle_gqa.ops on CPU Paddle tensors. Skips only where Paddle itself is not installed (the
    torch-only GPU machine); a missing op library is an error, not a skip."""
    pytest.importorskip("paddle", reason="Paddle is not installed: the CPU op tests run through Paddle")
    from gpu.runners import PaddleRunner

    return PaddleRunner("cpu")


@pytest.fixture(scope="session")
def run_python():
    """run_python(code) -> stdout: runs dedented `code` in a new interpreter with the repository and
    tests/ on PYTHONPATH (so `import paddle_gqa, cases` work); fails the test with the process's
    output when it exits non-zero."""
    def run(code: str) -> str:
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([REPO, os.path.join(REPO, "tests")]))
        proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                              text=True, env=env, cwd=REPO, timeout=300)
        assert proc.returncode == 0, f"subprocess failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
        return proc.stdout
    return run
