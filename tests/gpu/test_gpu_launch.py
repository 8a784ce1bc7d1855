"""How one call launches on CUDA (DLPack module, torch tensors), per launch variant: the step check
writes the tile maps; attention kernels as programmatic dependent launches (PADDLE_GQA_PDL=0: plain
launches); a batch that may mix prefill and decode slots runs its prefill launch on a side stream
(PADDLE_GQA_CONCURRENT=0: one stream; PADDLE_GQA_SIDE_PRIORITY=0: that stream at the default
priority), where persistent decode CTAs run beside the prefill launch and more after it drain the
rest (PADDLE_GQA_BESIDE_PREFILL_CTAS=N: N beside it; 0: a plain decode grid); paged_attention's
decode launch of a decode batch goes first and streams K / V before the step check completes
(PADDLE_GQA_EARLY_DECODE=0: it waits for the check); the merge runs only
when splits may exist, else the decode launch zeroes the padding rows. Every variant matches the float64 reference and the others bit for bit, eagerly, with a plan
and under CUDA graph capture, and writes nothing on bad step data. Variants that run the same tiles
match bit for bit; the persistent decode tiles beside a mixed batch's prefill (128-key tiles) may
round differently from the plain decode grid's (64-key tiles)."""
import numpy as np
import pytest

import cases
from gpu.runners import OP_INPUTS

STEP_ARGS = ("key_cache", "value_cache", "block_tables", "cu_seqlens_q", "cache_seqlens")
VARIANTS = {
    "pdl+concurrent": {},
    "pdl+concurrent, side at default priority": {"PADDLE_GQA_SIDE_PRIORITY": "0"},
    "plain+concurrent": {"PADDLE_GQA_PDL": "0"},
    "pdl+one-stream": {"PADDLE_GQA_CONCURRENT": "0"},
    "plain+one-stream": {"PADDLE_GQA_PDL": "0", "PADDLE_GQA_CONCURRENT": "0"},
    "pdl, decode after the check": {"PADDLE_GQA_EARLY_DECODE": "0"},
    "pdl+concurrent, plain decode grid": {"PADDLE_GQA_BESIDE_PREFILL_CTAS": "0"},
    "pdl+concurrent, 1 decode CTA beside": {"PADDLE_GQA_BESIDE_PREFILL_CTAS": "1"},
}
KNOBS = ("PADDLE_GQA_PDL", "PADDLE_GQA_CONCURRENT", "PADDLE_GQA_SIDE_PRIORITY", "PADDLE_GQA_EARLY_DECODE",
         "PADDLE_GQA_BESIDE_PREFILL_CTAS")
KINDS = ["mixed_splits", "many_decodes", "one_decode", "decode_batch_with_prefill", "decode_batch_no_decodes",
         "all_decode_with_prefill"]


def _case(kind, seed=0):
    """bf16 128/128, G = 3 (CI kernel subset), RoPE and sinks, shuffled blocks, padding rows.

    mixed_splits: decode slots over long prefixes and a chunk over a prefix (all split their KV),
      a prefill, an idle slot: both attention launches (side by side) and the merge.
    many_decodes: 300 decode slots, enough CTAs for no splits on a 132-SM GPU: no merge, the
      decode launch zeroes the padding rows.
    one_decode: B = 1, rows * G <= 16: no prefill launch; a 1.1k context splits.
    decode_batch_with_prefill: a decode batch (rows * G <= 16 B) whose first slot is a prefill slot
      (6 tokens, 18 packed rows): the early decode launch runs before the prefill launch.
    decode_batch_no_decodes: the same with no decode slot at all: every decode CTA only waits.
    all_decode_with_prefill: rows <= B (all_decode: no prefill launch), yet slots of 6, 3 and 2
      tokens beside decodes and idle slots: the 6-token slot (18 packed rows, 1.1k keys, split)
      spans two decode tiles, the CTAs past the real tile count and the zeroing columns run last."""
    layout, pad = {
        "mixed_splits": ([(700, 1), (300, 70), (0, 0), (1100, 2), (0, 33)], 5),
        "many_decodes": ([(int(c), 1) for c in np.random.default_rng(seed).integers(0, 40, 300)], 7),
        "one_decode": ([(1100, 1)], 2),
        "decode_batch_with_prefill": ([(50, 6), (0, 0), (30, 1), (0, 0), (0, 0), (0, 0), (0, 0), (120, 1)], 3),
        "decode_batch_no_decodes": ([(40, 7), (0, 0), (0, 0), (0, 0), (0, 0), (0, 0)], 2),
        "all_decode_with_prefill": ([(1100, 6), (0, 0), (30, 1), (0, 0), (200, 3), (0, 0), (0, 0), (120, 1),
                                     (700, 2), (0, 0), (0, 0), (0, 0), (0, 0), (5, 1), (0, 0)], 1),
    }[kind]
    return cases.build_step(num_q_heads=6, num_kv_heads=2, head_dim=128, v_head_dim=128, block_size=16,
                            dtype="bfloat16", layout=layout, pad_rows=pad, rope="neox", sinks=True, seed=seed,
                            name=kind)


