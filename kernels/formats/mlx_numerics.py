"""MLX's arithmetic, reproduced exactly: its weight dtypes, its FP8 (E4M3) conversions, its E8M0
exponent rule, its float -> uint8 cast and its uint32 bit packing, in numpy, numba and torch.

The MLX formats (:mod:`kernels.formats.mlx_affine`, :mod:`kernels.formats.mlx_fp`) are built from
these pieces; this module holds no format and registers nothing. Read from MLX 0.32's CPU backend
(``mlx/ops.cpp``, ``mlx/backend/cpu/quantized.cpp``, ``unary_ops.h``) and held to ``mlx.core`` by
``tests/test_mlx.py``:

* **Weight dtype.** MLX quantizes an array in its own dtype (bfloat16 for nearly every checkpoint,
  or float16 / float32). Every elementwise op on a 16-bit dtype is computed in float32 and rounded
  once to the dtype, nearest-even (:func:`round_to`). A NaN becomes 0x7FC0 in bfloat16 (sign
  dropped) and ``sign | 0x7D00`` in float16 (MLX's own conversion, not IEEE's quiet-NaN 0x7E00);
  widened back to float32 that float16 NaN gets the quiet bit (``sign | 0x7FE00000``).
* **FP8 E4M3** (:func:`fp8_encode`, :data:`FP8_VALUES`): nearest-even, saturating: ``|x| >= 464``
  (the midpoint of 448 and the NaN code), Inf and NaN all become 0x7E (448) with the sign kept, so
  0x7F is never produced; decoding, 0x7F / 0xFF are NaN (as in OCP's E4M3).
* **E8M0 exponent** (:func:`exponent`): ``ceil(log2(s))``, the smallest power of two not below the
  scale ``s`` (MLX rounds ``log2`` to nearest, then steps up when that power of two is below ``s``).
* **float -> uint8** (:func:`u8_cast`): MLX's ``astype(uint8)`` of a float is a C cast, which x86
  compiles as a truncation to int32 (NaN and values outside the int32 range give 0x80000000)
  keeping the low byte: -11.0 -> 245, -2147483520.0 -> 0x80, NaN -> 0.
* **Packing** (:func:`pack_bits`): codes of ``b`` bits form one LSB-first bit stream per row, stored
  as little-endian uint32 words (``n * b / 32`` per row). This is MLX's layout for every bit width:
  its power-of-two widths fill a uint32 from the low bits, its 3/5/6-bit widths write bytes of the
  same stream.

Dtype codes used by the numba kernels: :data:`BF16`, :data:`F16`, :data:`F32`.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from llvmlite import ir
from moesim.kernels import minifloat as mf
from moesim.kernels.formats.base import (
    FLOAT32,
    FormatError,
    bf16_bits_to_f32,
    f32_to_bf16_bits,
    resolve_dtype,
)
from moesim.kernels.jit import njit
from numba import prange, types
from numba.extending import intrinsic

BF16, F16, F32 = 0, 1, 2
DTYPES = {"bfloat16": BF16, "float16": F16, "float32": F32}
DTYPE_BITS = {BF16: 16, F16: 16, F32: 32}
TORCH_DTYPES = {BF16: torch.bfloat16, F16: torch.float16, F32: torch.float32}

INT32_MIN = -(2**31)  # what x86's float -> int32 conversion gives for NaN, +-Inf and out-of-range values
E_NONFINITE = INT32_MIN  # exponent of a scale that is NaN or Inf (log2 -> NaN/Inf -> int32)
FP8_SATURATED = 0x7E  # 448, MLX's E4M3 code for |x| >= 464, Inf and NaN
FP8_MAX_IN = 0x43E80000  # bits of 464.0: from here on MLX saturates (464 is the tie 448 | 480)
FP8_NORMAL_MIN = 121 << 23  # bits of 2^-6, the smallest normal E4M3
FP8_SUB_BIAS = 141 << 23  # bits of 2^14: adding it rounds to E4M3's subnormal quantum 2^-9
F16_NAN = 0x7D00  # MLX's float16 NaN (sign kept)
F16_MIN_NORMAL_BITS = 113 << 23  # float32 bits of 2^-14
F16_OVERFLOW_BITS = 0x477FF000  # float32 bits of 65520: from here on float16 rounds to Inf
FP4_VALUES = np.array([0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0],
                      dtype=np.float32)
FP4_FAST_LIMIT = np.float32(12.0)  # below this the nearest-two rule of :func:`fp4_codes` is exact


def dtype_code(name: str, fmt: str) -> int:
    try:
        return DTYPES[name]
    except KeyError:
        raise FormatError(f"{fmt}: unknown MLX weight dtype {name!r}; expected one of {sorted(DTYPES)}") from None


# ---- rounding to the weight dtype ----------------------------------------------------------------

def round_to(x: Any, dt: int) -> np.ndarray:
    """float32 values rounded to dtype ``dt`` (nearest-even, MLX's NaNs), returned as float32."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    if dt == F32:
        return x.copy()
    if dt == BF16:
        return bf16_bits_to_f32(f32_to_bf16_bits(x))
    return f16_bits_to_f32(f32_to_f16_bits(x))


def f32_to_f16_bits(x: np.ndarray) -> np.ndarray:
    """float32 -> float16 bit patterns, nearest-even, overflow to Inf, NaN -> ``sign | 0x7D00``."""
    f = np.ascontiguousarray(x, dtype=np.float32)
    with np.errstate(over="ignore"):
        h = f.astype(np.float16).view(np.uint16)
    sign = (f.view(np.uint32) >> 16).astype(np.uint16) & np.uint16(0x8000)
    return np.where(np.isnan(f), sign | np.uint16(F16_NAN), h).astype(np.uint16)


def f16_bits_to_f32(h: np.ndarray) -> np.ndarray:
    """float16 bit patterns -> float32, exactly; a NaN gets the quiet bit, as MLX's (and x86's F16C)
    widening sets it: MLX's own float16 NaN 0x7D00 becomes 0x7FE00000."""
    f = np.ascontiguousarray(h, dtype=np.uint16).view(np.float16).astype(np.float32)
    return np.where(np.isnan(f), (f.view(np.uint32) | np.uint32(0x00400000)).view(np.float32), f)


def to_storage(x: np.ndarray, dt: int) -> np.ndarray:
    """Values already on the ``dt`` grid (float32) -> how numpy stores them: float32, float16, or
    bfloat16 bit patterns as uint16 (numpy has no bfloat16)."""
    if dt == F32:
        return np.ascontiguousarray(x, dtype=np.float32)
    if dt == BF16:
        return f32_to_bf16_bits(x)
    return f32_to_f16_bits(x).view(np.float16)


def from_storage(a: np.ndarray, dt: int, fmt: str, field: str) -> np.ndarray:
    """Inverse of :func:`to_storage` (exact), checking the stored dtype."""
    a = np.asarray(a)
    want = {F32: np.float32, F16: np.float16, BF16: np.uint16}[dt]
    if a.dtype != want:
        raise FormatError(f"{fmt}: field {field!r} has dtype {a.dtype}, expected {np.dtype(want).name}"
                          + (" (bfloat16 bit patterns)" if dt == BF16 else ""))
    if dt == F32:
        return np.ascontiguousarray(a)
    if dt == BF16:
        return bf16_bits_to_f32(a)
    return f16_bits_to_f32(a.view(np.uint16))


@njit(inline="always")
def _f16_round_bits(b):
    """float32 bits -> float32 bits of the value rounded to float16 (MLX's NaN, IEEE's Inf)."""
    sign = b & 0x80000000
    a = b & 0x7FFFFFFF
    if a > 0x7F800000:
        return sign | 0x7FE00000  # float16 sign | 0x7D00, widened (and quieted) as MLX widens it
    if a >= F16_OVERFLOW_BITS:
        return sign | 0x7F800000
    if a >= F16_MIN_NORMAL_BITS:
        return sign | ((a + 0xFFF + ((a >> 13) & 1)) >> 13 << 13)
    # float16 subnormal: quantum 2^-24. The significand with its implicit bit, shifted so the
    # quantum is the unit, rounded to nearest-even with integers only.
    e = a >> 23
    if e == 0:
        return sign  # float32 subnormals are far below 2^-25: they round to zero
    m = (a & 0x7FFFFF) | 0x800000
    shift = 126 - e  # the value is m * 2^(e - 150); in quanta of 2^-24 that is m >> (126 - e)
    if shift > 24:
        return sign
    q = (m + (1 << (shift - 1)) - 1 + ((m >> shift) & 1)) >> shift
    if q == 0:
        return sign
    # q * 2^-24 back to float32 bits: q < 1024 (q == 1024 is 2^-14, the smallest normal)
    lz = 0
    t = q
    while t < 1024:
        t <<= 1
        lz += 1
    return sign | ((113 - lz) << 23) | ((t & 0x3FF) << 13)


@intrinsic
def f32_bits(typingctx, x):
    """The bits of a float32 as a uint32 (a register bitcast: no buffer, no allocation)."""
    if x != types.float32:
        return None

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.IntType(32))

    return types.uint32(types.float32), codegen


