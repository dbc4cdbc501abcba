"""Minifloat element formats (OCP: E2M1, E2M3, E3M2, E4M3, E5M2) with numpy, numba and torch codecs.

A code is ``sign | exponent | mantissa`` in the low ``1 + ebits + mbits`` bits of a uint8. Value of a
code with exponent field ``E`` and mantissa ``M``: ``E == 0`` -> ``M * 2^(emin - mbits)`` (subnormal,
``emin = 1 - bias``), else ``(1 + M / 2^mbits) * 2^(E - bias)``. Specials:

* E2M1, E2M3, E3M2 (FP4/FP6): no Inf, no NaN; every code is a finite number.
* E4M3 (OCP "fn" variant): no Inf; ``S.1111.111`` (0x7F / 0xFF) is NaN; largest finite 448.
* E5M2 (IEEE-like): ``S.11111.00`` is +-Inf, ``S.11111.{01,10,11}`` NaN; largest finite 57344.

Encoding rounds to nearest, ties to even (the even neighbour is the one whose code ends in 0),
keeps subnormals (no flush to zero) and keeps the sign of zero (``-0.0`` and negative values that
round to zero get the sign bit). Inputs are float32 (every backend rounds float64 to float32 first).

* ``saturate=True`` (the MX rule): anything beyond the largest finite value, +-Inf included, becomes
  +-max finite.
* ``saturate=False`` (IEEE overflow): a value that rounds beyond the largest finite value becomes
  +-Inf where the format has Inf (E5M2: from 61440 = 57344 + half an ulp, the tie going up because
  57344's code is odd), else NaN where it has NaN (E4M3: above 464; 464 itself ties to 448), else
  +-max finite (FP4/FP6 have neither).
* NaN input: the canonical positive NaN code (0x7F) where the format has NaN, else +0 (FP4/FP6
  cannot hold NaN; the MX layer marks such a block with a NaN scale instead).

Implementations: ``encode_ref`` / ``decode_ref`` are plain numpy, written straight from the value
table (nearest representable value, tie to the even code) and the bit-field formula; they are the
ground truth. ``encode_nb`` / ``encode_torch`` share one integer-only algorithm (``nb_encode_bits``,
``torch_encode_bits``): the float32 significand is shifted right by the distance to the target
quantum with round-half-even on the dropped bits, so no float rounding mode, fastmath flag or
flush-to-zero setting can change a result; the MX codecs call the same cores with the block's
shared exponent. The numba kernels use no fastmath at all: they are memory-bound, and flags such as
``nsz`` (loses -0.0) or ``nnan``/``ninf`` (breaks NaN/Inf) would change results.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from moesim.kernels.jit import njit
from numba import prange


@dataclass(frozen=True)
class MiniFloatSpec:
    """One element format. ``max_code`` is the magnitude code (sign bit clear) of the largest finite
    value; ``nan_code`` / ``inf_code`` are the positive codes of NaN / Inf, or -1 when absent."""

    name: str
    ebits: int
    mbits: int
    bias: int
    max_normal: float
    has_inf: bool
    has_nan: bool
    max_code: int
    nan_code: int
    inf_code: int

    @property
    def bits(self) -> int:
        return 1 + self.ebits + self.mbits

    @property
    def sign_shift(self) -> int:
        return self.ebits + self.mbits

    @property
    def emin(self) -> int:
        """Exponent of the smallest normal value."""
        return 1 - self.bias

    @property
    def emax(self) -> int:
        """Exponent of the largest finite value (OCP ``emax_elem``: 2 for E2M1, 8 for E4M3)."""
        return (self.max_code >> self.mbits) - self.bias

    @property
    def min_subnormal(self) -> float:
        return math.ldexp(1.0, self.emin - self.mbits)

    def nb_params(self) -> tuple[int, int, int, int, int, int, int, int]:
        """Integer parameters of the shared encode core: (mbits, emin, emax, max_code, inf_code,
        nan_code, sign_shift, int_elem)."""
        return (self.mbits, self.emin, self.emax, self.max_code, self.inf_code, self.nan_code,
                self.sign_shift, 0)


def _make(name: str, ebits: int, mbits: int, bias: int, *, ieee: bool, fn_nan: bool) -> MiniFloatSpec:
    top = (1 << (ebits + mbits)) - 1  # magnitude code with every bit set
    if ieee:  # all-ones exponent is Inf (mantissa 0) or NaN
        max_code = top - (1 << mbits)
        inf_code, nan_code = top - (1 << mbits) + 1, top
    elif fn_nan:  # only the all-ones code is NaN
        max_code, inf_code, nan_code = top - 1, -1, top
    else:
        max_code, inf_code, nan_code = top, -1, -1
    e_field, m = max_code >> mbits, max_code & ((1 << mbits) - 1)
    max_normal = math.ldexp(1.0 + m / (1 << mbits), e_field - bias)
    return MiniFloatSpec(name, ebits, mbits, bias, max_normal, inf_code >= 0, nan_code >= 0, max_code,
                         nan_code, inf_code)


E2M1 = _make("e2m1", 2, 1, 1, ieee=False, fn_nan=False)
E2M3 = _make("e2m3", 2, 3, 1, ieee=False, fn_nan=False)
E3M2 = _make("e3m2", 3, 2, 3, ieee=False, fn_nan=False)
E4M3 = _make("e4m3", 4, 3, 7, ieee=False, fn_nan=True)
E5M2 = _make("e5m2", 5, 2, 15, ieee=True, fn_nan=False)
SPECS: dict[str, MiniFloatSpec] = {s.name: s for s in (E2M1, E2M3, E3M2, E4M3, E5M2)}


# ---- plain numpy reference -------------------------------------------------------------------------

def decode_ref(codes: np.ndarray, spec: MiniFloatSpec) -> np.ndarray:
    """Value of every code (bits above the format's width are ignored), as float32."""
    c = np.asarray(codes).astype(np.int64) & ((1 << spec.bits) - 1)
    sign = np.where((c >> spec.sign_shift) & 1 == 1, -1.0, 1.0)
    e_field = (c >> spec.mbits) & ((1 << spec.ebits) - 1)
    man = c & ((1 << spec.mbits) - 1)
    sub = man * 2.0 ** (spec.emin - spec.mbits)
    normal = (1.0 + man / 2.0**spec.mbits) * np.exp2((e_field - spec.bias).astype(np.float64))
    mag = np.where(e_field == 0, sub, normal)
    mag_code = c & ((1 << spec.sign_shift) - 1)
    if spec.has_inf:  # IEEE-like: all-ones exponent is Inf (mantissa 0) or NaN
        mag = np.where(mag_code == spec.inf_code, np.inf, np.where(mag_code > spec.inf_code, np.nan, mag))
    elif spec.has_nan:
        mag = np.where(mag_code == spec.nan_code, np.nan, mag)
    return (sign * mag).astype(np.float32)


def positive_values(spec: MiniFloatSpec) -> np.ndarray:
    """Finite non-negative values in code order (index = magnitude code), float64, increasing."""
    return decode_ref(np.arange(spec.max_code + 1), spec).astype(np.float64)


def encode_ref(x: np.ndarray, spec: MiniFloatSpec, *, saturate: bool = True) -> np.ndarray:
    """Round float32 ``x`` to the nearest code (ties to the even code); see the module docstring for
    saturation, NaN, Inf and signed zero."""
    with np.errstate(invalid="ignore"):  # signalling-NaN patterns warn when widened; they stay NaN
        x64 = np.asarray(x, dtype=np.float32).astype(np.float64)
    return round_ref(x64, spec, saturate=saturate)


def round_ref(v: np.ndarray, spec: MiniFloatSpec, *, saturate: bool = True) -> np.ndarray:
    """:func:`encode_ref` on float64 values taken as they are (the MX reference divides by the block
    scale in float64, exactly, before rounding)."""
    x64 = np.asarray(v, dtype=np.float64)
    a = np.abs(x64)
    table = positive_values(spec)
    hi = np.clip(np.searchsorted(table, np.where(np.isnan(a), 0.0, a), side="left"), 0, spec.max_code)
    lo = np.clip(hi - 1, 0, spec.max_code)
    d_lo, d_hi = a - table[lo], table[hi] - a
    take_hi = (d_hi < d_lo) | ((d_hi == d_lo) & (hi % 2 == 0))
    mag = np.where(take_hi, hi, lo).astype(np.int64)
    # Overflow: beyond max finite + half an ulp (exactly at it, the tie goes up iff max's code is odd).
    ulp = 2.0 ** (spec.emax - spec.mbits)
    edge = spec.max_normal + ulp / 2
    over = (a > edge) | ((a == edge) & (spec.max_code % 2 == 1))
    sign = np.signbit(x64).astype(np.int64) << spec.sign_shift
    code = mag | sign
    if not saturate and spec.has_inf:
        code = np.where(over, spec.inf_code | sign, code)
    elif not saturate and spec.has_nan:
        code = np.where(over, spec.nan_code, code)
    else:
        code = np.where(over, spec.max_code | sign, code)
    code = np.where(np.isnan(a), spec.nan_code if spec.has_nan else 0, code)
    return code.astype(np.uint8)


# ---- numba ----------------------------------------------------------------------------------------

@njit
def rne_shift(s: int, shift: int) -> int:
    """``round(s / 2^shift)`` with ties to even, for 1 <= shift <= 25 and 0 <= s < 2^24."""
    q = s >> shift
    r = s & ((1 << shift) - 1)
    half = 1 << (shift - 1)
    if r > half or (r == half and (q & 1) == 1):
        q += 1
    return q


@njit
def nb_encode_bits(b: int, e: int, mbits: int, emin: int, emax: int, max_code: int, inf_code: int,
                   nan_code: int, sign_shift: int, int_elem: int, saturate: bool) -> int:
    """Code of the float32 with bit pattern ``b`` divided by ``2^e`` (``e`` in [-127, 127]).

    The value is ``s * 2^p`` (``s`` the 24-bit significand); the target quantum is
    ``2^(max(floor(log2 v), emin) - mbits)``, so ``n = rne(s >> shift)`` is the rounded mantissa and
    ``((k - emin) << mbits) + n`` the magnitude code (a carry into the next binade lands on the
    right code by itself). ``int_elem`` selects two's complement output (MXINT8).
    """
    sign = (b >> 31) & 1
    ex = (b >> 23) & 0xFF
    frac = b & 0x7FFFFF
    if ex == 0xFF:
        if frac != 0:
            return nan_code if nan_code >= 0 else 0
        mag = max_code + 1
    elif ex == 0 and frac == 0:
        mag = 0
    else:
        if ex == 0:
            s = frac
            p = -149 - e
            bl = math.frexp(float(frac))[1] - 1  # floor(log2) of a subnormal's significand
        else:
            s = frac | 0x800000
            p = ex - 150 - e
            bl = 23
        f = bl + p
        if f > emax + 1:
            mag = max_code + 1
        else:
            k = max(f, emin)
            # shift >= 1 whenever e >= -127 (see the module docstring of kernels.formats.mx); the
            # clamp to 25 keeps the shift defined: s < 2^24 then rounds to 0, as it must.
            shift = min(max(k - mbits - p, 1), 25)
            mag = ((k - emin) << mbits) + rne_shift(s, shift)
    if mag > max_code:
        if saturate or (inf_code < 0 and nan_code < 0):
            mag = max_code
        elif inf_code >= 0:
            mag = inf_code
        else:
            return nan_code
    if int_elem:
        return (256 - mag) & 0xFF if sign else mag
    return mag | (sign << sign_shift)


# Below this many elements the serial kernels run: a parallel launch would cost more than the work.
PARALLEL_MIN_ELEMENTS = 1 << 16


@njit(parallel=True)
def _nb_encode_par(bits, out, mbits, emin, emax, max_code, inf_code, nan_code, sign_shift, int_elem, saturate):
    for i in prange(bits.shape[0]):
        out[i] = nb_encode_bits(np.int64(bits[i]), 0, mbits, emin, emax, max_code, inf_code, nan_code,
                                sign_shift, int_elem, saturate)


@njit
def _nb_encode_ser(bits, out, mbits, emin, emax, max_code, inf_code, nan_code, sign_shift, int_elem, saturate):
    for i in range(bits.shape[0]):
        out[i] = nb_encode_bits(np.int64(bits[i]), 0, mbits, emin, emax, max_code, inf_code, nan_code,
                                sign_shift, int_elem, saturate)


@njit(parallel=True)
def _nb_lut_par(codes, lut, out):
    for i in prange(codes.shape[0]):
        out[i] = lut[codes[i]]


@njit
def _nb_lut_ser(codes, lut, out):
    for i in range(codes.shape[0]):
        out[i] = lut[codes[i]]


def encode_nb(x: np.ndarray, spec: MiniFloatSpec, *, saturate: bool = True) -> np.ndarray:
    """numba twin of :func:`encode_ref` (bit for bit)."""
    x32 = np.ascontiguousarray(x, dtype=np.float32)
    out = np.empty(x32.size, np.uint8)
    kernel = _nb_encode_par if x32.size >= PARALLEL_MIN_ELEMENTS else _nb_encode_ser
    kernel(x32.reshape(-1).view(np.uint32), out, *spec.nb_params(), bool(saturate))
    return out.reshape(x32.shape)


def lut(spec: MiniFloatSpec) -> np.ndarray:
    """float32 value of each of the 256 byte values (bits above the format's width ignored)."""
    return decode_ref(np.arange(256), spec)


def decode_nb(codes: np.ndarray, spec: MiniFloatSpec) -> np.ndarray:
    """numba twin of :func:`decode_ref` (a 256-entry table lookup)."""
    c = np.ascontiguousarray(codes, dtype=np.uint8)
    out = np.empty(c.size, np.float32)
    (_nb_lut_par if c.size >= PARALLEL_MIN_ELEMENTS else _nb_lut_ser)(c.reshape(-1), lut(spec), out)
    return out.reshape(c.shape)


# ---- torch ----------------------------------------------------------------------------------------

def _float_bits(x: torch.Tensor) -> torch.Tensor:
    return x.to(torch.float32).contiguous().view(torch.int32)


def torch_floor_log2_int(s: torch.Tensor) -> torch.Tensor:
    """floor(log2(s)) of positive int32 values below 2^24 (exact: they convert to float32 exactly)."""
    return ((s.to(torch.float32).view(torch.int32) >> 23) & 0xFF) - 127


def torch_rne_shift(s: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    q = s >> shift
    r = s & ((1 << shift) - 1)
    half = 1 << (shift - 1)
    up = (r > half) | ((r == half) & ((q & 1) == 1))
    return q + up.to(q.dtype)


def torch_encode_bits(bits: torch.Tensor, e: torch.Tensor | int, params: tuple[int, ...],
                      saturate: bool = True) -> torch.Tensor:
    """Vectorised :func:`nb_encode_bits`: float32 bit patterns (int32) divided by ``2^e`` -> uint8."""
    mbits, emin, emax, max_code, inf_code, nan_code, sign_shift, int_elem = params
    sign = (bits >> 31) & 1
    ex = (bits >> 23) & 0xFF
    frac = bits & 0x7FFFFF
    sub = ex == 0
    s = torch.where(sub, frac, frac | 0x800000)
    p = torch.where(sub, -149, ex - 150) - e
    bl = torch.where(sub, torch_floor_log2_int(frac), 23)
    f = bl + p
    k = torch.clamp(f, min=emin, max=emax + 2)
    shift = torch.clamp(k - mbits - p, 1, 25)
    mag = ((k - emin) << mbits) + torch_rne_shift(s, shift)
    over = (f > emax + 1) | (ex == 0xFF) | (mag > max_code)
    mag = torch.where((ex == 0) & (frac == 0), 0, mag)
    if saturate or (inf_code < 0 and nan_code < 0):
        over_code = max_code
    else:
        over_code = inf_code if inf_code >= 0 else nan_code
    mag = torch.where(over, over_code, mag)
    if int_elem:
        code = torch.where(sign == 1, (256 - mag) & 0xFF, mag)
    elif over_code == nan_code:  # non-saturating overflow to NaN: the canonical positive NaN code
        code = torch.where(over, mag, mag | (sign << sign_shift))
    else:
        code = mag | (sign << sign_shift)
    is_nan = (ex == 0xFF) & (frac != 0)
    code = torch.where(is_nan, nan_code if nan_code >= 0 else 0, code)
    return code.to(torch.uint8)


def encode_torch(x: torch.Tensor, spec: MiniFloatSpec, *, saturate: bool = True) -> torch.Tensor:
    """torch twin of :func:`encode_ref` (CPU or CUDA, bit for bit)."""
    return torch_encode_bits(_float_bits(x), 0, spec.nb_params(), saturate)


def decode_torch(codes: torch.Tensor, spec: MiniFloatSpec, *, dtype: Any = torch.float32) -> torch.Tensor:
    """Value of each code, computed from the bit fields (not a table), as ``dtype``."""
    c = codes.to(torch.int32) & ((1 << spec.bits) - 1)
    neg = ((c >> spec.sign_shift) & 1) == 1
    mag_code = c & ((1 << spec.sign_shift) - 1)
    e_field = mag_code >> spec.mbits
    man = mag_code & ((1 << spec.mbits) - 1)
    # (2^mbits [if normal] + M) * 2^(max(E, 1) - bias - mbits); the power of two built from its bits.
    sig = torch.where(e_field == 0, man, man + (1 << spec.mbits)).to(torch.float32)
    exp = torch.clamp(e_field, min=1) - spec.bias - spec.mbits
    val = sig * ((exp + 127) << 23).view(torch.float32)
    if spec.has_inf:
        val = torch.where(mag_code == spec.inf_code, torch.inf, val)
    if spec.has_nan:
        nan = (mag_code > spec.inf_code) if spec.has_inf else (mag_code == spec.nan_code)
        val = torch.where(nan, torch.nan, val)
    val = torch.where(neg, -val, val)
    return val.to(dtype)