def _decode_tiles(kind, variant):
    """Which decode tiles the variant runs for the kind: the persistent ones beside the prefill of a
    mixed batch (two streams, beside-CTAs on), else the plain decode grid."""
    env = VARIANTS[variant]
    beside = kind == "mixed_splits" and env.get("PADDLE_GQA_CONCURRENT") != "0" and \
        env.get("PADDLE_GQA_BESIDE_PREFILL_CTAS") != "0"
    return "persistent" if beside else "grid"


def _set_variant(monkeypatch, variant):
    for name in KNOBS:
        monkeypatch.delenv(name, raising=False)
    for name, value in VARIANTS[variant].items():
        monkeypatch.setenv(name, value)


def _plan(case, t):
    import torch

    from paddle_gqa import dlpack_ops

    plan = torch.full((dlpack_ops.PLAN_WORDS,), -7, dtype=torch.int32, device="cuda")
    return dlpack_ops.plan(plan, t["qkv"], *[t[a] for a in STEP_ARGS], t["rotary_cos"], t["rotary_sin"],
                           rotary_dim=case.rotary_dim, sliding_window=case.sliding_window, causal=case.causal)


def _append(out, case, t, plan=None):
    from paddle_gqa import dlpack_ops

    return dlpack_ops.append_attention(out, *[t.get(a) for a in OP_INPUTS["append_attention"]],
                                       **case.op_kwargs("append_attention"), plan=plan)


@pytest.mark.parametrize("kind", KINDS)
def test_launch_variants_match_reference_and_each_other(dlpack_runner, monkeypatch, kind):
    import torch

    r = dlpack_runner
    case = _case(kind, seed=11)
    ref_out, ref_k, ref_v = case.ref_append_attention()
    pcase, q_np = cases.paged_case(case)
    ref_paged = pcase.ref_paged_attention(q_np, pcase.key_cache, pcase.value_cache)
    first = {}
    for variant in VARIANTS:
        _set_variant(monkeypatch, variant)
        for with_plan in (False, True):
            t = r.load(case)
            kb, vb = r.bits(t["key_cache"]), r.bits(t["value_cache"])
            plan = _plan(case, t) if with_plan else None
            out = r.out_for("append_attention", case, t)
            _append(out, case, t, plan)
            torch.cuda.synchronize()
            what = f"append_attention {variant}{' with a plan' if with_plan else ''}"
            cases.check_output(case, r.values(out), ref_out, what=what)
            cases.check_caches(r, case, t, (kb, vb), ref_k, ref_v)
            key = ("append", _decode_tiles(kind, variant))
            first.setdefault(key, (what, r.bits(out)))
            assert np.array_equal(r.bits(out), first[key][1]), f"{what} differs from {first[key][0]}"

        pt = r.load(pcase, q=q_np)
        out = r.paged_attention(pcase, pt, plan=_plan(case, r.load(case)))
        torch.cuda.synchronize()
        cases.check_output(pcase, r.values(out), ref_paged, what=f"paged_attention {variant}")
        key = ("paged", _decode_tiles(kind, variant))
        first.setdefault(key, (variant, r.bits(out)))
        assert np.array_equal(r.bits(out), first[key][1]), f"paged {variant} differs from {first[key][0]}"
    from paddle_gqa import dlpack_ops

    dlpack_ops.check_errors(torch.cuda.current_device())


