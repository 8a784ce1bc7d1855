"""The float64 reference against an independent dense formulation and hand-checkable facts."""
import math
import zlib

import numpy as np
import pytest

import cases
from paddle_gqa import reference

SMALL_DIMS = ((8, 8), (8, 6))


def _small(spec_name, *, dims=(8, 6), group=3, hkv=2, bs=16, dtype="float64", **kw):
    spec = cases.named_batch(spec_name, bs)
    d, dv = dims
    return cases.build_named(spec, num_q_heads=group * hkv, num_kv_heads=hkv, head_dim=d,
                             v_head_dim=dv, block_size=bs, dtype=dtype, **kw)


@pytest.mark.parametrize("spec_name", cases.NAMED_BATCH_NAMES)
@pytest.mark.parametrize("rope", cases.ROPE_VARIANTS)
@pytest.mark.parametrize("dims", SMALL_DIMS)
def test_matches_dense(spec_name, rope, dims):
    seed = zlib.crc32(repr((spec_name, rope, dims)).encode()) % 1000
    for sinks, scale in ((False, 0.0), (True, 0.3)):
        case = _small(spec_name, dims=dims, rope=rope, sinks=sinks, softmax_scale=scale, seed=seed)
        out, _, _ = case.ref_append_attention()
        dense = cases.dense_attention(case, "float64")
        cases.assert_close(out, dense, 1e-10, 1e-10, case.describe())


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_rounding_points_match_dense(dtype):
    # K/V are rounded where they are stored and q after RoPE: the dense form rounds at the same points.
    case = _small("chunked_prefill", dtype=dtype, rope="neox", sinks=True, seed=7)
    out, _, _ = case.ref_append_attention()
    cases.assert_close(out, cases.dense_attention(case, dtype), 1e-10, 1e-10, case.describe())
    # ...and rounding matters: the unrounded dense result differs visibly for 16-bit types.
    if dtype != "float32":
        assert np.abs(out - cases.dense_attention(case, "float64"))[:case.num_tokens].max() > 1e-5


def test_window_one_returns_own_value():
    case = _small("swa_window_1", rope="neox", sinks=False, seed=3)
    out, _, _ = case.ref_append_attention()
    t, hq, hkv, d, dv, g = (case.num_tokens, case.num_q_heads, case.num_kv_heads, case.head_dim,
                            case.v_head_dim, case.group)
    v = case.qkv[:t, hq * d + hkv * d:].reshape(t, hkv, dv)
    expected = np.repeat(v, g, axis=1).reshape(t, hq * dv)
    cases.assert_close(out[:t], expected, 1e-12, 1e-12, "window 1")


