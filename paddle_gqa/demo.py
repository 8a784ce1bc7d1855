"""End-to-end demo (`python -m paddle_gqa.demo`): a small hybrid full/sliding-window model with random
weights served with continuous batching over a paged KV cache, checked against the reference backend.

The model is MiMo-V2-Flash shaped (from an embedded config.json, or `--config`): per-layer KV heads
(4 on full layers, 8 on sliding ones, 24 query heads: groups 6 and 3), head dims 192/128, attention
sinks and a window on sliding layers, partial RoPE, value scale. Each layer: RMSNorm -> Attention
(paddle_gqa.layers) -> residual -> RMSNorm -> SiLU-gated MLP -> residual; greedy decoding.

The server admits requests while the token budget and the cache allow, runs decodes and (chunked)
prefills of different requests in one mixed step, and releases requests as they finish. A sample of
finished requests is re-run afterwards in one prefill through the plain-Paddle reference backend;
their final hidden states must match what the batched, chunked, paged run produced.
"""
from __future__ import annotations

import argparse
import collections
import dataclasses
import math
import sys
import time
import warnings
from typing import Dict, List, Sequence

import numpy as np

# A MiMo-V2-Flash-style config.json, shrunk: 4 layers (full, sliding, sliding, full).
DEFAULT_CONFIG = {
    "model_type": "mimo_v2_flash",
    "hidden_size": 256,
    "intermediate_size": 512,
    "num_hidden_layers": 4,
    "num_attention_heads": 24,
    "num_key_value_heads": 4,
    "swa_num_key_value_heads": 8,
    "head_dim": 192,
    "v_head_dim": 128,
    "hybrid_layer_pattern": [0, 1, 1, 0],
    "sliding_window_size": 31,
    "add_swa_attention_sink_bias": True,
    "add_full_attention_sink_bias": False,
    "rope_theta": 5000000.0,
    "swa_rope_theta": 10000.0,
    "partial_rotary_factor": 0.334,
    "attention_value_scale": 0.707,
    "max_position_embeddings": 4096,
    "vocab_size": 2048,
    "layernorm_epsilon": 1e-5,
}

# Synthetic workload: prompt and output lengths (tokens) are drawn uniformly from these ranges.
PROMPT_LEN = (4, 160)
OUTPUT_LEN = (2, 24)
# Largest embedding table the demo allocates (token ids are synthetic, so a real vocab adds nothing).
MAX_DEMO_VOCAB = 4096
# Verification tolerance on final hidden states, relative to their largest magnitude, by dtype.
VERIFY_TOL = {"float32": 1e-4, "float16": 1e-2, "bfloat16": 2e-2}


# ---------------------------------------------------------------------------------------------
# Model


def random_weights(config, hidden: int, inter: int, vocab: int, seed: int) -> Dict[str, np.ndarray]:
    """HF-named float32 tensors ([out, in] for linears); ~1/sqrt(fan_in) keeps activations O(1)."""
    rng = np.random.default_rng(seed)

    def lin(out_f, in_f):
        return (rng.standard_normal((out_f, in_f)) / math.sqrt(in_f)).astype(np.float32)

    w = {"embed_tokens.weight": rng.standard_normal((vocab, hidden)).astype(np.float32),
         "lm_head.weight": lin(vocab, hidden)}
    for i, spec in enumerate(config.layers):
        p = f"layers.{i}."
        w[p + "self_attn.q_proj.weight"] = lin(spec.num_heads * spec.head_dim, hidden)
        w[p + "self_attn.k_proj.weight"] = lin(spec.num_kv_heads * spec.head_dim, hidden)
        w[p + "self_attn.v_proj.weight"] = lin(spec.num_kv_heads * spec.v_head_dim, hidden)
        w[p + "self_attn.o_proj.weight"] = lin(hidden, spec.num_heads * spec.v_head_dim)
        if config.attention_bias:
            for name, n in (("q", spec.num_heads * spec.head_dim), ("k", spec.num_kv_heads * spec.head_dim),
                            ("v", spec.num_kv_heads * spec.v_head_dim)):
                w[p + f"self_attn.{name}_proj.bias"] = (0.1 * rng.standard_normal(n)).astype(np.float32)
        if config.o_proj_bias:
            w[p + "self_attn.o_proj.bias"] = (0.1 * rng.standard_normal(hidden)).astype(np.float32)
        if spec.has_sinks:
            w[p + "self_attn.sinks"] = rng.standard_normal(spec.num_heads).astype(np.float32)
        if config.qk_norm:
            w[p + "self_attn.q_norm.weight"] = np.ones(spec.head_dim, np.float32)
            w[p + "self_attn.k_norm.weight"] = np.ones(spec.head_dim, np.float32)
        w[p + "mlp.gate_proj.weight"] = lin(inter, hidden)
        w[p + "mlp.up_proj.weight"] = lin(inter, hidden)
        w[p + "mlp.down_proj.weight"] = lin(hidden, inter)
    return w


