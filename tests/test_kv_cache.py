"""Paged KV cache: sizing, groups, per-layer tensors, reserve/commit/release accounting, SWA release."""
import random

import numpy as np
import pytest

from paddle_gqa.kv_cache import CacheOutOfBlocks, PagedKVCache
from paddle_gqa.spec import KVCacheSpec, LayerSpec

paddle = pytest.importorskip("paddle")

FULL = LayerSpec(16, 4, 192, 128)                        # MiMo-like full layer
SWA = LayerSpec(16, 8, 192, 128, sliding_window=129, has_sinks=True)
MIMO_LIKE = [FULL, SWA, SWA, SWA, SWA, FULL]


def _snapshot(cache, reqs):
    return ({r: cache.seq_len(r) for r in reqs}, {r: cache.capacity(r) for r in reqs},
            [cache.free_blocks(g) for g in range(cache.num_groups)],
            [cache.block_tables(g, reqs).tolist() for g in range(cache.num_groups)],
            cache.blocks_saved_by_swa)


# -- sizing, groups, tensors -------------------------------------------------------------------------

def test_bytes_per_token_and_budget_sizing_mimo_like():
    cache = PagedKVCache(MIMO_LIKE, block_size=16, dtype="bfloat16", memory_budget_bytes=10_000_000)
    # sum_l Hkv_l * (D_l + Dv_l) * 2 bytes: 2 full layers with 4 heads, 4 sliding with 8 heads
    expect = 2 * 4 * (192 + 128) * 2 + 4 * 8 * (192 + 128) * 2
    assert cache.bytes_per_token == expect == 25600
    assert cache.num_blocks == 10_000_000 // (16 * expect) == 24
    allocated = sum(int(np.prod(cache.key_cache(l).shape)) + int(np.prod(cache.value_cache(l).shape))
                    for l in range(6)) * 2
    assert allocated == cache.num_blocks * 16 * expect <= 10_000_000
    fp32 = PagedKVCache(MIMO_LIKE, block_size=16, dtype="float32", num_blocks=3)
    assert fp32.bytes_per_token == 2 * expect


def test_groups_share_equal_specs_and_tensors_are_per_layer():
    specs = [FULL, SWA, SWA, LayerSpec(16, 4, 192, 128, rope=None, softmax_scale=0.3), SWA,
             LayerSpec(8, 2, 64, 64)]
    cache = PagedKVCache(specs, block_size=32, dtype="float16", num_blocks=5)
    # LayerSpecs differing only in non-cache fields (softmax_scale, sinks, rope) share a group.
    assert cache.num_groups == 3
    assert [cache.group_of(l) for l in range(6)] == [0, 1, 1, 0, 1, 2]
    assert cache.group_layers(0) == (0, 3) and cache.group_layers(1) == (1, 2, 4) and cache.group_layers(2) == (5,)
    assert cache.group_spec(1) == KVCacheSpec(8, 192, 128, 129)
    for layer, spec in enumerate(specs):
        k, v = cache.key_cache(layer), cache.value_cache(layer)
        assert list(k.shape) == [5, spec.num_kv_heads, 32, spec.head_dim]
        assert list(v.shape) == [5, spec.num_kv_heads, 32, spec.v_head_dim]
        assert k.dtype == paddle.float16 and v.dtype == paddle.float16
    # Each layer has its own storage: writing one layer leaves another of the same group untouched.
    cache.key_cache(1)[0, 0, 0, 0] = 7.0
    assert float(cache.key_cache(2)[0, 0, 0, 0]) == 0.0


def test_accepts_model_config_and_cache_specs_and_place():
    from paddle_gqa.config import load_model_config
    import pathlib

    model = load_model_config(pathlib.Path(__file__).parent / "configs" / "fastdeploy_mimo_lists.json")
    a = PagedKVCache(model, block_size=16, num_blocks=2, place="cpu")
    b = PagedKVCache([s.cache_spec for s in model.layers], block_size=16, num_blocks=2)
    assert a.bytes_per_token == b.bytes_per_token and a.num_groups == b.num_groups == 2
    assert a.key_cache(0).place.is_cpu_place()


@pytest.mark.parametrize("kwargs, match", [
    (dict(num_blocks=None, memory_budget_bytes=None), "exactly one"),
    (dict(num_blocks=4, memory_budget_bytes=10**6), "exactly one"),
    (dict(num_blocks=0), "num_blocks=0"),
    (dict(num_blocks=4, dtype="int8"), "dtype='int8'"),
    (dict(num_blocks=4, block_size=0), "block_size=0"),
    (dict(memory_budget_bytes=1000), "memory_budget_bytes=1000 holds no block"),
    (dict(memory_budget_bytes=-1), "memory_budget_bytes=-1"),
])
def test_bad_construction(kwargs, match):
    with pytest.raises(ValueError, match=match):
        PagedKVCache(MIMO_LIKE, **kwargs)


