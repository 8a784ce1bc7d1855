"""The Attention layer and its tensor-parallel linears: fused QKV (and QKV+gate) projections whose
loaders take fused or separate HF q/k/v (and gate) weights, and the row-parallel output projection.

Tensor parallelism over `tp` ranks (rank r):
- query heads are split evenly: rank r holds heads [r*Hq/tp, (r+1)*Hq/tp) (tp must divide Hq);
- KV heads are split evenly when tp <= Hkv (tp must divide Hkv); when tp > Hkv (Hkv must divide
  tp) each rank holds ONE kv head, replicated tp/Hkv times: rank r holds kv head r // (tp/Hkv),
  which is the kv head of all of rank r's query heads;
- the output projection is row-parallel: each rank returns its partial product (bias on rank 0
  only); the caller all-reduces (sums) the ranks' outputs.

Checkpoint weights are HF/torch layout [out_features, in_features]; Paddle parameters are
[in_features, out_features]. Per-rank fused layout of the QKV output (width of one token):
    [ q: nq_r*D | k: nkv_r*D | v: nkv_r*Dv ]            (+ [ gate: nq_r*Dv ] for QKVGate)
"""
from __future__ import annotations

import dataclasses
from typing import Dict, Mapping, Optional, Tuple

import numpy as np
import paddle

from .backends import get_backend
from .backends.metadata import StepMetadata
from .spec import LayerSpec


