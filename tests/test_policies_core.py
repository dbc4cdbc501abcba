"""The core eviction policies: exact hit counts worked out by hand, jitted == plain-Python reference,
and properties that every registered policy must satisfy (OPT bound, rows never self-evict)."""

from __future__ import annotations

import functools
from types import ModuleType

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from moesim.sim.errors import ConfigError
from moesim.sim.policies import get_policy, list_policies, reference_rows, replay_rows, resolve_policy_params
from moesim.sim.policies import lru as lru_mod
from moesim.sim.row_loop import NEVER
from moesim.sim.rows import next_use_reference, next_use_times
from policy_support import CORE, SEQ, csr, hits_at, run, short_row_traces, try_run

DEMAND = [p for p in CORE if p != "static"]  # the policies that insert on every miss
SETTINGS = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def demand_policies() -> list[str]:
    """Every registered policy that starts empty and inserts on a miss (the other engineer's too)."""
    return [n for n in list_policies() if not getattr(get_policy(n), "PRELOADS", False)]


# ---- registry ---------------------------------------------------------------------------------

def test_registry_finds_every_core_policy() -> None:
    names = list_policies()
    assert set(CORE) <= set(names)
    assert names == sorted(names)
    for n in names:
        module = get_policy(n)
        assert isinstance(module, ModuleType) and module.NAME == n


def test_unknown_policy_lists_the_known_ones() -> None:
    with pytest.raises(ConfigError, match="unknown policy 'nope'") as err:
        get_policy("nope")
    for n in CORE:
        assert n in str(err.value)


def test_unknown_parameter_is_refused_with_the_policy_name() -> None:
    with pytest.raises(ConfigError, match=r"policy 'lru' has no parameter\(s\) \['size'\]"):
        resolve_policy_params(get_policy("lru"), {"size": 3})
    p = resolve_policy_params(get_policy("static"), {"keys": [1]}, layer=2, num_layers=4, num_experts=8)
    assert p == {"keys": [1], "_layer": 2, "_num_layers": 4, "_num_experts": 8}


# ---- exact counts on a hand-made trace (SEQ, capacity 3) --------------------------------------


def test_lru_by_hand() -> None:
    # LRU order, least recent first: [4,2,0] -1-> evict 4 [2,0,1] -0 hit-> [2,1,0] -3-> evict 2 [1,0,3]
    # -0 hit-> [1,3,0] -3 hit-> [1,0,3] -4-> evict 1 [0,3,4] -1-> evict 0 [3,4,1] -0-> evict 3 [4,1,0]
    # -4 hit-> [1,0,4] -2-> evict 1 -3-> evict 0 -1-> evict 4: hits at 4, 6, 7, 11; 8 evictions.
    assert run("lru", [[k] for k in SEQ], 3, 5) == (hits_at(4, 6, 7, 11), 8)


def test_fifo_by_hand() -> None:
    # Queue, oldest first: [4,2,0] -1-> evict 4 [2,0,1]; 0 hit; -3-> evict 2 [0,1,3]; 0, 3 hit;
    # -4-> evict 0 [1,3,4]; 1 hit; -0-> evict 1 [3,4,0]; 4 hit; -2-> evict 3; -3-> evict 4; -1-> evict 0.
    assert run("fifo", [[k] for k in SEQ], 3, 5) == (hits_at(4, 6, 7, 9, 11), 7)


def test_clock_by_hand() -> None:
    # As a queue (head = hand), key:bit. [4:0 2:0 0:0] -1-> evict 4 [2 0 1]; 0 hit sets 0:1;
    # -3-> evict 2 [0:1 1:0 3:0]; 0 hit; 3 hit sets 3:1; -4-> 0 second chance, evict 1 [3:1 0:0 4:0];
    # -1-> 3 second chance, evict 0 [4 3 1]; -0-> evict 4; -4-> evict 3; -2-> evict 1; -3-> evict 0;
    # -1-> evict 4. Hits at 4, 6, 7; 9 evictions.
    assert run("clock", [[k] for k in SEQ], 3, 5) == (hits_at(4, 6, 7), 9)


def test_sieve_by_hand() -> None:
    # Queue oldest first, * = visited. [4 2 0] -1-> hand 4 evict, hand->2 [2 0 1]; 0 hit [2 0* 1];
    # -3-> evict 2, hand->0 [0* 1 3]; 0 hit; 3 hit [0* 1 3*]; -4-> clear 0, evict 1, hand->3 [0 3* 4];
    # -1-> clear 3, evict 4, hand->none [0 3 1]; 0 hit [0* 3 1]; -4-> from oldest: clear 0, evict 3,
    # hand->1 [0 1 4]; -2-> evict 1, hand->4; -3-> evict 4, hand->2; -1-> evict 2.
    # Hits at 4, 6, 7, 10 (CLOCK lost 0 at 10: it re-queued 0 behind 3); 8 evictions.
    assert run("sieve", [[k] for k in SEQ], 3, 5) == (hits_at(4, 6, 7, 10), 8)