@intrinsic
def bits_f32(typingctx, u):
    """The float32 whose bits are the uint32 ``u``."""
    if u != types.uint32:
        return None

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.FloatType())

    return types.float32(types.uint32), codegen


@njit(inline="always")
def rd(x, dt):
    """float32 ``x`` rounded to dtype ``dt`` (returned as float32): MLX's result of one op in ``dt``."""
    x = np.float32(x)
    if dt == F32:
        return x
    b = np.int64(f32_bits(x))
    if dt == BF16:
        if (b & 0x7FFFFFFF) > 0x7F800000:
            return bits_f32(np.uint32(0x7FC00000))
        return bits_f32(np.uint32((((b + 0x7FFF + ((b >> 16) & 1)) >> 16) << 16) & 0xFFFFFFFF))
    return bits_f32(np.uint32(_f16_round_bits(b)))


@njit(parallel=True)
def round_rows_nb(x, dt, out):
    """``out = rd(x, dt)`` elementwise over a ``[rows, n]`` array: one pass the kernels then read
    instead of rounding every element in each of their passes (a third of the affine encode's time)."""
    rows, n = x.shape
    for r in prange(rows):
        for i in range(n):
            out[r, i] = rd(x[r, i], dt)


def rounded_rows(x2: np.ndarray, dt: int) -> np.ndarray:
    """``x2`` itself for float32 weights, else a rounded copy (numba, parallel over rows)."""
    if dt == F32:
        return x2
    out = np.empty_like(x2)
    round_rows_nb(x2, dt, out)
    return out