@dataclasses.dataclass(frozen=True)
class TPLayout:
    """How a layer's heads are split over tensor-parallel ranks."""

    num_heads: int
    num_kv_heads: int
    tp_rank: int
    tp_size: int

    def __post_init__(self):
        hq, hkv, r, tp = self.num_heads, self.num_kv_heads, self.tp_rank, self.tp_size
        if tp <= 0:
            raise ValueError(f"tp_size={tp}: expected >= 1")
        if not 0 <= r < tp:
            raise ValueError(f"tp_rank={r}: expected 0 <= tp_rank < tp_size={tp}")
        if hq % tp:
            raise ValueError(f"tp_size={tp} does not divide num_heads={hq}: pick a tp that divides the query heads")
        if tp > hkv and tp % hkv:
            raise ValueError(f"tp_size={tp} > num_kv_heads={hkv} but is not a multiple of it: KV heads can only be "
                             f"replicated evenly (use a tp that is a multiple or a divisor of {hkv})")
        if tp <= hkv and hkv % tp:
            raise ValueError(f"tp_size={tp} does not divide num_kv_heads={hkv}: use a tp that is a multiple or a "
                             f"divisor of {hkv}")

    @property
    def q_heads(self) -> int:            # nq_r
        return self.num_heads // self.tp_size

    @property
    def kv_heads(self) -> int:           # nkv_r
        return max(1, self.num_kv_heads // self.tp_size)

    @property
    def kv_replicas(self) -> int:        # ranks holding each kv head
        return max(1, self.tp_size // self.num_kv_heads)

    @property
    def kv_shard(self) -> int:
        """Index of this rank's kv slice in units of kv_heads (a head index when replicated)."""
        return self.tp_rank // self.kv_replicas


def shard_layer_spec(spec: LayerSpec, tp_size: int, tp_rank: int = 0) -> LayerSpec:
    """The spec one rank's kernels and cache see (its own query and kv heads)."""
    lay = TPLayout(spec.num_heads, spec.num_kv_heads, tp_rank, tp_size)
    return dataclasses.replace(spec, num_heads=lay.q_heads, num_kv_heads=lay.kv_heads)


def _to_numpy(w) -> np.ndarray:
    """numpy view of a checkpoint tensor (numpy, paddle.Tensor, or anything with __array__)."""
    if isinstance(w, paddle.Tensor):
        return w.astype("float32").numpy() if w.dtype in (paddle.bfloat16, paddle.float16) else w.numpy()
    return np.asarray(w)


def linear(x: paddle.Tensor, weight: paddle.Tensor, bias: Optional[paddle.Tensor]) -> paddle.Tensor:
    """x @ weight + bias in weight's dtype (x is cast to it). Paddle's CPU matmul has no bf16/fp16
    kernel, so there it runs in float32 with one rounding of the result (what a low-precision GEMM
    with fp32 accumulation gives)."""
    if x.dtype != weight.dtype:
        x = x.astype(weight.dtype)
    if x.dtype in (paddle.bfloat16, paddle.float16) and x.place.is_cpu_place():
        y = paddle.matmul(x.astype("float32"), weight.astype("float32"))
        if bias is not None:
            y = y + bias.astype("float32")
        return y.astype(weight.dtype)
    y = paddle.matmul(x, weight)
    return y + bias if bias is not None else y


class _ShardedLinear(paddle.nn.Layer):
    """Holds weight [in, out_local] (+ bias [out_local]) and copies checkpoint slices into it."""

    def __init__(self, in_features: int, out_features: int, bias: bool, dtype: str):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        init = paddle.nn.initializer.Constant(0.0)
        self.weight = self.create_parameter([in_features, out_features], dtype=dtype, default_initializer=init)
        self.bias = (self.create_parameter([out_features], dtype=dtype, is_bias=True, default_initializer=init)
                     if bias else None)

    def _copy(self, param: paddle.Tensor, piece: np.ndarray, lo: int, name: str) -> None:
        """Writes HF-layout `piece` ([n, in] for the weight, [n] for the bias) at output offset lo."""
        n = piece.shape[0]
        if param.ndim == 2:
            if piece.ndim != 2 or piece.shape[1] != self.in_features:
                raise ValueError(f"{name} shape={list(piece.shape)}: expected [{n}, in_features={self.in_features}]")
            value = piece.T
        else:
            if piece.ndim != 1:
                raise ValueError(f"{name} shape={list(piece.shape)}: expected a 1-D bias")
            value = piece
        t = paddle.to_tensor(np.ascontiguousarray(value, dtype=np.float32), place=param.place).astype(param.dtype)
        with paddle.no_grad():
            if param.ndim == 2:
                param[:, lo:lo + n] = t
            else:
                param[lo:lo + n] = t

    def _param(self, is_bias: bool, name: str) -> paddle.Tensor:
        if is_bias and self.bias is None:
            raise ValueError(f"{name}: this layer was built without a bias (bias=False)")
        return self.bias if is_bias else self.weight

    def forward(self, x):
        return linear(x, self.weight, self.bias)


class QKVParallelLinear(_ShardedLinear):
    """Fused q/k/v projection of one tensor-parallel rank; v_head_dim may differ from head_dim."""

    def __init__(self, hidden_size: int, num_heads: int, num_kv_heads: int, head_dim: int,
                 v_head_dim: Optional[int] = None, *, bias: bool = False, tp_rank: int = 0, tp_size: int = 1,
                 dtype: str = "float32"):
        self.layout = TPLayout(num_heads, num_kv_heads, tp_rank, tp_size)
        self.head_dim = head_dim
        self.v_head_dim = head_dim if v_head_dim is None else v_head_dim
        super().__init__(hidden_size, sum(self._local_sizes().values()), bias, dtype)

    # -- layout ------------------------------------------------------------------------------
    def _global_sizes(self) -> Dict[str, int]:
        lay, d, dv = self.layout, self.head_dim, self.v_head_dim
        return {"q": lay.num_heads * d, "k": lay.num_kv_heads * d, "v": lay.num_kv_heads * dv}

    def _local_sizes(self) -> Dict[str, int]:
        lay, d, dv = self.layout, self.head_dim, self.v_head_dim
        return {"q": lay.q_heads * d, "k": lay.kv_heads * d, "v": lay.kv_heads * dv}

    def _shard_index(self, shard_id: str) -> int:
        return self.layout.kv_shard if shard_id in ("k", "v") else self.layout.tp_rank

    @property
    def fused_ids(self) -> Tuple[str, ...]:
        """Order of the segments of the fused checkpoint tensor (and of this rank's output)."""
        return ("q", "k", "v")

    def split_output(self, y: paddle.Tensor) -> Dict[str, paddle.Tensor]:
        """This rank's output [rows, out_local] -> {segment: [rows, width]}."""
        out, lo = {}, 0
        for sid, n in self._local_sizes().items():
            out[sid] = y[:, lo:lo + n]
            lo += n
        return out

    # -- loading -----------------------------------------------------------------------------
    def weight_loader(self, param: paddle.Tensor, loaded_weight, shard_id: Optional[str] = None) -> None:
        """Copies this rank's slice of a full (unsharded) HF checkpoint tensor into `param` (this layer's
        weight or bias). shard_id: one of `fused_ids` for a separate projection, None for the fused one
        (segments in `fused_ids` order)."""
        is_bias = param is self.bias
        if param is not self.weight and not is_bias:
            raise ValueError("param: expected this layer's weight or bias")
        kind = "bias" if is_bias else "weight"
        w = _to_numpy(loaded_weight)
        label = f"{'fused' if shard_id is None else shard_id} {kind}"
        if is_bias and w.ndim != 1:
            raise ValueError(f"{label} shape={list(w.shape)}: expected a 1-D bias")
        if not is_bias and (w.ndim != 2 or w.shape[1] != self.in_features):
            raise ValueError(f"{label} shape={list(w.shape)}: expected [out_features, in_features="
                             f"{self.in_features}] (HF [out, in] layout)")
        sizes = self._global_sizes()
        if shard_id is None:
            total = sum(sizes.values())
            if w.shape[0] != total:
                raise ValueError(f"fused {kind} shape={list(w.shape)}: expected {total} output rows "
                                 f"({' + '.join(f'{s}={sizes[s]}' for s in self.fused_ids)})")
            lo = 0
            for sid in self.fused_ids:
                self.weight_loader(param, w[lo:lo + sizes[sid]], sid)
                lo += sizes[sid]
            return
        if shard_id not in sizes:
            raise ValueError(f"shard_id={shard_id!r}: expected one of {list(self.fused_ids)} or None (fused)")
        if w.shape[0] != sizes[shard_id]:
            raise ValueError(f"{shard_id} {kind} shape={list(w.shape)}: expected {sizes[shard_id]} output rows")
        local = self._local_sizes()
        n = local[shard_id]
        src = self._shard_index(shard_id) * n
        dst = sum(local[s] for s in self.fused_ids[:self.fused_ids.index(shard_id)])
        self._copy(param, w[src:src + n], dst, f"{shard_id} {kind}")

    _NAMES = {"q_proj": "q", "k_proj": "k", "v_proj": "v", "qkv_proj": None}

    def load_weights(self, weights: Mapping[str, object]) -> None:
        """weights: HF names ("q_proj.weight", "k_proj.bias", "qkv_proj.weight", ...) -> full tensors."""
        for name, w in weights.items():
            module, _, kind = name.rpartition(".")
            if module not in self._NAMES or kind not in ("weight", "bias"):
                raise ValueError(f"weight name={name!r}: expected <{'|'.join(self._NAMES)}>.<weight|bias>")
            self.weight_loader(self._param(kind == "bias", name), w, self._NAMES[module])


class QKVGateParallelLinear(QKVParallelLinear):
    """q/k/v plus an output gate of width Hq*Dv (gated attention: out * sigmoid(gate) before o_proj).

    Gate checkpoints: a separate "gate" tensor [Hq*Dv, in], the fused [q|k|v|gate] tensor, or
    "q_gate" interleaved per head ([Hq, D + Dv, in]: each head's query rows, then its gate rows)."""

    def _global_sizes(self) -> Dict[str, int]:
        sizes = super()._global_sizes()
        sizes["gate"] = self.layout.num_heads * self.v_head_dim
        return sizes

    def _local_sizes(self) -> Dict[str, int]:
        sizes = super()._local_sizes()
        sizes["gate"] = self.layout.q_heads * self.v_head_dim
        return sizes

    @property
    def fused_ids(self) -> Tuple[str, ...]:
        return ("q", "k", "v", "gate")

    def weight_loader(self, param, loaded_weight, shard_id: Optional[str] = None) -> None:
        if shard_id == "q_gate":
            w = _to_numpy(loaded_weight)
            hq, d, dv = self.layout.num_heads, self.head_dim, self.v_head_dim
            if w.shape[0] != hq * (d + dv):
                raise ValueError(f"q_gate shape={list(w.shape)}: expected {hq}*({d}+{dv}) = {hq * (d + dv)} rows "
                                 f"(per head: query then gate)")
            per_head = w.reshape((hq, d + dv) + w.shape[1:])
            super().weight_loader(param, per_head[:, :d].reshape((hq * d,) + w.shape[1:]), "q")
            super().weight_loader(param, per_head[:, d:].reshape((hq * dv,) + w.shape[1:]), "gate")
            return
        super().weight_loader(param, loaded_weight, shard_id)

    _NAMES = dict(QKVParallelLinear._NAMES, g_proj="gate", gate_proj="gate", q_gate_proj="q_gate",
                  qkvg_proj=None)


class RowParallelLinear(_ShardedLinear):
    """y_r = x_r @ W[rows of rank r] (+ bias on rank 0): the ranks' outputs sum to the full product."""

    def __init__(self, in_features: int, out_features: int, *, bias: bool = False, tp_rank: int = 0,
                 tp_size: int = 1, dtype: str = "float32"):
        if tp_size <= 0 or not 0 <= tp_rank < tp_size:
            raise ValueError(f"tp_rank={tp_rank}, tp_size={tp_size}: expected 0 <= tp_rank < tp_size")
        if in_features % tp_size:
            raise ValueError(f"tp_size={tp_size} does not divide in_features={in_features}")
        self.tp_rank, self.tp_size, self.global_in = tp_rank, tp_size, in_features
        super().__init__(in_features // tp_size, out_features, bias and tp_rank == 0, dtype)
        self.has_bias = bias

    def weight_loader(self, param, loaded_weight) -> None:
        w = _to_numpy(loaded_weight)
        if param is self.weight:
            if w.shape != (self.out_features, self.global_in):
                raise ValueError(f"o_proj weight shape={list(w.shape)}: expected "
                                 f"[{self.out_features}, {self.global_in}]")
            lo = self.tp_rank * self.in_features
            # [out, in_r] -> transpose into [in_r, out]: copy as "output rows" of a transposed view.
            t = paddle.to_tensor(np.ascontiguousarray(w[:, lo:lo + self.in_features].T, dtype=np.float32),
                                 place=param.place).astype(param.dtype)
            with paddle.no_grad():
                param[:, :] = t
        elif self.has_bias and (param is self.bias or param is None):
            if w.shape != (self.out_features,):
                raise ValueError(f"o_proj bias shape={list(w.shape)}: expected [{self.out_features}]")
            if self.bias is not None:  # only rank 0 adds the bias, so the ranks' sum has it once
                self._copy(self.bias, w, 0, "o_proj bias")
        else:
            raise ValueError("param: expected this layer's weight or bias (and the layer built with bias=True)")


class HeadRMSNorm(paddle.nn.Layer):
    """RMSNorm over the last dim of [rows, heads, dim], one weight [dim] shared by all heads (q/k norm).

    offset 0: y = w * round(x / rms(x)) (Qwen3: normalised in fp32, rounded to x's dtype, then scaled);
    offset 1: y = round((1 + w) * x / rms(x)) (Gemma3 / Qwen3-Next store the scale minus one)."""

    def __init__(self, dim: int, eps: float, dtype: str, offset: float = 0.0):
        super().__init__()
        self.eps = eps
        self.offset = offset
        init = paddle.nn.initializer.Constant(1.0 - offset)
        self.weight = self.create_parameter([dim], dtype=dtype, default_initializer=init)

    def forward(self, x):
        xf = x.astype("float32")
        xf = xf * paddle.rsqrt((xf * xf).mean(axis=-1, keepdim=True) + self.eps)
        w = self.weight.astype("float32")
        if self.offset:
            return ((w + self.offset) * xf).astype(x.dtype)
        return (w * xf.astype(x.dtype).astype("float32")).astype(x.dtype)


class Attention(paddle.nn.Layer):
    """One decoder layer's attention on one tensor-parallel rank.

    forward(hidden [rows, hidden_size], meta, cache) -> this rank's partial o_proj output
    [rows, hidden_size] (sum over ranks = the layer's output). `cache` is a PagedKVCache built from
    this rank's `local_spec`s; the layer reads its caches by `layer_idx`.

    qk_norm: per-head RMSNorm of q and k before RoPE (qk_norm_offset 1.0 for Gemma3 / Qwen3-Next,
    whose checkpoints store the scale minus one). gated: output gate of width Hq*Dv, applied as
    out * sigmoid(gate) before o_proj (Qwen3-Next: pass its doubled q_proj as "q_gate_proj").
    dtype: of the projections, qkv, caches and output. rotary_tables: (cos, sin) to share between
    layers with equal RoPE (default: computed from spec.rope). block_size: checked against the
    backend's kernels when given.
    """

    def __init__(self, spec: LayerSpec, hidden_size: int, *, layer_idx: int, tp_rank: int = 0, tp_size: int = 1,
                 backend: str = "custom_op", attention_bias: bool = False, o_proj_bias: bool = False,
                 qk_norm: bool = False, rms_norm_eps: float = 1e-6, qk_norm_offset: float = 0.0,
                 gated: bool = False, dtype: str = "float32",
                 rotary_tables: Optional[Tuple[paddle.Tensor, paddle.Tensor]] = None, block_size: Optional[int] = None):
        super().__init__()
        self.spec = spec
        self.layer_idx = layer_idx
        self.layout = TPLayout(spec.num_heads, spec.num_kv_heads, tp_rank, tp_size)
        self.local_spec = shard_layer_spec(spec, tp_size, tp_rank)
        self.gated = gated
        qkv_cls = QKVGateParallelLinear if gated else QKVParallelLinear
        self.qkv_proj = qkv_cls(hidden_size, spec.num_heads, spec.num_kv_heads, spec.head_dim, spec.v_head_dim,
                               bias=attention_bias, tp_rank=tp_rank, tp_size=tp_size, dtype=dtype)
        self.o_proj = RowParallelLinear(spec.num_heads * spec.v_head_dim, hidden_size, bias=o_proj_bias,
                                        tp_rank=tp_rank, tp_size=tp_size, dtype=dtype)
        self.q_norm = HeadRMSNorm(spec.head_dim, rms_norm_eps, dtype, qk_norm_offset) if qk_norm else None
        self.k_norm = HeadRMSNorm(spec.head_dim, rms_norm_eps, dtype, qk_norm_offset) if qk_norm else None
        # Sinks stay float32 whatever the model dtype (the ops take them as fp32 logits).
        self.sinks = (self.create_parameter([self.layout.q_heads], dtype="float32",
                                            default_initializer=paddle.nn.initializer.Constant(0.0))
                      if spec.has_sinks else None)
        device = "cpu" if paddle.get_device() == "cpu" else "gpu"
        self.backend = get_backend(self.local_spec, backend, dtype=dtype, block_size=block_size, device=device)
        cos = sin = None
        if spec.rope is not None:
            if rotary_tables is None:
                from .rope import rope_tables

                cos_np, sin_np = rope_tables(spec.rope)
                rotary_tables = (paddle.to_tensor(cos_np), paddle.to_tensor(sin_np))
            cos, sin = rotary_tables
        self.runner = self.backend.make_runner(cos, sin)

    def load_weights(self, weights: Mapping[str, object]) -> None:
        """Full (unsharded) HF tensors by name: q_proj/k_proj/v_proj/qkv_proj (+ gate: g_proj, q_gate_proj,
        qkvg_proj) .weight/.bias, o_proj.weight/.bias, sinks, q_norm.weight, k_norm.weight. Each rank
        keeps its own slice."""
        qkv = {}
        for name, w in weights.items():
            if name == "sinks":
                if self.sinks is None:
                    raise ValueError("sinks: this layer's spec has has_sinks=False")
                s = _to_numpy(w).astype(np.float32)
                if s.shape != (self.spec.num_heads,):
                    raise ValueError(f"sinks shape={list(s.shape)}: expected [{self.spec.num_heads}]")
                lo = self.layout.tp_rank * self.layout.q_heads
                self.sinks.set_value(paddle.to_tensor(s[lo:lo + self.layout.q_heads]))
            elif name.startswith("o_proj."):
                kind = name.split(".", 1)[1]
                if kind not in ("weight", "bias"):
                    raise ValueError(f"weight name={name!r}: expected o_proj.weight or o_proj.bias")
                self.o_proj.weight_loader(self.o_proj.weight if kind == "weight" else self.o_proj.bias, w)
            elif name in ("q_norm.weight", "k_norm.weight"):
                norm = self.q_norm if name[0] == "q" else self.k_norm
                if norm is None:
                    raise ValueError(f"{name}: this layer was built with qk_norm=False")
                a = _to_numpy(w)
                if a.shape != (self.spec.head_dim,):
                    raise ValueError(f"{name} shape={list(a.shape)}: expected [{self.spec.head_dim}]")
                norm.weight.set_value(paddle.to_tensor(a.astype(np.float32)).astype(norm.weight.dtype))
            else:
                qkv[name] = w
        self.qkv_proj.load_weights(qkv)

    def forward(self, hidden: paddle.Tensor, meta: StepMetadata, cache) -> paddle.Tensor:
        """hidden [meta.num_rows, hidden_size] (cast to the layer dtype) -> [rows, hidden_size] partial
        output in the layer dtype. Writes this step's K/V into the layer's cache tensors in place."""
        s = self.local_spec
        rows = hidden.shape[0]
        y = self.qkv_proj(hidden)
        parts = self.qkv_proj.split_output(y)
        q, k, v = parts["q"], parts["k"], parts["v"]
        if self.q_norm is not None:
            q = self.q_norm(q.reshape([rows, s.num_heads, s.head_dim])).reshape([rows, -1])
            k = self.k_norm(k.reshape([rows, s.num_kv_heads, s.head_dim])).reshape([rows, -1])
        if s.value_scale != 1.0:
            v = v * s.value_scale
        qkv = paddle.concat([q, k, v], axis=-1) if (self.gated or self.q_norm is not None
                                                     or s.value_scale != 1.0) else y
        out = self.runner.forward(qkv, cache.key_cache(self.layer_idx), cache.value_cache(self.layer_idx),
                                  meta, cache.group_of(self.layer_idx), self.sinks)
        if self.gated:
            # float32: Paddle's CPU has no bf16 sigmoid / add kernels, and one rounding is more exact anyway.
            gate = paddle.nn.functional.sigmoid(parts["gate"].astype("float32"))
            out = (out.astype("float32") * gate).astype(out.dtype)
        return self.o_proj(out)
