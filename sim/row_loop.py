"""The one replay loop every policy shares (inlined into each policy's cached ``replay``).

A replay is a sequence of *rows*: all experts one (token, layer) needs at once. ``keys`` holds the
rows back to back (CSR: row ``r`` is ``keys[row_ptr[r]:row_ptr[r + 1]]``, already in the chosen
tie-break order), ``row_time[r]`` is the row's global layer-clock step, ``next_use[i]`` is the row
time at which ``keys[i]`` is requested next (``NEVER`` if never; only OPT-like policies read it).
Policies that do not read it may be given an *empty* ``next_use``; the loop then passes ``NEVER``
(this saves the engine 8 bytes per access for every policy but OPT).

Before a row is served every key in it is *guarded* (``guard[key] == stamp``): a policy may not
choose a guarded key as victim, so the experts of one row never evict each other. A guarded key
that has not been served yet is always served later in the same row. A policy's
``access(state, key, now, next_use, guard, stamp)`` returns ``HIT``, ``MISS`` (nothing evicted)
or the evicted key (>= 0).

Why inline: numba cannot cache a function that takes another jitted function as an argument, but
a per-policy ``replay`` that calls this inlined loop with its own ``access`` is cached normally.
"""

from __future__ import annotations

import numpy as np
from moesim.kernels.jit import njit

HIT = -2
MISS = -1
# The key is served without being cached (nothing changes): a policy that never inserts (static).
BYPASS = -3
NEVER = np.iinfo(np.int64).max
# ``k & NONNEG`` is never negative, so numba drops its negative-index fix-ups in the hot loops.
NONNEG = 0x7FFFFFFFFFFFFFFF


@njit(inline="always")
def row_loop(access, state, keys, row_ptr, row_time, next_use, num_keys, hits_out):
    """Serve every row; write 1/0 per access into ``hits_out``; return the number of evictions."""
    guard = np.full(num_keys, -1, np.int64)
    has_next = next_use.shape[0] > 0
    evictions = 0
    for r in range(row_ptr.shape[0] - 1):
        lo = row_ptr[r]
        hi = row_ptr[r + 1]
        for i in range(lo, hi):
            guard[keys[i]] = r
        now = row_time[r]
        for i in range(lo, hi):
            nu = next_use[i] if has_next else NEVER
            res = access(state, keys[i], now, nu, guard, r)
            if res == HIT:
                hits_out[i] = 1
            else:
                hits_out[i] = 0
                if res >= 0:
                    evictions += 1
    return evictions


@njit
def no_more_victims(state, out):
    """The default of a policy's ``more_victims``: one access evicts at most one key."""
    return 0
