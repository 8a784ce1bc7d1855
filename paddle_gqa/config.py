"""Model configs: one LayerSpec per decoder layer, read from a Hugging Face style config.json.

Families: llama, qwen2, qwen3, mistral, gemma2, gemma3 (gemma3_text), gpt_oss, mimo_v2_flash, plus the
FastDeploy per-layer overrides `num_key_value_heads_list` and `window_attn_skip_freq` on any of them.
Both RoPE spellings are read: transformers 5 `rope_parameters` (flat, or nested per layer type) and the
older `rope_theta` + `rope_scaling`. Sliding windows use HF's meaning: W keys including the query.
"""
from __future__ import annotations

import dataclasses
import json
import pathlib
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple

from .rope import check_rope
from .spec import LayerSpec, RopeSpec

FULL = "full_attention"
SLIDING = "sliding_attention"
LAYER_TYPES = (FULL, SLIDING)


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """The attention-relevant facts of a model; `layers` holds the FULL model's head counts (no TP split)."""

    model_type: str
    hidden_size: int
    num_layers: int
    layers: tuple              # tuple[LayerSpec, ...], one per layer
    attention_bias: bool       # q/k/v projections have bias
    o_proj_bias: bool
    qk_norm: bool              # per-head RMSNorm on q and k before RoPE (Qwen3 / Gemma3 style)
    rms_norm_eps: float
    max_position_embeddings: int
    vocab_size: int
    intermediate_size: int
    # What the q/k norm adds to its stored weight: Gemma3 checkpoints store scale - 1 (its RMSNorm
    # multiplies by 1 + weight), Qwen3 the scale itself. Pass to layers.Attention(qk_norm_offset=...).
    qk_norm_offset: float = 0.0

    @property
    def layer_types(self) -> Tuple[str, ...]:
        return tuple(SLIDING if spec.sliding_window else FULL for spec in self.layers)


# ---------------------------------------------------------------------------------------------------
# Field readers: every error names the config field, its value and what was expected.

def _int(d: Mapping, key: str, default: Any = None, minimum: int = 1) -> int:
    value = d.get(key)
    if value is None:
        value = default
    if value is None:
        raise ValueError(f"config field {key!r} is missing: expected an integer >= {minimum}")
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != int(value):
        raise ValueError(f"config field {key}={value!r}: expected an integer >= {minimum}")
    if int(value) < minimum:
        raise ValueError(f"config field {key}={value!r}: expected an integer >= {minimum}")
    return int(value)


def _float(d: Mapping, key: str, default: float) -> float:
    value = d.get(key)
    if value is None:
        return float(default)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"config field {key}={value!r}: expected a number")
    return float(value)


def _bool(d: Mapping, key: str, default: bool) -> bool:
    value = d.get(key)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise ValueError(f"config field {key}={value!r}: expected true or false")
    return value


def _per_layer_list(d: Mapping, key: str, n: int) -> Optional[list]:
    value = d.get(key)
    if value is None:
        return None
    if not isinstance(value, (list, tuple)):
        raise ValueError(f"config field {key}={value!r}: expected a list with one entry per layer ({n})")
    if len(value) != n:
        raise ValueError(f"config field {key} has {len(value)} entries; expected num_hidden_layers={n}")
    return list(value)


# ---------------------------------------------------------------------------------------------------
# Family descriptions. Defaults are those of the transformers config classes, so a partial config.json
# means what it means to transformers.

@dataclasses.dataclass(frozen=True)
class _Family:
    defaults: Dict[str, Any]
    qkv_bias: Callable[[Mapping], bool]
    o_bias: Callable[[Mapping], bool]
    qk_norm: bool = False
    qk_norm_offset: float = 0.0
    default_pattern: Optional[Callable[[Mapping, int], List[str]]] = None   # None: all full
    sinks: Callable[[Mapping, str], bool] = lambda d, kind: False
    softmax_scale: Callable[[Mapping], float] = lambda d: 0.0
    value_scale: Callable[[Mapping], float] = lambda d: 1.0
    window: Optional[Callable[[Mapping], int]] = None                  # None: `sliding_window`
    default_theta: Dict[str, float] = dataclasses.field(default_factory=lambda: {FULL: 1e4, SLIDING: 1e4})
    # Legacy (pre-`rope_parameters`) per-layer-type theta fields, e.g. gemma3 `rope_local_base_freq`.
    theta_fields: Dict[str, str] = dataclasses.field(default_factory=lambda: {FULL: "rope_theta", SLIDING: "rope_theta"})
    legacy_scaling_on_sliding: bool = True   # False: `rope_scaling` applies to full-attention layers only
    default_partial_rotary_factor: float = 1.0
    default_scaling: Optional[Dict[str, Any]] = None
    hybrid_heads: bool = False               # MiMo: `swa_*` head fields for sliding layers


