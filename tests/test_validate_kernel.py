"""The jitted validation scans equal their plain numpy definitions."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from moesim.traces.validate_kernel import first_duplicate_row, first_out_of_range


def ref_out_of_range(flat: np.ndarray, num_experts: int) -> int:
    bad = np.flatnonzero((flat < -1) | (flat >= num_experts))
    return int(bad[0]) if bad.size else -1


def ref_duplicate_row(rows: np.ndarray) -> int:
    srt = np.sort(rows, axis=-1)
    dup = ((srt[:, 1:] == srt[:, :-1]) & (srt[:, 1:] != -1)).any(axis=1)
    hits = np.flatnonzero(dup)
    return int(hits[0]) if hits.size else -1


@settings(max_examples=80, deadline=None)
@given(arrays(np.int16, st.integers(0, 200), elements=st.integers(-3, 9)), st.integers(1, 8))
def test_out_of_range_matches_numpy(flat: np.ndarray, num_experts: int) -> None:
    assert first_out_of_range(flat, num_experts) == ref_out_of_range(flat, num_experts)


@settings(max_examples=80, deadline=None)
@given(arrays(np.int16, st.tuples(st.integers(0, 40), st.integers(1, 5)), elements=st.integers(-1, 5)))
def test_duplicate_row_matches_numpy(rows: np.ndarray) -> None:
    assert first_duplicate_row(rows, 6) == ref_duplicate_row(rows)


def test_by_hand() -> None:
    assert first_out_of_range(np.array([0, -1, 3, 4, -2], np.int16), 4) == 3
    rows = np.array([[0, 1], [-1, -1], [2, 2], [1, 1]], np.int16)
    assert first_duplicate_row(rows, 4) == 2
    assert first_duplicate_row(rows[:2], 4) == -1
