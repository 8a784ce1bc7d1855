"""The Paddle custom ops as Paddle sees them: lazy loading, dygraph, paddle.jit.to_static (AST and
SOT), legacy static programs, in-place cache updates, and errors that name the argument."""
import os

import numpy as np
import pytest

import cases

paddle = pytest.importorskip("paddle", reason="Paddle is not installed: these tests run the Paddle ops")

from gpu.runners import OP_INPUTS  # noqa: E402
from paddle_gqa import ops  # noqa: E402


def _case(dtype="float32", rope="neox", sinks=True, window=0, seed=0):
    """A mixed step (decode, chunked prefill, idle slot, fresh prefill, padding rows) with GQA G=3,
    shuffled NaN-poisoned blocks."""
    return cases.build_step(num_q_heads=6, num_kv_heads=2, head_dim=64, v_head_dim=64,
                            block_size=16, dtype=dtype, layout=[(37, 1), (20, 9), (5, 0), (0, 18)],
                            pad_rows=3, rope=rope, sinks=sinks, window=window, seed=seed,
                            name="integration")


def test_import_does_not_import_paddle(run_python):
    out = run_python("""
        import sys
        import paddle_gqa, paddle_gqa.ops, paddle_gqa.kernel_table, paddle_gqa.spec
        print("paddle imported:", "paddle" in sys.modules)
    """)
    assert "paddle imported: False" in out


def test_library_loads_and_reports_build(cpu_runner):
    from paddle_gqa import _load

    lib = _load.library()
    assert os.path.isfile(lib.path) and lib.path.endswith("_paddle_ops.so")
    assert isinstance(ops.built_with_cuda(), bool)
    # No CUDA graph was captured, so no error can be recorded: the call must not raise.
    assert ops.check_errors() is None