def test_lfu_by_hand() -> None:
    # key:(freq, last position). 4:(1,0) 2:(1,1) 0:(1,2) -1-> evict 4; 0 hit (2,4); -3-> evict 2 (1,1);
    # 0 hit (3,6); 3 hit (2,7); -4-> evict 1 (1,3); -1-> evict 4 (1,8); 0 hit (4,10); -4-> evict 1
    # (1,9); -2-> evict 4 (1,11); 3 hit (3,13); -1-> evict 2 (1,12). Hits at 4, 6, 7, 10, 13; 7 evictions.
    assert run("lfu", [[k] for k in SEQ], 3, 5) == (hits_at(4, 6, 7, 10, 13), 7)


def test_lfuda_by_hand() -> None:
    # key:(K = L + F, last); age L starts at 0. 4:(1,0) 2:(1,1) 0:(1,2) -1-> evict 4, L=1, 1:(2,3);
    # 0 hit F=2 (3,4); -3-> evict 2 (1,1), L=1, 3:(2,5); 0 hit F=3 (4,6); 3 hit F=2 (3,7);
    # -4-> evict 1 (2,3), L=2, 4:(3,8); -1-> tie 3:(3,7) 4:(3,8): evict 3, L=3, 1:(4,9);
    # 0 hit (3+4=7); 4 hit (3+2=5) -- plain LFU had evicted 4 here; -2-> evict 1 (4,9), L=4, 2:(5,12);
    # -3-> evict 4 (5,11), L=5; -1-> evict 2 (5,12). Hits at 4, 6, 7, 10, 11; 7 evictions.
    assert run("lfuda", [[k] for k in SEQ], 3, 5) == (hits_at(4, 6, 7, 10, 11), 7)


def test_opt_by_hand() -> None:
    # Uses: 4 @0,8,11; 2 @1,12; 0 @2,4,6,10; 1 @3,9,14; 3 @5,7,13. key:next use.
    # [4:8 2:12 0:4] -1-> evict 2 (12), 1:9; 0 hit (->6); -3-> evict 1 (9), 3:7; 0 hit (->10);
    # 3 hit (->13); 4 hit (->11); -1-> evict 3 (13), 1:14; 0 hit (->never); 4 hit (->never);
    # -2-> 0 and 4 never used again: evict the least recent, 0; -3-> evict 4 (never, older than 2);
    # 1 hit. Hits at 4, 6, 7, 8, 10, 11, 14; 5 evictions.
    assert run("opt", [[k] for k in SEQ], 3, 5) == (hits_at(4, 6, 7, 8, 10, 11, 14), 5)


def test_static_by_hand() -> None:
    # Holds {0, 3} from the start, never changes: hits wherever 0 or 3 is requested, no evictions.
    assert run("static", [[k] for k in SEQ], 3, 5, params={"keys": [3, 0]}) == (hits_at(2, 4, 5, 6, 7, 10, 13),
                                                                               0)


def test_static_per_layer_keeps_its_layers_keys() -> None:
    # Keys are l*E+e with E=4: 1 and 6 belong to layers 0 and 1; layer 1's cache holds expert 2 only.
    params = {"keys": [1, 6], "_layer": 1, "_num_experts": 4, "_num_layers": 2}
    module = get_policy("static")
    state = module.make_state(2, 4, params, 0)
    assert state[0].tolist() == [0, 0, 1, 0]


def test_static_refuses_missing_keys_and_overfull_sets() -> None:
    with pytest.raises(ConfigError, match=r"needs params\['keys'\]"):
        replay_rows("static", *csr([[0]]), 1, 2)
    with pytest.raises(ConfigError, match="3 keys do not fit a capacity of 2"):
        replay_rows("static", *csr([[0]]), 2, 4, params={"keys": [0, 1, 2]})
    with pytest.raises(ConfigError, match=r"key 9 outside \[0, 4\)"):
        replay_rows("static", *csr([[0]]), 2, 4, params={"keys": [9]})


# ---- rows ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("policy", DEMAND)
def test_a_row_never_evicts_its_own_experts(policy: str) -> None:
    # Capacity 3 holds 0, 1, 2. Row [3, 0]: the least recent / oldest / least frequent key is 0,
    # but 0 is needed by this very row, so 3 evicts 1 (or 2 for Random) and 0 hits.
    hits, evictions = run(policy, [[0, 1], [2], [3, 0]], 3, 4)
    assert hits == [0, 0, 0, 0, 1] and evictions == 1


