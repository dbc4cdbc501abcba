"""Weight formats (MX family, NVFP4, affine int, NF4, FP8), encode/decode kernels, error metrics.

Kept light on purpose: Hugging Face's unrelated ``kernels`` package shares this name and is probed
by transformers, so nothing heavy is imported here and there is no ``__version__``.
"""

import sim.numba_env  # noqa: F401  (numba's cache location must be set before numba is imported)
