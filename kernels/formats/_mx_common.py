"""What every MX backend shares: the element types, the E8M0 scale, the scale rules, value tables."""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass
from functools import cache

import numpy as np
from moesim.kernels import minifloat as mf

BLOCK = 32
SCALE_BIAS = 127
SCALE_NAN = 0xFF
E_MIN, E_MAX = -127, 127  # shared exponents an E8M0 byte can hold (0xFF is NaN)
RULES = ("floor", "rceil")


@dataclass(frozen=True)
class MXElement:
    """An MX element type. ``emax`` is the OCP ``emax_elem`` (exponent of the largest normal);
    ``params`` feeds the shared integer encode core (:func:`kernels.minifloat.nb_encode_bits`)."""

    name: str
    bits: int
    emax: int
    max_value: float
    params: tuple[int, int, int, int, int, int, int, int]
    spec: mf.MiniFloatSpec | None  # None for INT8

    @property
    def packed(self) -> bool:
        """FP4 codes are stored two per byte (low nibble first); the others one per byte."""
        return self.bits == 4

    @property
    def max_frac(self) -> int:
        """The 23 fraction bits of ``max_value`` as a float32 (its significand minus the leading 1):
        the rceil rule bumps the exponent when the block maximum's fraction exceeds it."""
        return struct.unpack("<I", struct.pack("<f", self.max_value))[0] & 0x7FFFFF


def _float_element(name: str, spec: mf.MiniFloatSpec) -> MXElement:
    return MXElement(name, spec.bits, spec.emax, spec.max_normal, spec.nb_params(), spec)


# MXINT8: two's complement with an implicit 2^-6, i.e. magnitudes n/64 with n <= 127. As far as the
# rounding core goes that is a "float" with 6 mantissa bits and emin = 0: below 2 the quantum is
# always 2^-6 and the magnitude code is n itself. Saturation is symmetric at +-127/64, so the
# encoder never emits 0x80 (-2.0), which still decodes as -2.0 (plain two's complement).
INT8 = MXElement("int8", 8, 0, 127 / 64, (6, 0, 0, 127, -1, -1, 7, 1), None)

ELEMENTS: dict[str, MXElement] = {
    "fp4_e2m1": _float_element("fp4_e2m1", mf.E2M1),
    "fp6_e2m3": _float_element("fp6_e2m3", mf.E2M3),
    "fp6_e3m2": _float_element("fp6_e3m2", mf.E3M2),
    "fp8_e4m3": _float_element("fp8_e4m3", mf.E4M3),
    "fp8_e5m2": _float_element("fp8_e5m2", mf.E5M2),
    "int8": INT8,
}


@cache
def element_lut(name: str) -> np.ndarray:
    """float32 value of each byte value as an element code (bits above the width ignored)."""
    el = ELEMENTS[name]
    if el.spec is None:
        lut = np.arange(256, dtype=np.uint8).view(np.int8).astype(np.float32) / np.float32(64)
    else:
        lut = mf.lut(el.spec)
    lut.setflags(write=False)
    return lut


@cache
def pair_lut(name: str) -> np.ndarray:
    """``[256, 2]`` float32: the two FP4 values of a packed byte (low nibble first)."""
    lut = element_lut(name)
    b = np.arange(256)
    pairs = np.stack([lut[b & 0xF], lut[b >> 4]], axis=1).astype(np.float32)
    pairs.setflags(write=False)
    return np.ascontiguousarray(pairs)


def scale_values(nan_scale: float = math.nan) -> np.ndarray:
    """float32 ``2^(s - 127)`` for every scale byte ``s`` (0 -> 2^-127, a float32 subnormal, exact);
    byte 0xFF -> ``nan_scale`` (NaN in OCP mode; the gpt-oss reader's arithmetic gives 2^128 = +Inf)."""
    s = np.arange(256, dtype=np.float64)
    vals = np.ldexp(1.0, (s - SCALE_BIAS).astype(np.int64))
    vals[SCALE_NAN] = nan_scale
    with np.errstate(over="ignore"):
        return vals.astype(np.float32)


OCP_SCALES = scale_values()
OCP_SCALES.setflags(write=False)
