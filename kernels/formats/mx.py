"""The OCP Microscaling (MX v1.0) family: MXFP4, MXFP6 (E2M3, E3M2), MXFP8 (E4M3, E5M2), MXINT8.

Each block of 32 consecutive values along the last axis shares one E8M0 scale byte ``s`` (the power
of two ``2^(s-127)``; 0xFF is NaN); each value is stored as an element code and decodes to
``element_value * 2^(s-127)``.

Shared exponent (the rule is part of the registered name):

* ``floor`` (OCP, the default; ``"mxfp4"``): ``e = floor(log2(amax)) - emax_elem`` with ``emax_elem``
  2 for E2M1 / E2M3, 4 for E3M2, 8 for E4M3, 15 for E5M2 and 0 for INT8. The largest value can then
  exceed the element range (``amax / 2^e`` up to just under ``2^(emax_elem+1)``) and saturates.
* ``rceil`` (``"mxfp4-rceil"``, NVIDIA's / triton's kernels): the smallest ``e`` with
  ``amax <= max_element * 2^e``, so nothing saturates. This equals triton's float32 rule
  ``(bits(amax / max_element) + 0x7FFFFF) & 0x7F800000`` whenever ``amax / max_element >= 2^-126``
  (a float32 ``amax`` just above ``max_element * 2^k`` is far enough above it that the float32
  quotient never rounds down to ``2^k``); below that, triton stops at 2^-126 where we go on to 2^-127.

Elements: ``value / 2^e`` rounded to nearest, ties to even, saturating at the largest finite element
(FP8 elements therefore never encode Inf or NaN). MXINT8 elements are two's complement with an
implicit 2^-6 (value ``n / 64``), saturating symmetrically at +-127/64; 0x80 decodes to -2.0.

Edge cases, all tested:

* All-zero block: scale byte 0 (``floor(log2(0)) = -inf`` clamps to the smallest exponent, -127), all
  element codes zero (or negative-zero codes where the inputs were -0.0).
* Negative zero is kept (sign bit set in the element code), except in MXINT8, whose two's
  complement has no -0: it encodes as 0.
* Subnormal elements are kept: no flush to zero anywhere (the numba kernels use no fastmath flags).
* Exponent clamping: the shared exponent is clamped to the E8M0 range [-127, 127]. With float32
  inputs only the low end can bind (amax < 2^(emax_elem - 126)); then elements are rounded at the
  fixed scale 2^-127, tiny ones to (signed) zero. At the top, rceil on amax near float32's maximum
  can ask for 2^128 and is held at 2^127 (the element saturates).
* NaN or +-Inf anywhere in a block: scale byte 0xFF and all element codes 0; the whole block decodes
  to NaN (OCP: a NaN scale makes every value of the block NaN).
* Scale byte 0xFF met when decoding: the whole block decodes to NaN, whatever the codes.
* Decoding an E4M3 NaN code or an E5M2 Inf/NaN code (never produced by the encoder) gives
  NaN / +-Inf times the scale.
* NaN bit patterns are not preserved: numpy paths give whatever NaN the arithmetic gives, bf16
  outputs use the canonical 0x7FC0.

Checked against torchao (``prototype.mx_formats``, the version pinned in the dev extra) bit for bit:
decoding for every scale byte and element code; encoding with its FLOOR rule everywhere except
where torchao departs from the scale it stores: at scale byte 0 it divides the elements by 2^-126
(float32's smallest normal) instead of 2^-127, and a block holding Inf (and no NaN) gets the byte
``255 - emax_elem`` with saturated elements instead of NaN. Its RCEIL on CPU computes
``ceil(log2(amax / max_element))`` with a float32 log2, which rounds to ``k`` for a quotient a few
ulps above ``2^k`` (up to 22 ulps for |k| > 64), so there its scale is one lower than ``rceil``'s
and the largest element saturates; its byte 0 multiplies by 1.0 instead of 2^127 and an Inf block
gets byte 254. ``tests/test_torchao_reference.py`` pins each difference exactly.

Inputs are rounded to float32 first (float16 / bfloat16 are exact in it). Decoded values are exact
in float32 (an element times a power of two) except products at or above 2^128, which are +-Inf.
bfloat16 output is the float32 result rounded to nearest-even (numpy: uint16 bit patterns).

Decoding into a caller's buffer: ``decode(enc, out=buffer)`` (numpy array or CPU tensor) and
``decode_torch(enc, out=tensor)``; large aligned outputs are written with streaming stores
(:mod:`kernels.formats._stream`), so a decode into a reused buffer runs at memory speed.

Encoded dict (numpy; the torch dicts lack "shape"): MXFP4 ``{"blocks": uint8 [..., G, 16],
"scales": uint8 [..., G], "shape"}`` with element ``2j`` in the low nibble of byte ``j`` (the gpt-oss
checkpoint layout); the others ``{"codes": uint8 [..., G, 32], "scales", "shape"}``, one code per
byte (``bits_per_weight`` counts the packed size: element bits + 8/32).

Why the integer encode core never shifts by less than 1 (:func:`kernels.minifloat.nb_encode_bits`):
with ``e >= -127`` a float32 value ``s * 2^p`` divided by ``2^e`` has ``p >= -149 + 127 = -22``; a
normal input has ``shift >= 23 - mbits``, and a subnormal one whose exponent reaches ``emin`` has at
least ``emin + 22 >= 8`` significant bits, more than any element's mantissa width.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from moesim.kernels.formats import _mx_numba as nbk
from moesim.kernels.formats import _mx_ref as ref
from moesim.kernels.formats import _mx_torch as tk
from moesim.kernels.formats._mx_common import (
    BLOCK,
    ELEMENTS,
    OCP_SCALES,
    RULES,
    MXElement,
    element_lut,
    pair_lut,
)
from moesim.kernels.formats.base import (
    BFLOAT16,
    FormatError,
    as_float32,
    check_backend,
    check_last_dim,
    decode_target,
    f32_to_bf16_bits,
    require,
    resolve_dtype,
    shape_array,
    shape_of,
)

__all__ = ["BLOCK", "ELEMENTS", "FORMATS", "MXFormat", "decode_mx", "encode_mx"]


def encode_mx(x: np.ndarray, element: str | MXElement, rule: str = "floor", *, backend: str = "numba",
              parallel: bool | None = None, fmt: str = "mx") -> tuple[np.ndarray, np.ndarray]:
    """float ``x [..., N]`` -> (codes ``[..., N/32, 32]`` or packed FP4 ``[..., N/32, 16]``, scales
    ``[..., N/32]``), all uint8. ``parallel`` forces the numba kernel's kind (default: by size)."""
    el = ELEMENTS[element] if isinstance(element, str) else element
    if rule not in RULES:
        raise FormatError(f"{fmt}: unknown scale rule {rule!r}; expected one of {RULES}")
    check_backend(backend, fmt)
    x32 = as_float32(x, fmt)
    groups = check_last_dim(x32.shape, BLOCK, fmt)
    lead = x32.shape[:-1]
    nb = x32.size // BLOCK
    if backend == "reference":
        codes, scales = ref.encode_blocks(x32.reshape(nb, BLOCK), el, rule)
        data = ref.pack_fp4(codes) if el.packed else codes
    else:
        bits = x32.reshape(-1).view(np.uint32)
        scales = np.empty(nb, np.uint8)
        data = np.empty(nb * (16 if el.packed else BLOCK), np.uint8)
        if el.packed:  # E2M1, the only packed element, has a kernel of its own (fixed grid)
            nbk.pick("encode_fp4", nb, parallel)(bits, data, scales, el.emax, el.max_frac, rule == "rceil")
        else:
            nbk.pick("encode_unpacked", nb, parallel)(bits, data, scales, el.emax, el.max_frac,
                                                      rule == "rceil", *el.params)
    width = 16 if el.packed else BLOCK
    return data.reshape(*lead, groups, width), scales.reshape(*lead, groups)