def test_bad_layer_specs():
    with pytest.raises(ValueError, match="empty"):
        PagedKVCache([], num_blocks=1)
    with pytest.raises(TypeError, match=r"layer_specs\[1\]"):
        PagedKVCache([FULL, "full"], num_blocks=1)
    with pytest.raises(IndexError, match="layer=6"):
        PagedKVCache(MIMO_LIKE, num_blocks=1).key_cache(6)
    with pytest.raises(IndexError, match="group=2"):
        PagedKVCache(MIMO_LIKE, num_blocks=1).block_tables(2, [])


# -- reserve / commit / release ------------------------------------------------------------------------

def test_reserve_commit_release_accounting():
    cache = PagedKVCache([FULL, LayerSpec(16, 4, 64, 64)], block_size=4, dtype="float32", num_blocks=10)
    assert cache.num_groups == 2
    cache.add_request("a")
    cache.add_request("b")
    assert cache.seq_len("a") == 0 and cache.capacity("a") == 0
    cache.reserve("a", 5)                       # 2 blocks
    assert cache.capacity("a") == 8 and cache.seq_len("a") == 0
    assert [cache.free_blocks(g) for g in range(2)] == [8, 8]
    cache.reserve("a", 3)                       # already fits: nothing new
    assert cache.free_blocks(0) == 8
    cache.commit("a", 5)
    assert cache.seq_len("a") == 5
    cache.reserve("b", 9)                       # 3 blocks
    cache.reserve("a", 4)                       # 5 + 4 = 9 tokens: a third block
    assert [cache.free_blocks(g) for g in range(2)] == [4, 4]
    tables = cache.block_tables(0, ["a", "b"])
    assert tables.dtype == np.int32 and tables.shape == (2, 3)
    assert sorted(tables.ravel().tolist()) == sorted(set(tables.ravel().tolist()))   # no block twice
    assert cache.block_tables(1, ["b", "a"], width=6).tolist()[0][3:] == [-1, -1, -1]
    assert cache.block_tables(0, []).shape == (0, 1)
    cache.commit("a", 4)
    assert cache.seq_len("a") == 9
    cache.release("a")
    assert [cache.free_blocks(g) for g in range(2)] == [7, 7]
    assert cache.requests == ("b",)
    cache.check_invariants()
    cache.release("b")
    assert [cache.free_blocks(g) for g in range(2)] == [10, 10]
    assert cache.blocks_saved_by_swa == 0


def test_request_errors_leave_state_unchanged():
    cache = PagedKVCache([FULL], block_size=4, num_blocks=4)
    cache.add_request(1)
    cache.reserve(1, 4)
    before = _snapshot(cache, [1])
    with pytest.raises(ValueError, match="already in the cache"):
        cache.add_request(1)
    with pytest.raises(KeyError, match="req_id=2"):
        cache.reserve(2, 1)
    with pytest.raises(KeyError, match="req_id=2"):
        cache.seq_len(2)
    with pytest.raises(ValueError, match="num_new_tokens=-1"):
        cache.reserve(1, -1)
    with pytest.raises(ValueError, match="only 4 token slots are reserved"):
        cache.commit(1, 5)
    with pytest.raises(ValueError, match="width=0"):
        cache.block_tables(0, [1], width=0)
    assert _snapshot(cache, [1]) == before


def test_out_of_blocks_is_all_or_nothing_across_groups():
    # Group 1 (sliding) has freed blocks early, so it has more free than group 0: the full group runs out.
    specs = [LayerSpec(4, 2, 64, 64), LayerSpec(4, 2, 64, 64, sliding_window=4)]
    cache = PagedKVCache(specs, block_size=4, num_blocks=6)
    cache.add_request("long")
    cache.reserve("long", 16)
    cache.commit("long", 16)                    # sliding group keeps only the last block(s)
    assert cache.free_blocks(0) == 2 and cache.free_blocks(1) > 2
    cache.add_request("new")
    before = _snapshot(cache, ["long", "new"])
    with pytest.raises(CacheOutOfBlocks, match=r"group 0 .* has 2 free of 6"):
        cache.reserve("new", 9)                 # 3 blocks: group 1 could, group 0 cannot
    assert _snapshot(cache, ["long", "new"]) == before
    cache.check_invariants()
    cache.reserve("new", 8)                     # exactly the 2 left
    assert cache.free_blocks(0) == 0
    assert isinstance(CacheOutOfBlocks("x"), RuntimeError)


