"""LRU stack distances of expert accesses in the layer clock, and per-token reuse and transitions, jitted.

Keys are ``l * E + e`` (a cache shared by all layers). Global step ``s = t * L + l`` serves row
``(t, l)``; all experts of one row are requested at the same step. The *stack distance* of an
access to key ``x`` at step ``s`` is the number of distinct keys other than ``x`` requested at
steps strictly between ``x``'s previous access ``s'`` and ``s`` (the other experts of the rows at
``s'`` and ``s`` share those steps and are not counted). Its *gap* is ``s - s'``, always a multiple
of ``L`` because a key belongs to one layer. A first access has neither and is counted apart.

The jitted kernel keeps, per key, the *slot* of its last access (one slot per non-empty row, in
order) and a Fenwick tree counting keys by slot, so the distance is ``live - prefix(slot(x))``:
O(log S) per access. Slots are renumbered (densely, preserving order and ties) when they run out,
so the tree stays ``O(num_keys)`` large whatever the trace length; its state carries over from one
chunk of steps to the next, which lets a memory-mapped trace be streamed. The plain-Python
definitions the tests hold these kernels to are in ``tests/naive.py``.
"""

from __future__ import annotations

import numpy as np

# isort: split
from moesim.kernels.jit import njit

GAP_BINS = 64  # gap histogram bin b holds gaps g with 2**b <= g < 2**(b + 1)


def slot_capacity(num_keys: int) -> int:
    """Slots between renumberings: at most ``num_keys`` survive one, so >= 3 * num_keys rows pass."""
    return max(4 * num_keys, 1024)


def new_state(num_layers: int, num_experts: int, capacity: int | None = None) -> tuple[np.ndarray, ...]:
    """Kernel state: last slot and last step per key, the Fenwick tree, ``[next_slot, live]``."""
    num_keys = num_layers * num_experts
    cap = slot_capacity(num_keys) if capacity is None else int(capacity)
    if cap < num_keys + 1:
        raise ValueError(f"slot capacity {cap} must exceed the number of keys {num_keys}")
    last_slot = np.full(num_keys, -1, np.int64)
    last_step = np.zeros(num_keys, np.int64)
    tree = np.zeros(cap + 1, np.int64)
    counters = np.zeros(2, np.int64)
    return last_slot, last_step, tree, counters


@njit
def _fenwick_add(tree, slot, delta):
    i = slot + 1
    n = tree.shape[0]
    while i < n:
        tree[i] += delta
        i += i & (-i)


@njit
def _fenwick_prefix(tree, slot):
    """Number of keys whose last slot is <= ``slot``."""
    i = slot + 1
    total = 0
    while i > 0:
        total += tree[i]
        i -= i & (-i)
    return total


@njit
def _renumber(last_slot, tree, counters):
    """Map the live slots onto 0..m-1 (order and ties kept) and rebuild the tree."""
    live_keys = np.flatnonzero(last_slot >= 0)
    order = np.argsort(last_slot[live_keys], kind="mergesort")
    tree[:] = 0
    new = -1
    prev_old = -1
    for j in range(order.shape[0]):
        key = live_keys[order[j]]
        old = last_slot[key]
        if old != prev_old:
            new += 1
            prev_old = old
        last_slot[key] = new
        _fenwick_add(tree, new, 1)
    counters[0] = new + 1


@njit(inline="always")
def _floor_log2(g):
    b = 0
    while g > 1:
        g >>= 1
        b += 1
    return b


@njit
def stack_distance_chunk(experts, first_step, num_experts, last_slot, last_step, tree, counters,
                         dist_hist, first, gap_hist, gap_sum):
    """Add the accesses of ``experts`` (int16 ``[n, L, K]``, token ``first_step`` onwards) to the
    per-layer histograms: ``dist_hist[l, d]``, ``first[l]``, ``gap_hist[l, b]`` and ``gap_sum[l]``."""
    n, num_layers, width = experts.shape
    cap = tree.shape[0] - 1
    for i in range(n):
        for layer in range(num_layers):
            row = experts[i, layer]
            used = False
            for k in range(width):
                if row[k] >= 0:
                    used = True
                    break
            if not used:
                continue
            if counters[0] >= cap:
                _renumber(last_slot, tree, counters)
            slot = counters[0]
            counters[0] += 1
            step = (first_step + i) * num_layers + layer
            base = layer * num_experts
            # Every distance of the row is read before any of the row's keys moves to `slot`.
            for k in range(width):
                if row[k] < 0:
                    continue
                key = base + row[k]
                prev = last_slot[key]
                if prev < 0:
                    first[layer] += 1
                else:
                    dist_hist[layer, counters[1] - _fenwick_prefix(tree, prev)] += 1
                    gap = step - last_step[key]
                    gap_hist[layer, _floor_log2(gap)] += 1
                    gap_sum[layer] += gap
            for k in range(width):
                if row[k] < 0:
                    continue
                key = base + row[k]
                prev = last_slot[key]
                if prev < 0:
                    counters[1] += 1
                else:
                    _fenwick_add(tree, prev, -1)
                _fenwick_add(tree, slot, 1)
                last_slot[key] = slot
                last_step[key] = step


# ---- per-token statistics: step-to-step reuse and inter-layer transitions ---------------------------

@njit
def reuse_chunk(experts, prev_row, has_prev, hits, total):
    """Add ``|S(t, l) & S(t - 1, l)|`` to ``hits[l]`` and ``|S(t, l)|`` to ``total[l]`` for every step
    ``t`` with ``has_prev[t]``; the row before step 0 of the chunk is ``prev_row`` ``[L, K]``."""
    n, num_layers, width = experts.shape
    for i in range(n):
        if not has_prev[i]:
            continue
        for layer in range(num_layers):
            for a in range(width):
                x = experts[i, layer, a]
                if x < 0:
                    continue
                total[layer] += 1
                for b in range(width):
                    y = experts[i - 1, layer, b] if i > 0 else prev_row[layer, b]
                    if y == x:
                        hits[layer] += 1
                        break


@njit
def transitions_chunk(experts, counts):
    """Add 1 to ``counts[l, i, j]`` for every ``i`` in row ``(t, l)`` and ``j`` in row ``(t, l + 1)``."""
    n, num_layers, width = experts.shape
    for t in range(n):
        for layer in range(num_layers - 1):
            for a in range(width):
                i = experts[t, layer, a]
                if i < 0:
                    continue
                for b in range(width):
                    j = experts[t, layer + 1, b]
                    if j >= 0:
                        counts[layer, i, j] += 1
