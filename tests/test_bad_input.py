"""Bad input on CPU (DESIGN.md §4): every invalid argument raises naming it, and the caches stay
bit-identical; -1 blocks outside every window are accepted and never read."""
import numpy as np
import pytest

import cases


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("param", cases.BAD_INPUT_PARAMS, ids=cases.bad_input_id)
def test_bad_input_raises_and_leaves_caches(cpu_runner, param, dtype):
    bad, op = param
    cases.run_bad_input(cpu_runner, dtype, bad, op, pytest.raises)


@pytest.mark.parametrize("op", sorted(cases.OP_LETTERS.values()))
def test_base_case_is_valid(cpu_runner, op):
    # The unmutated step runs: each bad input fails because of its one change.
    case = cases.bad_input_case("bfloat16")
    {"append_attention": cases.run_append_and_check, "rope_write_cache": cases.run_rope_write_and_check,
     "paged_attention": cases.run_paged_and_check}[op](cpu_runner, case)


def test_every_section4_fact_is_covered():
    ids = {b.id for b in cases.BAD_INPUTS}
    for needed in ("qkv_float64", "key_cache_rank3", "value_cache_heads", "qkv_noncontiguous",
                   "hq_not_multiple_of_hkv", "qkv_width", "unsupported_head_dim", "unsupported_block_size",
                   "window_without_causal", "negative_window", "negative_softmax_scale", "rotary_dim_odd",
                   "rotary_dim_above_d", "rotary_dim_without_tables", "table_width_mismatch",
                   "cos_without_sin", "sinks_length", "sinks_float16", "cu_seqlens_q_start",
                   "cu_seqlens_q_decreasing", "cu_seqlens_q_past_rows", "cache_seqlens_negative",
                   "position_past_max_position", "lengths_overrun_block_tables", "written_block_minus_1",
                   "written_block_past_num_blocks", "read_block_minus_1", "read_block_past_num_blocks"):
        assert needed in ids, needed


def _swa_decode_case(dtype="float32"):
    # p = 100, window 20: keys 81..100 are visible; logical blocks 0..4 (keys 0..79) lie wholly
    # outside and are -1; block 5 (keys 80..95) is partly inside.
    return cases.build_step(num_q_heads=6, num_kv_heads=2, head_dim=64, v_head_dim=64, block_size=16,
                            dtype=dtype, layout=[(100, 1), (0, 4)], window=20, rope="neox", sinks=True,
                            seed=5, name="swa_released")


@pytest.mark.parametrize("op", ["append_attention", "paged_attention"])
def test_released_blocks_outside_window_are_accepted(cpu_runner, op):
    case = _swa_decode_case()
    assert (case.block_tables[0, :5] == -1).all() and case.block_tables[0, 5] >= 0
    run = cases.run_append_and_check if op == "append_attention" else cases.run_paged_and_check
    run(cpu_runner, case)


@pytest.mark.parametrize("op", ["append_attention", "paged_attention"])
def test_released_block_partly_inside_window_is_an_error(cpu_runner, op):
    case = _swa_decode_case()
    q_np = None
    if op == "paged_attention":
        case, q_np = cases.paged_case(case)
    t = cpu_runner.load(case, q=q_np)
    tables = case.block_tables.copy()
    tables[0, 5] = -1
    t["block_tables"] = cpu_runner.int32(tables)
    kb, vb = cpu_runner.bits(t["key_cache"]), cpu_runner.bits(t["value_cache"])
    with pytest.raises(Exception, match=r"block_tables\[0\]\[5\]"):
        cpu_runner.call(op, case, t)
    assert np.array_equal(kb, cpu_runner.bits(t["key_cache"]))
    assert np.array_equal(vb, cpu_runner.bits(t["value_cache"]))


def test_rope_write_cache_does_not_need_read_blocks(cpu_runner):
    # rope_write_cache reads no keys: a -1 in a block it only would have read is fine.
    case = cases.bad_input_case("float32")
    case.block_tables[2, 0] = -1
    blk = cases.bad_input_case("float32").block_tables[2, 0]
    case.key_cache[blk] = np.nan
    case.value_cache[blk] = np.nan
    cases.run_rope_write_and_check(cpu_runner, case)


def test_paddle_bits_see_nan_payloads(cpu_runner):
    # The untouched-entry check compares raw bits: two NaNs with different payloads differ.
    import paddle

    a = paddle.to_tensor(np.array([0x7FC00000, 0x7FC00001], dtype=np.uint32).view(np.float32))
    bits = cpu_runner.bits(a)
    assert bits[0] != bits[1]
