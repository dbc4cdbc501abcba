"""Shared inputs of the policy-loop tests: CSR rows, random row traces, linked-list reading."""

from __future__ import annotations

import numpy as np
from hypothesis import strategies as st


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