def _attention_bias(default: bool) -> Callable[[Mapping], bool]:
    return lambda d: _bool(d, "attention_bias", default)


def _every(period: int, first_full: bool = False) -> Callable[[Mapping, int], List[str]]:
    """Layer i is full when (i + 1) % period == 0 (and layer 0 too when first_full), else sliding."""
    def pattern(d: Mapping, n: int) -> List[str]:
        return [FULL if (i + 1) % period == 0 or (first_full and i == 0) else SLIDING for i in range(n)]
    return pattern


def _qwen_pattern(d: Mapping, n: int) -> List[str]:
    # transformers' Qwen2/Qwen3: layers from `max_window_layers` on slide when `use_sliding_window`.
    if not _bool(d, "use_sliding_window", False):
        return [FULL] * n
    first = _int(d, "max_window_layers", 28, minimum=0)
    return [SLIDING if i >= first else FULL for i in range(n)]


def _qwen_window(d: Mapping) -> int:
    return _window_value(d, "sliding_window") if _bool(d, "use_sliding_window", False) else 0


def _mistral_pattern(d: Mapping, n: int) -> List[str]:
    return [SLIDING if _window_value(d, "sliding_window") else FULL] * n


def _gemma_softmax_scale(d: Mapping) -> float:
    scalar = _float(d, "query_pre_attn_scalar", 256)
    if scalar <= 0:
        raise ValueError(f"config field query_pre_attn_scalar={scalar!r}: expected > 0")
    return scalar ** -0.5


def _mimo_window(d: Mapping) -> int:
    # The hub config's `sliding_window_size` counts previous tokens (SGLang's convention); transformers
    # turns it into `sliding_window = sliding_window_size + 1`, which counts the query too.
    if d.get("sliding_window_size") is not None:
        return _int(d, "sliding_window_size", minimum=1) + 1
    return _window_value(d, "sliding_window", 129)


def _mimo_sinks(d: Mapping, kind: str) -> bool:
    if kind == SLIDING:
        return _bool(d, "add_swa_attention_sink_bias", True)
    return _bool(d, "add_full_attention_sink_bias", False)


def _mimo_value_scale(d: Mapping) -> float:
    scale = _float(d, "attention_value_scale", 1.0)
    if scale <= 0:
        raise ValueError(f"config field attention_value_scale={scale!r}: expected > 0")
    return scale


def _window_value(d: Mapping, key: str, default: Any = None) -> int:
    value = d.get(key, default)
    if value in (None, 0):
        return 0
    return _int({key: value}, key, minimum=1)


_LLAMA_LIKE = dict(rms_norm_eps=1e-6, num_hidden_layers=32, num_attention_heads=32, hidden_size=4096)

