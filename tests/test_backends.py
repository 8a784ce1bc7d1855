"""Attention backends: capability checks, step metadata, and both backends' runners against the float64
reference on the named batches (shuffled block tables, poisoned unused cache entries, untouched
entries bit-identical)."""
import zlib

import numpy as np
import pytest

paddle = pytest.importorskip("paddle", reason="Paddle is not installed (the torch-only GPU machine)")

import cases  # noqa: E402
from paddle_gqa import kernel_table  # noqa: E402
from paddle_gqa.backends import (AttentionRunner, StepMetadata, UnsupportedSpec,  # noqa: E402
                                 backend_class, build_step_metadata, get_backend)
from paddle_gqa.kv_cache import PagedKVCache  # noqa: E402
from paddle_gqa.spec import LayerSpec, RopeSpec  # noqa: E402


# ---------------------------------------------------------------------------------------------
# Capabilities


def test_custom_op_validate_lists_every_reason():
    spec = LayerSpec(8, 2, 160, 160, rope=RopeSpec(10000.0, 160, 64))
    reasons = backend_class("custom_op").validate(spec, dtype="float32", block_size=24, device="gpu")
    text = " | ".join(reasons)
    assert len(reasons) == 3, reasons
    assert "160/160" in text and "192/128" in text  # names the value and the built set
    assert "block_size=24" in text and "16, 32, 64, 128" in text
    assert "float32" in text and "GPU" in text
    ok = LayerSpec(24, 8, 192, 128, sliding_window=8, has_sinks=True)
    for d, dv in kernel_table.HEAD_DIMS:
        s = LayerSpec(6, 2, d, dv)
        for bs in kernel_table.BLOCK_SIZES:
            assert backend_class("custom_op").validate(s, dtype="bfloat16", block_size=bs, device="gpu") == []
    assert backend_class("custom_op").validate(ok, dtype="float32", block_size=64, device="cpu") == []


def test_reference_validate_accepts_any_head_dims():
    spec = LayerSpec(9, 3, 40, 24, rope=RopeSpec(10000.0, 20, 64))
    assert backend_class("reference").validate(spec, dtype="float32", block_size=8, device="cpu") == []
    bad = LayerSpec(9, 3, 40, 24, rope=RopeSpec(10000.0, 21, 64))
    assert any("rotary_dim=21" in r for r in backend_class("reference").validate(bad))


def test_get_backend_one_instance_per_distinct_spec():
    a = LayerSpec(24, 8, 128, 128)
    b = LayerSpec(24, 8, 128, 128)
    c = LayerSpec(24, 4, 128, 128)
    assert get_backend(a, "reference") is get_backend(b, "reference")
    assert get_backend(a, "reference") is not get_backend(c, "reference")
    assert get_backend(a, "reference") is not get_backend(a, "custom_op")
    with pytest.raises(UnsupportedSpec, match="160/160"):
        get_backend(LayerSpec(4, 1, 160, 160), "custom_op")
    with pytest.raises(ValueError, match="backend name='flash'"):
        get_backend(a, "flash")


def test_runner_rejects_mismatched_inputs():
    spec = LayerSpec(6, 2, 16, 8, has_sinks=True)
    runner = get_backend(spec, "reference").make_runner()
    kc = paddle.zeros([4, 2, 16, 16])
    vc = paddle.zeros([4, 2, 16, 8])
    meta = StepMetadata.from_host([0], [0, 1], [0], [np.array([[0]])], block_size=16, place=paddle.CPUPlace())
    good_w = 6 * 16 + 2 * (16 + 8)
    with pytest.raises(ValueError, match=r"qkv shape=\[1, 100\]"):
        runner.forward(paddle.zeros([1, 100]), kc, vc, meta, 0, paddle.zeros([6]))
    with pytest.raises(ValueError, match="value_cache shape"):
        runner.forward(paddle.zeros([1, good_w]), kc, paddle.zeros([4, 2, 16, 16]), meta, 0, paddle.zeros([6]))
    with pytest.raises(ValueError, match="sinks given=False"):
        runner.forward(paddle.zeros([1, good_w]), kc, vc, meta, 0, None)
    with pytest.raises(ValueError, match="rotary_cos"):
        get_backend(LayerSpec(6, 2, 16, 8, rope=RopeSpec(1e4, 16, 32)), "reference").make_runner()