@pytest.mark.parametrize("variant", ["pdl+concurrent", "plain+one-stream", "pdl+concurrent, 1 decode CTA beside"])
@pytest.mark.parametrize("kind", ["mixed_splits", "many_decodes", "decode_batch_with_prefill", "all_decode_with_prefill"])
def test_launch_variants_under_graph_capture(dlpack_runner, monkeypatch, kind, variant):
    # Plan + append_attention + paged_attention captured together (fork / join and programmatic
    # edges inside the graph), replayed twice; the second replay sees what the first wrote.
    import torch

    from paddle_gqa import dlpack_ops

    _set_variant(monkeypatch, variant)
    r = dlpack_runner
    case = _case(kind, seed=12)
    _append(r.out_for("append_attention", case, r.load(case)), case, r.load(case))  # set-up outside capture
    eager = r.load(case)
    eager_out = r.out_for("append_attention", case, eager)
    _append(eager_out, case, eager, _plan(case, eager))
    torch.cuda.synchronize()

    t = r.load(case)
    kb, vb = r.bits(t["key_cache"]), r.bits(t["value_cache"])
    plan = torch.full((dlpack_ops.PLAN_WORDS,), -7, dtype=torch.int32, device="cuda")
    out = r.out_for("append_attention", case, t)
    q = r.rope_write_cache(case, r.load(case))  # a q buffer for the split ops
    paged_out = r.out_for("paged_attention", case, dict(t, q=q))
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        dlpack_ops.plan(plan, t["qkv"], *[t[a] for a in STEP_ARGS], t["rotary_cos"], t["rotary_sin"],
                        rotary_dim=case.rotary_dim, sliding_window=case.sliding_window, causal=case.causal)
        _append(out, case, t, plan)
        dlpack_ops.rope_write_cache(q, *[t.get(a) for a in OP_INPUTS["rope_write_cache"]],
                                    **case.op_kwargs("rope_write_cache"), plan=plan)
        dlpack_ops.paged_attention(paged_out, *[dict(t, q=q).get(a) for a in OP_INPUTS["paged_attention"]],
                                   **case.op_kwargs("paged_attention"), plan=plan)
    torch.cuda.synchronize()
    assert np.array_equal(kb, r.bits(t["key_cache"])), "capture ran a kernel"
    ref_out, ref_k, ref_v = case.ref_append_attention()
    for replay in range(2):
        graph.replay()
        torch.cuda.synchronize()
        cases.check_output(case, r.values(out), ref_out, what=f"append_attention, replay {replay}")
        cases.check_output(case, r.values(paged_out), ref_out, what=f"paged_attention, replay {replay}")
        cases.check_caches(r, case, t, (kb, vb), ref_k, ref_v)
        assert np.array_equal(r.bits(out), r.bits(eager_out)), "replay differs from the eager call"
    dlpack_ops.check_errors(torch.cuda.current_device())


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("kind", KINDS)
def test_bad_step_data_writes_nothing(dlpack_runner, monkeypatch, kind, variant):
    # The plan saw valid data; the op then meets a bad block id in the last slot with rows: no
    # launch variant writes the caches or any output row (padding rows included), and check_errors
    # raises. paged_attention reads that block (its decode tiles, early ones included, meet it).
    import torch

    from paddle_gqa import dlpack_ops

    _set_variant(monkeypatch, variant)
    r = dlpack_runner
    case = _case(kind, seed=13)
    t = r.load(case)
    plan = _plan(case, t)
    new_tokens = np.diff(case.cu_seqlens_q)
    last = int(np.flatnonzero(new_tokens)[-1])
    n_blocks = int(case.cache_seqlens[last] + new_tokens[last] - 1) // 16
    pcase, q_np = cases.paged_case(case)
    pt = r.load(pcase, q=q_np)
    for inputs in (t, pt):
        inputs["block_tables"][last, n_blocks] = case.num_blocks + 3  # the block the last slot writes
    kb, vb = r.bits(t["key_cache"]), r.bits(t["value_cache"])
    out = r.out_for("append_attention", case, t)
    poisoned = r.bits(out)
    _append(out, case, t, plan)
    torch.cuda.synchronize()
    assert np.array_equal(kb, r.bits(t["key_cache"])) and np.array_equal(vb, r.bits(t["value_cache"]))
    assert np.array_equal(poisoned, r.bits(out)), "an output row was written on bad step data"
    bad_id = rf"block_tables\[{last}\]\[{n_blocks}\] = {case.num_blocks + 3}"
    with pytest.raises(ValueError, match=bad_id):
        dlpack_ops.check_errors(torch.cuda.current_device())
    paged_out = r.out_for("paged_attention", pcase, pt)
    poisoned = r.bits(paged_out)
    r.call("paged_attention", pcase, pt, out=paged_out, plan=plan)
    torch.cuda.synchronize()
    assert np.array_equal(poisoned, r.bits(paged_out)), "paged_attention wrote an output row on bad step data"
    with pytest.raises(ValueError, match=bad_id):
        dlpack_ops.check_errors(torch.cuda.current_device())


def test_check_reports_lowest_bad_slot_across_ctas_then_recovers(dlpack_runner):
    # 300 slots: the check runs 38 CTAs. Bad block ids in slots 250 and 9 (different CTAs): the
    # error names slot 9; the next valid call (same device record) checks clean and is correct.
    import torch

    from paddle_gqa import dlpack_ops

    r = dlpack_runner
    case = _case("many_decodes", seed=14)
    t = r.load(case)
    plan = _plan(case, t)
    for slot, value in ((250, -1), (9, case.num_blocks)):
        t["block_tables"][slot, int(case.cache_seqlens[slot]) // 16] = value
    kb = r.bits(t["key_cache"])
    out = r.out_for("append_attention", case, t)
    _append(out, case, t, plan)
    torch.cuda.synchronize()
    assert np.array_equal(kb, r.bits(t["key_cache"]))
    with pytest.raises(ValueError, match=r"block_tables\[9\]\["):
        dlpack_ops.check_errors(torch.cuda.current_device())
    good = r.load(case)
    kb, vb = r.bits(good["key_cache"]), r.bits(good["value_cache"])
    out = r.out_for("append_attention", case, good)
    _append(out, case, good, _plan(case, good))
    torch.cuda.synchronize()
    ref_out, ref_k, ref_v = case.ref_append_attention()
    cases.check_output(case, r.values(out), ref_out)
    cases.check_caches(r, case, good, (kb, vb), ref_k, ref_v)
    dlpack_ops.check_errors(torch.cuda.current_device())
