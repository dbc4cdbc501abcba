"""Random: evict a uniformly random resident expert (not one of the current row).

Seeded and reproducible bit for bit: a SplitMix64 generator whose 64-bit state starts at the seed;
a draw picks slot ``x mod size`` and is repeated while the slot holds a key of the current row
(uniform over the others). The new key takes the victim's slot. ``reference`` runs the same
generator in plain Python integers.

``replay`` is a specialised loop: the generator's state lives in a register, a row of one key
draws once (its key is not resident yet, so no slot is guarded), and the leading one-key rows of a
block (all of it for a flattened request stream) run a loop that reads no row bounds. Wider rows stamp the row guard as ``access``
does; the tests check that both give the same hits, evictions, slots and generator state.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from moesim.kernels.jit import njit
from moesim.sim.policies._loops import one_key_prefix, rows_to_steps, steps_to_rows
from moesim.sim.row_loop import HIT, MISS, NONNEG, row_loop

NAME = "random"
PARAMS: dict[str, Any] = {}
GUARDED_ALL = "random: every resident is guarded (capacity smaller than the row width)"

_MASK = (1 << 64) - 1
_GOLDEN = 0x9E3779B97F4A7C15
_M1 = 0xBF58476D1CE4E5B9
_M2 = 0x94D049BB133111EB


def make_state(capacity: int, num_keys: int, params: Mapping[str, Any], seed: int) -> tuple:
    slots = np.full(max(capacity, 1), -1, np.int64)
    rng = np.array([int(seed) & _MASK], np.uint64)
    return slots, np.full(num_keys, -1, np.int64), np.array([0, capacity], np.int64), rng


@njit(inline="always")
def _mix(z):
    """SplitMix64's output function of the advanced state ``z``."""
    z = (z ^ (z >> np.uint64(30))) * np.uint64(_M1)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(_M2)
    return z ^ (z >> np.uint64(31))


@njit
def _next(rng):
    z = rng[0] + np.uint64(_GOLDEN)
    rng[0] = z
    return _mix(z)


@njit
def _any_unguarded(slots, size, guard, stamp):
    """Whether a resident outside the current row exists (else no draw can ever find a victim)."""
    for j in range(size):
        if guard[slots[j]] != stamp:
            return True
    return False


@njit
def access(state, key, now, next_use, guard, stamp):
    slots, slot_of, ctr, rng = state
    if slot_of[key] >= 0:
        return HIT
    size = ctr[0]
    if size < ctr[1]:
        slots[size] = key
        slot_of[key] = size
        ctr[0] = size + 1
        return MISS
    while True:
        j = np.int64(_next(rng) % np.uint64(size))
        victim = slots[j]
        if guard[victim] != stamp:
            break
        if not _any_unguarded(slots, size, guard, stamp):  # checked only after a guarded draw
            raise ValueError(GUARDED_ALL)
    slot_of[victim] = -1
    slots[j] = key
    slot_of[key] = j
    return victim


@njit
def _serve_stream(slots, slot_of, ctr, rng, keys, row_ptr, hits):
    """Serve the leading rows of one key each (nothing guarded): (rows served, evictions).

    The caller passes the keys and hits as slices from the first row's key, so that the index starts
    at 0 (numba then drops its negative-index fix-ups)."""
    size = ctr[0]
    cap = ctr[1]
    z = rng[0]
    usize = np.uint64(size)
    evictions = 0
    n = one_key_prefix(row_ptr)
    for i in range(n):
        k = keys[i] & NONNEG
        if slot_of[k] >= 0:
            hits[i] = 1
        else:
            hits[i] = 0
            if size < cap:
                slots[size] = k
                slot_of[k] = size
                size += 1
                usize = np.uint64(size)
            else:
                z += np.uint64(_GOLDEN)
                j = np.int64(_mix(z) % usize)
                slot_of[slots[j]] = -1
                slots[j] = k
                slot_of[k] = j
                evictions += 1
    ctr[0] = size
    rng[0] = z
    return n, evictions