# ---------------------------------------------------------------------------------------------
# Step metadata


def test_build_step_metadata_values_and_errors():
    full = LayerSpec(4, 2, 16, 8)
    swa = LayerSpec(4, 1, 16, 8, sliding_window=5)
    cache = PagedKVCache([full, swa, full], block_size=16, dtype="float32", num_blocks=16)
    for req, n in (("a", 17), ("b", 40)):
        cache.add_request(req)
        cache.reserve(req, n)
        cache.commit(req, n)  # b's first blocks leave the sliding group's window
    cache.reserve("b", 5)
    meta = build_step_metadata(cache, [("b", 5), ("a", 0)], num_rows=8)
    assert meta.req_ids == ("b", "a") and meta.num_tokens == 5 and meta.num_rows == 8
    assert meta.block_size == 16 and len(meta.block_tables) == cache.num_groups == 2
    np.testing.assert_array_equal(meta.cu_seqlens_q.numpy(), [0, 5, 5])
    np.testing.assert_array_equal(meta.cache_seqlens.numpy(), [40, 17])
    for g in range(2):
        assert meta.block_tables[g].dtype == paddle.int32
        np.testing.assert_array_equal(meta.block_tables[g].numpy(), cache.block_tables(g, ["b", "a"]))
    assert (meta.block_tables_host[1][0, :2] == -1).all()  # released by the sliding group
    calls = []
    assert meta.memo("k", lambda: calls.append(1) or 7) == 7 and meta.memo("k", lambda: calls.append(1)) == 7
    assert calls == [1]
    with pytest.raises(ValueError, match="at most once"):
        build_step_metadata(cache, [("a", 1), ("a", 2)])
    with pytest.raises(ValueError, match=">= 0"):
        build_step_metadata(cache, [("a", -1)])
    with pytest.raises(ValueError, match="num_rows=2"):
        build_step_metadata(cache, [("b", 5)], num_rows=2)
    with pytest.raises(ValueError, match="reserve"):
        build_step_metadata(cache, [("a", 40)])


# ---------------------------------------------------------------------------------------------
# Runners against the float64 reference


class BackendOps:
    """tests/cases.py runner protocol over a backend's per-layer runner (Paddle on CPU)."""

    def __init__(self, name):
        self.name = name

    def tensor(self, a, dtype):
        return paddle.to_tensor(np.asarray(a, dtype=np.float32)).astype(dtype)

    def load(self, case):
        t = {k: self.tensor(getattr(case, k), case.dtype) for k in ("qkv", "key_cache", "value_cache")}
        t["cos"] = None if case.rotary_cos is None else paddle.to_tensor(case.rotary_cos)
        t["sin"] = None if case.rotary_sin is None else paddle.to_tensor(case.rotary_sin)
        t["sinks"] = None if case.sinks is None else paddle.to_tensor(case.sinks)
        return t

    def values(self, t):
        return t.astype("float32").numpy().astype(np.float64)

    def bits(self, t):
        a = t.numpy()  # bf16 comes back as its raw uint16 bits
        return a.view({2: np.uint16, 4: np.uint32}[a.dtype.itemsize])

    def append_attention(self, case, t):
        rope = None
        if case.rotary_cos is not None:
            _, neox, eff = cases.rope_params(case.rope, case.head_dim)
            rope = RopeSpec(10000.0, eff, case.rotary_cos.shape[0], neox_style=neox)
        spec = LayerSpec(case.num_q_heads, case.num_kv_heads, case.head_dim, case.v_head_dim,
                         sliding_window=case.sliding_window, rope=rope, has_sinks=case.sinks is not None,
                         softmax_scale=case.softmax_scale, causal=case.causal)
        runner = get_backend(spec, self.name, dtype=case.dtype, block_size=case.block_size,
                             device="cpu").make_runner(t["cos"], t["sin"])
        assert isinstance(runner, AttentionRunner)
        meta = StepMetadata.from_host(list(range(case.batch)), case.cu_seqlens_q, case.cache_seqlens,
                                      [case.block_tables], block_size=case.block_size, place=paddle.CPUPlace(),
                                      num_rows=case.rows)
        return runner.forward(t["qkv"], t["key_cache"], t["value_cache"], meta, 0, t["sinks"])


