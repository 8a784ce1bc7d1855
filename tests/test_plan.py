"""The plan op on CPU through Paddle: ops given a plan match ops without one bit for bit; a plan that
does not describe the call is refused naming `plan`; invalid step data raises at plan time naming the
argument with the caches unchanged; plans under paddle.jit.to_static, in legacy static programs and
in the custom-op backend."""
import numpy as np
import pytest

import cases

paddle = pytest.importorskip("paddle", reason="Paddle is not installed: these tests run the Paddle ops")

from gpu.runners import OP_INPUTS  # noqa: E402
from paddle_gqa import ops  # noqa: E402
from paddle_gqa.backends import StepMetadata, get_backend  # noqa: E402
from paddle_gqa.spec import LayerSpec, RopeSpec  # noqa: E402

STEP_ARGS = ("key_cache", "value_cache", "block_tables", "cu_seqlens_q", "cache_seqlens")
MAGIC = 0x50475131  # csrc/include/paddle_gqa/plan.h


def _case(dtype="float32", rope="neox", window=0, causal=True, block_size=16, seed=0,
          layout=((37, 1), (20, 9), (5, 0), (0, 18))):
    """Decode, chunked prefill, an idle slot and a fresh prefill, GQA G=3, sinks, padding rows."""
    return cases.build_step(num_q_heads=6, num_kv_heads=2, head_dim=64, v_head_dim=64, block_size=block_size,
                            dtype=dtype, layout=list(layout), pad_rows=3, rope=rope, sinks=True, window=window,
                            causal=causal, seed=seed, name="plan")


def _plan(case, t, first="qkv", **overrides):
    kw = dict(rotary_dim=case.rotary_dim, sliding_window=case.sliding_window, causal=case.causal)
    kw.update(overrides)
    return ops.plan(t[first], *[t[a] for a in STEP_ARGS], t["rotary_cos"], t["rotary_sin"], **kw)


def _words(plan):
    return plan.numpy().tolist()


VARIANTS = [dict(dtype="float32", rope="neox"),
            dict(dtype="bfloat16", rope="partial", window=16),
            dict(dtype="float16", rope="none", causal=False),
            dict(dtype="float32", rope="gptj", window=1, block_size=32)]


@pytest.mark.parametrize("variant", VARIANTS, ids=lambda v: "-".join(f"{k}={v[k]}" for k in v))
def test_ops_with_plan_match_ops_without(cpu_runner, variant):
    r = cpu_runner
    case = _case(**variant)
    with_plan, without = r.load(case), r.load(case)
    kb, vb = r.bits(with_plan["key_cache"]), r.bits(with_plan["value_cache"])
    plan = _plan(case, with_plan)
    assert plan.dtype == paddle.int32 and list(plan.shape) == [ops.PLAN_WORDS]
    assert _words(plan) == [MAGIC, case.batch, case.rows, case.block_size, case.sliding_window, int(case.causal),
                            int(case.rotary_cos is not None), 0]
    # Making a plan writes nothing.
    assert np.array_equal(kb, r.bits(with_plan["key_cache"])) and np.array_equal(vb, r.bits(with_plan["value_cache"]))

    out = r.append_attention(case, with_plan, plan=plan)
    ref_out, ref_k, ref_v = case.ref_append_attention()
    cases.check_output(case, r.values(out), ref_out)
    cases.check_cache(case, "key_cache", kb, r.bits(with_plan["key_cache"]), r.values(with_plan["key_cache"]), ref_k)
    out_without = r.append_attention(case, without)
    assert np.array_equal(r.bits(out), r.bits(out_without))
    for name in ("key_cache", "value_cache"):
        assert np.array_equal(r.bits(with_plan[name]), r.bits(without[name])), name

    # The split path with the same plan, and paged_attention with a plan made from q.
    split, split_without = r.load(case), r.load(case)
    q = r.rope_write_cache(case, split, plan=plan)
    q_without = r.rope_write_cache(case, split_without)
    assert np.array_equal(r.bits(q), r.bits(q_without))
    q_plan = _plan(case, dict(split, q=q), first="q")
    assert _words(q_plan) == _words(plan)
    for p in (plan, q_plan):
        got = r.paged_attention(case, split, q=q, plan=p)
        assert np.array_equal(r.bits(got), r.bits(r.paged_attention(case, split_without, q=q_without)))
    for name in ("key_cache", "value_cache"):
        assert np.array_equal(r.bits(split[name]), r.bits(without[name])), name