def build_model(config, weights: Dict[str, np.ndarray], *, backend: str, dtype: str, block_size: int):
    """A DemoModel whose attention runs on `backend` in `dtype` (qkv, caches, attention output). The
    residual stream, norms and MLP run in `dtype` too, except bf16/fp16 on CPU, where Paddle has no
    elementwise-add kernels for them: there they run in float32 around the low-precision attention.
    (The Paddle classes are defined here, lazily: importing this module must not import paddle.)"""
    import paddle

    attn_dtype = dtype
    if paddle.get_device() == "cpu" and dtype in ("bfloat16", "float16"):
        dtype = "float32"

    from .layers import Attention, linear

    class RMSNorm(paddle.nn.Layer):
        def __init__(self, dim, eps):
            super().__init__()
            self.eps = eps
            self.weight = self.create_parameter([dim], dtype=dtype,
                                                default_initializer=paddle.nn.initializer.Constant(1.0))

        def forward(self, x):
            xf = x.astype("float32")
            xf = xf * paddle.rsqrt((xf * xf).mean(axis=-1, keepdim=True) + self.eps)
            return (self.weight.astype("float32") * xf).astype(x.dtype)

    def param(a: np.ndarray):
        """HF [out, in] -> Paddle [in, out] in the model dtype."""
        return paddle.to_tensor(np.ascontiguousarray(a.T)).astype(dtype)

    class DemoModel(paddle.nn.Layer):
        def __init__(self):
            super().__init__()
            hidden = config.hidden_size
            self.embed = paddle.to_tensor(weights["embed_tokens.weight"]).astype(dtype)
            self.lm_head = param(weights["lm_head.weight"])
            self.attn = paddle.nn.LayerList()
            self.norms = []
            self.mlps = []
            rope_tables = {}  # layers with equal RoPE share one pair of tables
            for i, spec in enumerate(config.layers):
                tables = None
                if spec.rope is not None:
                    if spec.rope not in rope_tables:
                        from .rope import rope_tables as make_tables

                        rope_tables[spec.rope] = tuple(paddle.to_tensor(t) for t in make_tables(spec.rope))
                    tables = rope_tables[spec.rope]
                layer = Attention(spec, hidden, layer_idx=i, backend=backend, attention_bias=config.attention_bias,
                                  o_proj_bias=config.o_proj_bias, qk_norm=config.qk_norm,
                                  qk_norm_offset=config.qk_norm_offset,
                                  rms_norm_eps=config.rms_norm_eps, dtype=attn_dtype, rotary_tables=tables,
                                  block_size=block_size)
                prefix = f"layers.{i}.self_attn."
                layer.load_weights({k[len(prefix):]: v for k, v in weights.items() if k.startswith(prefix)})
                self.attn.append(layer)
                self.norms.append((RMSNorm(hidden, config.rms_norm_eps), RMSNorm(hidden, config.rms_norm_eps)))
                p = f"layers.{i}.mlp."
                self.mlps.append(tuple(param(weights[p + n + "_proj.weight"]) for n in ("gate", "up", "down")))
            self.final_norm = RMSNorm(hidden, config.rms_norm_eps)

        def forward(self, token_ids, meta, cache):
            """token_ids int64 [T] -> final-normed hidden [T, hidden] in the model dtype."""
            x = paddle.gather(self.embed, token_ids)
            for attn, (n1, n2), (wg, wu, wd) in zip(self.attn, self.norms, self.mlps):
                x = x + attn(n1(x).astype(attn_dtype), meta, cache).astype(dtype)
                h = n2(x)
                x = x + linear(paddle.nn.functional.silu(linear(h, wg, None)) * linear(h, wu, None), wd, None)
            return self.final_norm(x)

        def logits(self, hidden):
            return linear(hidden, self.lm_head, None)

    return DemoModel()


# ---------------------------------------------------------------------------------------------
# Serving


