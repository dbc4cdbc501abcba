"""The priority policies (OPT, LFU, LFU-DA): their specialised ``replay`` loops against the shared
per-access loop and the plain-Python references, the state carried between blocks and between the
two loops, and the invariants of their data structures (indexed heap, frequency buckets)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from moesim.sim.policies import get_policy, reference_rows, replay_rows
from moesim.sim.policies import lfu as lfu_mod
from moesim.sim.policies import lfuda as lfuda_mod
from moesim.sim.policies import opt as opt_mod
from moesim.sim.row_loop import row_loop
from moesim.sim.rows import next_use_times
from numba import njit
from policy_support import csr, random_rows

POLICIES = ["opt", "lfu", "lfuda"]
SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@njit
def _opt_by_access(state, keys, row_ptr, row_time, next_use, num_keys, hits_out):
    return row_loop(opt_mod.access, state, keys, row_ptr, row_time, next_use, num_keys, hits_out)


@njit
def _lfu_by_access(state, keys, row_ptr, row_time, next_use, num_keys, hits_out):
    return row_loop(lfu_mod.access, state, keys, row_ptr, row_time, next_use, num_keys, hits_out)


@njit
def _lfuda_by_access(state, keys, row_ptr, row_time, next_use, num_keys, hits_out):
    return row_loop(lfuda_mod.access, state, keys, row_ptr, row_time, next_use, num_keys, hits_out)


BY_ACCESS: dict[str, Callable] = {"opt": _opt_by_access, "lfu": _lfu_by_access, "lfuda": _lfuda_by_access}


def three_ways(policy: str, rows: list[list[int]], cap: int, num_keys: int) -> tuple[list[int], int]:
    """Fast replay, per-access loop and reference must agree; returns (hits, evictions)."""
    keys, row_ptr, row_time = csr(rows)
    module = get_policy(policy)
    nu = next_use_times(keys, row_ptr, row_time, num_keys)
    fast, ev_fast = replay_rows(policy, keys, row_ptr, row_time, cap, num_keys, next_use=nu)
    state = module.make_state(cap, num_keys, {}, 0)
    slow = np.zeros(len(keys), np.uint8)
    ev_slow = BY_ACCESS[policy](state, keys, row_ptr, row_time, nu, num_keys, slow)
    ref, ev_ref = reference_rows(policy, keys, row_ptr, row_time, cap, num_keys)
    assert fast.tolist() == slow.tolist() == ref.tolist(), policy
    assert ev_fast == ev_slow == ev_ref, (policy, ev_fast, ev_slow, ev_ref)
    return fast.tolist(), int(ev_fast)


@st.composite
def row_traces(draw, max_keys: int = 40, max_rows: int = 150, max_width: int = 4):
    num_keys = draw(st.integers(2, max_keys))
    width = draw(st.integers(1, min(max_width, num_keys)))
    n_rows = draw(st.integers(1, max_rows))
    hot = draw(st.integers(1, num_keys))  # a few hot keys make frequencies and next uses tie and spread
    rows = [draw(st.lists(st.integers(0, num_keys - 1) if draw(st.booleans()) else st.integers(0, hot - 1),
                          min_size=1, max_size=width, unique=True))
            for _ in range(n_rows)]
    return rows, num_keys


# ---- the three loops agree ------------------------------------------------------------------------

@pytest.mark.parametrize("policy", POLICIES)
@SETTINGS
@given(data=row_traces(), extra=st.integers(0, 12))
def test_fast_replay_equals_per_access_loop_and_reference(policy: str, data, extra: int) -> None:
    rows, num_keys = data
    three_ways(policy, rows, max(len(r) for r in rows) + extra, num_keys)


@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize(("seed", "cap", "width"), [(0, 4, 4), (1, 9, 3), (2, 25, 4), (3, 1, 1)])
def test_skewed_streams_agree(policy: str, seed: int, cap: int, width: int) -> None:
    # Long skewed streams: many distinct frequencies (LFU buckets), deep heaps, rows as wide as the cache.
    rows = random_rows(seed, 1500, 60, width)
    hits, evictions = three_ways(policy, rows, cap, 60)
    assert 0 < sum(hits) < len(hits) and evictions > 0


@pytest.mark.parametrize("policy", POLICIES)
def test_state_carries_across_blocks_and_loops(policy: str) -> None:
    # Three blocks on one state, alternating the fast replay and the per-access loop, equal one call.
    rows = random_rows(4, 600, 40, 3)
    keys, row_ptr, row_time = csr(rows)
    nu = next_use_times(keys, row_ptr, row_time, 40)
    whole, ev_whole = replay_rows(policy, keys, row_ptr, row_time, 7, 40, next_use=nu)
    module = get_policy(policy)
    state = module.make_state(7, 40, {}, 0)
    out = np.zeros(len(keys), np.uint8)
    ev = 0
    cuts = [0, 150, 420, len(rows)]
    for b, loop in enumerate([module.replay, BY_ACCESS[policy], module.replay]):
        r0, r1 = cuts[b], cuts[b + 1]
        lo, hi = int(row_ptr[r0]), int(row_ptr[r1])
        ev += loop(state, keys[lo:hi], row_ptr[r0:r1 + 1] - lo, row_time[r0:r1], nu[lo:hi], 40, out[lo:hi])
    assert out.tolist() == whole.tolist() and ev == ev_whole


# ---- by hand ---------------------------------------------------------------------------------------

def test_lfu_victim_skips_guarded_keys_across_buckets() -> None:
    # Capacity 3: 0 has frequency 1, 1 and 2 frequency 2 (1 less recent). Row [3, 0]: the only
    # frequency-1 key is 0, guarded by its row, so 3 evicts from the next bucket: 1. Then 1 misses.
    rows = [[0], [1], [1], [2], [2], [3, 0], [1]]
    assert three_ways("lfu", rows, 3, 4) == ([0, 0, 1, 0, 1, 0, 1, 0], 2)


def test_lfu_victim_skips_guarded_keys_within_a_bucket() -> None:
    # All frequency 1, LRU order 0, 1, 2. Row [3, 0, 1]: 0 and 1 guarded, so 3 evicts 2.
    rows = [[0], [1], [2], [3, 0, 1], [2]]
    assert three_ways("lfu", rows, 3, 4) == ([0, 0, 0, 0, 1, 1, 0], 2)


def test_opt_ties_on_next_use_go_to_the_least_recent() -> None:
    # 0, 1 and 2 are all next used by row 4 (a tie): 3 evicts the least recently used, 0.
    rows = [[0], [1], [2], [3], [0, 1, 2]]
    hits, evictions = three_ways("opt", rows, 3, 4)
    assert hits == [0, 0, 0, 0, 0, 1, 1] and evictions == 2


def test_lfuda_age_is_kept_between_blocks() -> None:
    # Capacity 2. Block 1: 0 (K=1), 0 hit (K=2), 1 (K=1), 2 evicts 1 and the age L becomes 1, 2 gets
    # K=2. Block 2: 3 evicts 0 (tie K=2, less recent) and L=2, so 3 gets K=3; 0 then evicts 2 (K=2),
    # not 3, and 3 hits. Had the age been lost, 3 would get K=1, be evicted by 0 and miss.
    module = get_policy("lfuda")
    state = module.make_state(2, 4, {}, 0)
    empty = np.zeros(0, np.int64)
    out = np.zeros(4, np.uint8)
    assert module.replay(state, *csr([[0], [0], [1], [2]]), empty, 4, out) == 1
    assert out.tolist() == [0, 1, 0, 0] and state[-1][2] == 1
    out = np.zeros(3, np.uint8)
    assert module.replay(state, *csr([[3], [0], [3]]), empty, 4, out) == 2
    assert out.tolist() == [0, 0, 1] and state[-1][2] == 2
    assert three_ways("lfuda", [[0], [0], [1], [2], [3], [0], [3]], 2, 4) == ([0, 1, 0, 0, 0, 0, 1], 3)


# ---- data-structure invariants ---------------------------------------------------------------------

def lfu_model(rows: list[list[int]], cap: int) -> tuple[dict[int, int], dict[int, int]]:
    """In-cache frequency and last access number of every resident key (the reference's state)."""
    freq: dict[int, int] = {}
    last: dict[int, int] = {}
    n = 0
    for row in rows:
        for k in row:
            if k in freq:
                freq[k] += 1
            else:
                if len(freq) >= cap:
                    v = min((v for v in freq if v not in row), key=lambda v: (freq[v], last[v]))
                    del freq[v], last[v]
                freq[k] = 1
            last[k] = n
            n += 1
    return freq, last


@pytest.mark.parametrize(("seed", "cap"), [(5, 3), (6, 10), (7, 30)])
def test_lfu_buckets_hold_the_frequencies_in_recency_order(seed: int, cap: int) -> None:
    rows = random_rows(seed, 800, 50, 3)
    keys, row_ptr, row_time = csr(rows)
    state = lfu_mod.make_state(cap, 50, {}, 0)
    lfu_mod.replay(state, keys, row_ptr, row_time, np.zeros(0, np.int64), 50, np.zeros(len(keys), np.uint8))
    kprv, knxt, knode, nprv, nnxt, nfreq, _free, ctr = state
    freq, last = lfu_model(rows, cap)
    pool = nprv.shape[0] - 1
    seen: dict[int, int] = {}
    buckets = 0
    b, prev_f = nnxt[pool], 0
    while b != pool:
        assert nprv[nnxt[b]] == b and nfreq[b] > prev_f  # linked both ways, frequencies increasing
        s = 50 + b
        order = []
        k = knxt[s]
        while k != s:
            assert kprv[knxt[k]] == k and knode[k] == b
            order.append(int(k))
            k = knxt[k]
        assert order and [last[k] for k in order] == sorted(last[k] for k in order)  # least recent first
        seen.update((k, int(nfreq[b])) for k in order)
        prev_f = nfreq[b]
        b = nnxt[b]
        buckets += 1
    assert seen == freq and int(ctr[0]) == len(freq)
    assert int((knode >= 0).sum()) == len(freq)
    assert int(ctr[2]) + buckets == pool  # every bucket is either in the list or free


@pytest.mark.parametrize("policy", ["opt", "lfuda"])
@pytest.mark.parametrize(("seed", "cap"), [(8, 5), (9, 31)])
def test_heap_order_and_positions_hold(policy: str, seed: int, cap: int) -> None:
    rows = random_rows(seed, 700, 60, 4)
    keys, row_ptr, row_time = csr(rows)
    module = get_policy(policy)
    state = module.make_state(cap, 60, {}, 0)
    module.replay(state, keys, row_ptr, row_time, next_use_times(keys, row_ptr, row_time, 60), 60,
                  np.zeros(len(keys), np.uint8))
    hk, hp, hq, pos, hs = state[:5]
    n = int(hs[0])
    assert n == cap and int((pos >= 0).sum()) == n
    for i in range(n):
        assert pos[hk[i]] == i
        if i:
            parent = (i - 1) >> module.SHIFT  # a 2 ** SHIFT-ary heap
            assert (hp[parent], hq[parent]) < (hp[i], hq[i])
    assert len(set(hq[:n].tolist())) == n  # access numbers are unique: the order is total


@pytest.mark.parametrize(("seed", "cap"), [(10, 5), (11, 31), (12, 59)])
def test_opt_one_key_stream_keeps_the_heap_and_agrees(seed: int, cap: int) -> None:
    # A run of one-key rows goes through OPT's stream loop (no row bounds, a hit at a leaf only
    # rewrites its priority): same hits as the other loops, and the heap stays a heap.
    rows = random_rows(seed, 3000, 60, 1)
    hits, evictions = three_ways("opt", rows, cap, 60)
    assert 0 < sum(hits) < len(hits) and evictions == len(hits) - sum(hits) - cap
    keys, row_ptr, row_time = csr(rows)
    state = opt_mod.make_state(cap, 60, {}, 0)
    opt_mod.replay(state, keys, row_ptr, row_time, next_use_times(keys, row_ptr, row_time, 60), 60,
                   np.zeros(len(keys), np.uint8))
    hk, hp, hq, pos, hs = state[:5]
    assert int(hs[0]) == cap and [int(pos[hk[i]]) for i in range(cap)] == list(range(cap))
    for i in range(1, cap):
        parent = (i - 1) >> opt_mod.SHIFT
        assert (hp[parent], hq[parent]) < (hp[i], hq[i])


def test_opt_stream_hands_over_to_pairs_at_an_unpackable_next_use() -> None:
    # Row times near 2 ** 31: the next uses of the later rows have no packed form, so the stream
    # loop stops there and the rest runs on the (prio, seq) pairs; the hits equal the per-access loop.
    rows = random_rows(13, 400, 30, 1)
    keys, row_ptr, _ = csr(rows)
    row_time = np.arange(len(rows), dtype=np.int64) + opt_mod.PACK_BIG - 250
    nu = next_use_times(keys, row_ptr, row_time, 30)
    fits = [bool(opt_mod._fits(v)) for v in nu]
    assert fits[:20] == [True] * 20 and not all(fits)  # the stream loop starts, then must stop
    fast = np.zeros(len(keys), np.uint8)
    ev_fast = opt_mod.replay(opt_mod.make_state(6, 30, {}, 0), keys, row_ptr, row_time, nu, 30, fast)
    slow = np.zeros(len(keys), np.uint8)
    ev_slow = _opt_by_access(opt_mod.make_state(6, 30, {}, 0), keys, row_ptr, row_time, nu, 30, slow)
    assert fast.tolist() == slow.tolist() and ev_fast == ev_slow and 0 < fast.sum() < len(fast)
