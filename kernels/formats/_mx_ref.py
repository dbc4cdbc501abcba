"""Plain numpy MX reference, written from the spec in float64 (the ground truth for numba and torch).

Blocks are rows of a ``[nblocks, 32]`` float32 array. Shared exponent from ``np.frexp`` of the block
maximum, elements by dividing by ``2^e`` in float64 (exact) and rounding through the minifloat value
table; MXINT8 by ``np.rint(v * 64)``.
"""

from __future__ import annotations

import numpy as np
from moesim.kernels import minifloat as mf
from moesim.kernels.formats._mx_common import (
    BLOCK,
    E_MAX,
    E_MIN,
    OCP_SCALES,
    SCALE_BIAS,
    SCALE_NAN,
    MXElement,
)


def shared_exponent(amax: np.ndarray, el: MXElement, rule: str) -> np.ndarray:
    """Shared exponent per block (before the NaN check) from float64 block maxima."""
    _, ex = np.frexp(amax)
    e = (ex - 1 - el.emax).astype(np.int64)  # floor(log2(amax)) - emax_elem
    if rule == "rceil":  # smallest e with amax <= max_value * 2^e
        e = e + (amax > el.max_value * np.ldexp(1.0, e)).astype(np.int64)
    e = np.where(amax == 0, E_MIN, e)  # an all-zero block takes the smallest scale (byte 0)
    return np.clip(e, E_MIN, E_MAX)


def encode_blocks(x: np.ndarray, el: MXElement, rule: str) -> tuple[np.ndarray, np.ndarray]:
    """``x``: float32 ``[nblocks, 32]`` -> (codes uint8 ``[nblocks, 32]``, scale bytes ``[nblocks]``)."""
    x64 = np.asarray(x, dtype=np.float32).astype(np.float64).reshape(-1, BLOCK)
    amax = np.max(np.abs(x64), axis=1)  # NaN if any element is NaN
    bad = ~np.isfinite(amax)
    e = shared_exponent(np.where(bad, 1.0, amax), el, rule)
    v = x64 / np.ldexp(1.0, e)[:, None]
    if el.spec is None:
        n = np.clip(np.rint(v * 64.0), -127, 127)
        codes = np.where(np.isfinite(n), n, 0).astype(np.int64).astype(np.int8).view(np.uint8)
    else:
        codes = mf.round_ref(np.where(bad[:, None], 0.0, v), el.spec, saturate=True)
    codes = np.where(bad[:, None], 0, codes).astype(np.uint8)
    scales = np.where(bad, SCALE_NAN, e + SCALE_BIAS).astype(np.uint8)
    return codes, scales


def decode_blocks(codes: np.ndarray, scales: np.ndarray, el: MXElement,
                  scale_table: np.ndarray = OCP_SCALES) -> np.ndarray:
    """codes ``[nblocks, 32]`` and scale bytes -> float32 values ``[nblocks, 32]``."""
    if el.spec is None:
        vals = np.asarray(codes, dtype=np.uint8).view(np.int8).astype(np.float64) / 64.0
    else:
        vals = mf.decode_ref(codes, el.spec).astype(np.float64)
    s = np.asarray(scale_table, dtype=np.float32)[np.asarray(scales, dtype=np.uint8)].astype(np.float64)
    with np.errstate(over="ignore", invalid="ignore"):
        return (vals * s[:, None]).astype(np.float32)


def pack_fp4(codes: np.ndarray) -> np.ndarray:
    """``[..., 32]`` nibble codes -> ``[..., 16]`` bytes, element ``2j`` in the low nibble of byte ``j``."""
    c = np.asarray(codes, dtype=np.uint8)
    return (c[..., 0::2] & 0xF) | ((c[..., 1::2] & 0xF) << 4)


def unpack_fp4(blocks: np.ndarray) -> np.ndarray:
    b = np.asarray(blocks, dtype=np.uint8)
    out = np.empty((*b.shape[:-1], b.shape[-1] * 2), np.uint8)
    out[..., 0::2] = b & 0xF
    out[..., 1::2] = b >> 4
    return out