def round_torch(x: torch.Tensor, dt: int) -> torch.Tensor:
    """torch twin of :func:`round_to` on float32 tensors, in integer arithmetic so that neither a
    device nor ``torch.compile`` can skip or fuse the rounding."""
    if dt == F32:
        return x
    b = x.contiguous().view(torch.int32).to(torch.int64) & 0xFFFFFFFF
    a = b & 0x7FFFFFFF
    sign = b & 0x80000000
    nan = a > 0x7F800000
    if dt == BF16:
        r = ((b + 0x7FFF + ((b >> 16) & 1)) >> 16) << 16
        r = torch.where(nan, 0x7FC00000, r & 0xFFFFFFFF)
    else:
        normal = sign | ((a + 0xFFF + ((a >> 13) & 1)) >> 13 << 13)
        e = a >> 23
        m = (a & 0x7FFFFF) | 0x800000
        shift = torch.clamp(126 - e, 1, 40)
        q = (m + (1 << (shift - 1)) - 1 + ((m >> shift) & 1)) >> shift
        q = torch.where((126 - e > 24) | (e == 0), 0, q)
        sub = sign | ((q.to(torch.float32) * 2.0**-24).view(torch.int32).to(torch.int64) & 0x7FFFFFFF)
        r = torch.where(a >= F16_MIN_NORMAL_BITS, normal, sub)
        r = torch.where(a >= F16_OVERFLOW_BITS, sign | 0x7F800000, r)
        r = torch.where(nan, sign | 0x7FE00000, r)
    r = torch.where(r >= 2**31, r - 2**32, r)
    return r.to(torch.int32).view(torch.float32)


def to_storage_torch(x: torch.Tensor, dt: int) -> torch.Tensor:
    """float32 values on the ``dt`` grid -> a tensor of dtype ``dt`` with MLX's bits. Built from the
    bits because torch's own float32 -> bfloat16 cast turns a NaN into 0xFFFF."""
    if dt == F32:
        return x
    b = x.contiguous().view(torch.int32).to(torch.int64) & 0xFFFFFFFF
    if dt == BF16:
        h = b >> 16
    else:
        sign = (b >> 16) & 0x8000
        a = b & 0x7FFFFFFF
        ex = a >> 23
        normal = ((ex - 112) << 10) | ((a & 0x7FFFFF) >> 13)
        sub = ((a & 0x7FFFFF) | 0x800000) >> torch.clamp(126 - ex, 0, 40)
        h = torch.where(ex >= 113, normal, torch.where(a == 0, 0, sub))
        h = torch.where(a >= 0x7F800000, 0x7C00, h)
        h = sign | torch.where(a > 0x7F800000, F16_NAN, h)
    h = torch.where(h >= 2**15, h - 2**16, h).to(torch.int16)
    return h.view(TORCH_DTYPES[dt])


