"""The Paddle ops on CPU against the float64 reference over a sampled grid of steps."""
import numpy as np
import pytest

import cases

# A sample of (batch spec x dtype x group x head dims x block size x RoPE x sinks x scale): every
# value of every axis appears, the product is not enumerated.
APPEND_GRID = cases.sampled_grid(160, seed=1, dtypes=cases.CPU_DTYPES)
ROPE_GRID = cases.sampled_grid(40, seed=2, dtypes=cases.CPU_DTYPES)
PAGED_GRID = cases.sampled_grid(60, seed=3, dtypes=cases.CPU_DTYPES)
SPLIT_GRID = cases.sampled_grid(24, seed=4, dtypes=cases.CPU_DTYPES)


@pytest.mark.parametrize("params", APPEND_GRID, ids=cases.grid_id)
def test_append_attention(cpu_runner, params):
    cases.run_append_and_check(cpu_runner, cases.build_grid_case(params))


@pytest.mark.parametrize("params", ROPE_GRID, ids=cases.grid_id)
def test_rope_write_cache(cpu_runner, params):
    cases.run_rope_write_and_check(cpu_runner, cases.build_grid_case(params))


@pytest.mark.parametrize("params", PAGED_GRID, ids=cases.grid_id)
def test_paged_attention(cpu_runner, params):
    cases.run_paged_and_check(cpu_runner, cases.build_grid_case(params))


@pytest.mark.parametrize("params", SPLIT_GRID, ids=cases.grid_id)
def test_append_equals_rope_write_then_paged(cpu_runner, params):
    cases.run_split_matches_fused(cpu_runner, cases.build_grid_case(params))


# Every group size and head-dim pair at least once with each dtype (the grid samples them).
@pytest.mark.parametrize("group", cases.GROUP_SIZES)
@pytest.mark.parametrize("dtype", cases.CPU_DTYPES)
def test_group_sizes(cpu_runner, group, dtype):
    case = cases.build_named(cases.named_batch("mixed_idle", 16), num_q_heads=group * 2, num_kv_heads=2,
                             head_dim=64, v_head_dim=64, block_size=16, dtype=dtype, rope="neox",
                             sinks=group % 2 == 0, seed=100 + group)
    cases.run_append_and_check(cpu_runner, case)


@pytest.mark.parametrize("dims", cases.HEAD_DIMS, ids=lambda d: f"{d[0]}x{d[1]}")
@pytest.mark.parametrize("dtype", cases.CPU_DTYPES)
def test_head_dims(cpu_runner, dims, dtype):
    case = cases.build_named(cases.named_batch("chunked_prefill", 32), num_q_heads=3, num_kv_heads=1,
                             head_dim=dims[0], v_head_dim=dims[1], block_size=32, dtype=dtype,
                             rope="partial", seed=200 + dims[0] + dims[1])
    cases.run_append_and_check(cpu_runner, case)


# Sliding-window edges against each block size; out-of-window blocks are -1 (released) and poisoned.
@pytest.mark.parametrize("block_size", cases.BLOCK_SIZES)
@pytest.mark.parametrize("spec_name", cases.SWA_EDGE_NAMES)
def test_sliding_window_edges(cpu_runner, spec_name, block_size):
    spec = cases.named_batch(spec_name, block_size)
    case = cases.build_named(spec, num_q_heads=6, num_kv_heads=2, head_dim=64, v_head_dim=64,
                             block_size=block_size, dtype="float32", rope="neox", sinks=True,
                             seed=block_size)
    cases.run_append_and_check(cpu_runner, case)


def test_released_blocks_exist_in_window_cases():
    # The SWA specs do release blocks (else the test above would not exercise -1 entries).
    spec = cases.named_batch("swa_window_odd", 16)
    case = cases.build_named(spec, num_q_heads=2, num_kv_heads=1, head_dim=64, v_head_dim=64,
                             block_size=16, dtype="float32")
    lens = [(c + n + 15) // 16 for c, n in case.layout()]
    assert any((case.block_tables[b, :lens[b]] == -1).any() for b in range(case.batch))


@pytest.mark.parametrize("dtype", cases.CPU_DTYPES)
def test_non_causal(cpu_runner, dtype):
    case = cases.build_named(cases.named_batch("non_causal", 16), num_q_heads=4, num_kv_heads=2,
                             head_dim=128, v_head_dim=128, block_size=16, dtype=dtype, sinks=True,
                             rope="gptj", seed=7)
    cases.run_append_and_check(cpu_runner, case)
    cases.run_paged_and_check(cpu_runner, case)


@pytest.mark.parametrize("scale", [0.01, 0.5, 2.0])
def test_softmax_scale(cpu_runner, scale):
    case = cases.build_named(cases.named_batch("decode", 16), num_q_heads=8, num_kv_heads=2,
                             head_dim=128, v_head_dim=128, block_size=16, dtype="float32",
                             softmax_scale=scale, seed=int(scale * 100))
    cases.run_append_and_check(cpu_runner, case)


@pytest.mark.parametrize("window", [0, 1000])
def test_prefill_4k_small_model(cpu_runner, window):
    # A 4k-token prefill of a small GQA model (group 3, bf16, RoPE), plus a decode slot riding along.
    case = cases.build_step(num_q_heads=6, num_kv_heads=2, head_dim=64, v_head_dim=64, block_size=64,
                            dtype="bfloat16", layout=[(0, 4096), (700, 1)], window=window,
                            rope="neox", sinks=window > 0, seed=4096 + window, name="prefill_4k")
    cases.run_append_and_check(cpu_runner, case)


def test_outputs_differ_across_inputs(cpu_runner):
    # Guard against a degenerate implementation that ignores the cache: two steps that differ only
    # in one cached key give different outputs for the decode query that sees it.
    case = cases.build_step(num_q_heads=2, num_kv_heads=1, head_dim=64, v_head_dim=64, block_size=16,
                            dtype="float32", layout=[(20, 1)], seed=1)
    out_a, _ = cases.run_append_and_check(cpu_runner, case)
    other = cases.build_step(num_q_heads=2, num_kv_heads=1, head_dim=64, v_head_dim=64, block_size=16,
                             dtype="float32", layout=[(20, 1)], seed=1)
    blk = other.block_tables[0, 0]
    other.key_cache[blk, 0, 3] *= -4.0
    out_b, _ = cases.run_append_and_check(cpu_runner, other)
    assert not np.allclose(cpu_runner.values(out_a), cpu_runner.values(out_b))
