"""The one way moesim compiles with numba: :func:`njit`, cached on disk in a folder keyed by the source.

Every jitted module of the project (``sim``, ``kernels``, ``traces``) imports ``njit`` from here,
never from numba (a test checks it), so the cache rules hold by construction and not by import
order or by an ``__init__`` side effect:

- **Where.** numba's default puts cache files in ``__pycache__`` next to each source file, or in
  ``NUMBA_CACHE_DIR`` if that was set before numba was first imported. Setting an environment
  variable from inside the package only works when the package wins the race to import numba,
  which a user's notebook or a test runner may not let it. Instead, a cache locator is registered
  with numba (its locators are tried in order; ours is first and answers only for files of this
  package) and puts every cache file under :func:`cache_root`.
- **Key.** numba keys a cached function by the content of *its own* file, so an edit of a helper
  imported from another file (the shared replay loop, a policy's list helpers, a codec's rounding
  step) would silently keep stale machine code. :func:`cache_root` is named after a hash of every
  ``.py`` file of the jitted packages, so any source change starts a fresh cache.

This module is the ground floor: it imports nothing else of moesim, so ``traces`` and ``sim`` can
use it without importing anything heavy. A user's own ``NUMBA_CACHE_DIR`` is respected: the cache
goes below it, still keyed by the source hash.
"""

from __future__ import annotations

import functools
import hashlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numba
from numba.core.caching import CacheImpl, _CacheLocator, _SourceFileBackedLocatorMixin

# The folder that holds the packages: the repository root in an editable install, ``moesim/`` in
# site-packages for a wheel. Both hold the same relative paths (``sim/``, ``kernels/``, ``traces/``).
PACKAGE_ROOT = Path(__file__).resolve().parents[1]
JITTED_PACKAGES = ("sim", "kernels", "traces")


@functools.cache
def source_hash() -> str:
    """A hash of every ``.py`` file (path and bytes) of the packages that hold jitted code."""
    digest = hashlib.sha1()
    for pkg in JITTED_PACKAGES:
        for path in sorted((PACKAGE_ROOT / pkg).rglob("*.py")):
            digest.update(str(path.relative_to(PACKAGE_ROOT)).encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def cache_root() -> Path:
    """The folder that holds every compiled function of this source tree."""
    user = os.environ.get("NUMBA_CACHE_DIR")
    if user:
        return Path(user) / "moesim" / source_hash()
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "moesim" / "numba" / source_hash()


def _package_relative(py_file: str) -> Path | None:
    try:
        rel = Path(py_file).resolve().relative_to(PACKAGE_ROOT)
    except ValueError:
        return None
    return rel if rel.parts and rel.parts[0] in JITTED_PACKAGES else None


class PackageCacheLocator(_SourceFileBackedLocatorMixin, _CacheLocator):
    """numba cache locator for this package's files: ``cache_root() / <the file's package folder>``.

    The freshness stamp of each function stays numba's own (a hash of its file); the folder adds
    the whole-source key. Files outside this package get ``None``, so numba's own locators serve them.
    """

    def __init__(self, py_func: Callable[..., Any], py_file: str) -> None:
        self._py_file = py_file
        self._lineno = py_func.__code__.co_firstlineno
        rel = _package_relative(py_file)
        assert rel is not None
        self._cache_path = str(cache_root() / rel.parent)

    def get_cache_path(self) -> str:
        return self._cache_path

    @classmethod
    def from_function(cls, py_func: Callable[..., Any], py_file: str) -> PackageCacheLocator | None:
        if _package_relative(py_file) is None:
            return None
        return super().from_function(py_func, py_file)


def _register() -> None:
    # CacheImpl._locator_classes is numba's ordered list of locators (numba.core.caching); every
    # cache implementation inherits it. Ours goes first and declines files that are not ours.
    if PackageCacheLocator not in CacheImpl._locator_classes:
        CacheImpl._locator_classes.insert(0, PackageCacheLocator)


_register()


def njit(*args: Any, **options: Any) -> Any:
    """``numba.njit`` with ``cache=True`` by default, cached under :func:`cache_root`.

    Used as ``@njit``, ``@njit(parallel=True)`` or ``njit(**options)(function)``.
    """
    options.setdefault("cache", True)
    return numba.njit(*args, **options)


__all__ = ["JITTED_PACKAGES", "PACKAGE_ROOT", "PackageCacheLocator", "cache_root", "njit", "source_hash"]
