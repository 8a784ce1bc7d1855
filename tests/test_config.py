"""Model configs: per-layer specs of every family from tests/configs/*.json and transformers' classes."""
import copy
import json
import math
import pathlib

import numpy as np
import pytest

from paddle_gqa.config import FULL, SLIDING, ModelConfig, load_model_config
from paddle_gqa.rope import inv_freq_and_attention_factor
from paddle_gqa.spec import LayerSpec, RopeSpec

CONFIGS = pathlib.Path(__file__).parent / "configs"


def _json(name):
    return json.loads((CONFIGS / name).read_text())


def _rope(theta, rotary_dim, max_position, **scaling):
    return RopeSpec(theta=theta, rotary_dim=rotary_dim, max_position=max_position,
                    scaling=tuple(sorted(scaling.items())))


# ----------------------------------------------------------------------------------------------
# Hand-written expectations for the config.json files.

def test_llama3_1():
    m = load_model_config(CONFIGS / "llama3_1_8b.json")
    rope = _rope(500000.0, 128, 131072, factor=8.0, high_freq_factor=4.0, low_freq_factor=1.0,
                 original_max_position_embeddings=8192, rope_type="llama3")
    assert m == ModelConfig(
        model_type="llama", hidden_size=4096, num_layers=32,
        layers=(LayerSpec(32, 8, 128, 128, rope=rope),) * 32,
        attention_bias=False, o_proj_bias=False, qk_norm=False, rms_norm_eps=1e-5,
        max_position_embeddings=131072, vocab_size=128256, intermediate_size=14336)
    assert m.layers[0].group_size == 4


def test_qwen2_5_group_7_with_legacy_yarn_type_key():
    m = load_model_config(str(CONFIGS / "qwen2_5_7b_yarn.json"))
    rope = _rope(1e6, 128, 131072, factor=4.0, original_max_position_embeddings=32768, rope_type="yarn")
    assert m.layers == (LayerSpec(28, 4, 128, 128, rope=rope),) * 28
    assert m.layers[0].group_size == 7
    # use_sliding_window=false: the `sliding_window` value is ignored, as transformers does.
    assert m.layer_types == (FULL,) * 28
    assert (m.attention_bias, m.o_proj_bias, m.qk_norm) == (True, False, False)


def test_qwen3_rope_parameters_and_qk_norm():
    m = load_model_config(CONFIGS / "qwen3_8b.json")
    assert m.layers == (LayerSpec(32, 8, 128, 128, rope=_rope(1e6, 128, 40960)),) * 36
    assert (m.attention_bias, m.o_proj_bias, m.qk_norm) == (False, False, True)
    assert m.intermediate_size == 12288 and m.vocab_size == 151936 and m.rms_norm_eps == 1e-6


def test_qwen3_sliding_layers_from_max_window_layers():
    cfg = _json("qwen3_8b.json")
    del cfg["layer_types"]
    cfg.update(use_sliding_window=True, sliding_window=4096, max_window_layers=30)
    m = load_model_config(cfg)
    assert [s.sliding_window for s in m.layers] == [0] * 30 + [4096] * 6


def test_mistral_window_on_every_layer_and_null_window():
    cfg = _json("mistral_7b_v0_1.json")
    m = load_model_config(cfg)
    assert m.layers == (LayerSpec(32, 8, 128, 128, sliding_window=4096, rope=_rope(1e4, 128, 32768)),) * 32
    cfg["sliding_window"] = None          # Mistral-7B-v0.2+: full attention
    assert load_model_config(cfg).layer_types == (FULL,) * 32


def test_gemma2_softcap_is_refused_then_layers_without_it():
    cfg = _json("gemma2_27b.json")
    with pytest.raises(ValueError, match="attn_logit_softcapping=50.0"):
        load_model_config(cfg)
    cfg["attn_logit_softcapping"] = None
    m = load_model_config(cfg)
    rope = _rope(1e4, 128, 8192)
    scale = 144 ** -0.5                    # query_pre_attn_scalar, not head_dim
    expect = tuple(LayerSpec(32, 16, 128, 128, sliding_window=4096 if i % 2 == 0 else 0, rope=rope,
                             softmax_scale=scale) for i in range(46))
    assert m.layers == expect
    assert (m.attention_bias, m.o_proj_bias, m.qk_norm) == (False, False, False)