def _refused(r, case, t, op, plan, words):
    """`op` with `plan` raises ValueError naming `plan` and each of `words`; caches unchanged."""
    kb, vb = r.bits(t["key_cache"]), r.bits(t["value_cache"])
    with pytest.raises(ValueError) as info:
        if op == "paged_attention":
            r.paged_attention(case, t, q=r.tensor(np.zeros((case.rows, case.num_q_heads, case.head_dim)),
                                                  case.dtype), plan=plan)
        else:
            r.call(op, case, t, plan=plan)
    message = str(info.value)
    for word in ("plan",) + tuple(words):
        assert word in message, f"{op}: message does not name {word!r}: {message}"
    assert np.array_equal(kb, r.bits(t["key_cache"])) and np.array_equal(vb, r.bits(t["value_cache"]))


def test_plan_of_another_call_is_refused(cpu_runner):
    r = cpu_runner
    case = _case()
    t = r.load(case)
    fewer_rows = _plan(case, dict(t, qkv=t["qkv"][:case.rows - 1]))
    other = _case(layout=((3, 2), (0, 4)), seed=1)
    other_batch = _plan(other, r.load(other))
    big = _case(block_size=32, seed=2)
    other_block = _plan(big, r.load(big))
    windowed = _plan(case, t, sliding_window=8)
    non_causal = _plan(case, t, causal=False)
    no_rope = ops.plan(t["qkv"], *[t[a] for a in STEP_ARGS])
    for op in ("append_attention", "rope_write_cache", "paged_attention"):
        _refused(r, case, t, op, fewer_rows, ["word 2", "rows", f"is {case.rows - 1} but this call has {case.rows}"])
        _refused(r, case, t, op, other_batch, ["word 1", "batch"])
        _refused(r, case, t, op, other_block, ["word 3", "block_size"])
    for op in ("append_attention", "paged_attention"):
        _refused(r, case, t, op, windowed, ["word 4", "sliding_window"])
        _refused(r, case, t, op, non_causal, ["word 5", "causal"])
    for op in ("append_attention", "rope_write_cache"):
        _refused(r, case, t, op, no_rope, ["word 6", "RoPE"])
    # paged_attention takes no RoPE tables: a plan made with or without them serves it.
    q = r.rope_write_cache(case, r.load(case))
    fresh = r.load(case)
    assert np.array_equal(r.bits(r.paged_attention(case, fresh, q=q, plan=no_rope)),
                          r.bits(r.paged_attention(case, fresh, q=q)))


@pytest.mark.parametrize("op", ["append_attention", "rope_write_cache", "paged_attention"])
def test_tensor_that_is_not_a_plan_is_refused(cpu_runner, op):
    r = cpu_runner
    case = _case()
    t = r.load(case)
    good = _words(_plan(case, t))
    failed = list(good)
    failed[7] = 6
    for plan, words in ((r.int32(np.zeros(8)), ["word 0", str(MAGIC)]),
                        (r.int32(failed), ["word 7", "error code"]),
                        (r.fp32(np.array(good, np.float64)), ["dtype float32", "int32"]),
                        (r.int32(good[:7]), ["shape [7]", "[8]"]),
                        (r.int32(np.array(good).reshape(2, 4)), ["rank 2"])):
        _refused(r, case, t, op, plan, words)


def _bad_steps(r, case):
    """(description, tensor overrides, words the plan's message must contain)."""
    tables = case.block_tables
    written = tables.copy()
    written[1, 1] = case.num_blocks + 5  # slot 1 writes positions 20..28 (logical block 1)
    read_only = tables.copy()
    read_only[1, 0] = -1                 # slot 1 reads keys 0..15 (logical block 0) and writes none there
    cu = case.cu_seqlens_q.copy()
    cu[2], cu[3] = cu[3] + 1, cu[2]
    cached = case.cache_seqlens.copy()
    cached[2] = -4
    return [
        ("written block id out of range", dict(block_tables=r.int32(written)), ["block_tables[1][1]", "block id"]),
        ("read block released", dict(block_tables=r.int32(read_only)), ["block_tables[1][0] = -1"]),
        ("cu_seqlens_q decreasing", dict(cu_seqlens_q=r.int32(cu)), ["cu_seqlens_q[3]", "non-decreasing"]),
        ("cache_seqlens negative", dict(cache_seqlens=r.int32(cached)), ["cache_seqlens[2] = -4"]),
        ("position past the RoPE tables", dict(rotary_cos=r.fp32(case.rotary_cos[:30]),
                                              rotary_sin=r.fp32(case.rotary_sin[:30])),
         ["position 37", "RoPE tables", "rotary_cos"]),
    ]


