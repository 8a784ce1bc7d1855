"""RoPE tables against transformers' rope init functions and rotary modules (torch is a test-only peer)."""
import math

import numpy as np
import pytest

from paddle_gqa.rope import check_rope, inv_freq_and_attention_factor, rope_tables
from paddle_gqa.spec import RopeSpec

# Only the comparisons with transformers need torch and transformers: a missing one skips them,
# not the tests from first principles below.
try:
    import torch
    import transformers
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding
except ImportError as e:
    torch = transformers = ROPE_INIT_FUNCTIONS = LlamaRotaryEmbedding = None
    _HF_MISSING = f"the comparison with transformers needs torch and transformers ({e})"
else:
    _HF_MISSING = None
needs_transformers = pytest.mark.skipif(_HF_MISSING is not None, reason=_HF_MISSING or "")

EPS32 = 2.0 ** -24

# (name, rope_parameters without rope_theta, theta, head_dim, partial_rotary_factor, max_position_embeddings)
CASES = [
    ("default", {"rope_type": "default"}, 10000.0, 128, 1.0, 4096),
    ("linear", {"rope_type": "linear", "factor": 4.0}, 10000.0, 64, 1.0, 4096),
    ("linear_partial", {"rope_type": "linear", "factor": 2.5}, 500000.0, 96, 0.5, 2048),
    ("dynamic", {"rope_type": "dynamic", "factor": 2.0}, 10000.0, 128, 1.0, 4096),
    ("llama3", {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                "original_max_position_embeddings": 8192}, 500000.0, 128, 1.0, 16384),
    ("llama3_small_context", {"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0,
                              "high_freq_factor": 4.0, "original_max_position_embeddings": 1024},
     10000.0, 64, 1.0, 4096),
    ("yarn_gpt_oss", {"rope_type": "yarn", "factor": 32.0, "beta_fast": 32.0, "beta_slow": 1.0,
                      "truncate": False, "original_max_position_embeddings": 4096}, 150000.0, 64, 1.0, 8192),
    ("yarn_truncate", {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 1024},
     1000000.0, 128, 1.0, 4096),
    ("yarn_mscale", {"rope_type": "yarn", "factor": 40.0, "mscale": 1.0, "mscale_all_dim": 0.707,
                     "beta_fast": 32, "beta_slow": 1, "original_max_position_embeddings": 4096},
     10000.0, 64, 1.0, 4096),
    ("yarn_attention_factor", {"rope_type": "yarn", "factor": 8.0, "attention_factor": 1.25,
                               "original_max_position_embeddings": 2048}, 10000.0, 128, 0.25, 4096),
]


def _inv_rtol(theta):
    return (math.log(theta) + 4) * 2 * EPS32


def _hf(params, theta, head_dim, prf, max_pos):
    rope_parameters = dict(params, rope_theta=theta)
    if prf != 1.0:
        rope_parameters["partial_rotary_factor"] = prf
    config = transformers.LlamaConfig(hidden_size=head_dim * 4, num_attention_heads=4, head_dim=head_dim,
                                      max_position_embeddings=max_pos, rope_parameters=rope_parameters)
    if params["rope_type"] == "default":
        inv, af = LlamaRotaryEmbedding.compute_default_rope_parameters(config)
    else:
        inv, af = ROPE_INIT_FUNCTIONS[params["rope_type"]](config)
    return config, inv.double().numpy(), float(af)


def _spec(params, theta, head_dim, prf, max_pos):
    scaling = {k: v for k, v in params.items()}
    if scaling["rope_type"] == "default":
        scaling = {}
    elif scaling["rope_type"] == "dynamic":
        scaling["original_max_position_embeddings"] = max_pos
    return RopeSpec(theta=theta, rotary_dim=int(head_dim * prf), max_position=max_pos,
                    scaling=tuple(sorted(scaling.items())))


@needs_transformers
@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_inv_freq_and_attention_factor_match_transformers(case):
    _, params, theta, head_dim, prf, max_pos = case
    _, hf_inv, hf_af = _hf(params, theta, head_dim, prf, max_pos)
    inv, af = inv_freq_and_attention_factor(_spec(params, theta, head_dim, prf, max_pos))
    assert inv.dtype == np.float64 and inv.shape == hf_inv.shape
    # transformers computes theta ** (2k / d) in float32: the exponent's rounding is amplified by ln(theta).
    np.testing.assert_allclose(inv, hf_inv, rtol=_inv_rtol(theta), atol=0)
    assert af == pytest.approx(hf_af, rel=1e-12)


@needs_transformers
@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_tables_match_transformers_rotary_module(case):
    """Every row of the tables against LlamaRotaryEmbedding.forward (attention factor included)."""
    _, params, theta, head_dim, prf, max_pos = case
    config, hf_inv, af = _hf(params, theta, head_dim, prf, max_pos)
    spec = _spec(params, theta, head_dim, prf, max_pos)
    cos, sin = rope_tables(spec)
    half = spec.rotary_dim // 2
    assert cos.dtype == np.float32 and sin.dtype == np.float32
    assert cos.shape == sin.shape == (max_pos, half)

    module = LlamaRotaryEmbedding(config)
    positions = torch.arange(max_pos)[None]
    hf_cos, hf_sin = module(torch.zeros(1, dtype=torch.float32), positions)
    hf_cos, hf_sin = hf_cos[0, :, :half].double().numpy(), hf_sin[0, :, :half].double().numpy()
    # The second half of HF's [.., rotary_dim] tables repeats the first (rotate_half layout).
    np.testing.assert_array_equal(module(torch.zeros(1), positions)[0][0, :, half:].numpy(),
                                  module(torch.zeros(1), positions)[0][0, :, :half].numpy())
    # HF's float32 angle p * inv_freq inherits inv_freq's relative error plus one rounding; ours is
    # float64 rounded once at the end.
    p = np.arange(max_pos, dtype=np.float64)[:, None]
    tol = af * (p * hf_inv * (_inv_rtol(theta) + 2 * EPS32) + 4 * EPS32) + 1e-7
    assert np.all(np.abs(cos - hf_cos) <= tol)
    assert np.all(np.abs(sin - hf_sin) <= tol)