def test_decode_against_local_float64(cpu_runner):
    """One decode token, no RoPE, G=2, computed here in float64 from DESIGN.md §2 directly."""
    rng = np.random.default_rng(7)
    hq, hkv, d, dv, bs, cached = 4, 2, 64, 64, 16, 21
    k_prefix = rng.standard_normal((cached, hkv, d)).astype(np.float32)
    v_prefix = rng.standard_normal((cached, hkv, dv)).astype(np.float32)
    qkv = rng.standard_normal((1, hq * d + hkv * (d + dv))).astype(np.float32)
    table = np.array([[2, 0, -1]], np.int32)  # logical blocks 0, 1 -> physical 2, 0
    kc = np.full((3, hkv, bs, d), np.nan, np.float32)
    vc = np.full((3, hkv, bs, dv), np.nan, np.float32)
    for p in range(cached):
        kc[table[0, p // bs], :, p % bs] = k_prefix[p]
        vc[table[0, p // bs], :, p % bs] = v_prefix[p]

    q = qkv[0, :hq * d].reshape(hq, d).astype(np.float64)
    k_new = qkv[0, hq * d:hq * d + hkv * d].reshape(hkv, d)
    v_new = qkv[0, hq * d + hkv * d:].reshape(hkv, dv)
    keys = np.concatenate([k_prefix, k_new[None]]).astype(np.float64)    # [kv_len, Hkv, D]
    values = np.concatenate([v_prefix, v_new[None]]).astype(np.float64)  # [kv_len, Hkv, Dv]
    expected = np.zeros((hq, dv))
    for h in range(hq):
        s = keys[:, h // (hq // hkv)] @ q[h] / np.sqrt(d)
        w = np.exp(s - s.max())
        expected[h] = w @ values[:, h // (hq // hkv)] / w.sum()

    K, V = paddle.to_tensor(kc), paddle.to_tensor(vc)
    out = ops.append_attention(
        paddle.to_tensor(qkv), K, V, paddle.to_tensor(table), paddle.to_tensor(np.array([0, 1], np.int32)),
        paddle.to_tensor(np.array([cached], np.int32)))
    np.testing.assert_allclose(out.numpy().reshape(hq, dv), expected, rtol=2e-5, atol=2e-5)
    # The new token went to logical block 1 (physical 0), slot 21 % 16 = 5.
    np.testing.assert_array_equal(K.numpy()[0, :, 5], k_new)
    np.testing.assert_array_equal(V.numpy()[0, :, 5], v_new)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_dygraph_updates_caches_in_place(cpu_runner, dtype):
    case = _case(dtype)
    t = cpu_runner.load(case)
    k_obj, v_obj = t["key_cache"], t["value_cache"]
    k_ptr, v_ptr = k_obj.data_ptr(), v_obj.data_ptr()
    kb, vb = cpu_runner.bits(k_obj), cpu_runner.bits(v_obj)
    out = cpu_runner.append_attention(case, t)
    assert isinstance(out, paddle.Tensor) and out.dtype == t["qkv"].dtype
    # The very tensors passed in hold the new tokens; nothing was reallocated.
    assert k_obj.data_ptr() == k_ptr and v_obj.data_ptr() == v_ptr
    ref_out, ref_k, ref_v = case.ref_append_attention()
    cases.check_output(case, cpu_runner.values(out), ref_out)
    cases.check_caches(cpu_runner, case, t, (kb, vb), ref_k, ref_v)


def _fused(qkv, key_cache, value_cache, block_tables, cu_seqlens_q, cache_seqlens, cos, sin, sinks):
    return ops.append_attention(qkv, key_cache, value_cache, block_tables, cu_seqlens_q, cache_seqlens,
                                cos, sin, sinks)


def _split(qkv, key_cache, value_cache, block_tables, cu_seqlens_q, cache_seqlens, cos, sin, sinks):
    q = ops.rope_write_cache(qkv, key_cache, value_cache, block_tables, cu_seqlens_q, cache_seqlens,
                             cos, sin)
    return ops.paged_attention(q, key_cache, value_cache, block_tables, cu_seqlens_q, cache_seqlens,
                               sinks)


def _args(t):
    """append_attention's positional inputs (the signature of _fused and _split) from a runner's load()."""
    return [t[k] for k in OP_INPUTS["append_attention"]]


@pytest.mark.parametrize("full_graph", [True, False], ids=["ast", "sot"])
@pytest.mark.parametrize("fn", [_fused, _split], ids=["append_attention", "rope_write_then_paged"])
def test_to_static_matches_dygraph_and_reference(cpu_runner, fn, full_graph):
    case = _case("float32")
    eager = cpu_runner.load(case)
    out_eager = _fused(*_args(eager))

    static_fn = paddle.jit.to_static(fn, full_graph=full_graph)
    for _ in range(2):  # the second call runs the cached program
        t = cpu_runner.load(case)
        k_before = cpu_runner.bits(t["key_cache"])
        k_obj = t["key_cache"]
        out = static_fn(*_args(t))
        ref_out, ref_k, ref_v = case.ref_append_attention()
        cases.check_output(case, cpu_runner.values(out), ref_out, what="to_static out")
        cases.check_cache(case, "key_cache", k_before, cpu_runner.bits(k_obj), cpu_runner.values(k_obj), ref_k)
        # Same kernels, same inputs: the static program reproduces dygraph's caches bit for bit.
        assert np.array_equal(cpu_runner.bits(t["key_cache"]), cpu_runner.bits(eager["key_cache"]))
        assert np.array_equal(cpu_runner.bits(t["value_cache"]), cpu_runner.bits(eager["value_cache"]))
        if fn is _fused:
            assert np.array_equal(cpu_runner.bits(out), cpu_runner.bits(out_eager))
        else:
            rtol, atol = cases.OUTPUT_TOL["float32"]
            cases.assert_close(cpu_runner.values(out), cpu_runner.values(out_eager), rtol, atol,
                               "split static vs fused dygraph")


def test_to_static_infers_shapes_with_dynamic_rows(cpu_runner):
    case = _case("float32", rope="none", sinks=False)
    t = cpu_runner.load(case)
    width = t["qkv"].shape[1]
    spec = [paddle.static.InputSpec([None, width], "float32", "qkv"),
            paddle.static.InputSpec(t["key_cache"].shape, "float32", "key_cache"),
            paddle.static.InputSpec(t["value_cache"].shape, "float32", "value_cache"),
            paddle.static.InputSpec([None, t["block_tables"].shape[1]], "int32", "block_tables"),
            paddle.static.InputSpec([None], "int32", "cu_seqlens_q"),
            paddle.static.InputSpec([None], "int32", "cache_seqlens")]
    shapes = {}

    @paddle.jit.not_to_static
    def record(name, value):
        shapes[name] = list(value.shape)  # the static shape InferShape gave the op's output

    def fn(qkv, key_cache, value_cache, block_tables, cu_seqlens_q, cache_seqlens):
        out = ops.append_attention(qkv, key_cache, value_cache, block_tables, cu_seqlens_q, cache_seqlens)
        q = ops.rope_write_cache(qkv, key_cache, value_cache, block_tables, cu_seqlens_q, cache_seqlens)
        record("out", out)
        record("q", q)
        return out

    static_fn = paddle.jit.to_static(fn, input_spec=spec, full_graph=True)
    out = static_fn(*[t[s.name] for s in spec])
    assert shapes["out"] == [-1, case.num_q_heads * case.v_head_dim]
    assert shapes["q"] == [-1, case.num_q_heads, case.head_dim]
    assert list(out.shape) == [case.rows, case.num_q_heads * case.v_head_dim]


def _bad_inputs(cpu_runner, case):
    """(description, tensors, expected words in the message) of inputs the ops must refuse."""
    good = cpu_runner.load(case)
    bad_table = case.block_tables.copy()
    bad_table[1, 1] = case.num_blocks + 5  # slot 1 writes positions 20..28, in logical block 1
    return [
        ("qkv float64", dict(good, qkv=cpu_runner.raw(case.qkv.astype(np.float64))), ["qkv"]),
        ("block id out of range", dict(good, block_tables=cpu_runner.int32(bad_table)), ["block_tables"]),
        ("cu_seqlens_q decreasing", dict(good, cu_seqlens_q=cpu_runner.int32(case.cu_seqlens_q[::-1].copy())),
         ["cu_seqlens_q"]),
        ("sinks of the wrong length", dict(good, sinks=cpu_runner.fp32(np.zeros(case.num_q_heads + 1))), ["sinks"]),
    ]


def test_bad_input_raises_value_error_naming_the_argument(cpu_runner):
    case = _case("float32")
    for what, t, words in _bad_inputs(cpu_runner, case):
        kb, vb = cpu_runner.bits(t["key_cache"]), cpu_runner.bits(t["value_cache"])
        with pytest.raises(ValueError) as info:
            cpu_runner.append_attention(case, t)
        for word in words:
            assert word in str(info.value), f"{what}: message does not name {word!r}: {info.value}"
        assert np.array_equal(kb, cpu_runner.bits(t["key_cache"])), f"{what}: key_cache changed"
        assert np.array_equal(vb, cpu_runner.bits(t["value_cache"])), f"{what}: value_cache changed"


@pytest.mark.parametrize("full_graph", [True, False], ids=["ast", "sot"])
def test_bad_input_under_to_static(cpu_runner, full_graph):
    case = _case("float32")
    static_fn = paddle.jit.to_static(_fused, full_graph=full_graph)
    _, t, words = _bad_inputs(cpu_runner, case)[1]
    kb = cpu_runner.bits(t["key_cache"])
    with pytest.raises(ValueError) as info:
        static_fn(*_args(t))
    assert "block_tables" in str(info.value) and "not a valid block id" in str(info.value)
    assert np.array_equal(kb, cpu_runner.bits(t["key_cache"]))


def _gpu_paddle_with_cpu_only_library():
    return (paddle.is_compiled_with_cuda() and paddle.device.cuda.device_count() > 0
            and not ops.built_with_cuda())


@pytest.mark.skipif(not _gpu_paddle_with_cpu_only_library(),
                    reason="needs a CUDA-enabled Paddle, a GPU and a paddle_gqa built without CUDA (a library "
                           "built with CUDA runs the op instead: the GPU tests cover that path)")
def test_gpu_tensor_without_cuda_build_is_refused(cpu_runner):
    """A GPU tensor reaching a library built without CUDA gets the rebuild hint."""
    case = _case("bfloat16")
    gpu = type(cpu_runner)("gpu")
    with pytest.raises(ValueError, match="built without CUDA"):
        gpu.append_attention(case, gpu.load(case))


@pytest.mark.parametrize("name", ["key_cache", "value_cache"])
def test_strided_cache_view_is_refused(cpu_runner, name):
    """Paddle passes custom ops a contiguous copy of a strided input: in-place writes into a strided
    cache view would be lost, so the ops that write the cache refuse it, naming the argument."""
    case = _case("float32")
    t = cpu_runner.load(case)
    t[name] = cpu_runner.noncontiguous(t[name])
    before = cpu_runner.bits(t[name])
    for call in (cpu_runner.append_attention, cpu_runner.rope_write_cache):
        with pytest.raises(ValueError, match=rf"{name}: .* is not contiguous"):
            call(case, t)
    assert np.array_equal(before, cpu_runner.bits(t[name]))