@dataclasses.dataclass
class Request:
    rid: int
    prompt_len: int
    max_new: int
    tokens: List[int]                       # prompt, then generated tokens
    computed: int = 0                       # tokens fed through the model (= cache seq_len)
    sampled: bool = False                   # keep its hidden states for verification
    hidden: List[np.ndarray] = dataclasses.field(default_factory=list)

    @property
    def generated(self) -> int:
        return len(self.tokens) - self.prompt_len

    @property
    def done(self) -> bool:
        return self.generated >= self.max_new


def make_requests(n: int, vocab: int, rng, num_sampled: int) -> List[Request]:
    reqs = []
    sampled = set(rng.choice(n, size=min(num_sampled, n), replace=False).tolist())
    for rid in range(n):
        plen = int(rng.integers(PROMPT_LEN[0], PROMPT_LEN[1] + 1))
        reqs.append(Request(rid, plen, int(rng.integers(OUTPUT_LEN[0], OUTPUT_LEN[1] + 1)),
                            rng.integers(0, vocab, size=plen).tolist(), sampled=rid in sampled))
    return reqs


class Scheduler:
    """Continuous batching under a per-step token budget: every running request gets its next token
    (a decode) or its next prefill chunk, then waiting requests are admitted while budget, batch
    slots and cache blocks last. Finished requests are released right after their last step."""

    def __init__(self, cache, requests: Sequence[Request], *, token_budget: int, max_batch: int):
        self.cache = cache
        self.waiting = collections.deque(requests)
        self.running: List[Request] = []
        self.token_budget = token_budget
        self.max_batch = max_batch

    def next_step(self):
        from .kv_cache import CacheOutOfBlocks

        budget, sched = self.token_budget, []
        for r in self.running:
            n = min(len(r.tokens) - r.computed, budget)   # 1 for a decode, else the next prefill chunk
            if n > 0:
                self.cache.reserve(r.rid, n)
                sched.append((r, n))
                budget -= n
        while self.waiting and budget > 0 and len(self.running) < self.max_batch:
            r = self.waiting[0]
            n = min(r.prompt_len, budget)
            self.cache.add_request(r.rid)
            try:
                self.cache.reserve(r.rid, n)
            except CacheOutOfBlocks:
                self.cache.release(r.rid)       # admitted later, once finished requests free blocks
                break
            self.waiting.popleft()
            self.running.append(r)
            sched.append((r, n))
            budget -= n
        return sched

    def finish_step(self, sched) -> List[Request]:
        finished = []
        for r, n in sched:
            self.cache.commit(r.rid, n)
            r.computed += n
        for r in [r for r, _ in sched if r.done]:
            self.cache.release(r.rid)
            self.running.remove(r)
            finished.append(r)
        return finished

    @property
    def idle(self) -> bool:
        return not self.waiting and not self.running


class _TextBar:
    """Fallback progress bar on stderr when tqdm is not installed."""

    def __init__(self, total: int, desc: str):
        self.total, self.n, self.desc, self._last = total, 0, desc, -1

    def update(self, k: int):
        self.n += k
        pct = int(100 * self.n / max(self.total, 1))
        if pct != self._last:
            self._last = pct
            filled = pct * 30 // 100
            sys.stderr.write(f"\r{self.desc} [{'#' * filled}{'.' * (30 - filled)}] {pct:3d}% "
                             f"{self.n}/{self.total} tokens")
            sys.stderr.flush()

    def set_postfix_str(self, s: str):
        pass

    def close(self):
        sys.stderr.write("\n")


def _progress(total: int, desc: str, enabled: bool):
    if not enabled:
        return _NullBar()
    try:
        from tqdm import tqdm
    except ImportError:
        return _TextBar(total, desc)
    return tqdm(total=total, desc=desc, unit="tok", file=sys.stderr, leave=True)


class _NullBar:
    def update(self, k):
        pass

    def set_postfix_str(self, s):
        pass

    def close(self):
        pass


