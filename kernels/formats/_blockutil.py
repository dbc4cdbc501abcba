"""Helpers shared by the NVFP4, affine-integer, NF4 and FP8 formats.

Input checks (float dtype, finite values, last dimension a multiple of the block), 4-bit packing
(two codes per byte, low nibble first, the gpt-oss convention), float32 -> bfloat16 output, and
float32 -> float16 rounding in a chosen direction, each in numpy, numba and torch flavours.

All arithmetic that decides a code is float32; constants handed to torch divisions are tensors on
the input's device (a Python-scalar divisor makes CUDA multiply by a reciprocal instead, which is
not bit-identical to a division).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from moesim.kernels.formats.base import (
    FLOAT32,
    FormatError,
    as_float32,
    check_last_dim,
    check_out_torch,
    decode_target,
    f32_to_bf16_bits,
    resolve_dtype,
)
from moesim.kernels.jit import njit

ROUND_NEAREST = 0  # ties to even
ROUND_DOWN = 1  # toward -inf
ROUND_UP = 2  # toward +inf

FP16_MAX = 65504.0


# ---- input checks ------------------------------------------------------------------------------

def _first_index(mask: np.ndarray) -> tuple[int, ...]:
    return tuple(int(i) for i in np.argwhere(mask)[0])


def as_rows(x: Any, block: int, name: str, *, max_abs: float | None = None) -> np.ndarray:
    """Validate ``x`` and return it as a contiguous float32 ``[rows, n]`` array.

    Non-finite values (and, with ``max_abs``, values of larger magnitude) are refused with the
    index of the first one: every format here would silently turn them into garbage.
    """
    x32 = as_float32(x, name)
    check_last_dim(x32.shape, block, name)
    bad = ~np.isfinite(x32)
    if bad.any():
        idx = _first_index(bad)
        raise FormatError(f"{name}: non-finite value {x32[idx]} at index {idx} of an array of shape "
                          f"{x32.shape}")
    if max_abs is not None:
        big = np.abs(x32) > np.float32(max_abs)
        if big.any():
            idx = _first_index(big)
            raise FormatError(f"{name}: value {x32[idx]} at index {idx} exceeds the representable "
                              f"magnitude {max_abs}")
    return x32.reshape(math.prod(x32.shape[:-1]), x32.shape[-1])


def as_float32_torch(x: Any, block: int, name: str, *, max_abs: float | None = None) -> torch.Tensor:
    """Torch twin of :func:`as_rows`: a float32 tensor of the same shape. The value checks need a
    host sync, so they run in eager mode only and are skipped while torch.compile traces."""
    if not isinstance(x, torch.Tensor):
        raise FormatError(f"{name}: expected a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise FormatError(f"{name}: expected a floating-point tensor, got dtype {x.dtype}")
    check_last_dim(tuple(x.shape), block, name)
    x32 = x.to(torch.float32).contiguous()
    if not torch.compiler.is_compiling() and x32.numel():
        bad = ~torch.isfinite(x32)
        if bool(bad.any()):
            idx = tuple(int(i) for i in torch.nonzero(bad)[0].tolist())
            raise FormatError(f"{name}: non-finite value {float(x32[idx])} at index {idx} of a tensor "
                              f"of shape {tuple(x.shape)}")
        if max_abs is not None:
            big = x32.abs() > max_abs
            if bool(big.any()):
                idx = tuple(int(i) for i in torch.nonzero(big)[0].tolist())
                raise FormatError(f"{name}: value {float(x32[idx])} at index {idx} exceeds the "
                                  f"representable magnitude {max_abs}")
    return x32


def check_stored_shape(enc: Mapping[str, Any], derived: tuple[int, ...], name: str) -> None:
    """The ``shape`` field, when present, must agree with the shape the codes imply."""
    if "shape" not in enc:
        return
    stored = tuple(int(s) for s in np.asarray(enc["shape"]).reshape(-1))
    if stored != tuple(derived):
        raise FormatError(f"{name}: field 'shape' says {stored} but the codes imply {tuple(derived)}")


def shape_tensor(shape: tuple[int, ...]) -> torch.Tensor:
    """The original shape as stored in a torch encoded dict (a CPU int64 tensor, like numpy's)."""
    return torch.tensor(list(shape), dtype=torch.int64)


# ---- 4-bit packing -----------------------------------------------------------------------------

def pack_nibbles(codes: np.ndarray) -> np.ndarray:
    """``[..., 2m]`` codes (0..15) -> ``[..., m]`` bytes, element ``2j`` in the low nibble."""
    return (codes[..., 0::2] | (codes[..., 1::2] << 4)).astype(np.uint8)


def unpack_nibbles(packed: np.ndarray) -> np.ndarray:
    out = np.empty((*packed.shape[:-1], packed.shape[-1] * 2), np.uint8)
    out[..., 0::2] = packed & 0x0F
    out[..., 1::2] = packed >> 4
    return out


def pack_nibbles_torch(codes: torch.Tensor) -> torch.Tensor:
    return codes[..., 0::2] | (codes[..., 1::2] << 4)


def unpack_nibbles_torch(packed: torch.Tensor) -> torch.Tensor:
    lo = packed & 0x0F
    hi = packed >> 4
    return torch.stack((lo, hi), dim=-1).reshape(*packed.shape[:-1], packed.shape[-1] * 2)


# ---- output dtype ------------------------------------------------------------------------------

def start_decode(out: Any, shape: tuple[int, ...], dtype: Any, name: str,
                 *inputs: np.ndarray) -> tuple[np.ndarray | None, np.ndarray]:
    """(the caller's buffer as a numpy view or None, the float32 array the decode writes): a float32
    decode into ``out`` writes the buffer itself; anything else gets a new float32 array, which
    :func:`finish_decode` rounds or copies into the buffer."""
    target = None if out is None else decode_target(out, shape, dtype, name, *inputs)
    if target is not None and target.dtype == np.float32:
        return target, target
    return target, np.empty(shape, np.float32)


def finish_decode(f32: np.ndarray, dtype: Any, target: np.ndarray | None = None, out: Any = None) -> Any:
    """float32 as is; bfloat16 as uint16 bit patterns, or as a torch tensor when ``torch.bfloat16``
    was asked for. With a ``target`` (from :func:`start_decode`) the result lands there and the
    caller's ``out`` is returned."""
    kind = resolve_dtype(dtype)
    if target is not None:
        if target is not f32:
            np.copyto(target, f32.reshape(target.shape) if kind == FLOAT32
                      else f32_to_bf16_bits(f32).reshape(target.shape))
        return out
    if kind == FLOAT32:
        return f32
    bits = f32_to_bf16_bits(f32)
    if dtype is torch.bfloat16:
        return torch.from_numpy(bits.view(np.int16)).view(torch.bfloat16)
    return bits


def finish_decode_torch(f32: torch.Tensor, dtype: Any, out: torch.Tensor | None = None,
                        name: str = "decode") -> torch.Tensor:
    """``f32`` as ``dtype`` (float32 or bfloat16, one rounding); copied into ``out`` when given."""
    want = torch.float32 if resolve_dtype(dtype) == FLOAT32 else torch.bfloat16
    if out is None:
        return f32 if want == torch.float32 else f32.to(torch.bfloat16)
    check_out_torch(out, tuple(f32.shape), want, f32.device, name)
    out.copy_(f32)  # the float32 -> bfloat16 cast of copy_ is .to()'s rounding
    return out


# ---- float16 rounding with a direction ----------------------------------------------------------

@njit
def fp16_round_nb(x: float, mode: int) -> np.float32:
    """Round a float32 to the float16 grid (returned as float32). ``mode``: nearest-even, down, up.

    Works in float64, where scaling by a power-of-two ulp is exact, so rint/floor/ceil do the
    rounding; results beyond 65504 become +-inf as in IEEE float16.
    """
    xd = np.float64(x)
    if xd == 0.0:
        return np.float32(xd)
    _, e = math.frexp(xd)  # |xd| in [2^(e-1), 2^e)
    ue = e - 11  # float16 has 10 fraction bits
    if ue < -24:  # subnormal float16 spacing
        ue = -24
    ulp = math.ldexp(1.0, ue)
    t = xd / ulp
    if mode == ROUND_NEAREST:
        r = np.rint(t)
    elif mode == ROUND_DOWN:
        r = math.floor(t)
    else:
        r = math.ceil(t)
    v = r * ulp
    if v > FP16_MAX:
        return np.float32(np.inf)
    if v < -FP16_MAX:
        return np.float32(-np.inf)
    return np.float32(v)


def fp16_round_ref(x: np.ndarray, mode: int) -> np.ndarray:
    """numpy reference for :func:`fp16_round_nb`, built on numpy's own float16 cast + nextafter."""
    x = np.asarray(x, np.float32)
    r16 = x.astype(np.float16)
    r = r16.astype(np.float32)
    with np.errstate(over="ignore"):  # stepping past 65504 gives inf, as it should
        if mode == ROUND_DOWN:
            r16 = np.where(r > x, np.nextafter(r16, np.float16(-np.inf)), r16)
        elif mode == ROUND_UP:
            r16 = np.where(r < x, np.nextafter(r16, np.float16(np.inf)), r16)
    return r16.astype(np.float16)


def fp16_round_torch(x: torch.Tensor, mode: int) -> torch.Tensor:
    """Torch twin (float32 in, float16 out), with the same exact-scaling algorithm as the numba one.

    A plain ``x.to(float16)`` is not used for the rounding because torch.compile may drop a
    float32 -> float16 -> float32 round trip; here the float16 ulp is built from the exponent bits
    as a float32 power of two, so ``x / ulp`` and ``* ulp`` are exact and only rint / floor / ceil
    round. The final cast to float16 is exact (or overflows to +-inf exactly as IEEE float16 does).
    """
    e = ((x.view(torch.int32) >> 23) & 0xFF) - 127  # floor(log2 |x|) for normal float32
    ulp = ((torch.clamp(e - 10, min=-24) + 127) << 23).view(torch.float32)
    t = x / ulp
    if mode == ROUND_NEAREST:
        r = torch.round(t)  # half to even
    elif mode == ROUND_DOWN:
        r = torch.floor(t)
    else:
        r = torch.ceil(t)
    return (r * ulp).to(torch.float16)
