"""Numba's on-disk cache, keyed by the source of the whole package.

numba's ``cache=True`` keys each cached function by *its own* file only, so a change in a helper
imported from another file (the shared replay loop, say) would silently keep stale machine code.
Pointing ``NUMBA_CACHE_DIR`` at a folder named after a hash of every ``.py`` file under ``sim/``
and ``kernels/`` makes any source change start a fresh cache, and makes the cache independent of
the working directory (Hydra changes it). A user's own ``NUMBA_CACHE_DIR`` is respected. This must
run before numba is first imported, which is why the packages import it first.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

_ROOT = Path(__file__).resolve().parents[1]


def source_hash() -> str:
    digest = hashlib.sha1()
    for pkg in ("sim", "kernels"):
        for path in sorted((_ROOT / pkg).rglob("*.py")):
            digest.update(str(path.relative_to(_ROOT)).encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def configure_cache() -> None:
    if "NUMBA_CACHE_DIR" in os.environ:
        return
    base = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "moesim" / "numba"
    os.environ["NUMBA_CACHE_DIR"] = str(base / source_hash())


configure_cache()