def serve(model, cache, requests: Sequence[Request], *, token_budget: int, max_batch: int, place,
          progress: bool = True) -> dict:
    """Runs every request to completion; returns counters."""
    import paddle

    from .backends import build_step_metadata

    sch = Scheduler(cache, requests, token_budget=token_budget, max_batch=max_batch)
    total = sum(r.prompt_len + r.max_new - 1 for r in requests)   # tokens fed through the model
    bar = _progress(total, "serving", progress)
    stats = collections.Counter()
    start = time.perf_counter()
    while not sch.idle:
        sched = sch.next_step()
        if not sched:
            raise RuntimeError(f"no request could be scheduled: {len(sch.waiting)} waiting, none fits in the "
                               f"{cache.num_blocks}-block cache")
        meta = build_step_metadata(cache, [(r.rid, n) for r, n in sched], place=place)
        ids = np.concatenate([r.tokens[r.computed:r.computed + n] for r, n in sched]).astype(np.int64)
        hidden = model(paddle.to_tensor(ids, place=place), meta, cache)
        # Rows whose token is the request's newest one predict its next token (decodes and last chunks).
        ends = np.cumsum([n for _, n in sched]) - 1
        predicting = [i for i, (r, n) in enumerate(sched) if r.computed + n == len(r.tokens)]
        if predicting:
            rows = paddle.to_tensor(ends[predicting], place=place)
            next_ids = model.logits(paddle.gather(hidden, rows)).astype("float32").argmax(axis=-1).numpy()
            for i, tok in zip(predicting, next_ids):
                sched[i][0].tokens.append(int(tok))
        row = 0
        for r, n in sched:
            if r.sampled:
                r.hidden.append(hidden[row:row + n].astype("float32").numpy())
            row += n
            stats["prefill_tokens" if r.computed < r.prompt_len else "decode_tokens"] += n
            stats["partial_prefill_chunks"] += int(r.computed + n < r.prompt_len)
        stats["steps"] += 1
        stats["mixed_steps"] += int(len({r.computed < r.prompt_len for r, _ in sched}) > 1)
        stats["max_batch_seen"] = max(stats["max_batch_seen"], len(sched))
        sch.finish_step(sched)
        bar.update(sum(n for _, n in sched))
        bar.set_postfix_str(f"batch={len(sched)} running={len(sch.running)} waiting={len(sch.waiting)}")
    if paddle.get_device() != "cpu":
        paddle.device.synchronize()
    stats["seconds"] = time.perf_counter() - start
    bar.close()
    return dict(stats)