FAMILIES: Dict[str, _Family] = {
    "llama": _Family(
        defaults=dict(_LLAMA_LIKE, vocab_size=32000, intermediate_size=11008, max_position_embeddings=2048),
        qkv_bias=_attention_bias(False), o_bias=_attention_bias(False)),
    "qwen2": _Family(
        defaults=dict(_LLAMA_LIKE, vocab_size=151936, intermediate_size=22016, max_position_embeddings=32768,
                      num_key_value_heads=32),
        qkv_bias=lambda d: True, o_bias=lambda d: False, default_pattern=_qwen_pattern, window=_qwen_window),
    "qwen3": _Family(
        defaults=dict(_LLAMA_LIKE, vocab_size=151936, intermediate_size=22016, max_position_embeddings=32768,
                      num_key_value_heads=32, head_dim=128),
        qkv_bias=_attention_bias(False), o_bias=_attention_bias(False), qk_norm=True,
        default_pattern=_qwen_pattern, window=_qwen_window),
    "mistral": _Family(
        defaults=dict(_LLAMA_LIKE, vocab_size=32000, intermediate_size=14336, max_position_embeddings=131072,
                      num_key_value_heads=8, sliding_window=4096),
        qkv_bias=lambda d: False, o_bias=lambda d: False, default_pattern=_mistral_pattern),
    "gemma2": _Family(
        defaults=dict(vocab_size=256000, hidden_size=2304, intermediate_size=9216, num_hidden_layers=26,
                      num_attention_heads=8, num_key_value_heads=4, head_dim=256, max_position_embeddings=8192,
                      rms_norm_eps=1e-6, sliding_window=4096, attn_logit_softcapping=50.0),
        qkv_bias=_attention_bias(False), o_bias=_attention_bias(False), default_pattern=_every(2),
        softmax_scale=_gemma_softmax_scale),
    "gemma3_text": _Family(
        defaults=dict(vocab_size=262208, hidden_size=2304, intermediate_size=9216, num_hidden_layers=26,
                      num_attention_heads=8, num_key_value_heads=4, head_dim=256, max_position_embeddings=131072,
                      rms_norm_eps=1e-6, sliding_window=4096),
        qkv_bias=_attention_bias(False), o_bias=_attention_bias(False), qk_norm=True, qk_norm_offset=1.0,
        default_pattern=lambda d, n: _every(_int(d, "sliding_window_pattern", 6))(d, n),
        softmax_scale=_gemma_softmax_scale, default_theta={FULL: 1e6, SLIDING: 1e4},
        theta_fields={FULL: "rope_theta", SLIDING: "rope_local_base_freq"}, legacy_scaling_on_sliding=False),
    "gpt_oss": _Family(
        defaults=dict(vocab_size=201088, hidden_size=2880, intermediate_size=2880, num_hidden_layers=36,
                      num_attention_heads=64, num_key_value_heads=8, head_dim=64, max_position_embeddings=131072,
                      rms_norm_eps=1e-5, sliding_window=128),
        qkv_bias=_attention_bias(True), o_bias=_attention_bias(True), default_pattern=_every(2),
        sinks=lambda d, kind: True, default_theta={FULL: 150000.0, SLIDING: 150000.0},
        default_scaling={"rope_type": "yarn", "factor": 32.0, "beta_fast": 32.0, "beta_slow": 1.0,
                         "truncate": False, "original_max_position_embeddings": 4096}),
    "mimo_v2_flash": _Family(
        defaults=dict(vocab_size=152576, hidden_size=4096, intermediate_size=16384, num_hidden_layers=48,
                      num_attention_heads=64, num_key_value_heads=4, head_dim=192, v_head_dim=128,
                      max_position_embeddings=131072, rms_norm_eps=1e-5, attention_value_scale=0.707),
        qkv_bias=_attention_bias(False), o_bias=lambda d: False, default_pattern=_every(6, first_full=True),
        sinks=_mimo_sinks, value_scale=_mimo_value_scale, window=_mimo_window,
        default_theta={FULL: 5e6, SLIDING: 1e4}, theta_fields={FULL: "rope_theta", SLIDING: "swa_rope_theta"},
        legacy_scaling_on_sliding=False, default_partial_rotary_factor=0.334, hybrid_heads=True),
}
# Other spellings of the same attention.
ALIASES = {"mimo_v2": "mimo_v2_flash"}
# Multimodal wrappers whose decoder config sits under `text_config`.
TEXT_WRAPPERS = {"gemma3": "gemma3_text"}


# ---------------------------------------------------------------------------------------------------
# Layer pattern

def _kinds_from_layer_types(value: list) -> List[str]:
    for i, kind in enumerate(value):
        if kind not in LAYER_TYPES:
            raise ValueError(f"config field layer_types[{i}]={kind!r}: expected 'full_attention' or "
                             "'sliding_attention'")
    return list(value)


def _kinds_from_flags(key: str, value: list) -> List[str]:
    for i, flag in enumerate(value):
        if isinstance(flag, bool) or flag not in (0, 1):
            raise ValueError(f"config field {key}[{i}]={flag!r}: expected 0 (full attention) or 1 (sliding)")
    return [SLIDING if flag == 1 else FULL for flag in value]