# -- sliding-window release -----------------------------------------------------------------------------

def _dead_blocks(seq_len, window, block_size):
    """Blocks whose every key j satisfies j <= seq_len - window (no query at p >= seq_len sees them)."""
    return [b for b in range(-(-seq_len // block_size)) if (b + 1) * block_size - 1 <= seq_len - window]


@pytest.mark.parametrize("window, block_size", [(5, 4), (4, 4), (1, 4), (129, 16), (3, 8), (16, 16)])
def test_swa_blocks_freed_exactly_when_dead(window, block_size):
    specs = [LayerSpec(4, 1, 64, 64), LayerSpec(4, 2, 64, 64, sliding_window=window)]
    cache = PagedKVCache(specs, block_size=block_size, num_blocks=64)
    cache.add_request("r")
    rng = random.Random(window * 100 + block_size)
    saved = 0
    while cache.seq_len("r") < 40 * block_size // 4 + window:
        n = rng.choice([1, 1, 1, 2, 3, block_size, 2 * block_size + 1])
        cache.reserve("r", n)
        live_before = [b for b in cache.block_tables(1, ["r"])[0] if b >= 0]
        cache.commit("r", n)
        L = cache.seq_len("r")
        table = cache.block_tables(1, ["r"])[0]
        dead = _dead_blocks(L, window, block_size)
        assert [b for b in range(len(table)) if table[b] == -1] == dead, (L, table)
        # Every key a future query p >= L can see (L - window < j < L) is still in a live block.
        for j in range(max(0, L - window + 1), L):
            assert table[j // block_size] >= 0
        saved += len(live_before) - int((table >= 0).sum())
        assert cache.blocks_saved_by_swa == saved
        assert cache.free_blocks(1) == 64 - int((table >= 0).sum())
        # The full group never frees early.
        assert (cache.block_tables(0, ["r"])[0] >= 0).all()
        cache.check_invariants()
    assert saved > 0
    cache.release("r")
    assert cache.free_blocks(0) == cache.free_blocks(1) == 64


def test_swa_release_diagram_example():
    """The docstring's example: block_size 4, W 5; at 13 tokens blocks 0 and 1 are gone, 2 and 3 kept."""
    cache = PagedKVCache([LayerSpec(2, 1, 64, 64, sliding_window=5)], block_size=4, num_blocks=8)
    cache.add_request(0)
    cache.reserve(0, 13)
    cache.commit(0, 11)                         # dead keys j <= 6: block 0 (keys 0..3) only
    t = cache.block_tables(0, [0])[0].tolist()
    assert t[0] == -1 and min(t[1:]) >= 0
    cache.commit(0, 1)                          # dead keys j <= 7: block 1 (keys 4..7) goes too
    cache.commit(0, 1)                          # 13 tokens, dead keys j <= 8: block 2 still holds 9..11
    t = cache.block_tables(0, [0])[0].tolist()
    assert t[:2] == [-1, -1] and t[2] >= 0 and t[3] >= 0
    assert cache.blocks_saved_by_swa == 2 and cache.free_blocks(0) == 6


# -- random operation sequences --------------------------------------------------------------------------

@pytest.mark.parametrize("seed", range(6))
def test_random_operations_keep_invariants(seed):
    rng = random.Random(seed)
    block_size = rng.choice([1, 2, 4, 16])
    specs = [LayerSpec(4, rng.choice([1, 2, 4]), 64, rng.choice([32, 64]),
                       sliding_window=rng.choice([0, 0, 1, 3, 7, 20])) for _ in range(rng.randint(1, 5))]
    num_blocks = rng.randint(4, 40)
    cache = PagedKVCache(specs, block_size=block_size, dtype="float32", num_blocks=num_blocks)
    assert cache.num_groups == len({s.cache_spec for s in specs})
    model = {}                                  # req -> (seq_len, reserved tokens)
    next_id = 0
    for _ in range(300):
        op = rng.random()
        if op < 0.15 or not model:
            cache.add_request(next_id)
            model[next_id] = (0, 0)
            next_id += 1
        elif op < 0.6:
            req = rng.choice(list(model))
            n = rng.randint(0, 3 * block_size)
            seq, cap = model[req]
            needed = max(0, -(-(seq + n) // block_size) - cap // block_size)
            if needed > min(cache.free_blocks(g) for g in range(cache.num_groups)):
                before = _snapshot(cache, list(model))
                with pytest.raises(CacheOutOfBlocks):
                    cache.reserve(req, n)
                assert _snapshot(cache, list(model)) == before
            else:
                cache.reserve(req, n)
                model[req] = (seq, max(cap, -(-(seq + n) // block_size) * block_size))
        elif op < 0.85:
            req = rng.choice(list(model))
            seq, cap = model[req]
            n = rng.randint(0, cap - seq)
            cache.commit(req, n)
            model[req] = (seq + n, cap)
        else:
            req = rng.choice(list(model))
            cache.release(req)
            del model[req]
        # Invariants: every block free or owned once; free + used == total; tables match the model.
        cache.check_invariants()
        for g in range(cache.num_groups):
            tables = cache.block_tables(g, list(model)) if model else np.zeros((0, 1), np.int32)
            used = int((tables >= 0).sum())
            assert cache.free_blocks(g) + used == num_blocks
            window = cache.group_spec(g).sliding_window
            for row, req in zip(tables, model):
                seq, cap = model[req]
                assert cache.seq_len(req) == seq and cache.capacity(req) == cap
                live = [b for b in range(cap // block_size) if row[b] >= 0]
                dead = _dead_blocks(seq, window, block_size) if window else []
                assert sorted(live + dead) == list(range(cap // block_size))


# -- hypothesis state machine -----------------------------------------------------------------------------

from hypothesis import settings, strategies as st  # noqa: E402
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule  # noqa: E402


class CacheMachine(RuleBasedStateMachine):
    """Random add/reserve/commit/release against a plain model of seq_len and reserved tokens."""

    @initialize(windows=st.lists(st.sampled_from([0, 1, 2, 5, 9]), min_size=1, max_size=4),
                block_size=st.sampled_from([1, 2, 4, 8]), num_blocks=st.integers(1, 24))
    def setup(self, windows, block_size, num_blocks):
        specs = [LayerSpec(2, 1, 32, 16, sliding_window=w) for w in windows]
        self.cache = PagedKVCache(specs, block_size=block_size, dtype="float32", num_blocks=num_blocks)
        self.block_size, self.num_blocks = block_size, num_blocks
        self.model = {}
        self.next_id = 0

    @rule()
    def add(self):
        self.cache.add_request(self.next_id)
        self.model[self.next_id] = [0, 0]
        self.next_id += 1

    @precondition(lambda self: self.model)
    @rule(data=st.data(), n=st.integers(0, 20))
    def reserve(self, data, n):
        req = data.draw(st.sampled_from(sorted(self.model)))
        seq, cap = self.model[req]
        blocks = -(-(seq + n) // self.block_size)
        extra = blocks - cap // self.block_size
        fits = extra <= min(self.cache.free_blocks(g) for g in range(self.cache.num_groups))
        try:
            self.cache.reserve(req, n)
        except CacheOutOfBlocks:
            assert not fits
            return
        assert fits
        self.model[req][1] = max(cap, blocks * self.block_size)

    @precondition(lambda self: self.model)
    @rule(data=st.data())
    def commit(self, data):
        req = data.draw(st.sampled_from(sorted(self.model)))
        seq, cap = self.model[req]
        n = data.draw(st.integers(0, cap - seq))
        self.cache.commit(req, n)
        self.model[req][0] += n

    @precondition(lambda self: self.model)
    @rule(data=st.data())
    def release(self, data):
        req = data.draw(st.sampled_from(sorted(self.model)))
        self.cache.release(req)
        del self.model[req]

    @invariant()
    def blocks_partitioned(self):
        if not hasattr(self, "cache"):
            return
        self.cache.check_invariants()
        reqs = sorted(self.model)
        for g in range(self.cache.num_groups):
            window = self.cache.group_spec(g).sliding_window
            tables = self.cache.block_tables(g, reqs)
            assert self.cache.free_blocks(g) + int((tables >= 0).sum()) == self.num_blocks
            for row, req in zip(tables, reqs):
                seq, cap = self.model[req]
                assert self.cache.seq_len(req) == seq and self.cache.capacity(req) == cap
                dead = set(_dead_blocks(seq, window, self.block_size)) if window else set()
                for b in range(cap // self.block_size):
                    assert (row[b] == -1) == (b in dead)


TestCacheMachine = CacheMachine.TestCase
TestCacheMachine.settings = settings(max_examples=40, stateful_step_count=30, deadline=None)