def test_invalid_step_data_raises_at_plan_time(cpu_runner):
    r = cpu_runner
    case = _case()
    for what, overrides, words in _bad_steps(r, case):
        t = dict(r.load(case), **overrides)
        kb, vb = r.bits(t["key_cache"]), r.bits(t["value_cache"])
        with pytest.raises(ValueError) as info:
            _plan(case, t)
        for word in words + ["[paddle_gqa.plan]"]:
            assert word in str(info.value), f"{what}: message does not name {word!r}: {info.value}"
        assert np.array_equal(kb, r.bits(t["key_cache"])), f"{what}: key_cache changed"
        assert np.array_equal(vb, r.bits(t["value_cache"])), f"{what}: value_cache changed"


def test_ops_with_a_plan_still_check_step_data_on_cpu(cpu_runner):
    # On CPU the check is free, so an op given a (valid) plan still raises for data changed since.
    r = cpu_runner
    case = _case()
    t = r.load(case)
    plan = _plan(case, t)
    _, overrides, words = _bad_steps(r, case)[0]
    bad = dict(t, **overrides)
    kb, vb = r.bits(t["key_cache"]), r.bits(t["value_cache"])
    with pytest.raises(ValueError, match=r"block_tables\[1\]\[1\]"):
        r.append_attention(case, bad, plan=plan)
    assert np.array_equal(kb, r.bits(t["key_cache"])) and np.array_equal(vb, r.bits(t["value_cache"]))


def test_plan_validates_host_facts_naming_the_argument(cpu_runner):
    r = cpu_runner
    case = _case()
    t = r.load(case)
    for overrides, kw, words in (
            (dict(qkv=r.tensor(np.zeros(case.rows), case.dtype)), {}, ["q_or_qkv", "rank 1"]),
            (dict(qkv=t["qkv"][:, :-1]), {}, ["qkv", "width"]),
            ({}, dict(rotary_dim=7), ["rotary_dim = 7", "odd"]),
            ({}, dict(sliding_window=4, causal=False), ["sliding_window = 4", "causal"]),
            (dict(block_tables=r.raw(case.block_tables.astype(np.int64))), {}, ["block_tables", "expected int32"]),
            (dict(rotary_sin=None), {}, ["rotary_sin"])):
        with pytest.raises(ValueError) as info:
            _plan(case, dict(t, **overrides), **kw)
        for word in words:
            assert word in str(info.value), f"message does not name {word!r}: {info.value}"


def _fused_with_plan(qkv, key_cache, value_cache, block_tables, cu_seqlens_q, cache_seqlens, cos, sin, sinks):
    plan = ops.plan(qkv, key_cache, value_cache, block_tables, cu_seqlens_q, cache_seqlens, cos, sin)
    return ops.append_attention(qkv, key_cache, value_cache, block_tables, cu_seqlens_q, cache_seqlens,
                                cos, sin, sinks, plan=plan)


def _split_with_plan(qkv, key_cache, value_cache, block_tables, cu_seqlens_q, cache_seqlens, cos, sin, sinks):
    plan = ops.plan(qkv, key_cache, value_cache, block_tables, cu_seqlens_q, cache_seqlens, cos, sin)
    q = ops.rope_write_cache(qkv, key_cache, value_cache, block_tables, cu_seqlens_q, cache_seqlens,
                             cos, sin, plan=plan)
    return ops.paged_attention(q, key_cache, value_cache, block_tables, cu_seqlens_q, cache_seqlens,
                               sinks, plan=plan)


def _args(t):
    """append_attention's positional inputs (the signature of the two functions above) from a runner's load()."""
    return [t[k] for k in OP_INPUTS["append_attention"]]


@pytest.mark.parametrize("full_graph", [True, False], ids=["ast", "sot"])
@pytest.mark.parametrize("fn", [_fused_with_plan, _split_with_plan], ids=["append_attention", "split"])
def test_to_static_with_a_plan(cpu_runner, fn, full_graph):
    r = cpu_runner
    case = _case()
    eager = r.load(case)
    eager_out = fn(*_args(eager))
    static_fn = paddle.jit.to_static(fn, full_graph=full_graph)
    for _ in range(2):  # the second call runs the cached program
        t = r.load(case)
        out = static_fn(*_args(t))
        assert np.array_equal(r.bits(out), r.bits(eager_out))
        for name in ("key_cache", "value_cache"):
            assert np.array_equal(r.bits(t[name]), r.bits(eager[name])), name
    ref_out, _, _ = case.ref_append_attention()
    cases.check_output(case, r.values(out), ref_out, what="to_static out with a plan")
    # Invalid step data raises from the plan op inside the program, caches unchanged.
    _, overrides, _ = _bad_steps(r, case)[0]
    bad = dict(r.load(case), **overrides)
    kb = r.bits(bad["key_cache"])
    with pytest.raises(ValueError, match=r"block_tables\[1\]\[1\](.|\n)*paddle_gqa\.plan"):
        static_fn(*_args(bad))
    assert np.array_equal(kb, r.bits(bad["key_cache"]))