def test_tables_are_rotations_scaled_by_attention_factor():
    spec = RopeSpec(theta=150000.0, rotary_dim=64, max_position=512,
                    scaling=(("factor", 32.0), ("original_max_position_embeddings", 4096), ("rope_type", "yarn")))
    cos, sin = rope_tables(spec)
    af = 0.1 * math.log(32.0) + 1.0
    np.testing.assert_allclose(cos.astype(np.float64) ** 2 + sin.astype(np.float64) ** 2, af * af, rtol=1e-6)
    np.testing.assert_allclose(cos[0], af, rtol=1e-7)
    np.testing.assert_array_equal(sin[0], 0.0)


def test_default_tables_from_first_principles():
    """Plain RoPE: row p, column k is cos/sin(p * theta^(-2k/rotary_dim)), with partial rotary."""
    spec = RopeSpec(theta=10000.0, rotary_dim=64, max_position=300)
    cos, sin = rope_tables(spec)
    for p, k in [(0, 0), (1, 0), (299, 0), (17, 5), (299, 31), (123, 16)]:
        angle = p * 10000.0 ** (-2 * k / 64)
        assert cos[p, k] == np.float32(math.cos(angle))
        assert sin[p, k] == np.float32(math.sin(angle))


@needs_transformers
def test_partial_rotary_matches_mimo_rotary_module():
    """MiMo-V2-Flash rotates int(192 * 0.334) = 64 of 192 dims, per-layer-type theta."""
    from transformers.models.mimo_v2_flash.modeling_mimo_v2_flash import MiMoV2FlashRotaryEmbedding

    config = transformers.MiMoV2FlashConfig(max_position_embeddings=4096)
    module = MiMoV2FlashRotaryEmbedding(config)
    positions = torch.arange(4096)[None]
    for layer_type, theta in (("full_attention", 5e6), ("sliding_attention", 1e4)):
        cos, sin = rope_tables(RopeSpec(theta=theta, rotary_dim=64, max_position=4096))
        hf_cos, hf_sin = module(torch.zeros(1), positions, layer_type)
        assert hf_cos.shape[-1] == 64
        p = np.arange(4096, dtype=np.float64)[:, None]
        inv = theta ** (-np.arange(0, 64, 2) / 64.0)
        tol = p * inv * (_inv_rtol(theta) + 2 * EPS32) + 4 * EPS32
        assert np.all(np.abs(cos - hf_cos[0, :, :32].double().numpy()) <= tol)
        assert np.all(np.abs(sin - hf_sin[0, :, :32].double().numpy()) <= tol)


def test_dynamic_equals_default_within_trained_context():
    base = RopeSpec(theta=10000.0, rotary_dim=128, max_position=2048)
    dynamic = RopeSpec(theta=10000.0, rotary_dim=128, max_position=2048,
                       scaling=(("factor", 4.0), ("original_max_position_embeddings", 2048), ("rope_type", "dynamic")))
    for a, b in zip(rope_tables(base), rope_tables(dynamic)):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("spec, match", [
    (RopeSpec(10000.0, 63, 16), "rotary_dim=63"),
    (RopeSpec(10000.0, 0, 16), "rotary_dim=0"),
    (RopeSpec(10000.0, 64, 0), "max_position=0"),
    (RopeSpec(-1.0, 64, 16), "theta=-1.0"),
    (RopeSpec(10000.0, 64, 16, scaling=(("rope_type", "longrope"),)), "rope_type='longrope'"),
    (RopeSpec(10000.0, 64, 16, scaling=(("factor", 2.0), ("rope_type", "linear"), ("beta_fast", 3))),
     "beta_fast"),
    (RopeSpec(10000.0, 64, 16, scaling=(("rope_type", "yarn"), ("factor", 2.0))),
     "original_max_position_embeddings"),
    (RopeSpec(10000.0, 64, 16, scaling=(("rope_type", "linear"), ("factor", -2.0))), "factor=-2.0"),
    (RopeSpec(10000.0, 64, 4096, scaling=(("factor", 2.0), ("original_max_position_embeddings", 2048),
                                          ("rope_type", "dynamic"))), "max_position=4096"),
    (RopeSpec(10000.0, 64, 16, scaling=(("factor", 8.0), ("high_freq_factor", 1.0), ("low_freq_factor", 1.0),
                                        ("original_max_position_embeddings", 8), ("rope_type", "llama3"))),
     "low_freq_factor"),
])
def test_bad_specs_raise_naming_the_field(spec, match):
    with pytest.raises(ValueError, match=match):
        check_rope(spec)
    with pytest.raises(ValueError, match=match):
        rope_tables(spec)