def from_storage_torch(t: torch.Tensor, dt: int) -> torch.Tensor:
    """Inverse of :func:`to_storage_torch` (exact; a float16 NaN keeps its payload and gets the quiet
    bit, as MLX widens it)."""
    if dt == F32:
        return t.to(torch.float32)
    h = t.contiguous().view(torch.int16).to(torch.int64) & 0xFFFF
    if dt == BF16:
        b = h << 16
    else:
        nan = (h & 0x7FFF) > 0x7C00
        b = t.to(torch.float32).view(torch.int32).to(torch.int64) & 0xFFFFFFFF
        b = torch.where(nan, ((h & 0x8000) << 16) | 0x7FC00000 | ((h & 0x3FF) << 13), b)  # payload kept, quieted
    b = torch.where(b >= 2**31, b - 2**32, b)
    return b.to(torch.int32).view(torch.float32)


def finish_torch(y: torch.Tensor, dtype: Any) -> torch.Tensor:
    """A float32 decode result as the requested output dtype (float32, or bfloat16 rounded
    nearest-even with MLX's NaN 0x7FC0)."""
    if resolve_dtype(dtype) == FLOAT32:
        return y
    return to_storage_torch(round_torch(y, BF16), BF16)


# ---- FP8 E4M3 as MLX converts it -----------------------------------------------------------------

def fp8_encode(v: Any) -> np.ndarray:
    """float32 values -> MLX's E4M3 codes (uint8); see the module docstring."""
    f = np.ascontiguousarray(v, dtype=np.float32)
    bits = f.view(np.uint32).astype(np.int64)
    sign = (bits >> 24) & 0x80
    a = bits & 0x7FFFFFFF
    with np.errstate(invalid="ignore", over="ignore"):
        low = (np.abs(f) + np.float32(2.0**14)).view(np.uint32).astype(np.int64) - FP8_SUB_BIAS
    high = ((a + ((7 - 127) << 23) + 0x7FFFF + ((a >> 20) & 1)) >> 20) & 0xFF
    code = np.where(a < FP8_NORMAL_MIN, low, high)
    code = np.where(a >= FP8_MAX_IN, FP8_SATURATED, code)
    return ((code | sign) & 0xFF).astype(np.uint8)


@njit(inline="always")
def fp8_encode_nb(v):
    v = np.float32(v)
    b = np.int64(f32_bits(v))
    sign = (b >> 24) & 0x80
    a = b & 0x7FFFFFFF
    if a >= FP8_MAX_IN:
        code = FP8_SATURATED
    elif a < FP8_NORMAL_MIN:
        y = abs(v) + np.float32(16384.0)  # float32 add: rounds to the 2^-9 quantum, nearest-even
        code = np.int64(f32_bits(y)) - FP8_SUB_BIAS
    else:
        code = ((a + ((7 - 127) << 23) + 0x7FFFF + ((a >> 20) & 1)) >> 20) & 0xFF
    return np.uint8((code | sign) & 0xFF)


def fp8_encode_torch(v: torch.Tensor) -> torch.Tensor:
    b = v.contiguous().view(torch.int32).to(torch.int64) & 0xFFFFFFFF
    sign = (b >> 24) & 0x80
    a = b & 0x7FFFFFFF
    # the subnormal quantum in integers: |v| / 2^-9 rounded to nearest-even (exact: |v| < 2^-6)
    t = a.to(torch.int32).view(torch.float32) * 512.0
    low = torch.round(t).to(torch.int64)
    high = ((a + ((7 - 127) << 23) + 0x7FFFF + ((a >> 20) & 1)) >> 20) & 0xFF
    code = torch.where(a < FP8_NORMAL_MIN, low, high)
    code = torch.where(a >= FP8_MAX_IN, FP8_SATURATED, code)
    return ((code | sign) & 0xFF).to(torch.uint8)


