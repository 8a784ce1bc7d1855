"""The CPU grid on CUDA (bf16 / fp16) through every available GPU runner, against the reference;
bad input and untouched blocks on GPU; fp32 refused; the DLPack module's output arguments."""
import numpy as np
import pytest

import cases
from gpu.runners import OP_INPUTS
from paddle_gqa import reference

APPEND_GRID = cases.sampled_grid(120, seed=11, dtypes=cases.CUDA_DTYPES)
ROPE_GRID = cases.sampled_grid(30, seed=12, dtypes=cases.CUDA_DTYPES)
PAGED_GRID = cases.sampled_grid(60, seed=13, dtypes=cases.CUDA_DTYPES)
SPLIT_GRID = cases.sampled_grid(20, seed=14, dtypes=cases.CUDA_DTYPES)


@pytest.mark.parametrize("params", APPEND_GRID, ids=cases.grid_id)
def test_append_attention(gpu_runner, params):
    cases.run_append_and_check(gpu_runner, cases.build_grid_case(params))


@pytest.mark.parametrize("params", ROPE_GRID, ids=cases.grid_id)
def test_rope_write_cache(gpu_runner, params):
    cases.run_rope_write_and_check(gpu_runner, cases.build_grid_case(params))


@pytest.mark.parametrize("params", PAGED_GRID, ids=cases.grid_id)
def test_paged_attention(gpu_runner, params):
    cases.run_paged_and_check(gpu_runner, cases.build_grid_case(params))


@pytest.mark.parametrize("params", SPLIT_GRID, ids=cases.grid_id)
def test_append_equals_rope_write_then_paged(gpu_runner, params):
    cases.run_split_matches_fused(gpu_runner, cases.build_grid_case(params))


@pytest.mark.parametrize("group", cases.GROUP_SIZES + (5, 7, 12, 16))
@pytest.mark.parametrize("dtype", cases.CUDA_DTYPES)
def test_group_sizes(gpu_runner, group, dtype):
    for spec in ("decode", "chunked_prefill"):
        case = cases.build_named(cases.named_batch(spec, 16), num_q_heads=group * 2, num_kv_heads=2,
                                 head_dim=128, v_head_dim=128, block_size=16, dtype=dtype, rope="neox",
                                 sinks=group % 2 == 1, seed=300 + group)
        cases.run_append_and_check(gpu_runner, case)


@pytest.mark.parametrize("dims", cases.HEAD_DIMS, ids=lambda d: f"{d[0]}x{d[1]}")
@pytest.mark.parametrize("block_size", cases.BLOCK_SIZES)
@pytest.mark.parametrize("dtype", cases.CUDA_DTYPES)
def test_head_dims_and_block_sizes(gpu_runner, dims, block_size, dtype):
    for spec in ("decode", "mixed_idle"):
        case = cases.build_named(cases.named_batch(spec, block_size), num_q_heads=6, num_kv_heads=2,
                                 head_dim=dims[0], v_head_dim=dims[1], block_size=block_size, dtype=dtype,
                                 rope="partial", sinks=True, seed=dims[0] + dims[1] + block_size)
        cases.run_append_and_check(gpu_runner, case)


@pytest.mark.parametrize("block_size", cases.BLOCK_SIZES)
@pytest.mark.parametrize("spec_name", cases.SWA_EDGE_NAMES)
def test_sliding_window_edges(gpu_runner, spec_name, block_size):
    case = cases.build_named(cases.named_batch(spec_name, block_size), num_q_heads=6, num_kv_heads=2,
                             head_dim=192, v_head_dim=128, block_size=block_size, dtype="bfloat16",
                             rope="neox", sinks=True, seed=block_size + 1)
    cases.run_append_and_check(gpu_runner, case)
    cases.run_paged_and_check(gpu_runner, case)