def test_without_the_row_guard_lru_would_miss() -> None:
    # The same requests as separate rows: 3 evicts 0, which then misses.
    assert run("lru", [[0], [1], [2], [3], [0]], 3, 4)[0] == [0, 0, 0, 0, 0]


@pytest.mark.parametrize("policy", demand_policies())
def test_rows_as_wide_as_the_cache_hit_when_repeated(policy: str) -> None:
    # Every row is repeated at once; rows are as wide as the cache, so the repeat must be all hits
    # (the first copy's experts never evicted each other).
    rng = np.random.default_rng(3)
    cap = 4
    rows: list[list[int]] = []
    for _ in range(30):
        row = rng.choice(9, cap, replace=False).tolist()
        rows += [row, row]
    keys, row_ptr, row_time = csr(rows)
    out = try_run(policy, keys, row_ptr, row_time, cap, 9)
    if out is None:
        pytest.skip(f"{policy} refuses capacity {cap}")
    hits = out[0].reshape(-1, cap)
    assert hits[1::2].all()


# ---- jitted == reference ----------------------------------------------------------------------

@pytest.mark.parametrize("policy", CORE)
@SETTINGS
@given(data=short_row_traces(), extra=st.integers(0, 4), seed=st.integers(0, 2**32))
def test_jitted_equals_reference(policy: str, data, extra: int, seed: int) -> None:
    rows, num_keys = data
    cap = max(len(r) for r in rows) + extra
    params = {"keys": list(range(0, num_keys, 2))[:cap]} if policy == "static" else None
    run(policy, rows, cap, num_keys, params=params, seed=seed)


@SETTINGS
@given(data=short_row_traces(max_keys=40, max_rows=150), extra=st.integers(0, 30))
def test_lru_fast_replay_equals_the_per_access_loop(data, extra: int) -> None:
    # Long traces over few keys make the recency log wrap and compact (ring of 64 entries).
    rows, num_keys = data
    keys, row_ptr, row_time = csr(rows)
    cap = max(len(r) for r in rows) + extra
    fast, ev_fast = replay_rows("lru", keys, row_ptr, row_time, cap, num_keys)
    state = lru_mod.make_state(cap, num_keys, {}, 0)
    slow = np.zeros(len(keys), np.uint8)
    ev_slow = lru_mod.replay_by_access(state, keys, row_ptr, row_time, np.zeros(0, np.int64), num_keys, slow)
    ref, ev_ref = reference_rows("lru", keys, row_ptr, row_time, cap, num_keys)
    assert fast.tolist() == slow.tolist() == ref.tolist()
    assert ev_fast == ev_slow == ev_ref


def test_lru_state_carries_across_blocks() -> None:
    # Replaying a trace in two calls on one state equals one call.
    rng = np.random.default_rng(0)
    rows = [rng.choice(30, 3, replace=False).tolist() for _ in range(400)]
    keys, row_ptr, row_time = csr(rows)
    whole, _ = replay_rows("lru", keys, row_ptr, row_time, 8, 30)
    state = lru_mod.make_state(8, 30, {}, 0)
    out = np.zeros(len(keys), np.uint8)
    cut = int(row_ptr[150])
    lru_mod.replay(state, keys[:cut], row_ptr[:151], row_time[:150], np.zeros(0, np.int64), 30, out[:cut])
    lru_mod.replay(state, keys[cut:], row_ptr[150:] - cut, row_time[150:], np.zeros(0, np.int64), 30, out[cut:])
    assert out.tolist() == whole.tolist()


@SETTINGS
@given(data=short_row_traces())
def test_next_use_times_match_the_reference(data) -> None:
    rows, num_keys = data
    keys, row_ptr, _ = csr(rows)
    row_time = np.arange(len(rows), dtype=np.int64) * 7 + 3
    got = next_use_times(keys, row_ptr, row_time, num_keys)
    assert got.tolist() == next_use_reference(keys, row_ptr, row_time).tolist()


def test_next_use_by_hand() -> None:
    # Rows at times 0, 1, 2: [0, 1], [1], [0, 2]: 0 -> 2, 1 -> 1, 1 -> never, 0 -> never, 2 -> never.
    keys, row_ptr, row_time = csr([[0, 1], [1], [0, 2]])
    assert next_use_times(keys, row_ptr, row_time, 3).tolist() == [2, 1, NEVER, NEVER, NEVER]


# ---- random ------------------------------------------------------------------------------------

def test_random_is_reproducible_and_seed_dependent() -> None:
    rng = np.random.default_rng(1)
    rows = [[int(k)] for k in rng.integers(0, 20, 300)]
    a = run("random", rows, 6, 20, seed=7)
    b = run("random", rows, 6, 20, seed=7)
    c = run("random", rows, 6, 20, seed=8)
    assert a == b
    assert a[0] != c[0]