def _fp8_values() -> np.ndarray:
    """float32 value of every byte as MLX's ``from_fp8`` reads it: E4M3, with 0x7F / 0xFF the NaNs
    0x7FF00000 / 0xFFF00000 (MLX widens them through float16 NaN bits, payload included)."""
    lut = mf.lut(mf.E4M3).astype(np.float32)
    lut.view(np.uint32)[0x7F], lut.view(np.uint32)[0xFF] = 0x7FF00000, 0xFFF00000
    lut.setflags(write=False)
    return lut


FP8_VALUES = _fp8_values()


# ---- the E8M0 exponent: the smallest power of two not below the scale -----------------------------

def exponent(s: np.ndarray) -> np.ndarray:
    """MLX's E8M0 exponent (int64) of scales ``s`` (float32 values, >= 0 or NaN): 0 for ``s == 0``,
    :data:`E_NONFINITE` for NaN / Inf, else ``ceil(log2 s)``, exactly.

    MLX computes ``r = rint(log2 s)`` in the weight dtype and adds one when ``2^r < s`` (float32).
    ``log2`` of a dtype value is within half a unit of ``log2 s`` once rounded, so ``r`` is ``ceil``
    or ``ceil - 1`` and the correction lands on ``ceil(log2 s)`` whatever ``log2f`` returned: the
    exponent is read off the bits here (a power of two keeps its exponent, anything else gets one
    more).
    """
    s = np.ascontiguousarray(s, dtype=np.float32)
    bits = s.view(np.uint32).astype(np.int64) & 0x7FFFFFFF
    ex = bits >> 23
    frac = bits & 0x7FFFFF
    # subnormals: floor(log2) from the position of the highest set bit; a power of two has one bit
    hb = np.floor(np.log2(np.maximum(frac, 1).astype(np.float64))).astype(np.int64)
    k = np.where(ex == 0, hb - 149, ex - 127)
    pow2_exact = np.where(ex == 0, frac == (np.int64(1) << np.clip(hb, 0, 62)), frac == 0)
    e = k + np.where(pow2_exact, 0, 1)
    e = np.where(np.isfinite(s), e, E_NONFINITE)
    return np.where(s == 0, 0, e)


@njit(inline="always")
def exponent_nb(s):
    """numba twin of :func:`exponent` for one scale."""
    if s == 0:
        return np.int64(0)
    if not np.isfinite(s):
        return np.int64(E_NONFINITE)
    b = np.int64(f32_bits(np.float32(s))) & 0x7FFFFFFF
    ex = b >> 23
    frac = b & 0x7FFFFF
    if ex != 0:
        return ex - 127 + (1 if frac != 0 else 0)
    k = -150
    t = frac
    while t > 0:
        t >>= 1
        k += 1
    return k + (1 if frac != (np.int64(1) << (k + 149)) else 0)


def exponent_torch(s: torch.Tensor) -> torch.Tensor:
    """torch twin of :func:`exponent` (int64), from the bits."""
    b = s.contiguous().view(torch.int32).to(torch.int64) & 0x7FFFFFFF
    ex = b >> 23
    frac = b & 0x7FFFFF
    hb = floor_log2_int_torch(torch.clamp(frac, min=1))
    k = torch.where(ex == 0, hb - 149, ex - 127)
    exact = torch.where(ex == 0, frac == (torch.ones_like(hb) << torch.clamp(hb, 0, 62)), frac == 0)
    e = k + (~exact).to(torch.int64)
    e = torch.where(torch.isfinite(s), e, E_NONFINITE)
    return torch.where(s == 0, 0, e)


def floor_log2_int_torch(v: torch.Tensor) -> torch.Tensor:
    """floor(log2(v)) of positive int64 ``v < 2^24`` through an exact float32 conversion."""
    return ((v.to(torch.float32).view(torch.int32) >> 23) - 127).to(torch.int64)


# ---- powers of two and the float -> uint8 cast ---------------------------------------------------

def pow2(e: np.ndarray, dt: int) -> np.ndarray:
    """``2^e`` as MLX's ``power(2, e)`` gives it in dtype ``dt``: float32 ``powf`` (0 below 2^-149,
    2^-150 being a tie that rounds to even), then rounded to ``dt``. ``e`` holds float32 values."""
    e = np.asarray(e, dtype=np.float64)
    with np.errstate(over="ignore"):
        p = np.where(np.isnan(e), np.nan, np.exp2(np.clip(e, -1000, 1000))).astype(np.float32)
    return round_to(p, dt)