def decode_mx(data: np.ndarray, scales: np.ndarray, element: str | MXElement, *, dtype: Any = np.float32,
              backend: str = "numba", scale_table: np.ndarray = OCP_SCALES,
              lut: np.ndarray | None = None, parallel: bool | None = None, fmt: str = "mx",
              out: Any = None, shape: tuple[int, ...] | None = None) -> Any:
    """Inverse of :func:`encode_mx`: ``[..., G, 16 or 32]`` codes and ``[..., G]`` scales -> ``[..., G*32]``
    (or ``shape``, the same number of values).

    ``scale_table`` (float32 per scale byte) and ``lut`` (float32 per element byte) let checkpoint
    readers reproduce other conventions (gpt-oss's 0xFF, ggml's half scale) with the same kernels.
    ``out``: a buffer to decode into (:func:`kernels.formats.base.decode_target`), returned.
    """
    el = ELEMENTS[element] if isinstance(element, str) else element
    check_backend(backend, fmt)
    out_kind = resolve_dtype(dtype)
    data = np.ascontiguousarray(data, dtype=np.uint8)
    scales = np.ascontiguousarray(scales, dtype=np.uint8)
    width = 16 if el.packed else BLOCK
    if data.ndim == 0 or data.shape[-1] != width or data.shape[:-1] != scales.shape:
        raise FormatError(f"{fmt}: codes of shape {data.shape} do not match scales of shape {scales.shape} "
                          f"(expected codes [..., G, {width}] and scales [..., G])")
    lead = scales.shape[:-1]
    n = scales.shape[-1] * BLOCK if scales.ndim else BLOCK
    nb = scales.size
    if shape is None:
        shape = (*lead, n)
    elif math.prod(shape) != nb * BLOCK:
        raise FormatError(f"{fmt}: field 'shape' says {tuple(shape)} but the codes hold {nb * BLOCK} values")
    d2 = data.reshape(nb, width)
    s1 = scales.reshape(nb)
    table = np.ascontiguousarray(scale_table, dtype=np.float32)
    kind = np.float32 if out_kind != BFLOAT16 else np.uint16
    if out is None:
        target = np.empty((nb, BLOCK), kind)
    else:
        target = decode_target(out, shape, dtype, fmt, data, scales).reshape(nb, BLOCK)
    if backend == "reference":
        codes = ref.unpack_fp4(d2) if el.packed else d2
        if lut is None:
            result = ref.decode_blocks(codes, s1, el, table)
        else:  # a caller's element table: value lookup, float32 product (exact, as the kernels do)
            with np.errstate(over="ignore", invalid="ignore"):
                result = (np.asarray(lut, np.float64)[codes] * table[s1].astype(np.float64)[:, None]).astype(
                    np.float32)
        np.copyto(target, f32_to_bf16_bits(result) if out_kind == BFLOAT16 else result)
    else:
        values = np.ascontiguousarray(element_lut(el.name) if lut is None else lut, dtype=np.float32)
        pairs = pair_lut(el.name) if lut is None else np.ascontiguousarray(
            np.stack([values[np.arange(256) & 0xF], values[np.arange(256) >> 4]], axis=1))
        if out_kind == BFLOAT16 and el.packed and sys.byteorder == "little" and target.ctypes.data % 4 == 0:
            words = target.view(np.uint32)  # [nb, 16]: two bf16 values per word, low nibble's first
            nbk.decode_into("decode_fp4_bf16", words, parallel, d2, s1, nbk.fp4_bf16_pair_table(s1, pairs, table))
        elif out_kind == BFLOAT16:
            nbk.decode_into("decode_bf16", target, parallel, d2, el.packed, s1, values, pairs, table)
        elif el.packed:
            nbk.decode_into("decode_fp4", target, parallel, d2, s1, pairs, table)
        else:
            nbk.decode_into("decode_unpacked", target, parallel, d2, s1, values, table)
    return out if out is not None else target.reshape(shape)