def _layer_kinds(d: Mapping, family: _Family, n: int) -> List[str]:
    """Each layer's type from every explicit source in the config; the sources must agree."""
    sources: List[Tuple[str, List[str]]] = []
    layer_types = _per_layer_list(d, "layer_types", n)
    if layer_types is not None:
        sources.append(("layer_types", _kinds_from_layer_types(layer_types)))
    if family.hybrid_heads:
        pattern = _per_layer_list(d, "hybrid_layer_pattern", n)
        if pattern is not None:
            sources.append(("hybrid_layer_pattern", _kinds_from_flags("hybrid_layer_pattern", pattern)))
    skip = d.get("window_attn_skip_freq")
    if isinstance(skip, (list, tuple)):
        skip = _per_layer_list(d, "window_attn_skip_freq", n)
        sources.append(("window_attn_skip_freq", _kinds_from_flags("window_attn_skip_freq", skip)))
    elif skip not in (None, 0):
        # FastDeploy reads a scalar 0 as "no per-layer pattern"; anything else has no defined meaning.
        raise ValueError(f"config field window_attn_skip_freq={skip!r}: expected a per-layer list of 0/1 "
                         "(1 = sliding window) or 0")
    if d.get("sliding_window_pattern") is not None:
        sources.append(("sliding_window_pattern", _every(_int(d, "sliding_window_pattern"))(d, n)))
    if not sources:
        return family.default_pattern(d, n) if family.default_pattern else [FULL] * n
    first_name, kinds = sources[0]
    for name, other in sources[1:]:
        for i, (a, b) in enumerate(zip(kinds, other)):
            if a != b:
                raise ValueError(f"config fields {first_name} and {name} disagree at layer {i}: "
                                 f"{first_name} says {a!r}, {name} says {b!r}")
    return kinds


# ---------------------------------------------------------------------------------------------------
# RoPE

_RESERVED_ROPE_KEYS = ("rope_type", "type", "rope_theta", "partial_rotary_factor")


def _scaling_only(params: Mapping) -> Dict[str, Any]:
    out = {k: v for k, v in params.items() if k not in _RESERVED_ROPE_KEYS and v is not None}
    out["rope_type"] = params.get("rope_type", params.get("type", "default"))
    return out


def _same_scaling(params: Mapping, legacy: Mapping) -> bool:
    """Whether `rope_parameters` and a legacy `rope_scaling` describe the same scaling (a nested
    rope_parameters is compared through its full-attention entry, where legacy scaling applies)."""
    if not isinstance(params, Mapping) or not isinstance(legacy, Mapping):
        return params == legacy
    if params and set(params) <= set(LAYER_TYPES):
        params = params.get(FULL) or {}
    return _scaling_only(params) == _scaling_only(legacy)


def _rope_params(d: Mapping, family: _Family) -> Dict[str, Dict[str, Any]]:
    """Per layer type, a dict with rope_type, rope_theta, partial_rotary_factor and the scaling keys."""
    params = d.get("rope_parameters")
    legacy = d.get("rope_scaling")
    if params is not None and legacy is not None and not _same_scaling(params, legacy):
        raise ValueError(f"config fields rope_parameters={params!r} and rope_scaling={legacy!r} disagree; "
                         "keep one (transformers 5 writes rope_parameters)")
    source = "rope_parameters" if params is not None else "rope_scaling"
    params = params if params is not None else legacy
    if params is not None and not isinstance(params, Mapping):
        raise ValueError(f"config field {source}={params!r}: expected a dict")
    top_prf = d.get("partial_rotary_factor")

    out: Dict[str, Dict[str, Any]] = {}
    nested = bool(params) and set(params) <= set(LAYER_TYPES)
    for kind in LAYER_TYPES:
        if nested:
            entry = params.get(kind)
            if entry is None:
                raise ValueError(f"config field {source} is nested by layer type but has no {kind!r} entry")
            if not isinstance(entry, Mapping):
                raise ValueError(f"config field {source}[{kind!r}]={entry!r}: expected a dict")
            entry = dict(entry)
        elif params and (kind == FULL or family.legacy_scaling_on_sliding or source == "rope_parameters"):
            entry = dict(params)
        elif params is None and family.default_scaling is not None:
            entry = dict(family.default_scaling)
        else:
            entry = {}
        if entry.get("rope_theta") is None:
            entry["rope_theta"] = _float(d, family.theta_fields[kind], family.default_theta[kind])
        if entry.get("partial_rotary_factor") is None:
            entry["partial_rotary_factor"] = (top_prf if top_prf is not None
                                              else family.default_partial_rotary_factor)
        out[kind] = entry
    return out