@njit(inline="always")
def pow2_nb(e, dt):
    if e != e:
        return np.float32(np.nan)
    if e > 128:
        return rd(np.float32(np.inf), dt)
    if e < -160:
        return np.float32(0.0)
    return rd(np.float32(2.0 ** np.float64(e)), dt)


def pow2_torch(e: torch.Tensor, dt: int) -> torch.Tensor:
    """torch twin of :func:`pow2`: built from exponent bits, so exact on every device."""
    ei = torch.where(torch.isnan(e), 0.0, torch.clamp(e, -200.0, 200.0)).to(torch.int64)
    normal = ((torch.clamp(ei, -126, 127) + 127) << 23)
    sub = torch.where(ei >= -149, torch.ones_like(ei) << torch.clamp(ei + 149, 0, 22), 0)
    bits = torch.where(ei >= -126, normal, sub)
    bits = torch.where(ei > 127, 0x7F800000, bits)
    p = bits.to(torch.int32).view(torch.float32)
    p = torch.where(torch.isnan(e), float("nan"), p)
    return round_torch(p, dt)


def u8_cast(v: np.ndarray) -> np.ndarray:
    """MLX's float -> uint8 ``astype`` on x86: truncate to int32 (NaN / out of range -> INT32_MIN),
    keep the low byte."""
    v = np.asarray(v, dtype=np.float64)
    ok = np.isfinite(v) & (v > -(2.0**31) - 1) & (v < 2.0**31)
    i = np.where(ok, np.trunc(np.where(ok, v, 0)), INT32_MIN).astype(np.int64)
    return (i & 0xFF).astype(np.uint8)


@njit(inline="always")
def u8_cast_nb(v):
    if v != v or v >= 2.0**31 or v <= -(2.0**31) - 1:
        return np.uint8(0)  # INT32_MIN's low byte
    return np.uint8(np.int64(v) & 0xFF)


def u8_cast_torch(v: torch.Tensor) -> torch.Tensor:
    ok = torch.isfinite(v) & (v > -(2.0**31) - 1) & (v < 2.0**31)
    i = torch.where(ok, torch.trunc(torch.where(ok, v, 0.0)).to(torch.int64), 0)
    return (i & 0xFF).to(torch.uint8)


# ---- FP4 codes: MLX's argmin over its value table --------------------------------------------------

def fp4_codes(v: np.ndarray, dt: int) -> np.ndarray:
    """MLX's FP4 code of each value: the FIRST index of the smallest ``round_dt(|v - FP4_VALUES[k]|)``.

    Ties therefore go to the smaller magnitude (0.75 -> 0.5, 1.75 -> 1.5, 5 -> 4), and anything whose
    nearest value is zero gets the +0 code (the -0 entry comes later in the table), so -0.0 and tiny
    negatives lose their sign. NaN and +-Inf give code 0 (no distance is smaller than a NaN or an
    Inf first entry). For finite ``|v| < 12`` the two nearest table values are exact neighbours
    (Sterbenz), so strict midpoint comparisons give the argmin. Beyond, the rounded distances can
    tie: with ``m = round_dt(|v| - 6)`` (the smallest), the code is 0 when ``round_dt(|v|) == m``, else
    the smallest magnitude ``j`` with ``round_dt(|v| - value_j) == m``, signed (distances are monotone
    in the table value, and every entry of the other sign is farther). :func:`fp4_code_nb` searches
    the table instead; the tests hold the two to each other and to MLX.
    """
    v = np.asarray(v, dtype=np.float32)
    a = np.abs(v)
    with np.errstate(invalid="ignore", over="ignore"):
        mag = ((a > 0.25).astype(np.uint8) + (a > 0.75) + (a > 1.25) + (a > 1.75) + (a > 2.5) + (a > 3.5)
               + (a > 5.0)).astype(np.uint8)
        m = round_to(a - np.float32(6.0), dt)
        far = np.full(a.shape, 7, np.uint8)
        for j in range(6, 0, -1):
            far = np.where(round_to(a - FP4_VALUES[j], dt) == m, np.uint8(j), far)
        far = np.where(round_to(a, dt) == m, np.uint8(0), far)
    mag = np.where(a < FP4_FAST_LIMIT, mag, far)
    code = np.where((v < 0) & (mag > 0), mag | np.uint8(8), mag)
    return np.where(np.isnan(v), 0, code).astype(np.uint8)