@pytest.mark.parametrize("with_plan", [False, True], ids=["no_plan", "plan"])
def test_legacy_static_program(run_python, with_plan):
    """append_attention in a pre-PIR static Program run by an Executor (FLAGS_enable_pir_api=0),
    alone and after a plan it takes (an optional input registered as plan@OPTIONAL)."""
    out = run_python(f"""
        import os
        os.environ["FLAGS_enable_pir_api"] = "0"
        import numpy as np, paddle, cases
        from paddle_gqa import ops
        case = cases.build_step(num_q_heads=6, num_kv_heads=2, head_dim=64, v_head_dim=64, block_size=16,
                                dtype="float32", layout=[(20, 1), (3, 7)], rope="neox", seed=3)
        feed = dict(qkv=case.qkv.astype(np.float32), kc=case.key_cache.astype(np.float32),
                    vc=case.value_cache.astype(np.float32), bt=case.block_tables, cu=case.cu_seqlens_q,
                    cs=case.cache_seqlens, cos=case.rotary_cos, sin=case.rotary_sin)
        paddle.enable_static()
        main = paddle.static.Program()
        with paddle.static.program_guard(main):
            v = {{k: paddle.static.data(k, a.shape, str(a.dtype)) for k, a in feed.items()}}
            step = [v["qkv"], v["kc"], v["vc"], v["bt"], v["cu"], v["cs"], v["cos"], v["sin"]]
            plan = ops.plan(*step) if {with_plan} else None
            out = ops.append_attention(*step, plan=plan)
        fetch = [out] + ([plan] if plan is not None else [])
        got, *words = paddle.static.Executor(paddle.CPUPlace()).run(main, feed=feed, fetch_list=fetch)
        ref, _, _ = case.ref_append_attention()
        cases.check_output(case, got.astype(np.float64), ref)
        print("legacy static ok", got.shape, [w.tolist() for w in words])
    """)
    words = f"[[{MAGIC}, 2, 8, 16, 0, 1, 1, 0]]" if with_plan else "[]"
    assert f"legacy static ok (8, 384) {words}" in out


def test_custom_op_backend_makes_one_plan_per_step_group_and_mask(cpu_runner):
    r = cpu_runner
    case = _case(rope="partial")
    _, neox, eff = cases.rope_params(case.rope, case.head_dim)
    rope = RopeSpec(10000.0, eff, case.rotary_cos.shape[0], neox_style=neox)
    full = LayerSpec(6, 2, 64, 64, rope=rope, has_sinks=True)
    windowed = LayerSpec(6, 2, 64, 64, rope=rope, has_sinks=True, sliding_window=8)
    meta = StepMetadata.from_host(list(range(case.batch)), case.cu_seqlens_q, case.cache_seqlens,
                                  [case.block_tables], block_size=case.block_size, place=paddle.CPUPlace(),
                                  num_rows=case.rows)
    cos, sin = r.fp32(case.rotary_cos), r.fp32(case.rotary_sin)
    for spec, layers in ((full, 3), (windowed, 2)):
        runner = get_backend(spec, "custom_op").make_runner(cos, sin)
        for _ in range(layers):
            t, plain = r.load(case), r.load(case)
            out = runner.forward(t["qkv"], t["key_cache"], t["value_cache"], meta, 0, t["sinks"])
            expected = ops.append_attention(*_args(plain), rotary_dim=case.rotary_dim,
                                            sliding_window=spec.sliding_window)
            assert np.array_equal(r.bits(out), r.bits(expected))
            assert np.array_equal(r.bits(t["key_cache"]), r.bits(plain["key_cache"]))
    plans = {k: v for k, v in meta._memo.items() if k[0] == "custom_op_plan"}
    assert len(plans) == 2, list(meta._memo)
    assert sorted(_words(p)[4] for p in plans.values()) == [0, 8]
