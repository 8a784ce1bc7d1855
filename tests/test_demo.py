"""The demo (`python -m paddle_gqa.demo`) run small: continuous batching with chunked prefills and SWA
release, its verification against the reference backend, and that the verification can fail."""
import json
import subprocess
import sys

import numpy as np
import pytest

paddle = pytest.importorskip("paddle", reason="Paddle is not installed (the torch-only GPU machine)")

from paddle_gqa import demo  # noqa: E402


def _numbers(out):
    line = next(l for l in out.splitlines() if l.startswith("served "))
    return line, next(l for l in out.splitlines() if l.startswith("blocks saved by SWA"))


def test_demo_main_module_small():
    proc = subprocess.run([sys.executable, "-m", "paddle_gqa.demo", "--requests", "12", "--token-budget", "96",
                           "--max-batch", "6", "--verify", "2", "--seed", "3"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    served, swa = _numbers(out)
    assert "served 12 requests" in served and "tokens/s" in served
    assert " 0 mixed" not in served and " 0 partial prefill chunks" not in served  # the schedule mixes
    assert int(swa.split(":")[1].split()[0]) > 0
    # 4 layers of MiMo-like heads in fp32: 2 full (4 kv heads) + 2 sliding (8 kv heads), 192 + 128 dims.
    assert f"cache bytes per token: {(2 * 4 + 2 * 8) * (192 + 128) * 4}" in out
    assert out.count(" ok\n") == 2 and "verification passed" in out
    assert "serving" in proc.stderr  # the progress bar


def test_demo_bfloat16_and_other_config(tmp_path, capsys):
    assert demo.main(["--requests", "6", "--dtype", "bfloat16", "--no-progress", "--verify", "2"]) == 0
    cfg = {"model_type": "llama", "hidden_size": 3072, "num_attention_heads": 24, "num_key_value_heads": 8,
           "num_hidden_layers": 28, "head_dim": 128, "vocab_size": 128256, "intermediate_size": 8192,
           "max_position_embeddings": 1024, "rope_theta": 500000.0,
           "rope_scaling": {"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0,
                            "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}}
    path = tmp_path / "config.json"
    path.write_text(json.dumps(cfg))
    assert demo.main(["--config", str(path), "--max-layers", "2", "--hidden-size", "64", "--requests", "5",
                      "--no-progress", "--verify", "1", "--block-size", "32"]) == 0
    out = capsys.readouterr().out
    assert "llama, 2 layers" in out and f"cache bytes per token: {2 * 8 * 256 * 4}" in out


def test_demo_reference_backend_runs_anywhere(capsys):
    assert demo.main(["--backend", "reference", "--requests", "5", "--no-progress", "--verify", "1"]) == 0
    assert "verification passed" in capsys.readouterr().out


def test_verification_catches_a_wrong_hidden_state(capsys):
    from paddle_gqa.config import load_model_config

    config = load_model_config(demo.DEFAULT_CONFIG)
    weights = demo.random_weights(config, config.hidden_size, 64, 64, seed=0)
    ref = demo.build_model(config, weights, backend="reference", dtype="float32", block_size=16)
    req = demo.Request(0, prompt_len=5, max_new=2, tokens=[1, 2, 3, 4, 5, 6], computed=5, sampled=True)
    from paddle_gqa.backends import build_step_metadata
    from paddle_gqa.kv_cache import PagedKVCache

    cache = PagedKVCache(config, block_size=16, dtype="float32", num_blocks=2)
    cache.add_request(0)
    cache.reserve(0, 5)
    good = ref(paddle.to_tensor(np.array(req.tokens[:5])), build_step_metadata(cache, [(0, 5)]), cache).numpy()
    req.hidden = [good]
    assert demo.verify(ref, config, [req], dtype="float32", block_size=16, place=paddle.CPUPlace()) == []
    bad = good.copy()
    bad[3, 7] += 0.01 * np.abs(good).max()
    req.hidden = [bad[:2], bad[2:]]
    failures = demo.verify(ref, config, [req], dtype="float32", block_size=16, place=paddle.CPUPlace())
    assert len(failures) == 1 and "request 0" in failures[0]


def test_bad_arguments_are_clear_errors():
    with pytest.raises(SystemExit, match="--requests=0"):
        demo.main(["--requests", "0"])
