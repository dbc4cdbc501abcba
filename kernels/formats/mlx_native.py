"""MLX itself behind the MLX formats' ``backend="mlx"``: ``mx.quantize`` / ``mx.dequantize`` on MLX's
default device, returning the same encoded dicts and decoded arrays as the numba and numpy paths.

MLX is optional (the ``mlx`` extra: ``pip install mlx mlx-cpu`` on Linux); nothing here imports it
until a call needs it, :func:`available` says whether it can, and a call without it raises a
:class:`FormatError` that names the extra. The input reaches MLX already rounded to the format's
weight dtype (bit patterns handed over, never re-rounded by MLX), so both sides quantize the very
same values. On Linux MLX runs its CPU backend, the one the numba / numpy / torch paths are held to
bit for bit; on Apple silicon its default device is the GPU (Metal kernels, not compared here).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from moesim.kernels.formats import mlx_numerics as mn
from moesim.kernels.formats.base import (
    BFLOAT16,
    FormatError,
    as_float32,
    check_last_dim,
    require,
    resolve_dtype,
)

EXTRA_HINT = "install the optional extra: pip install 'moesim[mlx]' (mlx and mlx-cpu)"


def available() -> bool:
    """Whether ``mlx.core`` can be imported (without importing it)."""
    try:
        return importlib.util.find_spec("mlx") is not None and importlib.util.find_spec("mlx.core") is not None
    except (ImportError, ValueError):
        return False


def mlx_core(fmt: str = "mlx") -> Any:
    """``mlx.core``, or a FormatError saying how to get it."""
    try:
        import mlx.core as mx
    except ImportError as exc:
        raise FormatError(f"{fmt}: backend 'mlx' needs MLX, which is not installed ({exc}); {EXTRA_HINT}") from None
    return mx


def version() -> str:
    """The installed MLX version, '' when MLX is absent."""
    if not available():
        return ""
    return str(mlx_core().__version__)


def _mx_dtype(mx: Any, dt: int) -> Any:
    return {mn.BF16: mx.bfloat16, mn.F16: mx.float16, mn.F32: mx.float32}[dt]


def to_mlx(x: np.ndarray, dt: int) -> Any:
    """float values -> an MLX array of dtype ``dt`` holding exactly :func:`round_to`'s values."""
    mx = mlx_core()
    stored = mn.to_storage(mn.round_to(x, dt), dt)
    if dt == mn.BF16:
        return mx.array(stored).view(mx.bfloat16)
    return mx.array(stored)


def to_numpy(a: Any) -> np.ndarray:
    """An MLX array -> numpy with its bits: bfloat16 as uint16 patterns, the rest as themselves."""
    mx = mlx_core()
    if a.dtype == mx.bfloat16:
        return np.array(a.view(mx.uint16))
    return np.array(a)


def _as_matrix(x32: np.ndarray) -> np.ndarray:
    # MLX quantizes arrays of two or more dimensions only; a vector is one row
    return x32.reshape(1, -1) if x32.ndim == 1 else x32


def encode(fmt: Any, x: Any) -> dict[str, np.ndarray]:
    """``mx.quantize`` of ``x`` (rounded to the format's weight dtype) as the format's encoded dict."""
    mx = mlx_core(fmt.name)
    x32 = as_float32(x, fmt.name)
    check_last_dim(x32.shape, fmt.block_size, fmt.name)
    shape = x32.shape
    w = to_mlx(_as_matrix(x32), fmt.dt)
    try:
        out = mx.quantize(w, group_size=fmt.block_size, bits=fmt.bits, mode=fmt.mode)
    except ValueError as exc:
        raise FormatError(f"{fmt.name}: MLX refused an array of shape {tuple(shape)}: {exc}") from None
    lead = shape[:-1]
    enc = {"wq": to_numpy(out[0]).reshape(*lead, -1), "scales": to_numpy(out[1]).reshape(*lead, -1)}
    if fmt.mode == "affine":
        enc["biases"] = to_numpy(out[2]).reshape(*lead, -1)
    enc["shape"] = np.asarray(shape, dtype=np.int64)
    return enc


def decode(fmt: Any, enc: Mapping[str, Any], dtype: Any = np.float32) -> np.ndarray:
    """``mx.dequantize`` of an encoded dict, as float32 or as bfloat16 bit patterns (uint16)."""
    mx = mlx_core(fmt.name)
    keys = ("wq", "scales", "biases") if fmt.mode == "affine" else ("wq", "scales")
    require(enc, keys, fmt.name)
    wq = np.asarray(enc["wq"])
    shape = tuple(int(s) for s in np.asarray(enc["shape"]).reshape(-1)) if "shape" in enc else None
    lead = wq.shape[:-1]

    def mat(a: np.ndarray) -> np.ndarray:
        return a.reshape(1, -1) if a.ndim == 1 else a

    out_dt = mx.bfloat16 if resolve_dtype(dtype) == BFLOAT16 else mx.float32
    w = mx.array(mat(np.ascontiguousarray(wq, dtype=np.uint32)))
    scales = np.ascontiguousarray(enc["scales"])
    if fmt.mode == "affine":
        s = to_mlx_stored(mat(scales), fmt.dt)
        b = to_mlx_stored(mat(np.ascontiguousarray(enc["biases"])), fmt.dt)
        y = mx.dequantize(w, s, b, group_size=fmt.block_size, bits=fmt.bits, mode="affine").astype(out_dt)
    else:
        y = mx.dequantize(w, mx.array(mat(scales.astype(np.uint8))), group_size=fmt.block_size, bits=fmt.bits,
                          mode=fmt.mode, dtype=out_dt)
    out = to_numpy(y).reshape(shape if shape is not None else (*lead, -1))
    if dtype is torch.bfloat16:
        return torch.from_numpy(out.view(np.int16)).view(torch.bfloat16)
    return out


def to_mlx_stored(a: np.ndarray, dt: int) -> Any:
    """Stored scales / biases (float32, float16, or bfloat16 bit patterns) -> an MLX array of ``dt``."""
    mx = mlx_core()
    if dt == mn.BF16:
        return mx.array(np.ascontiguousarray(a, dtype=np.uint16)).view(mx.bfloat16)
    return mx.array(a)