@dataclass(frozen=True)
class MXFormat:
    """One registered MX format: an element type and a scale rule."""

    name: str
    element: MXElement
    rule: str = "floor"

    @property
    def block_size(self) -> int:
        return BLOCK

    @property
    def data_key(self) -> str:
        return "blocks" if self.element.packed else "codes"

    def bits_per_weight(self, shape: tuple[int, ...]) -> float:
        check_last_dim(tuple(shape), BLOCK, self.name)
        return self.element.bits + 8.0 / BLOCK

    def encode(self, x: np.ndarray, *, backend: str = "numba") -> dict[str, np.ndarray]:
        x32 = as_float32(x, self.name)
        data, scales = encode_mx(x32, self.element, self.rule, backend=backend, fmt=self.name)
        return {self.data_key: data, "scales": scales, "shape": shape_array(x32.shape)}

    def decode(self, enc: Mapping[str, np.ndarray], *, dtype: Any = np.float32,
               backend: str = "numba", out: Any = None) -> Any:
        require(enc, (self.data_key, "scales"), self.name)
        return decode_mx(enc[self.data_key], enc["scales"], self.element, dtype=dtype, backend=backend,
                         fmt=self.name, out=out, shape=shape_of(enc) if "shape" in enc else None)

    def encode_torch(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        check_last_dim(tuple(x.shape), BLOCK, self.name)
        return tk.encode(x, self.element, self.rule)

    def decode_torch(self, enc: Mapping[str, torch.Tensor], *, dtype: Any = torch.float32,
                     out: torch.Tensor | None = None) -> torch.Tensor:
        require(enc, (self.data_key, "scales"), self.name)
        return tk.decode(dict(enc), self.element, dtype=dtype, out=out, fmt=self.name)


def _formats() -> dict[str, MXFormat]:
    names = {"fp4_e2m1": "mxfp4", "fp6_e2m3": "mxfp6_e2m3", "fp6_e3m2": "mxfp6_e3m2",
             "fp8_e4m3": "mxfp8_e4m3", "fp8_e5m2": "mxfp8_e5m2", "int8": "mxint8"}
    out: dict[str, MXFormat] = {}
    for key, base in names.items():
        out[base] = MXFormat(base, ELEMENTS[key], "floor")
        out[f"{base}-rceil"] = MXFormat(f"{base}-rceil", ELEMENTS[key], "rceil")
    return out


FORMATS: dict[str, MXFormat] = _formats()
