"""Shared checks of the codec tests: the numba, plain-Python reference and torch backends of a
format give the same bytes when they encode and the same bits when they decode."""

from __future__ import annotations

from collections.abc import Set
from typing import Any

import numpy as np
import torch


def u8(a: np.ndarray) -> np.ndarray:
    """The bytes of ``a``, flat."""
    return np.ascontiguousarray(a).reshape(-1).view(np.uint8)


def assert_backends_agree(fmt: Any, x: np.ndarray, keys: Set[str] | None = None) -> dict[str, np.ndarray]:
    """``fmt`` encodes ``x`` to the same arrays (same names, dtypes, shapes and bytes; the names are
    ``keys`` when given) with numba, the reference and torch, and decodes the numba encoding to the
    same float32 bits with all three; returns the numba encoding."""
    a = fmt.encode(x)
    b = fmt.encode(x, backend="reference")
    c = {k: v.numpy() for k, v in fmt.encode_torch(torch.from_numpy(x)).items()}
    assert a.keys() == b.keys() == c.keys()
    if keys is not None:
        assert a.keys() == keys
    for k in a:
        assert a[k].dtype == b[k].dtype == c[k].dtype and a[k].shape == b[k].shape == c[k].shape, k
        assert np.array_equal(u8(a[k]), u8(b[k])), f"numba != reference in {k}"
        assert np.array_equal(u8(a[k]), u8(c[k])), f"numba != torch in {k}"
    d_nb = fmt.decode(a)
    assert np.array_equal(d_nb.view(np.uint32), fmt.decode(a, backend="reference").view(np.uint32))
    d_t = fmt.decode_torch({k: torch.from_numpy(v) for k, v in a.items()}).numpy()
    assert np.array_equal(d_nb.view(np.uint32), d_t.view(np.uint32))
    return a