def test_gemma3_text_config_pattern_local_theta_and_global_only_scaling():
    m = load_model_config(CONFIGS / "gemma3_4b_it.json")
    assert m.model_type == "gemma3_text" and m.num_layers == 34 and m.hidden_size == 2560
    local = _rope(1e4, 256, 131072)
    global_ = _rope(1e6, 256, 131072, factor=8.0, rope_type="linear")
    for i, spec in enumerate(m.layers):
        is_full = (i + 1) % 6 == 0
        assert spec == LayerSpec(8, 4, 256, 256, sliding_window=0 if is_full else 1024,
                                 rope=global_ if is_full else local, softmax_scale=1 / 16), i
    assert m.qk_norm


def test_gpt_oss_alternating_sinks_everywhere_yarn():
    m = load_model_config(CONFIGS / "gpt_oss_20b.json")
    rope = _rope(150000.0, 64, 131072, beta_fast=32.0, beta_slow=1.0, factor=32.0,
                 original_max_position_embeddings=4096, rope_type="yarn", truncate=False)
    expect = tuple(LayerSpec(64, 8, 64, 64, sliding_window=128 if i % 2 == 0 else 0, rope=rope, has_sinks=True)
                   for i in range(24))
    assert m.layers == expect
    assert (m.attention_bias, m.o_proj_bias) == (True, True)


def _mimo_expected(kinds, max_position=262144):
    full_rope, swa_rope = _rope(5e6, 64, max_position), _rope(1e4, 64, max_position)
    return tuple(
        LayerSpec(64, 4, 192, 128, rope=full_rope, value_scale=0.707) if k == FULL else
        LayerSpec(64, 8, 192, 128, sliding_window=129, rope=swa_rope, has_sinks=True, value_scale=0.707)
        for k in kinds)


def test_mimo_v2_flash_hub_format():
    m = load_model_config(CONFIGS / "mimo_v2_flash_hub.json")
    full_layers = {0, 5, 11, 17, 23, 29, 35, 41, 47}
    assert m.layers == _mimo_expected([FULL if i in full_layers else SLIDING for i in range(48)])
    assert (m.attention_bias, m.o_proj_bias, m.qk_norm) == (False, False, False)
    assert m.rms_norm_eps == 1e-5                       # from `layernorm_epsilon`
    assert m.layers[1].rope.rotary_dim == int(192 * 0.334) == 64


def test_mimo_v2_flash_transformers_format():
    m = load_model_config(CONFIGS / "mimo_v2_flash_hf.json")
    kinds = [FULL if i == 0 or (i + 1) % 6 == 0 else SLIDING for i in range(12)]
    assert m.layers == _mimo_expected(kinds)


def test_fastdeploy_lists():
    m = load_model_config(CONFIGS / "fastdeploy_mimo_lists.json")
    assert m.layers == _mimo_expected([FULL, SLIDING, SLIDING, SLIDING, SLIDING, FULL, SLIDING, SLIDING])


def test_fastdeploy_kv_list_overrides_heads_per_layer():
    cfg = _json("qwen3_8b.json")
    cfg["num_key_value_heads_list"] = [8, 4, 2, 1] * 9
    m = load_model_config(cfg)
    assert [s.num_kv_heads for s in m.layers] == [8, 4, 2, 1] * 9
    assert {s.group_size for s in m.layers} == {4, 8, 16, 32}


def test_gemma3_wrapper_path_dir_and_alias(tmp_path):
    (tmp_path / "config.json").write_text((CONFIGS / "gemma3_4b_it.json").read_text())
    assert load_model_config(tmp_path) == load_model_config(CONFIGS / "gemma3_4b_it.json")
    hub = _json("mimo_v2_flash_hub.json")
    assert load_model_config(dict(hub, model_type="mimo_v2")) == load_model_config(hub)


def test_rope_parameters_next_to_equal_legacy_rope_scaling():
    cfg = _json("llama3_1_8b.json")
    cfg["rope_parameters"] = dict(cfg["rope_scaling"], rope_theta=500000.0)
    assert load_model_config(cfg) == load_model_config(CONFIGS / "llama3_1_8b.json")


def test_input_dict_is_not_modified():
    cfg = _json("mimo_v2_flash_hub.json")
    before = copy.deepcopy(cfg)
    load_model_config(cfg)
    assert cfg == before


# ----------------------------------------------------------------------------------------------
# Bad fields: ValueError naming the field.

def _mimo_hub():
    return _json("mimo_v2_flash_hub.json")


