"""Expert-cache simulation: policies, the replay engine, hierarchies, prefetchers, timing."""