def _rope_spec(entry: Mapping[str, Any], head_dim: int, max_position: int, where: str) -> RopeSpec:
    rope_type = entry.get("rope_type", entry.get("type", "default")) or "default"
    theta = entry["rope_theta"]
    if isinstance(theta, bool) or not isinstance(theta, (int, float)) or theta <= 0:
        raise ValueError(f"config field {where}.rope_theta={theta!r}: expected a number > 0")
    prf = entry["partial_rotary_factor"]
    if isinstance(prf, bool) or not isinstance(prf, (int, float)) or not 0 < prf <= 1:
        raise ValueError(f"config field partial_rotary_factor={prf!r} ({where}): expected 0 < factor <= 1")
    rotary_dim = int(head_dim * prf)
    if rotary_dim <= 0 or rotary_dim % 2:
        raise ValueError(f"config field partial_rotary_factor={prf!r} with head_dim={head_dim} gives "
                         f"rotary_dim={rotary_dim} ({where}): expected a positive even number")
    scaling: Tuple[Tuple[str, object], ...] = ()
    if rope_type != "default":
        items = {k: v for k, v in entry.items() if k not in _RESERVED_ROPE_KEYS and v is not None}
        if rope_type in ("llama3", "yarn", "dynamic"):
            # transformers defaults the pre-training context to max_position_embeddings.
            items.setdefault("original_max_position_embeddings", max_position)
        if rope_type == "yarn" and "factor" not in items:
            items["factor"] = max_position / items["original_max_position_embeddings"]
        items["rope_type"] = rope_type
        scaling = tuple(sorted((k, tuple(v) if isinstance(v, list) else v) for k, v in items.items()))
    spec = RopeSpec(theta=float(theta), rotary_dim=rotary_dim, max_position=max_position, neox_style=True,
                    scaling=scaling)
    try:
        check_rope(spec)
    except ValueError as err:
        raise ValueError(f"config {where}: {err}") from None
    return spec


# ---------------------------------------------------------------------------------------------------

def _read(cfg) -> Dict[str, Any]:
    if isinstance(cfg, Mapping):
        return dict(cfg)
    if isinstance(cfg, (str, pathlib.Path)):
        path = pathlib.Path(cfg)
        if path.is_dir():
            path = path / "config.json"
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
        if not isinstance(data, dict):
            raise ValueError(f"{path}: expected a JSON object, got {type(data).__name__}")
        return data
    raise TypeError(f"cfg={cfg!r}: expected a dict or the path of a config.json (str or pathlib.Path)")