def test_single_key_returns_its_value_and_sink_scales_it():
    case = cases.build_step(num_q_heads=4, num_kv_heads=2, head_dim=8, v_head_dim=6, block_size=16,
                            dtype="float64", layout=[(0, 1)], seed=5)
    out, _, _ = case.ref_append_attention()
    hq, hkv, d, dv = 4, 2, 8, 6
    q = case.qkv[0, :hq * d].reshape(hq, d)
    k = case.qkv[0, hq * d:hq * d + hkv * d].reshape(hkv, d)
    v = case.qkv[0, hq * d + hkv * d:].reshape(hkv, dv)
    expected = np.repeat(v, 2, axis=0)
    cases.assert_close(out[0].reshape(hq, dv), expected, 1e-12, 1e-12, "single key")

    sinks = np.array([-1.0, 0.0, 0.5, 3.0], dtype=np.float32)
    with_sink = reference.append_attention(
        case.qkv, case.key_cache, case.value_cache, case.block_tables, case.cu_seqlens_q,
        case.cache_seqlens, sinks=sinks, cache_dtype="float64")[0].reshape(hq, dv)
    s = np.array([q[h] @ k[h // 2] / math.sqrt(d) for h in range(hq)])
    factor = 1.0 / (1.0 + np.exp(sinks - s))
    cases.assert_close(with_sink, expected * factor[:, None], 1e-12, 1e-12, "single key + sink")


def test_sink_scales_output_by_partition_ratio():
    case = _small("chunked_prefill", sinks=True, seed=11)
    with_sink, _, _ = case.ref_append_attention()
    without = reference.append_attention(
        case.qkv, case.key_cache, case.value_cache, case.block_tables, case.cu_seqlens_q,
        case.cache_seqlens, cache_dtype="float64")[0]
    # For each query row and head: out_sink = out * Z / (Z + e^sink), Z = sum_j e^{s_j}.
    t, hq, hkv, d, g = case.num_tokens, case.num_q_heads, case.num_kv_heads, case.head_dim, case.group
    for b, (cache_len, n) in enumerate(case.layout()):
        s0 = int(case.cu_seqlens_q[b])
        keys = np.concatenate([case.prefix_k[b],
                               case.qkv[s0:s0 + n, hq * d:hq * d + hkv * d].reshape(n, hkv, d)])
        for i in range(n):
            q = case.qkv[s0 + i, :hq * d].reshape(hq, d)
            for h in range(hq):
                z = np.exp(keys[:cache_len + i + 1, h // g] @ q[h] / math.sqrt(d)).sum()
                ratio = z / (z + math.exp(case.sinks[h]))
                dv = case.v_head_dim
                row = slice(h * dv, (h + 1) * dv)
                cases.assert_close(with_sink[s0 + i, row], without[s0 + i, row] * ratio, 1e-10, 1e-12,
                                   f"slot {b} token {i} head {h}")
    assert t > 0


def test_rows_past_t_are_zero_and_untouched_cache_entries_stay():
    case = _small("padded_rows", seed=2)
    out, new_k, new_v = case.ref_append_attention()
    assert np.all(out[case.num_tokens:] == 0) and case.rows > case.num_tokens
    written = case.written_mask()
    for before, after in ((case.key_cache, new_k), (case.value_cache, new_v)):
        keep = np.broadcast_to(~written[:, None, :, None], before.shape)
        np.testing.assert_array_equal(after[keep], before[keep])  # NaN == NaN here
        assert np.isfinite(after[np.broadcast_to(written[:, None, :, None], after.shape)]).all()


def test_written_location_by_hand():
    # One slot, block_size 16, 3 cached tokens + 2 new: positions 3, 4 go to block_tables[0][0].
    hq, hkv, d, dv, bs = 2, 1, 4, 4, 16
    qkv = np.arange(2 * (hq * d + hkv * (d + dv)), dtype=np.float64).reshape(2, -1) + 1
    kc = np.full((3, hkv, bs, d), np.nan)
    vc = np.full((3, hkv, bs, dv), np.nan)
    kc[2, :, :3] = 0.5
    vc[2, :, :3] = 0.25
    tables = np.array([[2, -1]], np.int32)
    q, nk, nv = reference.rope_write_cache(qkv, kc, vc, tables, np.array([0, 2], np.int32),
                                           np.array([3], np.int32), cache_dtype="float64")
    np.testing.assert_array_equal(nk[2, 0, 3], qkv[0, 8:12])
    np.testing.assert_array_equal(nk[2, 0, 4], qkv[1, 8:12])
    np.testing.assert_array_equal(nv[2, 0, 4], qkv[1, 12:16])
    np.testing.assert_array_equal(q[1].reshape(-1), qkv[1, :8])
    assert np.isnan(nk[2, 0, 5:]).all() and np.isnan(nk[:2]).all()


def test_rope_identity_at_zero_and_relative():
    d = 16
    cos, sin = cases.rope_tables(64, d)
    rng = np.random.default_rng(0)
    for neox in (True, False):
        x = rng.standard_normal((1, 1, d))
        y = reference.apply_rope(x, np.array([0]), cos, sin, d, neox)
        np.testing.assert_allclose(y, x, rtol=0, atol=0)
        q, k = rng.standard_normal((1, 1, d)), rng.standard_normal((1, 1, d))
        scores = []
        for shift in (0, 5, 40):
            rq = reference.apply_rope(q, np.array([10 + shift]), cos, sin, d, neox)
            rk = reference.apply_rope(k, np.array([3 + shift]), cos, sin, d, neox)
            scores.append(float((rq * rk).sum()))
        # fp32 tables: the relative-position identity holds to fp32 precision.
        np.testing.assert_allclose(scores, scores[0], rtol=1e-5, atol=1e-5)
        # Norm of every rotated pair is preserved.
        r = reference.apply_rope(q, np.array([17]), cos, sin, d, neox)
        np.testing.assert_allclose((r ** 2).sum(), (q ** 2).sum(), rtol=1e-6)


def test_visible_range_matches_contract():
    for causal, w in ((True, 0), (True, 1), (True, 5), (False, 0)):
        p = np.arange(20)
        lo, hi = reference.visible_range(p, 20, causal, w)
        for i in p:
            seen = [j for j in range(20) if (j <= i or not causal) and (w == 0 or i - w < j)]
            assert (lo[i], hi[i]) == (seen[0], seen[-1])


def test_round_to_dtype_hand_values():
    r = reference.round_to_dtype
    assert r(1.00390625, "bfloat16") == 1.0            # 1 + 2^-8: tie, to even
    assert r(1.01171875, "bfloat16") == 1.015625       # 1 + 3*2^-8: tie, to even (up)
    assert r(1.0 + 2 ** -8 + 2 ** -20, "bfloat16") == 1.0078125  # just above the tie
    assert r(3.4e38, "bfloat16") == np.inf and r(-3.4e38, "bfloat16") == -np.inf
    assert r(3.39e38, "bfloat16") == float.fromhex("0x1.fep127")
    assert r(2.0 ** -133, "bfloat16") == 2.0 ** -133 and r(2.0 ** -135, "bfloat16") == 0.0
    assert np.isnan(r(np.nan, "float16"))
    assert r(65520.0, "float16") == np.inf and r(65519.0, "float16") == 65504.0
    x = np.random.default_rng(1).standard_normal(10000) * np.exp(np.random.default_rng(2).uniform(-30, 30, 10000))
    with np.errstate(over="ignore"):
        np.testing.assert_array_equal(r(x, "float16"), x.astype(np.float16).astype(np.float64))
    np.testing.assert_array_equal(r(x, "float32"), x.astype(np.float32).astype(np.float64))


def test_round_to_bfloat16_matches_torch():
    torch = pytest.importorskip("torch", reason="torch gives an independent float32->bfloat16 cast")
    x = (np.random.default_rng(3).standard_normal(20000)
         * np.exp(np.random.default_rng(4).uniform(-80, 80, 20000))).astype(np.float32)
    theirs = torch.from_numpy(x).to(torch.bfloat16).to(torch.float64).numpy()
    np.testing.assert_array_equal(reference.round_to_dtype(x, "bfloat16"), theirs)


def test_large_prefill_is_finite_and_matches_the_dense_form_on_a_prefix():
    # A 4k-token prefill of a small model through the vectorized reference (speed belongs to the
    # benchmarks, not to a timed test).
    case = cases.build_step(num_q_heads=6, num_kv_heads=2, head_dim=64, v_head_dim=64, block_size=64,
                            dtype="bfloat16", layout=[(0, 4096)], rope="neox", seed=9)
    out, _, _ = case.ref_append_attention()
    assert np.isfinite(out).all()
    # Spot-check rows against the dense form on a truncated copy (causal: a prefix of the
    # sequence is the same computation).
    short = cases.build_step(num_q_heads=6, num_kv_heads=2, head_dim=64, v_head_dim=64, block_size=64,
                             dtype="bfloat16", layout=[(0, 300)], rope="neox", seed=9)
    cases.assert_close(short.ref_append_attention()[0], cases.dense_attention(short, "bfloat16"),
                       1e-10, 1e-10, "300-token prefill")


class RefRunner:
    """A runner (tests/gpu/runners.py interface) whose ops are the reference itself on NumPy
    arrays, with optional injected faults: the checks in cases.py must pass it unfaulted and
    catch every fault."""

    def __init__(self, fault=None):
        self.fault = fault

    def tensor(self, arr, dtype):
        return np.array(arr, dtype=np.float64)

    def int32(self, arr):
        return np.array(arr, dtype=np.int32)

    def fp32(self, arr):
        return np.array(arr, dtype=np.float32)

    def load(self, case, q=None):
        t = dict(qkv=self.tensor(case.qkv, None), key_cache=self.tensor(case.key_cache, None),
                 value_cache=self.tensor(case.value_cache, None), block_tables=self.int32(case.block_tables),
                 cu_seqlens_q=self.int32(case.cu_seqlens_q), cache_seqlens=self.int32(case.cache_seqlens),
                 rotary_cos=case.rotary_cos, rotary_sin=case.rotary_sin, sinks=case.sinks)
        if q is not None:
            t["q"] = self.tensor(q, None)
        return t

    def values(self, a):
        return np.array(a, dtype=np.float64, copy=True)

    def bits(self, a):
        return np.array(a, dtype=np.float64, copy=True).view(np.uint64)

    def append_attention(self, case, t):
        f = self.fault
        window = case.sliding_window + (1 if f == "window_off_by_one" and case.sliding_window else 0)
        cos, sin = (None, None) if f == "k_unrotated" else (t["rotary_cos"], t["rotary_sin"])
        _, k, v = reference.rope_write_cache(t["qkv"], t["key_cache"], t["value_cache"], t["block_tables"],
                                             t["cu_seqlens_q"], t["cache_seqlens"], cos, sin,
                                             rotary_dim=case.rotary_dim, neox_style=case.neox_style,
                                             cache_dtype=case.dtype)
        q, k_rot, _ = reference.rope_write_cache(t["qkv"], t["key_cache"], t["value_cache"], t["block_tables"],
                                                 t["cu_seqlens_q"], t["cache_seqlens"], t["rotary_cos"],
                                                 t["rotary_sin"], rotary_dim=case.rotary_dim,
                                                 neox_style=case.neox_style, cache_dtype=case.dtype)
        out = reference.paged_attention(q, k_rot, v, t["block_tables"], t["cu_seqlens_q"], t["cache_seqlens"],
                                        None if f == "no_sink" else t["sinks"], sliding_window=window,
                                        causal=case.causal, softmax_scale=case.softmax_scale)
        out = reference.round_to_dtype(out, case.dtype)
        if f == "padding_rows_nonzero":
            out[case.num_tokens:] = 1.0
        if f == "stray_write":
            unused = np.setdiff1d(np.arange(case.num_blocks), case.block_tables[case.block_tables >= 0])
            k[unused[0], 0, 0, 0] = 0.0
        if f == "v_off_by_one_ulp":
            w = case.written_mask()
            v[w.nonzero()[0][0], 0, w.nonzero()[1][0], 0] *= 1 + 2.0 ** -6
        if f == "reads_poisoned_tail":  # 0 * NaN from a masked tail entry
            out[:case.num_tokens] += 0.0 * k[case.block_tables[0, 0], 0, -1, 0]
        t["key_cache"][...] = k
        t["value_cache"][...] = v
        return out


FAULTS = ("window_off_by_one", "k_unrotated", "no_sink", "padding_rows_nonzero", "stray_write",
          "v_off_by_one_ulp", "reads_poisoned_tail")


def _fault_case(dtype):
    return cases.build_named(cases.named_batch("padded_rows", 16), num_q_heads=6, num_kv_heads=2,
                             head_dim=16, v_head_dim=8, block_size=16, dtype=dtype, rope="neox",
                             sinks=True, seed=21)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_checks_pass_the_reference_itself(dtype):
    cases.run_append_and_check(RefRunner(), _fault_case(dtype))
    swa = cases.build_named(cases.named_batch("swa_window_odd", 16), num_q_heads=6, num_kv_heads=2,
                            head_dim=16, v_head_dim=8, block_size=16, dtype=dtype, rope="gptj",
                            sinks=True, seed=22)
    cases.run_append_and_check(RefRunner(), swa)


@pytest.mark.parametrize("fault", FAULTS)
def test_checks_catch_injected_faults(fault):
    case = _fault_case("bfloat16")
    if fault == "window_off_by_one":
        case = cases.build_named(cases.named_batch("swa_window_odd", 16), num_q_heads=6, num_kv_heads=2,
                                 head_dim=16, v_head_dim=8, block_size=16, dtype="bfloat16", rope="neox",
                                 sinks=True, seed=23)
    with pytest.raises(AssertionError):
        cases.run_append_and_check(RefRunner(fault), case)
