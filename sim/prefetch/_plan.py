"""The prefetch plan (per issuing row, the candidate keys and the row each is meant for, CSR) and
what a prefetcher is given to make one: a piece of the routing."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

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


@dataclass(frozen=True, eq=False)
class PieceRouting:
    """What a prefetcher sees of one piece of the row source: the router's choices, nothing of the
    caches. Rows are one per (step, layer) in layer-clock order (``t * L + l`` from the piece's
    first row, at global time ``row0``), with shared keys ``l * E + e`` in the router's order (pads
    dropped; pinned experts included: they are routed like any other)."""

    experts: np.ndarray  # int16 [Tp, L, K]: the piece's steps
    keys: np.ndarray  # int32: the routing rows (CSR)
    row_ptr: np.ndarray  # int64 [Tp * L + 1]
    row0: int
    total_rows: int  # rows in the whole stream (no prefetch targets a row at or past it)
    epoch_end: int  # the first row of the next cold restart (total_rows without one): targets stop there
    predicted: np.ndarray | None  # [Tp, L, K'] a speculative router's guesses, when the trace has them
    ahead: Callable[[int], tuple[np.ndarray, np.ndarray]]  # (keys, row_ptr) of up to n rows after the piece

    @property
    def num_rows(self) -> int:
        return int(self.row_ptr.shape[0]) - 1


def concat_plans(plans: Sequence[PrefetchPlan]) -> PrefetchPlan:
    """The plans of consecutive pieces as one plan (row pointers shifted)."""
    if not plans:
        return empty_plan(0)
    ptrs = [plans[0].row_ptr]
    offset = int(plans[0].row_ptr[-1])
    for p in plans[1:]:
        ptrs.append(p.row_ptr[1:] + offset)
        offset += int(p.row_ptr[-1])
    return PrefetchPlan(np.concatenate(ptrs), np.concatenate([p.keys for p in plans]).astype(np.int32),
                        np.concatenate([p.target for p in plans]).astype(np.int64))


@dataclass(frozen=True)
class RoutingRows:
    """A whole trace's routing as CSR rows in layer-clock order (pads dropped, empty rows kept): the
    plain-Python references' view of a trace."""

    keys: np.ndarray  # int32 shared keys l * E + e
    row_ptr: np.ndarray  # int64 [T * L + 1]
    num_layers: int
    num_experts: int
    width: int  # the widest row

    @property
    def num_rows(self) -> int:
        return int(self.row_ptr.shape[0]) - 1

    @property
    def num_keys(self) -> int:
        return self.num_layers * self.num_experts


def routing_rows(trace: Any) -> RoutingRows:
    """Row ``t * L + l`` holds layer ``l``'s experts of step ``t`` in the router's order."""
    return routing_rows_of(np.asarray(trace.experts), trace.num_experts)


def routing_rows_of(experts: np.ndarray, num_experts: int) -> RoutingRows:
    T, L, _ = experts.shape
    mask = experts >= 0
    base = (np.arange(L, dtype=np.int64) * num_experts)[None, :, None]
    keys = (experts.astype(np.int64) + base)[mask].astype(np.int32)
    counts = mask.sum(axis=2).reshape(-1)
    row_ptr = np.zeros(T * L + 1, np.int64)
    np.cumsum(counts, out=row_ptr[1:])
    width = int(counts.max()) if counts.size else 0
    return RoutingRows(keys, row_ptr, L, num_experts, width)