@njit
def _serve_rows(slots, slot_of, ctr, rng, guard, keys, row_ptr, hits):
    """Serve the CSR rows; returns the evictions. A wider row stamps its keys in ``guard`` (stamp =
    row index + 1; the array starts at 0)."""
    size = ctr[0]
    cap = ctr[1]
    z = rng[0]
    usize = np.uint64(size)
    evictions = 0
    for r in range(row_ptr.shape[0] - 1):
        lo = row_ptr[r]
        hi = row_ptr[r + 1]
        wide = hi - lo > 1
        if wide:
            for i in range(lo, hi):
                guard[keys[i]] = r + 1
        for i in range(lo, hi):
            k = keys[i] & NONNEG
            if slot_of[k] >= 0:
                hits[i] = 1
                continue
            hits[i] = 0
            if size < cap:
                slots[size] = k
                slot_of[k] = size
                size += 1
                usize = np.uint64(size)
                continue
            while True:
                z += np.uint64(_GOLDEN)
                j = np.int64(_mix(z) % usize)
                v = slots[j]
                if not wide or guard[v] != r + 1:
                    break
                if not _any_unguarded(slots, size, guard, r + 1):
                    ctr[0] = size
                    rng[0] = z
                    raise ValueError(GUARDED_ALL)
            slot_of[v] = -1
            slots[j] = k
            slot_of[k] = j
            evictions += 1
    ctr[0] = size
    rng[0] = z
    return evictions


@njit
def replay(state, keys, row_ptr, row_time, next_use, num_keys, hits_out):
    slots, slot_of, ctr, rng = state
    if row_ptr.shape[0] < 2:
        return 0
    lo = row_ptr[0]
    done, evictions = _serve_stream(slots, slot_of, ctr, rng, keys[lo:], row_ptr, hits_out[lo:])
    if done < row_ptr.shape[0] - 1:
        guard = np.zeros(num_keys, np.int64)
        evictions += _serve_rows(slots, slot_of, ctr, rng, guard, keys, row_ptr[done:], hits_out)
    return evictions


@njit
def replay_steps(state, chunk, num_experts, step_hits, step_acc):
    """Fused fast path of :func:`replay` (one shared cache, nothing pinned, row order as recorded):
    builds the rows from ``chunk`` ``[T, L, K]`` in place of the engine's CSR block and scatter,
    serves them with the same loop and writes each (step, layer)'s hits and accesses; returns the
    evictions."""
    slots, slot_of, ctr, rng = state
    keys, row_ptr = steps_to_rows(chunk, num_experts)
    hits = np.empty(keys.shape[0], np.uint8)
    guard = np.zeros(slot_of.shape[0], np.int64)
    evictions = _serve_rows(slots, slot_of, ctr, rng, guard, keys, row_ptr, hits)
    rows_to_steps(hits, row_ptr, step_hits, step_acc)
    return evictions


@njit
def replay_by_access(state, keys, row_ptr, row_time, next_use, num_keys, hits_out):
    """The shared per-access loop over :func:`access`; gives exactly what :func:`replay` gives."""
    return row_loop(access, state, keys, row_ptr, row_time, next_use, num_keys, hits_out)


def _next_ref(state: list[int]) -> int:
    state[0] = (state[0] + _GOLDEN) & _MASK
    z = state[0]
    z = ((z ^ (z >> 30)) * _M1) & _MASK
    z = ((z ^ (z >> 27)) * _M2) & _MASK
    return z ^ (z >> 31)


def reference(keys: np.ndarray, row_ptr: np.ndarray, row_time: np.ndarray, next_use: np.ndarray,
              capacity: int, num_keys: int, params: Mapping[str, Any], seed: int) -> tuple[np.ndarray, int]:
    slots: list[int] = []
    rng = [int(seed) & _MASK]
    hits = np.zeros(len(keys), np.uint8)
    evictions = 0
    for r in range(len(row_ptr) - 1):
        row = [int(k) for k in keys[row_ptr[r]:row_ptr[r + 1]]]
        for i, k in enumerate(row, start=int(row_ptr[r])):
            if k in slots:
                hits[i] = 1
            elif len(slots) < capacity:
                slots.append(k)
            else:
                while True:
                    j = _next_ref(rng) % len(slots)
                    if slots[j] not in row:
                        break
                slots[j] = k
                evictions += 1
    return hits, evictions
