"""Paged KV cache with per-layer shapes: a block allocator per spec group, block tables, SWA release.

Layers whose KVCacheSpec (kv heads, head dim, value head dim, window) is equal form one CacheGroup: one
free list and one block table per request, shared by the group's layers; each layer still has its own
K [num_blocks, Hkv, block_size, D] and V [num_blocks, Hkv, block_size, Dv] tensors. Every group has the
same number of blocks, and a request's tables have the same logical length in every group.
"""
from __future__ import annotations

from typing import Dict, Hashable, List, Optional, Sequence, Tuple

import numpy as np

from .spec import KVCacheSpec, LayerSpec

DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2}


class CacheOutOfBlocks(RuntimeError):
    """A reserve() needed more free blocks than a group has; nothing was allocated."""


class CacheGroup:
    """Block allocator and per-request block tables of the layers sharing one KVCacheSpec.

    Invariant: every block id in [0, num_blocks) is either on the free list or in exactly one table
    entry of one request; released table entries are -1."""

    def __init__(self, spec: KVCacheSpec, layers: Tuple[int, ...], num_blocks: int, block_size: int):
        self.spec = spec
        self.layers = layers
        self.num_blocks = num_blocks
        self.block_size = block_size
        # Popped from the end, so blocks are handed out in increasing id order on a fresh cache.
        self._free: List[int] = list(range(num_blocks - 1, -1, -1))
        self._tables: Dict[Hashable, List[int]] = {}

    @property
    def num_free(self) -> int:
        return len(self._free)

    def table(self, req_id) -> List[int]:
        return self._tables[req_id]

    def add(self, req_id) -> None:
        self._tables[req_id] = []

    def grow(self, req_id, num_logical_blocks: int) -> None:
        """Append fresh blocks until the table has `num_logical_blocks` entries; the caller has checked
        num_free."""
        table = self._tables[req_id]
        while len(table) < num_logical_blocks:
            table.append(self._free.pop())

    def release(self, req_id) -> None:
        for block in self._tables.pop(req_id):
            if block >= 0:
                self._free.append(block)

    def release_dead_blocks(self, req_id, num_cached: int) -> int:
        """Free the blocks of `req_id` that no future query can see; return how many were freed.

        With L = num_cached tokens in the cache, every future query sits at p >= L and sees keys
        p - W < j <= p, so keys j <= L - W are dead. A block is freed once its last key is dead:

            keys      0 1 2 3 | 4 5 6 7 | 8 9 10 11 | 12 13 .     (block_size 4, W 5, L 13)
            blocks    [  b0  ] [  b1   ] [   b2    ] [  b3 ...
            dead      j <= 8 ----------------->|                 last keys 3 and 7 <= 8: b0, b1 freed
            table     -1       -1        b2          b3          b2 holds key 8 (dead) but also 9..11

        Full-attention groups (W = 0) never free early."""
        window = self.spec.sliding_window
        if window <= 0:
            return 0
        last_dead_key = num_cached - window
        # Block b's last key is (b + 1) * block_size - 1; it is dead when that is <= last_dead_key.
        num_dead = max(0, (last_dead_key + 1) // self.block_size)
        table = self._tables[req_id]
        freed = 0
        for b in range(min(num_dead, len(table))):
            if table[b] >= 0:
                self._free.append(table[b])
                table[b] = -1
                freed += 1
        return freed


class PagedKVCache:
    """Per-layer paged K/V tensors plus the block bookkeeping of all requests.

    Lifecycle of a request: add_request -> (reserve(n) -> run the step's kernels -> commit(n))* ->
    release. reserve makes room in every group for seq_len + n tokens (all-or-nothing); commit advances
    seq_len and lets sliding groups return blocks that fell out of every future window."""

    def __init__(self, layer_specs, *, block_size: int = 64, dtype: str = "bfloat16",
                 num_blocks: Optional[int] = None, memory_budget_bytes: Optional[int] = None, place=None):
        specs = self._cache_specs(layer_specs)
        if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size <= 0:
            raise ValueError(f"block_size={block_size!r}: expected an integer > 0")
        if dtype not in DTYPE_BYTES:
            raise ValueError(f"dtype={dtype!r}: expected one of {sorted(DTYPE_BYTES)}")
        self.block_size = block_size
        self.dtype = dtype
        self.dtype_bytes = DTYPE_BYTES[dtype]
        self.layer_specs: Tuple[KVCacheSpec, ...] = specs
        self.bytes_per_token = sum(s.bytes_per_token(self.dtype_bytes) for s in specs)

        if (num_blocks is None) == (memory_budget_bytes is None):
            raise ValueError(f"num_blocks={num_blocks!r}, memory_budget_bytes={memory_budget_bytes!r}: "
                             "expected exactly one of them")
        if memory_budget_bytes is not None:
            if isinstance(memory_budget_bytes, bool) or not isinstance(memory_budget_bytes, int) \
                    or memory_budget_bytes <= 0:
                raise ValueError(f"memory_budget_bytes={memory_budget_bytes!r}: expected an integer > 0")
            num_blocks = memory_budget_bytes // (block_size * self.bytes_per_token)
            if num_blocks == 0:
                raise ValueError(
                    f"memory_budget_bytes={memory_budget_bytes} holds no block: one block of every layer "
                    f"takes block_size * bytes_per_token = {block_size} * {self.bytes_per_token} bytes")
        if isinstance(num_blocks, bool) or not isinstance(num_blocks, int) or num_blocks <= 0:
            raise ValueError(f"num_blocks={num_blocks!r}: expected an integer > 0")
        self.num_blocks = num_blocks

        group_index: Dict[KVCacheSpec, int] = {}
        members: List[List[int]] = []
        self._layer_group: List[int] = []
        for layer, spec in enumerate(specs):
            if spec not in group_index:
                group_index[spec] = len(members)
                members.append([])
            members[group_index[spec]].append(layer)
            self._layer_group.append(group_index[spec])
        self._groups = [CacheGroup(spec, tuple(layers), num_blocks, block_size)
                        for spec, layers in zip(group_index, members)]

        self._seq_lens: Dict[Hashable, int] = {}
        self._num_logical: Dict[Hashable, int] = {}   # table length, equal in every group
        self.blocks_saved_by_swa = 0
        self._k, self._v = self._allocate(place)

    @staticmethod
    def _cache_specs(layer_specs) -> Tuple[KVCacheSpec, ...]:
        layers = getattr(layer_specs, "layers", layer_specs)   # a ModelConfig works too
        specs = []
        for i, spec in enumerate(layers):
            if isinstance(spec, LayerSpec):
                spec = spec.cache_spec
            if not isinstance(spec, KVCacheSpec):
                raise TypeError(f"layer_specs[{i}]={spec!r}: expected a LayerSpec or KVCacheSpec")
            for name in ("num_kv_heads", "head_dim", "v_head_dim"):
                if getattr(spec, name) <= 0:
                    raise ValueError(f"layer_specs[{i}].{name}={getattr(spec, name)}: expected > 0")
            if spec.sliding_window < 0:
                raise ValueError(f"layer_specs[{i}].sliding_window={spec.sliding_window}: expected >= 0")
            specs.append(spec)
        if not specs:
            raise ValueError("layer_specs is empty: expected one spec per layer")
        return tuple(specs)

    def _allocate(self, place):
        import paddle  # lazily: importing paddle_gqa must not import paddle

        kwargs = {} if place is None else {"device": place}
        keys, values = [], []
        for spec in self.layer_specs:
            keys.append(paddle.zeros([self.num_blocks, spec.num_kv_heads, self.block_size, spec.head_dim],
                                     dtype=self.dtype, **kwargs))
            values.append(paddle.zeros([self.num_blocks, spec.num_kv_heads, self.block_size, spec.v_head_dim],
                                       dtype=self.dtype, **kwargs))
        return keys, values

    # -- layers and groups ------------------------------------------------------------------------

    @property
    def num_layers(self) -> int:
        return len(self.layer_specs)

    @property
    def num_groups(self) -> int:
        return len(self._groups)

    def _check_layer(self, layer: int) -> int:
        if isinstance(layer, bool) or not isinstance(layer, int) or not 0 <= layer < self.num_layers:
            raise IndexError(f"layer={layer!r}: expected 0 <= layer < {self.num_layers}")
        return layer

    def _check_group(self, group: int) -> CacheGroup:
        if isinstance(group, bool) or not isinstance(group, int) or not 0 <= group < self.num_groups:
            raise IndexError(f"group={group!r}: expected 0 <= group < {self.num_groups}")
        return self._groups[group]

    def key_cache(self, layer: int):
        """paddle.Tensor [num_blocks, Hkv_l, block_size, D_l]."""
        return self._k[self._check_layer(layer)]

    def value_cache(self, layer: int):
        """paddle.Tensor [num_blocks, Hkv_l, block_size, Dv_l]."""
        return self._v[self._check_layer(layer)]

    def group_of(self, layer: int) -> int:
        return self._layer_group[self._check_layer(layer)]

    def group_spec(self, group: int) -> KVCacheSpec:
        return self._check_group(group).spec

    def group_layers(self, group: int) -> Tuple[int, ...]:
        return self._check_group(group).layers

    def free_blocks(self, group: int) -> int:
        return self._check_group(group).num_free

    # -- requests ---------------------------------------------------------------------------------

    def _check_request(self, req_id) -> None:
        if req_id not in self._seq_lens:
            raise KeyError(f"req_id={req_id!r} is not in the cache: call add_request first")

    @staticmethod
    def _check_count(name: str, value) -> int:
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
            raise ValueError(f"{name}={value!r}: expected an integer >= 0")
        return int(value)

    def add_request(self, req_id) -> None:
        if req_id in self._seq_lens:
            raise ValueError(f"req_id={req_id!r} is already in the cache")
        self._seq_lens[req_id] = 0
        self._num_logical[req_id] = 0
        for group in self._groups:
            group.add(req_id)

    @property
    def requests(self) -> Tuple[Hashable, ...]:
        return tuple(self._seq_lens)

    def seq_len(self, req_id) -> int:
        """Tokens of `req_id` already in the cache (committed)."""
        self._check_request(req_id)
        return self._seq_lens[req_id]

    def capacity(self, req_id) -> int:
        """Tokens `req_id` can hold without another reserve: table length * block_size."""
        self._check_request(req_id)
        return self._num_logical[req_id] * self.block_size

    def reserve(self, req_id, num_new_tokens: int) -> None:
        """Make room for seq_len + num_new_tokens tokens in every group, or raise CacheOutOfBlocks
        with nothing allocated in any group."""
        self._check_request(req_id)
        n = self._check_count("num_new_tokens", num_new_tokens)
        want = -(-(self._seq_lens[req_id] + n) // self.block_size)
        extra = want - self._num_logical[req_id]
        if extra <= 0:
            return
        short = [(g, group) for g, group in enumerate(self._groups) if group.num_free < extra]
        if short:
            g, group = short[0]
            raise CacheOutOfBlocks(
                f"reserve(req_id={req_id!r}, num_new_tokens={n}) needs {extra} new block(s) in every group; "
                f"group {g} (layers {list(group.layers)}, {group.spec}) has {group.num_free} free of "
                f"{self.num_blocks}. Release or preempt a request, or size the cache larger.")
        for group in self._groups:
            group.grow(req_id, want)
        self._num_logical[req_id] = want

    def commit(self, req_id, num_new_tokens: int) -> None:
        """seq_len += num_new_tokens (they must have been reserved and written); sliding groups then
        free the blocks that fell out of every future window."""
        self._check_request(req_id)
        n = self._check_count("num_new_tokens", num_new_tokens)
        new_len = self._seq_lens[req_id] + n
        if new_len > self.capacity(req_id):
            raise ValueError(
                f"commit(req_id={req_id!r}, num_new_tokens={n}): seq_len would be {new_len} but only "
                f"{self.capacity(req_id)} token slots are reserved; call reserve first")
        self._seq_lens[req_id] = new_len
        for group in self._groups:
            self.blocks_saved_by_swa += group.release_dead_blocks(req_id, new_len)

    def release(self, req_id) -> None:
        """Return every block of `req_id` in every group and forget the request."""
        self._check_request(req_id)
        for group in self._groups:
            group.release(req_id)
        del self._seq_lens[req_id]
        del self._num_logical[req_id]

    def block_tables(self, group: int, req_ids: Sequence, width: Optional[int] = None) -> np.ndarray:
        """int32 [len(req_ids), width] of physical block ids, padded (and released entries) -1.
        width defaults to the longest table among req_ids (at least 1)."""
        cache_group = self._check_group(group)
        req_ids = list(req_ids)
        for req_id in req_ids:
            self._check_request(req_id)
        needed = max([self._num_logical[r] for r in req_ids], default=0)
        if width is None:
            width = max(needed, 1)
        elif isinstance(width, bool) or not isinstance(width, int) or width < needed:
            raise ValueError(f"width={width!r}: expected an integer >= {needed}, the longest table among req_ids")
        out = np.full((len(req_ids), width), -1, dtype=np.int32)
        for row, req_id in enumerate(req_ids):
            table = cache_group.table(req_id)
            out[row, :len(table)] = table
        return out

    def check_invariants(self) -> None:
        """Raise AssertionError unless every group's blocks are each free or owned exactly once."""
        for g, group in enumerate(self._groups):
            owned = [b for req in self._seq_lens for b in group.table(req) if b >= 0]
            everything = owned + group._free
            if sorted(everything) != list(range(self.num_blocks)):
                raise AssertionError(f"group {g}: free + owned blocks are not a partition of "
                                     f"0..{self.num_blocks - 1}")