BAD = [
    ("unknown model_type", lambda: {"model_type": "bert"}, "model_type='bert'"),
    ("kv list too short", lambda: dict(_mimo_hub(), num_key_value_heads_list=[4] * 47),
     "num_key_value_heads_list has 47 entries"),
    ("kv list not a list", lambda: dict(_mimo_hub(), num_key_value_heads_list=4), "num_key_value_heads_list=4"),
    ("kv list entry does not divide", lambda: dict(_json("qwen3_8b.json"), num_key_value_heads_list=[8] * 35 + [3]),
     r"num_key_value_heads_list\[35\]=3 does not divide"),
    ("kv list vs swa field", lambda: dict(_mimo_hub(), num_key_value_heads_list=[4] * 48),
     r"num_key_value_heads_list\[1\]=4 and swa_num_key_value_heads=8"),
    ("kv heads do not divide", lambda: dict(_json("llama3_1_8b.json"), num_key_value_heads=5),
     "num_key_value_heads=5 does not divide num_attention_heads=32"),
    ("swa kv heads do not divide", lambda: dict(_mimo_hub(), swa_num_key_value_heads=7),
     "swa_num_key_value_heads=7 does not divide"),
    ("bad layer type", lambda: dict(_json("gpt_oss_20b.json"),
                                    layer_types=["chunked_attention"] + ["full_attention"] * 23),
     r"layer_types\[0\]='chunked_attention'"),
    ("layer_types too long", lambda: dict(_json("gpt_oss_20b.json"), layer_types=["full_attention"] * 25),
     "layer_types has 25 entries"),
    ("skip freq entry", lambda: dict(_mimo_hub(), window_attn_skip_freq=[2] + [0] * 47),
     r"window_attn_skip_freq\[0\]=2"),
    ("skip freq scalar", lambda: dict(_mimo_hub(), window_attn_skip_freq=6), "window_attn_skip_freq=6"),
    ("skip freq vs hybrid pattern", lambda: dict(_mimo_hub(), window_attn_skip_freq=[0] * 48),
     "hybrid_layer_pattern and window_attn_skip_freq disagree at layer 1"),
    ("layer_types vs sliding_window_pattern",
     lambda: dict(_json("gemma3_4b_it.json")["text_config"],
                  layer_types=["sliding_attention", "full_attention"] * 17),
     "layer_types and sliding_window_pattern disagree at layer 1"),
    ("hybrid pattern entry", lambda: dict(_mimo_hub(), hybrid_layer_pattern=["1"] * 48),
     r"hybrid_layer_pattern\[0\]='1'"),
    ("sliding layers without window", lambda: dict(_json("qwen3_8b.json"), layer_types=["sliding_attention"] * 36),
     "use_sliding_window=False"),
    ("gpt-oss null window", lambda: dict(_json("gpt_oss_20b.json"), sliding_window=None),
     "sliding_window=None"),
    ("negative window", lambda: dict(_json("mistral_7b_v0_1.json"), sliding_window=-5), "sliding_window=-5"),
    ("rope sources disagree", lambda: dict(_json("llama3_1_8b.json"), rope_parameters={"rope_type": "default"}),
     "rope_parameters=.* and rope_scaling=.* disagree"),
    ("longrope", lambda: dict(_json("llama3_1_8b.json"), rope_scaling={
        "rope_type": "longrope", "short_factor": [1.0] * 64, "long_factor": [2.0] * 64}), "longrope"),
    ("unknown rope key", lambda: dict(_json("llama3_1_8b.json"), rope_scaling={
        "rope_type": "linear", "factor": 2.0, "mrope_section": [16, 24, 24]}), "mrope_section"),
    ("odd partial rotary", lambda: dict(_mimo_hub(), partial_rotary_factor=0.33), "partial_rotary_factor=0.33"),
    ("nested rope missing type", lambda: dict(_json("mimo_v2_flash_hf.json"), rope_parameters={
        "full_attention": {"rope_type": "default", "rope_theta": 1e6}}), "no 'sliding_attention' entry"),
    ("head_dim underivable", lambda: dict(_json("llama3_1_8b.json"), hidden_size=4001),
     "head_dim is missing and hidden_size=4001"),
    ("non-integer layers", lambda: dict(_json("llama3_1_8b.json"), num_hidden_layers=3.5), "num_hidden_layers=3.5"),
    ("bidirectional gemma3", lambda: dict(_json("gemma3_4b_it.json")["text_config"], use_bidirectional_attention=True),
     "use_bidirectional_attention"),
    ("bad value scale", lambda: dict(_mimo_hub(), attention_value_scale=0.0), "attention_value_scale=0.0"),
    ("bool as int", lambda: dict(_json("llama3_1_8b.json"), num_key_value_heads=True), "num_key_value_heads=True"),
]


