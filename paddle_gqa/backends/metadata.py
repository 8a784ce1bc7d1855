"""Per-step attention metadata: lengths and block tables built once per step, shared by every layer.

A step is a schedule `[(req_id, num_new_tokens), ...]` (one batch slot per entry, in order; 0 new
tokens = an idle slot). The caller reserves cache blocks for the new tokens before building and
commits them after the forward pass:

    cache.reserve(req, n) for each entry  ->  meta = build_step_metadata(cache, schedule)
    -> model forward (every layer reads `meta`)  ->  cache.commit(req, n) for each entry

Everything here is computed on the host from the scheduler's own numbers and uploaded once, so no
layer ever reads device data back. Host copies stay in the metadata for backends that need them
(the reference backend plans its gathers from them). Backends keep their per-step derived data in
`memo`, built by the first layer that needs it: the custom-op backend keeps there a
`paddle_gqa.ops.plan` per cache group and mask (its device check, on GPU one read-back each), which
every layer's op call of that group then takes.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Dict, Hashable, Optional, Sequence, Tuple

import numpy as np


@dataclasses.dataclass(frozen=True)
class StepMetadata:
    """One step's inputs to every attention layer. Shapes: B slots, T new tokens, G cache groups."""

    req_ids: Tuple[Hashable, ...]          # [B] request of each slot
    num_rows: int                          # rows of the step's qkv (>= T; extra rows are padding)
    block_size: int
    cu_seqlens_q_host: np.ndarray          # int32 [B+1]
    cache_seqlens_host: np.ndarray         # int32 [B], tokens cached before the step
    block_tables_host: Tuple[np.ndarray, ...]  # per group: int32 [B, width_g], -1 = no block
    cu_seqlens_q: Any                      # paddle int32 [B+1] on `place`
    cache_seqlens: Any                     # paddle int32 [B] on `place`
    block_tables: Tuple[Any, ...]          # per group: paddle int32 [B, width_g] on `place`
    place: Any
    # Backend-derived per-step data (memo), filled on first use by the first layer that needs it.
    _memo: Dict[Hashable, Any] = dataclasses.field(default_factory=dict, repr=False, compare=False)

    @property
    def batch_size(self) -> int:
        return len(self.req_ids)

    @property
    def num_tokens(self) -> int:
        return int(self.cu_seqlens_q_host[-1])

    @classmethod
    def from_host(cls, req_ids: Sequence[Hashable], cu_seqlens_q, cache_seqlens, block_tables, *,
                  block_size: int, place, num_rows: Optional[int] = None) -> "StepMetadata":
        """From host arrays: cu_seqlens_q [B+1], cache_seqlens [B], block_tables per group [B, width]."""
        import paddle

        cu = np.ascontiguousarray(cu_seqlens_q, dtype=np.int32)
        cached = np.ascontiguousarray(cache_seqlens, dtype=np.int32)
        tables = tuple(np.ascontiguousarray(t, dtype=np.int32) for t in block_tables)
        b = len(req_ids)
        if cu.shape != (b + 1,) or cu[0] != 0 or (np.diff(cu) < 0).any():
            raise ValueError(f"cu_seqlens_q={cu.tolist()}: expected {b + 1} non-decreasing prefix sums from 0")
        if cached.shape != (b,) or (cached < 0).any():
            raise ValueError(f"cache_seqlens={cached.tolist()}: expected {b} values >= 0")
        for g, t in enumerate(tables):
            if t.ndim != 2 or t.shape[0] != b:
                raise ValueError(f"block_tables[{g}] shape={list(t.shape)}: expected [{b}, max_blocks_per_seq]")
        total = int(cu[-1])
        rows = total if num_rows is None else int(num_rows)
        if rows < total:
            raise ValueError(f"num_rows={num_rows}: expected >= the step's {total} new tokens")

        def upload(a: np.ndarray):
            return paddle.to_tensor(a, dtype="int32", place=place)

        return cls(req_ids=tuple(req_ids), num_rows=rows, block_size=int(block_size),
                   cu_seqlens_q_host=cu, cache_seqlens_host=cached, block_tables_host=tables,
                   cu_seqlens_q=upload(cu), cache_seqlens=upload(cached),
                   block_tables=tuple(upload(t) for t in tables), place=place)

    def memo(self, key: Hashable, build: Callable[[], Any]) -> Any:
        """`build()` once per step per key (e.g. a backend's plan for one cache group and mask); the
        key names the backend first so backends never share an entry."""
        if key not in self._memo:
            self._memo[key] = build()
        return self._memo[key]


def build_step_metadata(cache, schedule: Sequence[Tuple[Hashable, int]], *, place=None,
                        num_rows: Optional[int] = None) -> StepMetadata:
    """Builds the step's metadata from a PagedKVCache whose blocks for the new tokens are reserved.

    schedule: [(req_id, num_new_tokens)] in slot order; each request at most once. place: where the
    tensors go (default: that of the cache's tensors). num_rows: rows of the step's qkv when padded
    for a fixed-size graph (default T).
    """
    req_ids = tuple(r for r, _ in schedule)
    if len(set(req_ids)) != len(req_ids):
        raise ValueError(f"schedule req_ids={list(req_ids)}: expected each request at most once per step")
    num_new = np.array([n for _, n in schedule], dtype=np.int64)
    if (num_new < 0).any():
        raise ValueError(f"schedule num_new_tokens={num_new.tolist()}: expected every entry >= 0")
    cu = np.zeros(len(schedule) + 1, dtype=np.int64)
    np.cumsum(num_new, out=cu[1:])
    if cu[-1] > np.iinfo(np.int32).max:
        raise ValueError(f"schedule has {cu[-1]} new tokens: expected < 2**31")
    cached = np.array([cache.seq_len(r) for r in req_ids], dtype=np.int32)
    tables = tuple(np.ascontiguousarray(cache.block_tables(g, list(req_ids)), dtype=np.int32)
                   for g in range(cache.num_groups))
    block_size = int(cache.block_size)
    for g, t in enumerate(tables):
        need = -(-(cached.astype(np.int64) + num_new) // block_size)
        if len(req_ids) and (t.shape[0] != len(req_ids) or t.shape[1] < need.max(initial=0)):
            raise ValueError(
                f"block tables of group {g} shape={list(t.shape)}: expected [{len(req_ids)}, >= {need.max()}] "
                f"blocks; reserve the step's tokens (cache.reserve) before building its metadata")
    if place is None:
        place = cache.key_cache(cache.group_layers(0)[0]).place
    return StepMetadata.from_host(req_ids, cu, cached, tables, block_size=block_size, place=place,
                                  num_rows=num_rows)
