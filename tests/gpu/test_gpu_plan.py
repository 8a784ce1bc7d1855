"""The plan op on CUDA through the DLPack module with torch tensors: ops given a plan match ops without
one bit for bit and do not synchronize; a tensor that is not a plan is refused naming `plan`; invalid
step data raises at plan time, or, met by an op given a plan, is deferred to check_errors with
nothing written; plan and plan-given ops under CUDA graph capture."""
import numpy as np
import pytest

import cases
from gpu.runners import OP_INPUTS

STEP_ARGS = ("key_cache", "value_cache", "block_tables", "cu_seqlens_q", "cache_seqlens")
MAGIC = 0x50475131  # csrc/include/paddle_gqa/plan.h


def _case(seed=0, window=0, rope="partial"):
    """bf16, D/Dv = 192/128, G = 3 (in the CI kernel subset): decode, chunked prefill, idle, prefill."""
    return cases.build_step(num_q_heads=6, num_kv_heads=2, head_dim=192, v_head_dim=128, block_size=16,
                            dtype="bfloat16", layout=[(37, 1), (20, 9), (5, 0), (0, 18)], pad_rows=3, rope=rope,
                            sinks=True, window=window, seed=seed, name="gpu_plan")


def _new_plan(torch):
    return torch.full((8,), -7, dtype=torch.int32, device="cuda")


def _plan(case, t, plan_out, first="qkv"):
    from paddle_gqa import dlpack_ops

    return dlpack_ops.plan(plan_out, t[first], *[t[a] for a in STEP_ARGS], t["rotary_cos"], t["rotary_sin"],
                           rotary_dim=case.rotary_dim, sliding_window=case.sliding_window, causal=case.causal)


def _op_args(op, t):
    return [t.get(a) for a in OP_INPUTS[op]]


@pytest.mark.parametrize("window", [0, 16])
def test_ops_with_plan_match_ops_without(dlpack_runner, window):
    import torch

    r = dlpack_runner
    case = _case(seed=window, window=window)
    with_plan, without = r.load(case), r.load(case)
    kb, vb = r.bits(with_plan["key_cache"]), r.bits(with_plan["value_cache"])
    plan = _plan(case, with_plan, _new_plan(torch))
    torch.cuda.synchronize()
    assert plan.cpu().tolist() == [MAGIC, case.batch, case.rows, 16, window, 1, 1, 0]

    out = r.append_attention(case, with_plan, plan=plan)
    ref_out, ref_k, ref_v = case.ref_append_attention()
    cases.check_output(case, r.values(out), ref_out)
    cases.check_caches(r, case, with_plan, (kb, vb), ref_k, ref_v)
    assert np.array_equal(r.bits(out), r.bits(r.append_attention(case, without)))
    for name in ("key_cache", "value_cache"):
        assert np.array_equal(r.bits(with_plan[name]), r.bits(without[name])), name

    split, split_without = r.load(case), r.load(case)
    q = r.rope_write_cache(case, split, plan=plan)
    q_without = r.rope_write_cache(case, split_without)
    assert np.array_equal(r.bits(q), r.bits(q_without))
    q_plan = _plan(case, dict(split, q=q), _new_plan(torch), first="q")
    torch.cuda.synchronize()
    assert q_plan.cpu().tolist() == plan.cpu().tolist()
    expected = r.bits(r.paged_attention(case, split_without, q=q_without))
    for p in (plan, q_plan):
        assert np.array_equal(r.bits(r.paged_attention(case, split, q=q, plan=p)), expected)


@pytest.mark.parametrize("op", ["append_attention", "rope_write_cache"])
def test_op_with_plan_does_not_synchronize(dlpack_runner, op):
    import torch

    from paddle_gqa import dlpack_ops

    r = dlpack_runner
    case = _case(seed=3)
    t = r.load(case)
    plan = _plan(case, t, _new_plan(torch))
    out = r.out_for(op, case, t)
    kwargs = case.op_kwargs(op)
    stream = torch.cuda.current_stream()
    # Warm-up: the workspace grows (cudaFree synchronizes) only in a call of a new, larger shape.
    getattr(dlpack_ops, op)(out, *_op_args(op, t), **kwargs)
    torch.cuda.synchronize()
    # A long kernel ahead of the op on its stream: a call that synchronizes returns only after it.
    torch.cuda._sleep(1 << 30)
    getattr(dlpack_ops, op)(out, *_op_args(op, t), **kwargs, plan=plan)
    assert not stream.query(), f"{op} given a plan waited for the stream"
    torch.cuda.synchronize()
    torch.cuda._sleep(1 << 30)
    getattr(dlpack_ops, op)(out, *_op_args(op, t), **kwargs)
    assert stream.query(), f"{op} without a plan did not read its check back"


@pytest.mark.parametrize("op", ["append_attention", "rope_write_cache", "paged_attention"])
def test_tensor_that_is_not_a_plan_is_refused(dlpack_runner, op):
    import torch

    r = dlpack_runner
    case = _case(seed=4)
    q_np = None
    if op == "paged_attention":
        case, q_np = cases.paged_case(case)
    t = r.load(case, q=q_np)
    kb, vb = r.bits(t["key_cache"]), r.bits(t["value_cache"])
    good = _plan(case, r.load(case), _new_plan(torch))
    for plan, match in ((good.float(), r"plan: dtype float32, expected int32"),
                        (good[:7], r"plan: shape \[7\], expected \[8\]"),
                        (good.reshape(2, 4), r"plan: rank 2"),
                        (good.cpu(), r"plan: is on CPU")):
        with pytest.raises(ValueError, match=match):
            r.call(op, case, t, plan=plan)
    assert np.array_equal(kb, r.bits(t["key_cache"])) and np.array_equal(vb, r.bits(t["value_cache"]))