@njit(inline="always")
def fp4_code_nb(v, dt, table):
    """One value's code (see :func:`fp4_codes`); beyond the fast range MLX's argmin itself."""
    a = abs(v)
    if a < FP4_FAST_LIMIT:
        mag = ((a > 0.25) + (a > 0.75) + (a > 1.25) + (a > 1.75) + (a > 2.5) + (a > 3.5) + (a > 5.0))
        if v < 0 and mag > 0:
            return np.uint8(mag | 8)
        return np.uint8(mag)
    best = 0
    bd = rd(abs(rd(v - table[0], dt)), dt)
    for k in range(1, 16):
        d = rd(abs(rd(v - table[k], dt)), dt)
        if d < bd:
            best = k
            bd = d
    return np.uint8(best)


def fp4_codes_torch(v: torch.Tensor, dt: int) -> torch.Tensor:
    """torch twin of :func:`fp4_codes` (the same closed form: a few tensors of ``v``'s size)."""
    a = v.abs()
    mag = ((a > 0.25).to(torch.uint8) + (a > 0.75) + (a > 1.25) + (a > 1.75) + (a > 2.5) + (a > 3.5)
           + (a > 5.0)).to(torch.uint8)
    m = round_torch(a - 6.0, dt)
    far = torch.full_like(mag, 7)
    for j in range(6, 0, -1):
        far = torch.where(round_torch(a - float(FP4_VALUES[j]), dt) == m, j, far)
    far = torch.where(round_torch(a, dt) == m, 0, far)
    mag = torch.where(a < float(FP4_FAST_LIMIT), mag, far)
    code = torch.where((v < 0) & (mag > 0), mag | 8, mag)
    return torch.where(torch.isnan(v), 0, code).to(torch.uint8)


# ---- packing: one LSB-first bit stream per row, little-endian uint32 words -----------------------

def pack_bits(codes: np.ndarray, bits: int) -> np.ndarray:
    """``[rows, n]`` codes (< 2^bits) -> ``[rows, n*bits/32]`` uint32 words (n*bits a multiple of 32)."""
    rows, n = codes.shape
    c = codes.astype(np.uint8)
    stream = ((c[:, :, None] >> np.arange(bits, dtype=np.uint8)) & 1).reshape(rows, n * bits)
    return np.ascontiguousarray(np.packbits(stream, axis=1, bitorder="little")).view("<u4").astype(np.uint32)


def unpack_bits(words: np.ndarray, bits: int) -> np.ndarray:
    """Inverse of :func:`pack_bits`: ``[rows, w]`` uint32 -> ``[rows, w*32/bits]`` uint8 codes."""
    rows, w = words.shape
    stream = np.unpackbits(np.ascontiguousarray(words, dtype="<u4").view(np.uint8), axis=1, bitorder="little")
    per = stream.reshape(rows, w * 32 // bits, bits).astype(np.uint8)
    return (per << np.arange(bits, dtype=np.uint8)).sum(axis=2, dtype=np.uint8)


def pack_bits_torch(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """torch twin of :func:`pack_bits` on ``[..., n]``: int32 words holding the uint32 bits. The
    stream is built byte by byte (uint8), then the bytes are reinterpreted as little-endian words."""
    *lead, n = codes.shape
    c = codes.to(torch.uint8)
    stream = (c.unsqueeze(-1) >> torch.arange(bits, device=c.device, dtype=torch.uint8)) & 1
    stream = stream.reshape(*lead, n * bits // 8, 8)
    weights = torch.tensor([1, 2, 4, 8, 16, 32, 64, 128], dtype=torch.uint8, device=c.device)
    packed = (stream * weights).sum(-1, dtype=torch.uint8)
    return packed.contiguous().view(torch.int32)


def unpack_bits_torch(words: torch.Tensor, bits: int) -> torch.Tensor:
    """Inverse of :func:`pack_bits_torch`: ``[..., w]`` int32 -> ``[..., w*32/bits]`` uint8 codes."""
    *lead, w = words.shape
    b = words.contiguous().view(torch.uint8)
    stream = (b.unsqueeze(-1) >> torch.arange(8, device=b.device, dtype=torch.uint8)) & 1
    stream = stream.reshape(*lead, w * 32 // bits, bits)
    weights = (torch.ones(bits, dtype=torch.uint8, device=b.device) << torch.arange(bits, dtype=torch.uint8,
                                                                                     device=b.device))
    return (stream * weights).sum(-1, dtype=torch.uint8)
