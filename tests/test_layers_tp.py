"""Tensor-parallel Attention: the ranks' partial outputs, summed as a row-parallel o_proj all-reduce would,
equal the unsharded layer's output over a multi-step schedule; loaders for fused / separate / interleaved
checkpoints; clear errors for head counts tp cannot split."""
import itertools

import numpy as np
import pytest

paddle = pytest.importorskip("paddle", reason="Paddle is not installed (the torch-only GPU machine)")

from paddle_gqa.backends import UnsupportedSpec, build_step_metadata  # noqa: E402
from paddle_gqa.kv_cache import PagedKVCache  # noqa: E402
from paddle_gqa.layers import (Attention, QKVGateParallelLinear, QKVParallelLinear,  # noqa: E402
                               RowParallelLinear, TPLayout, shard_layer_spec)
from paddle_gqa.spec import LayerSpec, RopeSpec  # noqa: E402


HIDDEN = 32
HQ = 24            # divisible by every tp and Hkv below: no combination is invalid by definition
BLOCK = 16
# (req, new tokens) per step: prefills, a chunked prefill, decodes; "b" is released after step 2.
SCHEDULE = [
    [("a", 9), ("b", 4)],
    [("a", 1), ("b", 20), ("c", 3)],
    [("a", 1), ("c", 1), ("d", 6)],
    [("a", 1), ("c", 1), ("d", 1)],
]
RELEASE_AFTER = {1: ["b"]}


