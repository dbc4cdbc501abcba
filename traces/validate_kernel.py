"""Jitted scans behind :func:`traces.trace.validate_trace` (numpy references in the tests).

Validation runs on every load, so it must keep up with reading the file: a sort-based numpy check
of duplicate ids costs tens of nanoseconds per id, these loops about one. Each returns the first
offending position (or -1); the caller builds the error message from that position.
"""

from __future__ import annotations

import numpy as np

# isort: split
from moesim.kernels.jit import njit


@njit
def first_out_of_range(flat: np.ndarray, num_experts: int) -> int:
    """Flat index of the first id outside ``[0, num_experts)`` that is not the pad -1, or -1."""
    for i in range(flat.size):
        v = flat[i]
        if v < -1 or v >= num_experts:
            return i
    return -1


@njit
def first_duplicate_row(rows: np.ndarray, num_experts: int) -> int:
    """Index of the first row of ``rows`` ``[n, K]`` (ids already in range) holding an id twice, or -1."""
    stamp = np.full(num_experts, -1, np.int64)  # stamp[e] = last row that held e
    for r in range(rows.shape[0]):
        for j in range(rows.shape[1]):
            v = rows[r, j]
            if v < 0:
                continue
            if stamp[v] == r:
                return r
            stamp[v] = r
    return -1