def _case(batch, *, dims, dtype, group=3, hkv=2, bs=16, rope="partial", sinks=True, scale=0.0):
    seed = zlib.crc32(repr((batch, dims, dtype, rope)).encode()) % 10000
    spec = cases.named_batch(batch, bs)
    return cases.build_named(spec, num_q_heads=group * hkv, num_kv_heads=hkv, head_dim=dims[0], v_head_dim=dims[1],
                             block_size=bs, dtype=dtype, rope=rope, sinks=sinks, softmax_scale=scale, seed=seed)


@pytest.mark.parametrize("batch", cases.NAMED_BATCH_NAMES)
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_reference_backend_matches_contract(batch, dtype):
    # Head dims no kernel has (the reference backend runs anything), group 3, partial RoPE, sinks.
    for rope, dims, scale in (("partial", (24, 16), 0.0), ("gptj", (16, 8), 0.2)):
        cases.run_append_and_check(BackendOps("reference"), _case(batch, dims=dims, dtype=dtype, rope=rope,
                                                                    scale=scale))


@pytest.mark.parametrize("batch", cases.NAMED_BATCH_NAMES)
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_custom_op_backend_matches_contract(batch, dtype):
    for dims in ((192, 128), (128, 128)):
        cases.run_append_and_check(BackendOps("custom_op"), _case(batch, dims=dims, dtype=dtype))


def test_reference_backend_bad_block_leaves_caches_unchanged():
    case = _case("chunked_prefill", dims=(16, 8), dtype="float32")
    ops = BackendOps("reference")
    t = ops.load(case)
    before = (ops.bits(t["key_cache"]).copy(), ops.bits(t["value_cache"]).copy())
    case.block_tables[1, 1] = -1  # a block slot 1 reads (and, being its last full block, may write)
    with pytest.raises(ValueError, match=r"block_tables\[0\]\[1\]\[1\]=-1"):
        ops.append_attention(case, t)
    case.block_tables[1, 1] = case.num_blocks
    with pytest.raises(ValueError, match=f"={case.num_blocks}: expected a block id"):
        ops.append_attention(case, t)
    assert np.array_equal(before[0], ops.bits(t["key_cache"]))
    assert np.array_equal(before[1], ops.bits(t["value_cache"]))


def test_reference_plan_is_built_once_per_step_and_group():
    case = _case("mixed_idle", dims=(16, 8), dtype="float32")
    spec = LayerSpec(case.num_q_heads, case.num_kv_heads, 16, 8, has_sinks=True)
    runner = get_backend(spec, "reference").make_runner()
    meta = StepMetadata.from_host(list(range(case.batch)), case.cu_seqlens_q, case.cache_seqlens,
                                  [case.block_tables], block_size=16, place=paddle.CPUPlace(), num_rows=case.rows)
    ops = BackendOps("reference")
    for _ in range(3):  # three layers sharing the group
        t = ops.load(case)
        runner.forward(t["qkv"], t["key_cache"], t["value_cache"], meta, 0, t["sinks"])
    assert len(meta._memo) == 1