@pytest.mark.parametrize("profile", ["rising", "falling", "peak"])
@pytest.mark.parametrize("dtype", cases.CUDA_DTYPES)
def test_decode_scores_that_move_across_tiles(gpu_runner, dtype, profile):
    """Decode slots whose cached keys are scaled along the sequence, so that a row's running
    maximum jumps by far more than the decode tiles' lazy-rescale threshold (2^8) several times
    over the KV tiles (rising), is set by the first tile (falling), or rises then falls (peak)."""
    case = cases.build_named(cases.BatchSpec("long_decode", ((1000, 1), (700, 1), (5 * 64 + 3, 1), (64, 1))),
                             num_q_heads=6, num_kv_heads=2, head_dim=128, v_head_dim=128, block_size=64,
                             dtype=dtype, sinks=True, seed={"rising": 41, "falling": 42, "peak": 43}[profile])
    for b, cache_len in enumerate(case.cache_seqlens):
        pos = np.arange(cache_len) / max(int(cache_len) - 1, 1)
        factor = {"rising": 1 + 7 * pos, "falling": 8 - 7 * pos, "peak": 8 - 7 * np.abs(2 * pos - 1)}[profile]
        scaled = reference.round_to_dtype(case.prefix_k[b] * factor[:, None, None], dtype)
        case.prefix_k[b] = scaled
        for p in range(int(cache_len)):
            case.key_cache[case.block_tables[b, p // 64], :, p % 64] = scaled[p]
    cases.run_paged_and_check(gpu_runner, case)


# Steps with at most one row per slot (rows <= B) and G <= 16 run every slot on decode tiles, with
# no prefill launch (runs_all_decode); here some slots still hold several tokens (others are idle),
# so a slot's packed rows span up to 5 decode tiles, long ones split their keys, and padding rows
# follow T. (dims, Hq, Hkv, window): G 3, 16 (the largest such group) and 8 with a window.
ALL_DECODE_SHAPES = [((128, 128), 24, 8, 0), ((192, 128), 64, 4, 0), ((192, 128), 16, 2, 50), ((64, 64), 16, 1, 0)]


@pytest.mark.parametrize("shape", ALL_DECODE_SHAPES, ids=lambda s: f"{s[0][0]}x{s[0][1]}_{s[1]}q{s[2]}kv_w{s[3]}")
@pytest.mark.parametrize("dtype", cases.CUDA_DTYPES)
def test_all_decode_steps_with_multi_token_slots(gpu_runner, shape, dtype):
    (d, dv), hq, hkv, window = shape
    layout = ((900, 5), (0, 0), (40, 1), (0, 0), (0, 0), (300, 3), (0, 0), (7, 1), (0, 0), (2000, 1),
              (0, 0), (64, 2), (0, 0), (0, 0))  # B 14, T 13
    spec = cases.BatchSpec("all_decode", layout, pad_rows=1, window=window)  # rows 14 = B
    case = cases.build_named(spec, num_q_heads=hq, num_kv_heads=hkv, head_dim=d, v_head_dim=dv, block_size=16,
                             dtype=dtype, rope="neox", sinks=True, seed=d + hq + window)
    cases.run_append_and_check(gpu_runner, case)
    cases.run_paged_and_check(gpu_runner, case)


@pytest.mark.parametrize("dtype", cases.CUDA_DTYPES)
def test_non_causal_and_scale(gpu_runner, dtype):
    for scale in (0.0, 0.3):
        case = cases.build_named(cases.named_batch("non_causal", 32), num_q_heads=8, num_kv_heads=2,
                                 head_dim=128, v_head_dim=128, block_size=32, dtype=dtype, sinks=True,
                                 rope="gptj", softmax_scale=scale, seed=9)
        cases.run_append_and_check(gpu_runner, case)


@pytest.mark.parametrize("dtype", cases.CUDA_DTYPES)
@pytest.mark.parametrize("param", cases.BAD_INPUT_PARAMS, ids=cases.bad_input_id)
def test_bad_input_raises_and_leaves_caches(gpu_runner, param, dtype):
    bad, op = param
    cases.run_bad_input(gpu_runner, dtype, bad, op, pytest.raises)


@pytest.mark.parametrize("op", sorted(cases.OP_LETTERS.values()))
def test_float32_is_refused(gpu_runner, op):
    case = cases.bad_input_case("float32")
    q_np = None
    if op == "paged_attention":
        case, q_np = cases.paged_case(case)
    t = gpu_runner.load(case, q=q_np)
    kb = gpu_runner.bits(t["key_cache"])
    with pytest.raises(Exception, match=r"float32"):
        gpu_runner.call(op, case, t)
    assert np.array_equal(kb, gpu_runner.bits(t["key_cache"]))


def _dlpack_bad(runner, op, mutate_out, match):
    case = cases.bad_input_case("bfloat16")
    q_np = None
    if op == "paged_attention":
        case, q_np = cases.paged_case(case)
    t = runner.load(case, q=q_np)
    out = mutate_out(runner.out_for(op, case, t))
    kb, vb = runner.bits(t["key_cache"]), runner.bits(t["value_cache"])
    with pytest.raises(ValueError, match=match):
        runner.call(op, case, t, out=out)
    assert np.array_equal(kb, runner.bits(t["key_cache"]))
    assert np.array_equal(vb, runner.bits(t["value_cache"]))


OUT_NAME = {"append_attention": r"\bout\b", "paged_attention": r"\bout\b", "rope_write_cache": r"\bq_out\b"}


@pytest.mark.parametrize("op", sorted(cases.OP_LETTERS.values()))
def test_dlpack_out_wrong_shape(dlpack_runner, op):
    _dlpack_bad(dlpack_runner, op, lambda o: o[:-1], OUT_NAME[op])


@pytest.mark.parametrize("op", sorted(cases.OP_LETTERS.values()))
def test_dlpack_out_wrong_dtype(dlpack_runner, op):
    import torch

    _dlpack_bad(dlpack_runner, op, lambda o: o.to(torch.float16), OUT_NAME[op])


@pytest.mark.parametrize("op", sorted(cases.OP_LETTERS.values()))
def test_dlpack_out_noncontiguous(dlpack_runner, op):
    _dlpack_bad(dlpack_runner, op, dlpack_runner.noncontiguous, OUT_NAME[op])


@pytest.mark.parametrize("op", sorted(cases.OP_LETTERS.values()))
def test_dlpack_out_on_cpu(dlpack_runner, op):
    _dlpack_bad(dlpack_runner, op, lambda o: o.cpu(), OUT_NAME[op])


@pytest.mark.parametrize("name", ["block_tables", "cu_seqlens_q", "cache_seqlens", "sinks"])
def test_dlpack_input_on_cpu(dlpack_runner, name):
    case = cases.bad_input_case("bfloat16")
    t = dlpack_runner.load(case)
    t[name] = t[name].cpu()
    kb = dlpack_runner.bits(t["key_cache"])
    with pytest.raises(ValueError, match=rf"\b{name}\b"):
        dlpack_runner.call("append_attention", case, t)
    assert np.array_equal(kb, dlpack_runner.bits(t["key_cache"]))


def test_dlpack_explicit_stream(dlpack_runner):
    # stream= runs the op on that stream; the result is right once the stream is synchronized.
    import torch

    case = cases.build_named(cases.named_batch("mixed_idle", 16), num_q_heads=6, num_kv_heads=2,
                             head_dim=128, v_head_dim=128, block_size=16, dtype="bfloat16", rope="neox",
                             sinks=True, seed=77)
    r = dlpack_runner
    t = r.load(case)
    out = r.out_for("append_attention", case, t)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    from paddle_gqa import dlpack_ops

    dlpack_ops.append_attention(out, *[t.get(a) for a in OP_INPUTS["append_attention"]],
                                **case.op_kwargs("append_attention"), stream=side.cuda_stream)
    side.synchronize()
    cases.check_output(case, r.values(out), case.ref_append_attention()[0])


def _capture(torch, fn, runner, case):
    """Captures fn() into a CUDA graph, after one uncaptured warm-up call of the valid `case` on
    fresh tensors (first-call set-up happens outside the capture)."""
    runner.append_attention(case, runner.load(case))
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return graph


def test_dlpack_cuda_graph_replay_is_correct(dlpack_runner):
    import torch

    from paddle_gqa import dlpack_ops

    case = cases.build_named(cases.named_batch("mixed_idle", 16), num_q_heads=6, num_kv_heads=2,
                             head_dim=192, v_head_dim=128, block_size=16, dtype="bfloat16", rope="partial",
                             sinks=True, seed=81)
    r = dlpack_runner
    t = r.load(case)
    kb, vb = r.bits(t["key_cache"]), r.bits(t["value_cache"])
    out = r.out_for("append_attention", case, t)
    args = [t.get(a) for a in OP_INPUTS["append_attention"]]
    kwargs = case.op_kwargs("append_attention")
    graph = _capture(torch, lambda: dlpack_ops.append_attention(out, *args, **kwargs), r, case)
    # Capture runs nothing: caches untouched until the replay.
    torch.cuda.synchronize()
    assert np.array_equal(kb, r.bits(t["key_cache"]))
    graph.replay()
    torch.cuda.synchronize()
    ref_out, ref_k, ref_v = case.ref_append_attention()
    cases.check_output(case, r.values(out), ref_out)
    cases.check_caches(r, case, t, (kb, vb), ref_k, ref_v)


def test_dlpack_cuda_graph_defers_device_data_errors(dlpack_runner):
    # Under capture a bad block id cannot raise; the replay writes nothing and check_errors raises.
    import torch

    from paddle_gqa import dlpack_ops

    case = cases.bad_input_case("bfloat16")
    r = dlpack_runner
    t = r.load(case)
    tables = case.block_tables.copy()
    tables[0, 1] = -1  # a block slot 0 writes
    t["block_tables"] = r.int32(tables)
    kb, vb = r.bits(t["key_cache"]), r.bits(t["value_cache"])
    out = r.out_for("append_attention", case, t)
    args = [t.get(a) for a in OP_INPUTS["append_attention"]]
    kwargs = case.op_kwargs("append_attention")
    graph = _capture(torch, lambda: dlpack_ops.append_attention(out, *args, **kwargs), r, case)
    graph.replay()
    torch.cuda.synchronize()
    assert np.array_equal(kb, r.bits(t["key_cache"])) and np.array_equal(vb, r.bits(t["value_cache"]))
    with pytest.raises(ValueError, match=r"block_tables\[0\]\[1\]"):
        dlpack_ops.check_errors(torch.cuda.current_device())
    dlpack_ops.check_errors(torch.cuda.current_device())  # the record was cleared