def _spec(hkv, d, dv):
    return LayerSpec(HQ, hkv, d, dv, sliding_window=6, rope=RopeSpec(10000.0, d // 2, 64, neox_style=True),
                     has_sinks=True, value_scale=0.7)


def _checkpoint(rng, spec, *, gated, fused):
    """HF-layout tensors of one attention layer (full model, [out, in])."""
    hq, hkv, d, dv = spec.num_heads, spec.num_kv_heads, spec.head_dim, spec.v_head_dim
    w = {p: rng.standard_normal((n, HIDDEN)).astype(np.float32) * 0.2
         for p, n in (("q", hq * d), ("k", hkv * d), ("v", hkv * dv), ("g", hq * dv))}
    b = {p: rng.standard_normal(x.shape[0]).astype(np.float32) * 0.1 for p, x in w.items()}
    parts = ["q", "k", "v"] + (["g"] if gated else [])
    out = {}
    if fused:
        name = "qkvg_proj" if gated else "qkv_proj"
        out[f"{name}.weight"] = np.concatenate([w[p] for p in parts])
        out[f"{name}.bias"] = np.concatenate([b[p] for p in parts])
    else:
        for p in parts:
            out[f"{p}_proj.weight"], out[f"{p}_proj.bias"] = w[p], b[p]
    out["o_proj.weight"] = rng.standard_normal((HIDDEN, hq * dv)).astype(np.float32) * 0.2
    out["o_proj.bias"] = rng.standard_normal(HIDDEN).astype(np.float32)
    out["sinks"] = rng.standard_normal(hq).astype(np.float32)
    out["q_norm.weight"] = 1.0 + 0.1 * rng.standard_normal(d).astype(np.float32)
    out["k_norm.weight"] = 1.0 + 0.1 * rng.standard_normal(d).astype(np.float32)
    return out


def _run(layer, hidden_per_step, dtype="float32"):
    """Runs SCHEDULE through `layer` with its own cache; returns the output of every step."""
    cache = PagedKVCache([layer.local_spec], block_size=BLOCK, dtype=dtype, num_blocks=24)
    outs = []
    for step, sched in enumerate(SCHEDULE):
        for req, n in sched:
            if req not in cache.requests:
                cache.add_request(req)
            cache.reserve(req, n)
        meta = build_step_metadata(cache, sched)
        out = layer(paddle.to_tensor(hidden_per_step[step]).astype(dtype), meta, cache)
        outs.append(out.astype("float32").numpy().astype(np.float64))
        for req, n in sched:
            cache.commit(req, n)
        for req in RELEASE_AFTER.get(step, []):
            cache.release(req)
    return outs


def _layer(spec, weights, *, tp, rank, gated, backend, dtype="float32"):
    layer = Attention(spec, HIDDEN, layer_idx=0, tp_rank=rank, tp_size=tp, backend=backend, attention_bias=True,
                      o_proj_bias=True, qk_norm=True, gated=gated, block_size=BLOCK, dtype=dtype)
    layer.load_weights(weights)
    return layer


def _check_tp(tp, hkv, dims, fused, gated, backend, seed, dtype="float32", tol=2e-5):
    rng = np.random.default_rng(seed)
    spec = _spec(hkv, *dims)
    weights = _checkpoint(rng, spec, gated=gated, fused=fused)
    hidden = [rng.standard_normal((sum(n for _, n in s), HIDDEN)).astype(np.float32) for s in SCHEDULE]
    full = _run(_layer(spec, weights, tp=1, rank=0, gated=gated, backend=backend, dtype=dtype), hidden, dtype)
    partial = [_run(_layer(spec, weights, tp=tp, rank=r, gated=gated, backend=backend, dtype=dtype), hidden, dtype)
               for r in range(tp)]
    for step, want in enumerate(full):
        got = sum(p[step] for p in partial)  # the row-parallel all-reduce
        assert np.abs(want).max() > 0.1
        np.testing.assert_allclose(got, want, rtol=tol, atol=tol * np.abs(want).max(),
                                   err_msg=f"tp={tp} Hkv={hkv} dims={dims} fused={fused} gated={gated} step {step}")


GRID = list(itertools.product((1, 2, 4, 8), (1, 2, 4, 8), (False, True), (False, True)))


@pytest.mark.parametrize("tp,hkv,fused,gated", GRID)
def test_tp_partials_sum_to_unsharded_custom_op(tp, hkv, fused, gated):
    _check_tp(tp, hkv, (128, 64), fused, gated, "custom_op", seed=tp * 100 + hkv * 10 + 2 * fused + gated)


@pytest.mark.parametrize("tp,hkv", [(2, 1), (4, 2), (2, 4), (8, 8)])
def test_tp_partials_sum_to_unsharded_reference(tp, hkv):
    # Head dims no kernel has: the reference backend honours any D != Dv.
    _check_tp(tp, hkv, (40, 24), fused=tp % 4 == 0, gated=hkv % 2 == 0, backend="reference", seed=tp + hkv)


def test_tp_192_128_with_replicated_kv():
    _check_tp(8, 2, (192, 128), fused=False, gated=True, backend="custom_op", seed=7)


def test_tp_bfloat16():
    # Each rank rounds its own partial product to bf16 before the sum: compare within bf16 accuracy.
    _check_tp(4, 2, (128, 64), fused=True, gated=True, backend="custom_op", seed=5, dtype="bfloat16", tol=3e-2)


def test_unsupported_spec_fails_at_construction():
    with pytest.raises(UnsupportedSpec, match="160/160 has no kernel"):
        Attention(LayerSpec(8, 2, 160, 160), HIDDEN, layer_idx=0, backend="custom_op")
    with pytest.raises(UnsupportedSpec, match="block_size=8 has no kernel"):
        Attention(LayerSpec(8, 2, 128, 128), HIDDEN, layer_idx=0, backend="custom_op", block_size=8)


def test_replicated_kv_rank_holds_head_r_over_replicas():
    hkv, d, dv = 2, 8, 4
    rng = np.random.default_rng(0)
    k = rng.standard_normal((hkv * d, HIDDEN)).astype(np.float32)
    v = rng.standard_normal((hkv * dv, HIDDEN)).astype(np.float32)
    q = rng.standard_normal((8 * d, HIDDEN)).astype(np.float32)
    for r in range(8):
        lin = QKVParallelLinear(HIDDEN, 8, hkv, d, dv, tp_rank=r, tp_size=8)
        lin.load_weights({"q_proj.weight": q, "k_proj.weight": k, "v_proj.weight": v})
        w = lin.weight.numpy().T  # [out_local, in]
        head = r // 4
        assert lin.layout.kv_heads == 1 and lin.layout.kv_replicas == 4
        np.testing.assert_array_equal(w[:d], q[r * d:(r + 1) * d])
        np.testing.assert_array_equal(w[d:2 * d], k[head * d:(head + 1) * d])
        np.testing.assert_array_equal(w[2 * d:], v[head * dv:(head + 1) * dv])


def test_gate_loaders_agree():
    """Separate gate, fused [q|k|v|gate] and per-head interleaved q_gate give the same weights."""
    hq, hkv, d, dv = 6, 2, 8, 4
    rng = np.random.default_rng(1)
    q, k = (rng.standard_normal((h * d, HIDDEN)).astype(np.float32) for h in (hq, hkv))
    v, g = (rng.standard_normal((h * dv, HIDDEN)).astype(np.float32) for h in (hkv, hq))
    interleaved = np.concatenate([q.reshape(hq, d, HIDDEN), g.reshape(hq, dv, HIDDEN)], axis=1).reshape(-1, HIDDEN)
    for r in range(2):
        loaded = []
        for weights in ({"q_proj.weight": q, "k_proj.weight": k, "v_proj.weight": v, "g_proj.weight": g},
                        {"qkvg_proj.weight": np.concatenate([q, k, v, g])},
                        {"q_gate_proj.weight": interleaved, "k_proj.weight": k, "v_proj.weight": v}):
            lin = QKVGateParallelLinear(HIDDEN, hq, hkv, d, dv, tp_rank=r, tp_size=2)
            lin.load_weights(weights)
            loaded.append(lin.weight.numpy())
        np.testing.assert_array_equal(loaded[0], loaded[1])
        np.testing.assert_array_equal(loaded[0], loaded[2])
        np.testing.assert_array_equal(loaded[0][:, -3 * dv:].T, g[r * 3 * dv:(r + 1) * 3 * dv])


def test_row_parallel_bias_on_rank_zero_only():
    rng = np.random.default_rng(2)
    w = rng.standard_normal((5, 8)).astype(np.float32)
    bias = rng.standard_normal(5).astype(np.float32)
    x = rng.standard_normal((3, 8)).astype(np.float32)
    total = 0
    for r in range(4):
        lin = RowParallelLinear(8, 5, bias=True, tp_rank=r, tp_size=4)
        lin.weight_loader(lin.weight, w)
        lin.weight_loader(lin.bias, bias)
        assert (lin.bias is not None) == (r == 0)
        total = total + lin(paddle.to_tensor(x[:, 2 * r:2 * r + 2])).numpy()
    np.testing.assert_allclose(total, x @ w.T + bias, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("hq,hkv,tp,match", [
    (6, 2, 4, "tp_size=4 does not divide num_heads=6"),
    (12, 3, 2, "tp_size=2 does not divide num_kv_heads=3"),
    (12, 2, 3, "tp_size=3 > num_kv_heads=2 but is not a multiple"),
    (24, 8, 0, "tp_size=0"),
])
def test_invalid_tp_is_a_clear_error(hq, hkv, tp, match):
    with pytest.raises(ValueError, match=match):
        TPLayout(hq, hkv, 0, tp)
    with pytest.raises(ValueError, match=match):
        QKVParallelLinear(HIDDEN, hq, hkv, 8, 4, tp_size=tp)
    with pytest.raises(ValueError, match=match):
        shard_layer_spec(LayerSpec(hq, hkv, 8, 4), tp)


def test_loader_errors_name_the_tensor():
    lin = QKVParallelLinear(HIDDEN, 6, 2, 8, 4, tp_size=2, tp_rank=1)
    with pytest.raises(ValueError, match=r"v weight shape=\[16, 32\]: expected 8 output rows"):
        lin.load_weights({"v_proj.weight": np.zeros((16, HIDDEN), np.float32)})  # V sized with D, not Dv
    with pytest.raises(ValueError, match=r"fused weight shape=\[10, 32\]: expected 72 output rows"):
        lin.load_weights({"qkv_proj.weight": np.zeros((10, HIDDEN), np.float32)})
    with pytest.raises(ValueError, match="weight name='w_proj.weight'"):
        lin.load_weights({"w_proj.weight": np.zeros((8, HIDDEN), np.float32)})
    with pytest.raises(ValueError, match="built without a bias"):
        lin.load_weights({"q_proj.bias": np.zeros(48, np.float32)})
    with pytest.raises(ValueError, match=r"q weight shape=\[48, 7\]: expected \[out_features, in_features=32\]"):
        lin.load_weights({"q_proj.weight": np.zeros((48, 7), np.float32)})
