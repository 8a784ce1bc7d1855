"""Property tests (hypothesis) of the CPU ops: random slot layouts against the reference, invariance
under a permutation of physical blocks, and chunked prefill over steps == one prefill."""
import dataclasses
import os

import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis", reason="hypothesis drives these property tests")
from hypothesis import HealthCheck, given, settings, strategies as st  # noqa: E402

import cases  # noqa: E402

# Each example runs real ops: a modest count by default (PADDLE_GQA_HYPOTHESIS_EXAMPLES raises it),
# and no per-example deadline (the first call loads the op library).
EXAMPLES = settings(max_examples=int(os.environ.get("PADDLE_GQA_HYPOTHESIS_EXAMPLES", "40")), deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])

layouts = st.lists(st.tuples(st.integers(0, 90), st.integers(0, 24)), min_size=1, max_size=5).filter(
    lambda lay: sum(n for _, n in lay) > 0)
windows = st.one_of(st.just(0), st.integers(1, 70))


@EXAMPLES
@given(layout=layouts, window=windows, block_size=st.sampled_from(cases.BLOCK_SIZES),
       group=st.sampled_from(cases.GROUP_SIZES), hkv=st.integers(1, 2),
       dims=st.sampled_from(cases.HEAD_DIMS), dtype=st.sampled_from(cases.CPU_DTYPES),
       rope=st.sampled_from(cases.ROPE_VARIANTS), sinks=st.booleans(), pad=st.integers(0, 3),
       seed=st.integers(0, 2 ** 16))
def test_random_layouts(cpu_runner, layout, window, block_size, group, hkv, dims, dtype, rope, sinks,
                        pad, seed):
    case = cases.build_step(num_q_heads=group * hkv, num_kv_heads=hkv, head_dim=dims[0], v_head_dim=dims[1],
                            block_size=block_size, dtype=dtype, layout=layout, window=window, rope=rope,
                            sinks=sinks, pad_rows=pad, seed=seed, name="hypothesis")
    cases.run_append_and_check(cpu_runner, case)


def _permuted(case: cases.StepCase, perm: np.ndarray) -> cases.StepCase:
    """The same logical step with physical block i moved to perm[i]."""
    k = np.empty_like(case.key_cache)
    v = np.empty_like(case.value_cache)
    k[perm], v[perm] = case.key_cache, case.value_cache
    tables = np.where(case.block_tables >= 0, perm[np.maximum(case.block_tables, 0)], -1).astype(np.int32)
    return dataclasses.replace(case, key_cache=k, value_cache=v, block_tables=tables)


@EXAMPLES
@given(layout=layouts, window=windows, block_size=st.sampled_from((16, 32)),
       dtype=st.sampled_from(cases.CPU_DTYPES), seed=st.integers(0, 2 ** 16))
def test_block_permutation_does_not_change_output(cpu_runner, layout, window, block_size, dtype, seed):
    case = cases.build_step(num_q_heads=6, num_kv_heads=2, head_dim=128, v_head_dim=128,
                            block_size=block_size, dtype=dtype, layout=layout, window=window,
                            rope="neox", sinks=True, seed=seed)
    perm = np.random.default_rng(seed).permutation(case.num_blocks)
    moved = _permuted(case, perm)
    out_a, t_a = cases.run_append_and_check(cpu_runner, case)
    out_b, t_b = cases.run_append_and_check(cpu_runner, moved)
    # Placement is not arithmetic: the outputs are bit-identical, the caches equal up to the move.
    assert np.array_equal(cpu_runner.bits(out_a), cpu_runner.bits(out_b))
    # Block i of the first run sits at perm[i] in the second.
    for which in ("key_cache", "value_cache"):
        assert np.array_equal(cpu_runner.bits(t_a[which]), cpu_runner.bits(t_b[which])[perm]), which


@EXAMPLES
@given(prefix=st.integers(0, 40), chunks=st.lists(st.integers(1, 37), min_size=2, max_size=5),
       window=windows, block_size=st.sampled_from((16, 64)), dtype=st.sampled_from(cases.CPU_DTYPES),
       rope=st.sampled_from(("none", "neox", "gptj")), seed=st.integers(0, 2 ** 16))
def test_chunked_prefill_equals_one_prefill(cpu_runner, prefix, chunks, window, block_size, dtype, rope, seed):
    # One slot with `prefix` cached tokens: its new tokens in one step, or over len(chunks) steps
    # (each step's cache_seqlens = tokens so far). A decode slot rides along in every step.
    total = sum(chunks)
    whole = cases.build_step(num_q_heads=6, num_kv_heads=2, head_dim=64, v_head_dim=64,
                             block_size=block_size, dtype=dtype, layout=[(prefix, total), (33, 1)],
                             window=window, rope=rope, sinks=True, release_out_of_window=False,
                             seed=seed, name="one_prefill")
    out_whole, t_whole = cases.run_append_and_check(cpu_runner, whole)

    r = cpu_runner
    t = r.load(whole)  # the caches before the first chunk; updated in place by every step
    hq, dv = 6, 64
    rows_of = np.arange(total)
    got = np.zeros((total, hq * dv))
    done = 0
    for chunk in chunks:
        step_rows = np.concatenate([whole.qkv[done:done + chunk], whole.qkv[total:total + 1]])
        step = dataclasses.replace(
            whole, qkv=step_rows, cu_seqlens_q=np.array([0, chunk, chunk + 1], np.int32),
            cache_seqlens=np.array([prefix + done, 33], np.int32))
        st_t = dict(t, qkv=r.tensor(step_rows, dtype), cu_seqlens_q=r.int32(step.cu_seqlens_q),
                    cache_seqlens=r.int32(step.cache_seqlens))
        out = r.values(r.append_attention(step, st_t))
        got[done:done + chunk] = out[:chunk]
        done += chunk
    rtol, atol = cases.OUTPUT_TOL[dtype]
    cases.assert_close(got, r.values(out_whole)[rows_of], rtol, atol,
                       f"chunks {chunks} vs one prefill [{whole.describe()}]")
    # The slot's cache entries end up bit-identical (the decode slot's token was rewritten each
    # step with the same value).
    for which in ("key_cache", "value_cache"):
        assert np.array_equal(r.bits(t[which]), r.bits(t_whole[which])), which