def verify(ref_model, config, requests: Sequence[Request], *, dtype: str, block_size: int, place) -> List[str]:
    """Re-runs each sampled request's fed tokens in ONE prefill through `ref_model` (reference backend,
    fresh cache) and compares final hidden states with the served ones. Returns failure messages."""
    import paddle

    from .backends import build_step_metadata
    from .kv_cache import PagedKVCache

    failures = []
    for r in requests:
        if not r.sampled:
            continue
        served = np.concatenate(r.hidden).astype(np.float64)
        n = served.shape[0]
        blocks = -(-n // block_size) + 1
        cache = PagedKVCache(config, block_size=block_size, dtype=dtype, num_blocks=blocks, place=place)
        cache.add_request(r.rid)
        cache.reserve(r.rid, n)
        meta = build_step_metadata(cache, [(r.rid, n)], place=place)
        ref = ref_model(paddle.to_tensor(np.array(r.tokens[:n], np.int64), place=place), meta, cache)
        ref = ref.astype("float32").numpy().astype(np.float64)
        err = np.abs(served - ref).max() / max(np.abs(ref).max(), 1e-6)
        ok = err <= VERIFY_TOL[dtype]
        print(f"  request {r.rid:4d}: {n:4d} tokens ({r.prompt_len} prompt + {r.generated} generated), "
              f"max |served - reference| / max |reference| = {err:.2e} {'ok' if ok else 'FAIL'}")
        if not ok:
            failures.append(f"request {r.rid}: relative error {err:.3g} > {VERIFY_TOL[dtype]}")
    return failures


# ---------------------------------------------------------------------------------------------
# Command line


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m paddle_gqa.demo", description=__doc__.split("\n\n")[0])
    p.add_argument("--requests", type=int, default=48, help="synthetic requests to serve (default 48)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default=None,
                   help="model and cache dtype (default: float32 on CPU, bfloat16 on GPU)")
    p.add_argument("--device", choices=("auto", "cpu", "gpu"), default="auto",
                   help="auto: GPU when Paddle has CUDA, else CPU")
    p.add_argument("--config", default=None, help="a model's config.json (default: the embedded MiMo-like one)")
    p.add_argument("--backend", choices=("custom_op", "reference"), default="custom_op")
    p.add_argument("--block-size", type=int, default=16)
    p.add_argument("--token-budget", type=int, default=256, help="new tokens per step")
    p.add_argument("--max-batch", type=int, default=16, help="requests running at once")
    p.add_argument("--verify", type=int, default=3, help="requests re-checked with the reference backend")
    p.add_argument("--max-layers", type=int, default=None, help="keep only the first N layers of --config")
    p.add_argument("--hidden-size", type=int, default=None, help="override the hidden size (heads unchanged)")
    p.add_argument("--no-progress", action="store_true")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    warnings.filterwarnings("ignore", message="No ccache found")  # printed by Paddle's extension loader
    import paddle

    from .config import load_model_config
    from .kv_cache import PagedKVCache

    if args.requests <= 0:
        raise SystemExit(f"--requests={args.requests}: expected > 0")
    cuda = paddle.device.is_compiled_with_cuda() and paddle.device.cuda.device_count() > 0
    device = ("gpu" if cuda else "cpu") if args.device == "auto" else args.device
    if device == "gpu" and not cuda:
        raise SystemExit("--device gpu: this Paddle has no CUDA device; use --device cpu")
    paddle.set_device("gpu" if device == "gpu" else "cpu")
    place = paddle.CUDAPlace(0) if device == "gpu" else paddle.CPUPlace()
    dtype = args.dtype or ("bfloat16" if device == "gpu" else "float32")

    config = load_model_config(args.config if args.config else DEFAULT_CONFIG)
    if args.max_layers:
        config = dataclasses.replace(config, layers=config.layers[:args.max_layers],
                                     num_layers=min(config.num_layers, args.max_layers))
    if args.hidden_size:
        config = dataclasses.replace(config, hidden_size=args.hidden_size)
    hidden = config.hidden_size
    vocab = min(config.vocab_size, MAX_DEMO_VOCAB)
    inter = min(config.intermediate_size, 4 * hidden)
    weights = random_weights(config, hidden, inter, vocab, args.seed)
    model = build_model(config, weights, backend=args.backend, dtype=dtype, block_size=args.block_size)

    rng = np.random.default_rng(args.seed)
    requests = make_requests(args.requests, vocab, rng, args.verify)
    longest = PROMPT_LEN[1] + OUTPUT_LEN[1]
    num_blocks = args.max_batch * -(-longest // args.block_size) + 1
    cache = PagedKVCache(config, block_size=args.block_size, dtype=dtype, num_blocks=num_blocks, place=place)

    kinds = ", ".join(f"{'sliding ' + str(s.sliding_window) if s.sliding_window else 'full'}: Hq={s.num_heads} "
                      f"Hkv={s.num_kv_heads} D={s.head_dim}/{s.v_head_dim}{' sinks' if s.has_sinks else ''}"
                      for s in config.layers)
    print(f"paddle_gqa demo: {config.model_type}, {config.num_layers} layers [{kinds}]")
    print(f"device={device} dtype={dtype} backend={args.backend} block_size={args.block_size} "
          f"cache: {cache.num_groups} groups x {num_blocks} blocks")
    stats = serve(model, cache, requests, token_budget=args.token_budget, max_batch=args.max_batch, place=place,
                  progress=not args.no_progress)
    fed = stats["prefill_tokens"] + stats["decode_tokens"]
    print(f"served {len(requests)} requests in {stats['steps']} steps ({stats['mixed_steps']} mixed "
          f"prefill+decode, {stats.get('partial_prefill_chunks', 0)} partial prefill chunks, up to "
          f"{stats['max_batch_seen']} requests per step): {stats['prefill_tokens']} prefill "
          f"+ {stats['decode_tokens']} decode tokens in {stats['seconds']:.2f} s = {fed / stats['seconds']:.0f} "
          f"tokens/s")
    per_layer = "+".join(str(s.num_kv_heads * (s.head_dim + s.v_head_dim) * cache.dtype_bytes) for s in config.layers)
    print(f"cache bytes per token: {cache.bytes_per_token} (= {per_layer}: Hkv*(D+Dv)*{cache.dtype_bytes} per layer)")
    print(f"blocks saved by SWA: {cache.blocks_saved_by_swa} (sliding-window blocks released before their "
          f"request finished)")
    if args.verify:
        print(f"verifying {sum(r.sampled for r in requests)} requests against the reference backend:")
        ref = build_model(config, weights, backend="reference", dtype=dtype, block_size=args.block_size)
        failures = verify(ref, config, requests, dtype=dtype, block_size=args.block_size, place=place)
        if failures:
            print("VERIFICATION FAILED: " + "; ".join(failures))
            return 1
        print("verification passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
