"""Choosing the experts to pin (or to hold in a static cache) from a profiling trace.

Pick them from a *profiling* trace (other requests, an earlier time window, another dataset), not
from the trace being replayed: pinning the hottest experts of the replayed trace itself uses the
future it is about to be scored on (leakage), and flatters pinning and static caching against the
online policies, which cannot know it.
"""

from __future__ import annotations

import numpy as np
from moesim.sim.errors import ConfigError
from moesim.traces.trace import Trace


def expert_counts(trace: Trace) -> np.ndarray:
    """Accesses per key ``l * E + e`` (int64 ``[L * E]``), reading the trace chunk by chunk."""
    L, E = trace.num_layers, trace.num_experts
    counts = np.zeros(L * E, np.int64)
    base = (np.arange(L, dtype=np.int64) * E)[None, :, None]
    for chunk in trace.iter_chunks():
        ex = np.asarray(chunk.experts).astype(np.int64)
        keys = (ex + base)[ex >= 0]
        counts += np.bincount(keys, minlength=L * E)
    return counts


def choose_pinned(profile_trace: Trace, n: int, organisation: str = "shared") -> list[int]:
    """The ``n`` most requested experts of ``profile_trace`` as sorted keys ``l * E + e``.

    ``organisation="shared"``: the ``n`` hottest overall; ``"per_layer"``: the ``n`` hottest of
    *each* layer (``n * L`` keys). Ties go to the lower key, so the choice is deterministic.
    """
    L, E = profile_trace.num_layers, profile_trace.num_experts
    if organisation not in ("shared", "per_layer"):
        raise ConfigError(f"organisation must be 'shared' or 'per_layer', got {organisation!r}")
    limit = L * E if organisation == "shared" else E
    if not 0 <= n <= limit:
        raise ConfigError(f"cannot pin {n} experts {'in total' if organisation == 'shared' else 'per layer'}: "
                          f"must lie in [0, {limit}]")
    counts = expert_counts(profile_trace)
    if organisation == "shared":
        order = np.lexsort((np.arange(L * E), -counts))[:n]
        return sorted(int(k) for k in order)
    chosen: list[int] = []
    for layer in range(L):
        c = counts[layer * E:(layer + 1) * E]
        chosen += [layer * E + int(e) for e in np.lexsort((np.arange(E), -c))[:n]]
    return sorted(chosen)