@pytest.mark.parametrize("make, match", [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_fields_raise_value_error_naming_the_field(make, match):
    with pytest.raises(ValueError, match=match):
        load_model_config(make())


def test_bad_input_type():
    with pytest.raises(TypeError, match="cfg=42"):
        load_model_config(42)


# ----------------------------------------------------------------------------------------------
# Cross-check with transformers: build its attention modules (on the meta device, so full-size
# configs cost nothing) and its rotary embeddings from the same config, and compare per layer.

# Only these tests need torch and transformers: a missing one skips them, not the whole module.
try:
    import torch
    import transformers
except ImportError as e:
    torch = transformers = None
    _HF_MISSING = f"the transformers cross-check needs torch and transformers ({e})"
else:
    _HF_MISSING = None
needs_transformers = pytest.mark.skipif(_HF_MISSING is not None, reason=_HF_MISSING or "")

_HF = {
    # model_type: (config class, attention module path, rotary class path, rotary takes layer_type)
    "llama": ("LlamaConfig", "llama.modeling_llama.LlamaAttention", "llama.modeling_llama.LlamaRotaryEmbedding", False),
    "qwen2": ("Qwen2Config", "qwen2.modeling_qwen2.Qwen2Attention", "qwen2.modeling_qwen2.Qwen2RotaryEmbedding", False),
    "qwen3": ("Qwen3Config", "qwen3.modeling_qwen3.Qwen3Attention", "qwen3.modeling_qwen3.Qwen3RotaryEmbedding", False),
    "mistral": ("MistralConfig", "mistral.modeling_mistral.MistralAttention",
                "mistral.modeling_mistral.MistralRotaryEmbedding", False),
    "gemma2": ("Gemma2Config", "gemma2.modeling_gemma2.Gemma2Attention",
               "gemma2.modeling_gemma2.Gemma2RotaryEmbedding", False),
    "gemma3_text": ("Gemma3TextConfig", "gemma3.modeling_gemma3.Gemma3Attention",
                    "gemma3.modeling_gemma3.Gemma3RotaryEmbedding", True),
    "gpt_oss": ("GptOssConfig", "gpt_oss.modeling_gpt_oss.GptOssAttention",
                "gpt_oss.modeling_gpt_oss.GptOssRotaryEmbedding", False),
    "mimo_v2_flash": ("MiMoV2FlashConfig", "mimo_v2_flash.modeling_mimo_v2_flash.MiMoV2FlashAttention",
                      "mimo_v2_flash.modeling_mimo_v2_flash.MiMoV2FlashRotaryEmbedding", True),
}


def _hf_object(path):
    import importlib

    module, name = path.rsplit(".", 1)
    return getattr(importlib.import_module(f"transformers.models.{module}"), name)


def _hf_layer(attn, config, i):
    head_dim = attn.head_dim
    hq = attn.q_proj.out_features // head_dim
    hkv = attn.k_proj.out_features // head_dim
    if config.model_type == "mistral":       # MistralAttention reads the window from the config
        window = config.sliding_window or 0
    else:
        window = getattr(attn, "sliding_window", None) or 0
    return dict(num_heads=hq, num_kv_heads=hkv, head_dim=head_dim, v_head_dim=attn.v_proj.out_features // hkv,
                sliding_window=window, has_sinks=getattr(attn, "sinks", None) is not None,
                scale=attn.scaling, value_scale=getattr(attn, "v_scale", 1.0),
                qkv_bias=attn.q_proj.bias is not None, o_bias=attn.o_proj.bias is not None,
                qk_norm=hasattr(attn, "q_norm"))


def _check_against_transformers(config):
    """Our parse of config.to_dict() against the modules transformers builds from `config`."""
    ours = load_model_config(config.to_dict())
    config_cls, attn_path, rotary_path, per_type = _HF[ours.model_type]
    attn_cls, rotary_cls = _hf_object(attn_path), _hf_object(rotary_path)
    assert ours.num_layers == config.num_hidden_layers
    for i, spec in enumerate(ours.layers):
        with torch.device("meta"):
            hf = _hf_layer(attn_cls(config, i), config, i)
        assert (spec.num_heads, spec.num_kv_heads, spec.head_dim, spec.v_head_dim) == \
            (hf["num_heads"], hf["num_kv_heads"], hf["head_dim"], hf["v_head_dim"]), i
        assert spec.sliding_window == hf["sliding_window"], i
        assert spec.has_sinks == hf["has_sinks"], i
        assert spec.value_scale == pytest.approx(hf["value_scale"]), i
        assert (spec.softmax_scale or spec.head_dim ** -0.5) == pytest.approx(hf["scale"], rel=1e-12), i
        assert (ours.attention_bias, ours.o_proj_bias, ours.qk_norm) == \
            (hf["qkv_bias"], hf["o_bias"], hf["qk_norm"]), i

    # RoPE: HF's cos/sin at sample positions vs ours (float64 from our inv_freq and attention factor).
    rotary = rotary_cls(config)
    positions = torch.tensor([[0, 1, 2, 17, 255, 1000, 4095, 4096, 30000]])
    positions = positions[positions < config.max_position_embeddings][None]
    for kind in sorted(set(ours.layer_types)):
        spec = ours.layers[ours.layer_types.index(kind)].rope
        assert spec.max_position == config.max_position_embeddings
        args = (kind,) if per_type else ()
        hf_cos, hf_sin = rotary(torch.zeros(1), positions, *args)
        half = spec.rotary_dim // 2
        # Most HF rotaries repeat the half-table (rotate_half layout); gpt-oss returns the half only.
        assert hf_cos.shape[-1] in (spec.rotary_dim, half)
        inv, af = inv_freq_and_attention_factor(spec)
        p = positions[0].double().numpy()[:, None]
        angles = p * inv
        tol = af * (p * inv * (math.log(spec.theta) + 6) * 2 * 2.0 ** -24 + 1e-6)
        assert np.all(np.abs(np.cos(angles) * af - hf_cos[0, :, :half].double().numpy()) <= tol), kind
        assert np.all(np.abs(np.sin(angles) * af - hf_sin[0, :, :half].double().numpy()) <= tol), kind


@needs_transformers
@pytest.mark.parametrize("model_type", sorted(_HF))
def test_transformers_defaults(model_type):
    config = getattr(transformers, _HF[model_type][0])()
    if model_type == "gemma2":
        config.attn_logit_softcapping = None     # the kernels have none; refused otherwise (tested above)
    _check_against_transformers(config)


HF_JSON = {
    "llama3_1_8b.json": "llama", "qwen2_5_7b_yarn.json": "qwen2", "qwen3_8b.json": "qwen3",
    "mistral_7b_v0_1.json": "mistral", "gemma2_27b.json": "gemma2", "gpt_oss_20b.json": "gpt_oss",
    "mimo_v2_flash_hf.json": "mimo_v2_flash", "mimo_v2_flash_hub.json": "mimo_v2_flash",
}


@needs_transformers
@pytest.mark.parametrize("name", sorted(HF_JSON))
def test_transformers_from_config_json(name):
    cfg = _json(name)
    if name == "gemma2_27b.json":
        cfg["attn_logit_softcapping"] = None
    config_cls = getattr(transformers, _HF[HF_JSON[name]][0])
    config = config_cls.from_dict({k: v for k, v in cfg.items() if k not in ("architectures", "auto_map")})
    _check_against_transformers(config)


@needs_transformers
def test_transformers_gemma3_text_from_wrapper():
    text = _json("gemma3_4b_it.json")["text_config"]
    _check_against_transformers(transformers.Gemma3TextConfig.from_dict(text))


@needs_transformers
def test_transformers_mimo_variants():
    # Small hybrid MiMo with its own layer count and window; KV doubling and sinks from the classes.
    config = transformers.MiMoV2FlashConfig(num_hidden_layers=8, sliding_window_size=64, attention_value_scale=0.5,
                                           max_position_embeddings=8192)
    assert config.sliding_window == 65
    _check_against_transformers(config)


def test_qk_norm_offset_follows_the_checkpoint_convention():
    # Gemma3 stores its q/k norm scale minus one (HF Gemma3RMSNorm multiplies by 1 + weight); Qwen3
    # stores the scale itself; families without a q/k norm carry no offset.
    assert load_model_config(CONFIGS / "gemma3_4b_it.json").qk_norm_offset == 1.0
    qwen3 = load_model_config(CONFIGS / "qwen3_8b.json")
    assert qwen3.qk_norm and qwen3.qk_norm_offset == 0.0
    assert load_model_config(CONFIGS / "llama3_1_8b.json").qk_norm_offset == 0.0