def load_model_config(cfg) -> ModelConfig:
    """Per-layer LayerSpecs of a model from its config.json (a dict, a file path or a model directory).

    Raises ValueError naming the field for an unknown model_type and for contradictory or malformed
    fields (per-layer lists of the wrong length, head counts that do not divide, unknown layer types,
    features the kernels do not have such as Gemma-2's attention logit soft-capping)."""
    d = _read(cfg)
    model_type = d.get("model_type")
    if model_type in TEXT_WRAPPERS and isinstance(d.get("text_config"), Mapping):
        d = dict(d["text_config"])
        d.setdefault("model_type", TEXT_WRAPPERS[model_type])
        model_type = d["model_type"]
    model_type = ALIASES.get(model_type, model_type)
    if model_type not in FAMILIES:
        known = sorted(set(FAMILIES) | set(ALIASES) | set(TEXT_WRAPPERS))
        raise ValueError(f"config field model_type={model_type!r} is not supported; expected one of {known}")
    family = FAMILIES[model_type]
    if d.get("rms_norm_eps") is None and d.get("layernorm_epsilon") is not None:
        d["rms_norm_eps"] = d["layernorm_epsilon"]   # MiMo hub spelling
    # Absent fields take transformers' defaults; an explicit null stays null (e.g. Mistral's
    # "sliding_window": null means no window).
    d = {**family.defaults, **d}

    softcap = d.get("attn_logit_softcapping")
    if softcap not in (None, 0, 0.0):
        raise ValueError(f"config field attn_logit_softcapping={softcap!r}: the attention kernels have no logit "
                         "soft-capping; expected null (Gemma-2 checkpoints need it for exact results)")
    if d.get("use_bidirectional_attention"):
        raise ValueError("config field use_bidirectional_attention=true: expected false (the kernels are "
                         "causal where a sliding window applies)")

    n = _int(d, "num_hidden_layers")
    hidden = _int(d, "hidden_size")
    num_heads = _int(d, "num_attention_heads")
    num_kv = _int(d, "num_key_value_heads", num_heads)
    if d.get("head_dim") is None and hidden % num_heads:
        raise ValueError(f"config field head_dim is missing and hidden_size={hidden} is not a multiple of "
                         f"num_attention_heads={num_heads}: expected head_dim")
    head_dim = _int(d, "head_dim", hidden // num_heads)
    v_head_dim = _int(d, "v_head_dim", head_dim) if family.hybrid_heads else head_dim

    # (Hq, Hkv, D, Dv) per layer type; only MiMo's sliding layers differ from the model-wide fields.
    heads = {FULL: (num_heads, num_kv, head_dim, v_head_dim)}
    heads_fields = {FULL: ("num_attention_heads", "num_key_value_heads")}
    if family.hybrid_heads:
        swa_kv_default = 2 * num_kv     # transformers' MiMo doubles the KV heads on sliding layers
        heads[SLIDING] = (_int(d, "swa_num_attention_heads", num_heads),
                          _int(d, "swa_num_key_value_heads", swa_kv_default),
                          _int(d, "swa_head_dim", head_dim),
                          _int(d, "swa_v_head_dim", v_head_dim))
        heads_fields[SLIDING] = (
            "swa_num_attention_heads" if d.get("swa_num_attention_heads") is not None else "num_attention_heads",
            "swa_num_key_value_heads" if d.get("swa_num_key_value_heads") is not None
            else "num_key_value_heads (doubled on sliding layers)")
    else:
        heads[SLIDING] = heads[FULL]
        heads_fields[SLIDING] = heads_fields[FULL]

    kinds = _layer_kinds(d, family, n)
    window = family.window(d) if family.window else _window_value(d, "sliding_window")
    if SLIDING in kinds and not window:
        first = kinds.index(SLIDING)
        raise ValueError(f"layer {first} is a sliding-window layer but the window is {window} "
                         f"(config field sliding_window={d.get('sliding_window')!r}"
                         + (f", use_sliding_window={d.get('use_sliding_window')!r}" if "use_sliding_window" in d else "")
                         + "): expected a window > 0")

    kv_list = _per_layer_list(d, "num_key_value_heads_list", n)
    max_position = _int(d, "max_position_embeddings")
    rope_entries = _rope_params(d, family)
    rope_specs: Dict[Tuple[str, int], RopeSpec] = {}

    layers = []
    for i, kind in enumerate(kinds):
        hq, hkv, hd, hvd = heads[kind]
        hkv_field = heads_fields[kind][1]
        if kv_list is not None:
            listed = kv_list[i]
            if isinstance(listed, bool) or not isinstance(listed, int) or listed <= 0:
                raise ValueError(f"config field num_key_value_heads_list[{i}]={listed!r}: expected an integer > 0")
            if kind == SLIDING and family.hybrid_heads and d.get("swa_num_key_value_heads") is not None \
                    and listed != hkv:
                raise ValueError(f"config fields num_key_value_heads_list[{i}]={listed} and "
                                 f"swa_num_key_value_heads={hkv} disagree for sliding layer {i}")
            hkv, hkv_field = listed, f"num_key_value_heads_list[{i}]"
        if hq % hkv:
            raise ValueError(f"layer {i}: config field {hkv_field}={hkv} does not divide "
                             f"{heads_fields[kind][0]}={hq}: expected Hq % Hkv == 0")
        key = (kind, hd)
        if key not in rope_specs:
            where = f"rope_parameters[{kind!r}]" if kind == SLIDING else "rope_parameters"
            rope_specs[key] = _rope_spec(rope_entries[kind], hd, max_position, where)
        layers.append(LayerSpec(
            num_heads=hq, num_kv_heads=hkv, head_dim=hd, v_head_dim=hvd,
            sliding_window=window if kind == SLIDING else 0,
            rope=rope_specs[key],
            has_sinks=family.sinks(d, kind),
            value_scale=family.value_scale(d),
            softmax_scale=family.softmax_scale(d),
            causal=True))

    return ModelConfig(
        model_type=model_type,
        hidden_size=hidden,
        num_layers=n,
        layers=tuple(layers),
        attention_bias=family.qkv_bias(d),
        o_proj_bias=family.o_bias(d),
        qk_norm=family.qk_norm,
        rms_norm_eps=_float(d, "rms_norm_eps", 1e-6),
        max_position_embeddings=max_position,
        vocab_size=_int(d, "vocab_size"),
        intermediate_size=_int(d, "intermediate_size"),
        qk_norm_offset=family.qk_norm_offset,
    )
