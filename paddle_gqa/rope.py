"""RoPE cos/sin tables for a RopeSpec: default, linear, dynamic-NTK, llama3 and YaRN scaling."""
from __future__ import annotations

import math
from typing import Dict, Tuple

import numpy as np

from .spec import RopeSpec

# Scaling keys each rope_type understands (besides `rope_type` itself). `original_max_position_embeddings`
# is the pre-training context; config.py fills it in where HF would default it.
_KEYS = {
    "linear": {"factor"},
    "dynamic": {"factor", "original_max_position_embeddings"},
    "llama3": {"factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"},
    "yarn": {"factor", "original_max_position_embeddings", "attention_factor", "beta_fast", "beta_slow",
             "mscale", "mscale_all_dim", "truncate"},
}
_REQUIRED = {
    "linear": {"factor"},
    "dynamic": {"factor", "original_max_position_embeddings"},
    "llama3": {"factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"},
    "yarn": {"factor", "original_max_position_embeddings"},
}
SUPPORTED_ROPE_TYPES = ("default",) + tuple(_KEYS)


def _scaling_dict(rope: RopeSpec) -> Dict[str, object]:
    params = dict(rope.scaling)
    if not params:
        return {"rope_type": "default"}
    return params


def check_rope(rope: RopeSpec) -> None:
    """Raise ValueError naming the field when `rope` cannot be turned into exact tables."""
    if rope.rotary_dim <= 0 or rope.rotary_dim % 2:
        raise ValueError(f"rope.rotary_dim={rope.rotary_dim}: expected a positive even number")
    if rope.max_position <= 0:
        raise ValueError(f"rope.max_position={rope.max_position}: expected > 0")
    if not rope.theta > 0:
        raise ValueError(f"rope.theta={rope.theta}: expected > 0")
    params = _scaling_dict(rope)
    kind = params.get("rope_type")
    if kind == "default":
        if len(params) > 1:
            raise ValueError(f"rope.scaling={rope.scaling}: rope_type 'default' takes no scaling keys")
        return
    if kind not in _KEYS:
        raise ValueError(
            f"rope_type={kind!r} has no exact cos/sin table here; supported: {', '.join(SUPPORTED_ROPE_TYPES)}")
    keys = set(params) - {"rope_type"}
    unknown = keys - _KEYS[kind]
    if unknown:
        raise ValueError(f"rope scaling key(s) {sorted(unknown)} are not understood for rope_type {kind!r}; "
                         f"known: {sorted(_KEYS[kind])}")
    missing = _REQUIRED[kind] - keys
    if missing:
        raise ValueError(f"rope_type {kind!r} needs scaling key(s) {sorted(missing)}")
    factor = params["factor"]
    if not isinstance(factor, (int, float)) or isinstance(factor, bool) or factor <= 0:
        raise ValueError(f"rope scaling factor={factor!r}: expected a number > 0")
    if kind == "llama3" and params["low_freq_factor"] == params["high_freq_factor"]:
        raise ValueError(f"llama3 rope: low_freq_factor == high_freq_factor == {params['low_freq_factor']}; "
                         "expected them to differ")
    if kind == "dynamic" and rope.max_position > params["original_max_position_embeddings"]:
        # Dynamic NTK recomputes every frequency from the current sequence length, so one fixed table
        # is exact only while no sequence outgrows the trained context (where it equals plain RoPE).
        raise ValueError(
            f"rope_type 'dynamic' with max_position={rope.max_position} > original_max_position_embeddings="
            f"{params['original_max_position_embeddings']}: its frequencies depend on the sequence length, "
            "so no single table is exact; cap max_position at the trained context")


def _yarn(rope: RopeSpec, params, base_inv: np.ndarray) -> Tuple[np.ndarray, float]:
    """YaRN (arXiv 2309.00071): per-frequency blend of interpolated and extrapolated inverse frequencies,
    plus an attention factor that multiplies cos and sin (so q.k scales by its square)."""
    dim = rope.rotary_dim
    factor = float(params["factor"])
    original = float(params["original_max_position_embeddings"])
    beta_fast = params.get("beta_fast") or 32
    beta_slow = params.get("beta_slow") or 1
    truncate = params.get("truncate", True)

    def mscale(scale: float, m: float = 1.0) -> float:
        return 1.0 if scale <= 1 else 0.1 * m * math.log(scale) + 1.0

    attention_factor = params.get("attention_factor")
    if attention_factor is None:
        m, m_all = params.get("mscale"), params.get("mscale_all_dim")
        attention_factor = mscale(factor, m) / mscale(factor, m_all) if (m and m_all) else mscale(factor)

    # The dimension index at which a frequency completes `rotations` turns over the original context.
    def correction_dim(rotations: float) -> float:
        return dim * math.log(original / (rotations * 2 * math.pi)) / (2 * math.log(rope.theta))

    low, high = correction_dim(beta_fast), correction_dim(beta_slow)
    if truncate:
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, dim - 1)
    if low == high:
        high += 0.001
    ramp = np.clip((np.arange(dim // 2, dtype=np.float64) - low) / (high - low), 0.0, 1.0)
    extrapolate = 1.0 - ramp  # 1 for high frequencies (kept), 0 for low ones (interpolated)
    inv = (base_inv / factor) * (1.0 - extrapolate) + base_inv * extrapolate
    return inv, float(attention_factor)


def _llama3(params, base_inv: np.ndarray) -> np.ndarray:
    """Llama 3.1: long wavelengths divided by `factor`, short ones kept, a linear blend in between."""
    factor = float(params["factor"])
    low, high = float(params["low_freq_factor"]), float(params["high_freq_factor"])
    original = float(params["original_max_position_embeddings"])
    wavelen = 2 * math.pi / base_inv
    smooth = (original / wavelen - low) / (high - low)
    blended = (1 - smooth) * base_inv / factor + smooth * base_inv
    return np.where(wavelen > original / low, base_inv / factor,
                    np.where(wavelen < original / high, base_inv, blended))


def inv_freq_and_attention_factor(rope: RopeSpec) -> Tuple[np.ndarray, float]:
    """float64 inverse frequencies [rotary_dim/2] and the factor baked into cos/sin."""
    check_rope(rope)
    params = _scaling_dict(rope)
    kind = params["rope_type"]
    base_inv = 1.0 / rope.theta ** (np.arange(0, rope.rotary_dim, 2, dtype=np.float64) / rope.rotary_dim)
    if kind in ("default", "dynamic"):
        # dynamic == default for every sequence within the original context (check_rope enforces it).
        return base_inv, 1.0
    if kind == "linear":
        return base_inv / float(params["factor"]), 1.0
    if kind == "llama3":
        return _llama3(params, base_inv), 1.0
    return _yarn(rope, params, base_inv)


def rope_tables(rope: RopeSpec) -> Tuple[np.ndarray, np.ndarray]:
    """float32 cos, sin [max_position, rotary_dim/2], computed in float64: row p, column k holds
    cos/sin(p * inv_freq[k]) times the scheme's attention factor (YaRN's mscale; 1 otherwise)."""
    inv_freq, attention_factor = inv_freq_and_attention_factor(rope)
    angles = np.outer(np.arange(rope.max_position, dtype=np.float64), inv_freq)
    cos = (np.cos(angles) * attention_factor).astype(np.float32)
    sin = (np.sin(angles) * attention_factor).astype(np.float32)
    return cos, sin
