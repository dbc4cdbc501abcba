"""The prefetch plan: per issuing row, the candidate keys and the row each is meant for (CSR)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from moesim.sim.errors import ConfigError


@dataclass(frozen=True, eq=False)
class PrefetchPlan:
    """``keys[row_ptr[r]:row_ptr[r + 1]]`` are issued at row ``r``, in that order (best first);
    ``target[j]`` is the row key ``j`` is meant for (``> r``)."""

    row_ptr: np.ndarray  # int64 [R + 1]
    keys: np.ndarray  # int32 [N]
    target: np.ndarray  # int64 [N]

    @property
    def num_rows(self) -> int:
        return int(self.row_ptr.shape[0]) - 1

    def __len__(self) -> int:
        return int(self.keys.shape[0])

    def row(self, r: int) -> list[tuple[int, int]]:
        lo, hi = int(self.row_ptr[r]), int(self.row_ptr[r + 1])
        return [(int(k), int(t)) for k, t in zip(self.keys[lo:hi], self.target[lo:hi], strict=True)]

    def check(self, num_rows: int, num_keys: int) -> None:
        """Refuse a plan that does not fit the trace (wrong row count, key out of range, target not ahead)."""
        if self.num_rows != num_rows:
            raise ConfigError(f"prefetch plan covers {self.num_rows} rows, the trace has {num_rows}")
        if len(self.keys) != len(self.target) or self.row_ptr[-1] != len(self.keys):
            raise ConfigError("prefetch plan arrays disagree in length")
        if len(self.keys) == 0:
            return
        bad = np.flatnonzero((self.keys < 0) | (self.keys >= num_keys))
        if bad.size:
            raise ConfigError(f"prefetch plan: key {self.keys[bad[0]]} at entry {bad[0]} is outside [0, {num_keys})")
        issue = np.repeat(np.arange(num_rows, dtype=np.int64), np.diff(self.row_ptr))
        bad = np.flatnonzero(self.target <= issue)
        if bad.size:
            raise ConfigError(f"prefetch plan: entry {bad[0]} issued at row {issue[bad[0]]} targets row "
                              f"{self.target[bad[0]]}, which is not ahead of it")

    def equals(self, other: PrefetchPlan) -> bool:
        return (np.array_equal(self.row_ptr, other.row_ptr) and np.array_equal(self.keys, other.keys)
                and np.array_equal(self.target, other.target))


def empty_plan(num_rows: int) -> PrefetchPlan:
    return PrefetchPlan(np.zeros(num_rows + 1, np.int64), np.zeros(0, np.int32), np.zeros(0, np.int64))


def plan_from_lists(rows: Sequence[Sequence[tuple[int, int]]]) -> PrefetchPlan:
    """A plan from ``rows[r] = [(key, target row), ...]`` (used by the plain-Python references)."""
    counts = np.array([len(r) for r in rows], np.int64)
    row_ptr = np.zeros(len(rows) + 1, np.int64)
    np.cumsum(counts, out=row_ptr[1:])
    keys = np.array([k for r in rows for k, _ in r], np.int32)
    target = np.array([t for r in rows for _, t in r], np.int64)
    return PrefetchPlan(row_ptr, keys, target)
