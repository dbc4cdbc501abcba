"""Shared inputs of the policy-loop tests: CSR rows, random row traces, linked-list reading."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pytest
from hypothesis import strategies as st
from moesim.sim.policies import reference_rows, resolve_params

NO_NEXT = np.zeros(0, np.int64)


def csr(rows: list[list[int]], step: int = 1) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``rows`` as CSR ``(keys, row_ptr, row_time)``; row ``r`` at time ``r * step``."""
    keys = np.array([k for r in rows for k in r], np.int32)
    row_ptr = np.r_[0, np.cumsum([len(r) for r in rows])].astype(np.int64)
    return keys, row_ptr, np.arange(len(rows), dtype=np.int64) * step


@st.composite
def row_traces(draw, max_keys: int = 24, max_rows: int = 160, max_width: int = 5, empty_rows: bool = False):
    """Long traces over few keys (so rings wrap and compact and ghosts fill), rows of mixed widths
    (empty ones too with ``empty_rows``), often runs of one-key rows (the fast paths) before and
    after wider rows."""
    num_keys = draw(st.integers(2, max_keys))
    width = draw(st.integers(1, min(max_width, num_keys)))
    n_rows = draw(st.integers(1, max_rows))
    one_key = draw(st.floats(0.0, 1.0))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    low = 0 if empty_rows else 1
    rows = []
    for _ in range(n_rows):
        w = 1 if rng.random() < one_key else int(rng.integers(low, width + 1))
        rows.append(rng.choice(num_keys, w, replace=False).tolist())
    return rows, num_keys


def queue(prv: np.ndarray, nxt: np.ndarray, sentinel: int) -> list[int]:
    """The keys of one linked list, front first (checking that the back links agree)."""
    out = []
    k = int(nxt[sentinel])
    while k != sentinel:
        assert int(nxt[prv[k]]) == k
        out.append(k)
        k = int(nxt[k])
    assert int(prv[sentinel]) == (out[-1] if out else sentinel)
    return out


def serve(fn: Callable, state: tuple, rows: list[list[int]], num_keys: int) -> tuple[list[int], int]:
    """One call of a policy loop (``replay`` or ``replay_by_access``) on ``rows``: (hits, evictions)."""
    keys, row_ptr, row_time = csr(rows)
    hits = np.zeros(len(keys), np.uint8)
    evictions = fn(state, keys, row_ptr, row_time, NO_NEXT, num_keys, hits)
    return hits.tolist(), int(evictions)


def serve_in_parts(fns: Sequence[Callable], state: tuple, rows: list[list[int]], cuts: Sequence[int],
                   num_keys: int) -> tuple[list[int], int]:
    """``rows[cuts[j]:cuts[j + 1]]`` served by ``fns[j % len(fns)]`` on one state: (hits, evictions)."""
    hits: list[int] = []
    evictions = 0
    for j, (a, b) in enumerate(itertools.pairwise(cuts)):
        h, e = serve(fns[j % len(fns)], state, rows[a:b], num_keys)
        hits += h
        evictions += e
    return hits, evictions


@st.composite
def wide_rows(draw: Any) -> tuple[list[list[int]], int]:
    """Rows of widths 1-4 over few keys (so guards often cover much of the cache), sometimes with
    one-key runs long enough for a policy's stream path."""
    num_keys = draw(st.integers(4, 20))
    n_rows = draw(st.integers(1, 200))
    one_key = draw(st.sampled_from([0.0, 0.3, 0.7]))
    long_runs = draw(st.booleans())
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    rows = []
    for _ in range(n_rows):
        if long_runs and rng.random() < 0.02:
            rows += [[int(k)] for k in rng.integers(0, num_keys, int(rng.integers(60, 160)))]
        w = 1 if rng.random() < one_key else int(rng.integers(1, 5))
        rows.append(rng.choice(num_keys, w, replace=False).tolist())
    return rows, num_keys


def new_policy_state(module: Any, cap: int, num_keys: int, params: dict[str, Any] | None) -> tuple:
    return module.make_state(cap, num_keys, resolve_params(module, params), 0)


def three_ways_state(module: Any, meaning: Callable[[tuple], list], rows: list[list[int]], cap: int,
                     num_keys: int, params: dict[str, Any] | None = None) -> tuple[list[int], int, list]:
    """``replay``, the per-access loop and the reference agree, and both loops leave the same state:
    (hits, evictions, the state as ``meaning`` reads it)."""
    s1, s2 = new_policy_state(module, cap, num_keys, params), new_policy_state(module, cap, num_keys, params)
    got = serve(module.replay, s1, rows, num_keys)
    slow = serve(module.replay_by_access, s2, rows, num_keys)
    ref_hits, ref_ev = reference_rows(module, *csr(rows), cap, num_keys, params)
    assert got == slow == (ref_hits.tolist(), ref_ev)
    assert meaning(s1) == meaning(s2)
    return got[0], got[1], meaning(s1)


def check_rows_and_cut(module: Any, meaning: Callable[[tuple], list], rows: list[list[int]], cap: int,
                       num_keys: int, params: dict[str, Any] | None, cut: float) -> None:
    """:func:`three_ways_state`, then the rows cut at ``cut`` and served half by each loop (both
    orders) to the same hits, evictions and state; a row that finds every resident guarded is
    refused by both loops, which then leave the same state."""
    try:
        reference_rows(module, *csr(rows), cap, num_keys, params)
    except ValueError:
        states = []
        for fn in (module.replay, module.replay_by_access):
            state = new_policy_state(module, cap, num_keys, params)
            with pytest.raises(ValueError, match="every resident is guarded"):
                serve(fn, state, rows, num_keys)
            states.append(meaning(state))
        assert states[0] == states[1]
        return
    hits, evictions, final = three_ways_state(module, meaning, rows, cap, num_keys, params)
    c = int(cut * len(rows))
    for first, second in ((module.replay, module.replay_by_access), (module.replay_by_access, module.replay)):
        state = new_policy_state(module, cap, num_keys, params)
        assert serve_in_parts([first, second], state, rows, [0, c, len(rows)], num_keys) == (hits, evictions)
        assert meaning(state) == final