# ---- OPT ---------------------------------------------------------------------------------------

def brute_force_max_hits(rows: list[list[int]], capacity: int) -> int:
    """The most hits any demand-fetching cache can get: try every victim at every miss."""

    @functools.cache
    def best(r: int, i: int, cache: frozenset[int]) -> int:
        if r == len(rows):
            return 0
        row = rows[r]
        if i == len(row):
            return best(r + 1, 0, cache)
        k = row[i]
        if k in cache:
            return 1 + best(r, i + 1, cache)
        if len(cache) < capacity:
            return best(r, i + 1, cache | {k})
        victims = [v for v in cache if v not in row]
        return max(best(r, i + 1, (cache - {v}) | {k}) for v in victims)

    return best(0, 0, frozenset())


@settings(max_examples=40, deadline=None)
@given(data=short_row_traces(max_keys=6, max_rows=9, max_width=3), extra=st.integers(0, 2))
def test_opt_is_optimal(data, extra: int) -> None:
    rows, num_keys = data
    cap = max(len(r) for r in rows) + extra
    hits, _ = run("opt", rows, cap, num_keys)
    assert sum(hits) == brute_force_max_hits(rows, cap)


@SETTINGS
@given(data=short_row_traces(max_keys=12, max_rows=60), extra=st.integers(0, 5), seed=st.integers(0, 1000))
def test_no_policy_beats_opt(data, extra: int, seed: int) -> None:
    rows, num_keys = data
    keys, row_ptr, row_time = csr(rows)
    cap = max(len(r) for r in rows) + extra
    opt_hits = int(replay_rows("opt", keys, row_ptr, row_time, cap, num_keys)[0].sum())
    for policy in demand_policies():
        out = try_run(policy, keys, row_ptr, row_time, cap, num_keys, seed=seed)
        if out is not None:
            assert int(out[0].sum()) <= opt_hits, policy


@SETTINGS
@given(data=short_row_traces(max_keys=12, max_rows=60))
def test_lru_and_opt_never_lose_hits_when_the_cache_grows(data) -> None:
    rows, num_keys = data
    keys, row_ptr, row_time = csr(rows)
    for policy in ("lru", "opt"):
        counts = [int(replay_rows(policy, keys, row_ptr, row_time, c, num_keys)[0].sum())
                  for c in range(max(len(r) for r in rows), num_keys + 1)]
        assert counts == sorted(counts), policy


# ---- a row wider than the cache -------------------------------------------------------------------

WIDE_ROWS = [[0], [1], [2, 3, 4]]  # the third row needs 3 slots; the cache below has 2
# Policies whose loops evict from anywhere outside the row refuse it; the others let the row overflow
# (their victims may be the row's own older keys). The engine and replay_rows refuse it up front.
OVERFLOWING = {"fifo", "lfu", "lfuda", "lru", "opt", "static"}


def test_replay_rows_refuses_a_row_wider_than_the_cache() -> None:
    keys, row_ptr, row_time = csr(WIDE_ROWS)
    for name in list_policies():
        params = {"keys": [0]} if name == "static" else None
        with pytest.raises(ConfigError, match=rf"{name}: row 2 needs 3 experts at once but the cache has 2 slot"):
            replay_rows(name, keys, row_ptr, row_time, 2, 5, params=params)


@pytest.mark.parametrize("name", list_policies())
def test_loops_never_spin_when_every_resident_is_guarded(name: str) -> None:
    # Called directly (no up-front check), every loop either refuses the row or lets it overflow;
    # none may search forever for an unguarded victim (CLOCK, Random, SIEVE and LRU's per-access
    # loop once did).
    module = get_policy(name)
    keys, row_ptr, row_time = csr(WIDE_ROWS)
    next_use = np.full(len(keys), NEVER, np.int64) if getattr(module, "NEEDS_NEXT_USE", False) else np.zeros(0, np.int64)
    params = resolve_policy_params(module, {"keys": [0]} if name == "static" else None)
    for loop_name in ("replay", "replay_by_access"):
        loop = getattr(module, loop_name, None)
        if loop is None:
            continue
        state = module.make_state(2, 5, params, 0)
        hits = np.zeros(len(keys), np.uint8)
        if name in OVERFLOWING and not (name == "lru" and loop_name == "replay_by_access"):
            loop(state, keys, row_ptr, row_time, next_use, 5, hits)
            assert hits[1:].tolist() == [0, 0, 0, 0]
        else:
            try:
                loop(state, keys, row_ptr, row_time, next_use, 5, hits)
            except ValueError as exc:
                assert f"{name}: every resident is guarded" in str(exc)
            else:
                pytest.fail(f"{name}.{loop_name} let a row wider than the cache overflow: if that is the "
                            "policy's rule, add it to OVERFLOWING above")
