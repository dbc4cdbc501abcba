"""Intrusive doubly linked lists over keys, in two arrays ``prv`` / ``nxt`` of length ``num_keys + 1``.

The last index is the sentinel: ``nxt[S]`` is the oldest (front) key, ``prv[S]`` the newest (back);
an empty list has ``prv[S] == nxt[S] == S``. Several lists can share one pair of arrays when each
key is on at most one of them, by giving each list its own sentinel index past ``num_keys``.
"""

from __future__ import annotations

import numpy as np
from numba import njit


def make_list(num_keys: int, sentinels: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """``prv``, ``nxt`` for ``num_keys`` keys and ``sentinels`` empty lists (sentinel ``num_keys + j``)."""
    n = num_keys + sentinels
    prv = np.empty(n, np.int64)
    nxt = np.empty(n, np.int64)
    for j in range(sentinels):
        prv[num_keys + j] = nxt[num_keys + j] = num_keys + j
    prv[:num_keys] = nxt[:num_keys] = -1
    return prv, nxt


@njit(cache=True, forceinline=True)
def unlink(prv, nxt, k):
    nxt[prv[k]] = nxt[k]
    prv[nxt[k]] = prv[k]


@njit(cache=True, forceinline=True)
def push_back_at(prv, nxt, k, s):
    """Append ``k`` at the back (newest end) of the list whose sentinel is ``s``."""
    last = prv[s]
    nxt[last] = k
    prv[k] = last
    nxt[k] = s
    prv[s] = k


@njit(cache=True, forceinline=True)
def push_back(prv, nxt, k):
    """Append ``k`` at the back of the list whose sentinel is the last index."""
    push_back_at(prv, nxt, k, prv.shape[0] - 1)
