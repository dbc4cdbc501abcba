"""An indexed binary min-heap of keys ordered by ``(p1[key], p2[key])`` (lexicographic).

Used by the priority policies (LFU, LFU-DA, OPT). ``p2`` is a unique access sequence number, so
the order is total and the victim is deterministic. ``pos[key]`` is the key's heap index or -1
(so ``pos[key] >= 0`` doubles as the residency flag); ``hs[0]`` is the heap size.

:func:`min_unguarded` finds the smallest key that is not guarded without popping anything: every
ancestor of that key is smaller, hence guarded, so it lies just below the guarded part of the heap
around the root, and at most ``2 * guarded + 1`` nodes are looked at.
"""

from __future__ import annotations

import numpy as np
from numba import njit


def make_heap(capacity: int, num_keys: int) -> tuple[np.ndarray, ...]:
    """(heap, pos, p1, p2, hs, scratch) for at most ``capacity`` keys out of ``num_keys``."""
    heap = np.zeros(max(capacity, 1), np.int64)
    pos = np.full(num_keys, -1, np.int64)
    p1 = np.zeros(num_keys, np.int64)
    p2 = np.zeros(num_keys, np.int64)
    hs = np.zeros(1, np.int64)
    scratch = np.zeros(max(capacity, 1), np.int64)
    return heap, pos, p1, p2, hs, scratch


@njit(cache=True, inline="always")
def _less(p1, p2, a, b):
    return p1[a] < p1[b] or (p1[a] == p1[b] and p2[a] < p2[b])


@njit(cache=True)
def sift_up(heap, pos, p1, p2, i):
    k = heap[i]
    while i > 0:
        parent = (i - 1) >> 1
        q = heap[parent]
        if not _less(p1, p2, k, q):
            break
        heap[i] = q
        pos[q] = i
        i = parent
    heap[i] = k
    pos[k] = i


@njit(cache=True)
def sift_down(heap, pos, p1, p2, n, i):
    k = heap[i]
    while True:
        c = 2 * i + 1
        if c >= n:
            break
        if c + 1 < n and _less(p1, p2, heap[c + 1], heap[c]):
            c += 1
        q = heap[c]
        if not _less(p1, p2, q, k):
            break
        heap[i] = q
        pos[q] = i
        i = c
    heap[i] = k
    pos[k] = i


@njit(cache=True)
def push(heap, pos, p1, p2, hs, k):
    i = hs[0]
    hs[0] = i + 1
    heap[i] = k
    pos[k] = i
    sift_up(heap, pos, p1, p2, i)


@njit(cache=True)
def update(heap, pos, p1, p2, hs, k):
    """Restore the heap after ``k``'s priority changed (either way)."""
    i = pos[k]
    sift_up(heap, pos, p1, p2, i)
    sift_down(heap, pos, p1, p2, hs[0], pos[k])


@njit(cache=True)
def remove(heap, pos, p1, p2, hs, k):
    i = pos[k]
    n = hs[0] - 1
    hs[0] = n
    pos[k] = -1
    if i == n:
        return
    last = heap[n]
    heap[i] = last
    pos[last] = i
    sift_up(heap, pos, p1, p2, i)
    sift_down(heap, pos, p1, p2, n, pos[last])


@njit(cache=True)
def min_unguarded(heap, p1, p2, hs, guard, stamp, scratch):
    """The smallest key with ``guard[key] != stamp`` (-1 if every key is guarded)."""
    n = hs[0]
    best = -1
    top = 0
    if n > 0:
        scratch[0] = 0
        top = 1
    while top > 0:
        top -= 1
        i = scratch[top]
        k = heap[i]
        if guard[k] != stamp:
            if best < 0 or _less(p1, p2, k, best):
                best = k
            continue
        for c in (2 * i + 1, 2 * i + 2):
            if c < n:
                scratch[top] = c
                top += 1
    return best
