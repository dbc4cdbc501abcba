"""Expert-cache simulation: policies, the replay engine, hierarchies, prefetchers, timing."""

import sim.numba_env  # noqa: F401  (must run before numba is imported)