def test_invalid_step_data_raises_at_plan_time(dlpack_runner):
    import torch

    from paddle_gqa import dlpack_ops

    r = dlpack_runner
    case = _case(seed=5)
    written = case.block_tables.copy()
    written[1, 1] = case.num_blocks + 5  # slot 1 writes positions 20..28 (logical block 1)
    read_only = case.block_tables.copy()
    read_only[1, 0] = -1                 # slot 1 only reads logical block 0
    cu = case.cu_seqlens_q.copy()
    cu[2], cu[3] = cu[3] + 1, cu[2]
    for overrides, match in (
            (dict(block_tables=r.int32(written)), r"block_tables\[1\]\[1\] = %d" % (case.num_blocks + 5)),
            (dict(block_tables=r.int32(read_only)), r"block_tables\[1\]\[0\] = -1"),
            (dict(cu_seqlens_q=r.int32(cu)), r"cu_seqlens_q\[3\]"),
            (dict(rotary_cos=r.fp32(case.rotary_cos[:30]), rotary_sin=r.fp32(case.rotary_sin[:30])),
             r"position 37 .*RoPE tables")):
        t = dict(r.load(case), **overrides)
        kb, vb = r.bits(t["key_cache"]), r.bits(t["value_cache"])
        with pytest.raises(ValueError, match=match):
            _plan(case, t, _new_plan(torch))
        assert np.array_equal(kb, r.bits(t["key_cache"])) and np.array_equal(vb, r.bits(t["value_cache"]))
    dlpack_ops.check_errors(torch.cuda.current_device())  # plan raised its own error: nothing deferred


def test_op_with_plan_defers_invalid_step_data(dlpack_runner):
    # The plan saw valid data; the op then meets a bad block id: it returns, writes nothing, and the
    # error is raised by check_errors (once), or by the next plan.
    import torch

    from paddle_gqa import dlpack_ops

    r = dlpack_runner
    case = _case(seed=6)
    t = r.load(case)
    plan = _plan(case, t, _new_plan(torch))
    t["block_tables"][0, 2] = -1  # slot 0 writes position 37 (logical block 2)
    kb, vb = r.bits(t["key_cache"]), r.bits(t["value_cache"])
    out = r.out_for("append_attention", case, t)
    dlpack_ops.append_attention(out, *_op_args("append_attention", t), **case.op_kwargs("append_attention"),
                                plan=plan)
    torch.cuda.synchronize()
    assert np.array_equal(kb, r.bits(t["key_cache"])) and np.array_equal(vb, r.bits(t["value_cache"]))
    device = torch.cuda.current_device()
    with pytest.raises(ValueError, match=r"given a plan.*block_tables\[0\]\[2\] = -1"):
        dlpack_ops.check_errors(device)
    dlpack_ops.check_errors(device)  # the record was cleared

    # Deferred again, then raised by the next step's plan (whose own data is valid).
    dlpack_ops.append_attention(out, *_op_args("append_attention", t), **case.op_kwargs("append_attention"),
                                plan=plan)
    with pytest.raises(ValueError, match=r"earlier call .*block_tables\[0\]\[2\] = -1"):
        _plan(case, r.load(case), _new_plan(torch))
    dlpack_ops.check_errors(device)
    assert np.array_equal(kb, r.bits(t["key_cache"])) and np.array_equal(vb, r.bits(t["value_cache"]))


def test_cuda_graph_of_plan_and_plan_given_ops(dlpack_runner):
    import torch

    from paddle_gqa import dlpack_ops

    r = dlpack_runner
    case = _case(seed=7)
    r.append_attention(case, r.load(case))  # first-call set-up (error record, workspace) outside capture
    t = r.load(case)
    kb, vb = r.bits(t["key_cache"]), r.bits(t["value_cache"])
    plan = _new_plan(torch)
    out = r.out_for("append_attention", case, t)
    q = r.out_for("rope_write_cache", case, t)
    split_out = r.out_for("paged_attention", case, dict(t, q=q))
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        _plan(case, t, plan)
        dlpack_ops.append_attention(out, *_op_args("append_attention", t), **case.op_kwargs("append_attention"),
                                    plan=plan)
    torch.cuda.synchronize()
    assert np.array_equal(kb, r.bits(t["key_cache"]))  # capture ran nothing
    graph.replay()
    torch.cuda.synchronize()
    assert plan.cpu().tolist() == [MAGIC, case.batch, case.rows, 16, 0, 1, 1, 0]
    ref_out, ref_k, ref_v = case.ref_append_attention()
    cases.check_output(case, r.values(out), ref_out)
    cases.check_caches(r, case, t, (kb, vb), ref_k, ref_v)
    dlpack_ops.check_errors(torch.cuda.current_device())

    # The split ops captured with a plan made outside the graph.
    split = r.load(case)
    split_plan = _plan(case, split, _new_plan(torch))
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        dlpack_ops.rope_write_cache(q, *_op_args("rope_write_cache", split), **case.op_kwargs("rope_write_cache"),
                                    plan=split_plan)
        dlpack_ops.paged_attention(split_out, *_op_args("paged_attention", dict(split, q=q)),
                                   **case.op_kwargs("paged_attention"), plan=split_plan)
    graph.replay()
    torch.cuda.synchronize()
    cases.check_output(case, r.values(split_out), ref_out, what="split out")
    dlpack_ops.check_errors(torch.cuda.current_device())
