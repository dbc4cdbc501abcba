"""FP8 weights with one float32 scale per output channel (row) or per tensor.

Names: ``fp8-e4m3-channel``, ``fp8-e4m3-tensor``, ``fp8-e5m2-channel``, ``fp8-e5m2-tensor``.
"Channel" means every index of the leading axes (a row of the last axis): for a ``[out, in]``
weight, one scale per output channel. Bits per weight: 8 + 32 / n (channel, ``n`` the last
dimension) or 8 + 32 / numel (tensor). Arithmetic (float32):

* ``scale = amax / MAX`` over the row (or the whole tensor), ``MAX`` = 448 (E4M3) or 57344 (E5M2).
* ``code = fp8(w / scale)``, round to nearest, ties to even, saturating at +-MAX
  (:mod:`kernels.minifloat`; a quotient may exceed MAX by a rounding, saturation catches it).
* An all-zero row (or tensor) has ``scale = 0``: codes 0, decodes to 0, no division by zero.
* decode: ``fp8_value * scale`` (one float32 rounding).

NaN / Inf inputs are refused. Encoded dict: ``codes`` uint8 ``[..., n]``, ``scale`` float32
``[..., 1]`` (channel) or ``()`` (tensor), ``shape``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from moesim.kernels import minifloat as mf
from moesim.kernels.formats._blockutil import (
    as_float32_torch,
    as_rows,
    check_stored_shape,
    finish_decode,
    finish_decode_torch,
    shape_tensor,
    start_decode,
)
from moesim.kernels.formats.base import FormatError, check_backend, check_last_dim, require, shape_array
from moesim.kernels.jit import njit
from numba import prange

ELEMENTS = {"e4m3": mf.E4M3, "e5m2": mf.E5M2}
GRANULARITIES = ("channel", "tensor")


# ---- numba -----------------------------------------------------------------------------------------

@njit(parallel=True)
def _row_amax_nb(x2, out):
    for r in prange(x2.shape[0]):
        m = np.float32(0.0)
        for i in range(x2.shape[1]):
            m = max(m, abs(x2[r, i]))
        out[r] = m


@njit(parallel=True)
def _encode_nb(x2, scale, p, ybuf, ybits, codes):
    """``scale[r]`` per row (a per-tensor scale is broadcast); ``ybuf``/``ybits`` are a float32
    scratch array and its uint32 view (the minifloat core reads float32 bit patterns)."""
    rows, n = x2.shape
    zero = np.float32(0.0)
    for r in prange(rows):
        s = scale[r]
        for i in range(n):
            c = 0
            if s > zero:
                ybuf[r, i] = x2[r, i] / s
                c = mf.nb_encode_bits(np.int64(ybits[r, i]), 0, p[0], p[1], p[2], p[3], p[4], p[5], p[6],
                                      p[7], True)
            codes[r, i] = c


@njit(parallel=True)
def _decode_nb(codes, scale, lut, out):
    rows, n = out.shape
    for r in prange(rows):
        s = scale[r]
        for i in range(n):
            out[r, i] = lut[codes[r, i]] * s


# ---- the format --------------------------------------------------------------------------------------

@dataclass(frozen=True)
class FP8Format:
    """FP8 (E4M3 or E5M2) with a float32 scale per row or per tensor; see the module docstring."""

    element: str
    granularity: str
    name: str = field(init=False)

    def __post_init__(self) -> None:
        if self.element not in ELEMENTS:
            raise FormatError(f"fp8: element must be one of {sorted(ELEMENTS)}, got {self.element!r}")
        if self.granularity not in GRANULARITIES:
            raise FormatError(f"fp8: granularity must be one of {GRANULARITIES}, got {self.granularity!r}")
        object.__setattr__(self, "name", f"fp8-{self.element}-{self.granularity}")

    @property
    def spec(self) -> mf.MiniFloatSpec:
        return ELEMENTS[self.element]

    @property
    def block_size(self) -> int:
        return 1  # any last dimension works; the scale spans a row or the tensor

    def bits_per_weight(self, shape: tuple[int, ...]) -> float:
        check_last_dim(tuple(shape), 1, self.name)
        span = int(shape[-1]) if self.granularity == "channel" else math.prod(int(s) for s in shape)
        if span == 0:
            raise FormatError(f"{self.name}: shape {tuple(shape)} is empty; a scale cannot be amortised "
                              f"over zero weights")
        return 8 + 32 / span

    def _scale_shape(self, lead: tuple[int, ...]) -> tuple[int, ...]:
        return (*lead, 1) if self.granularity == "channel" else ()

    # -- numpy / numba --
    def encode(self, x: np.ndarray, *, backend: str = "numba") -> dict[str, np.ndarray]:
        check_backend(backend, self.name)
        x2 = as_rows(x, 1, self.name)
        shape = np.shape(x)
        rows, n = x2.shape
        top = np.float32(self.spec.max_normal)
        if backend == "numba":
            row_amax = np.empty(rows, np.float32)
            _row_amax_nb(x2, row_amax)
            if self.granularity == "channel":
                row_scale = row_amax / top
            else:
                row_scale = np.full(rows, np.float32(row_amax.max(initial=np.float32(0))) / top, np.float32)
            codes = np.empty((rows, n), np.uint8)
            ybuf = np.zeros((rows, n), np.float32)
            _encode_nb(x2, row_scale, np.array(self.spec.nb_params(), np.int64), ybuf, ybuf.view(np.uint32),
                       codes)
            scale = row_scale[:, None] if self.granularity == "channel" else row_scale[:1]
        else:
            if self.granularity == "channel":
                scale = np.abs(x2).max(-1, keepdims=True, initial=np.float32(0)) / top
            else:
                scale = np.array([np.float32(np.abs(x2).max(initial=np.float32(0))) / top], np.float32)
            s = np.broadcast_to(scale, (rows, 1)) if scale.size else scale.reshape(0, 1)
            y = x2 / np.where(s > 0, s, np.float32(1))
            codes = np.where(s > 0, mf.encode_ref(y, self.spec, saturate=True), np.uint8(0)).astype(np.uint8)
        return {"codes": codes.reshape(shape),
                "scale": np.asarray(scale, np.float32).reshape(self._scale_shape(shape[:-1])),
                "shape": shape_array(shape)}

    def _check_enc(self, codes_shape: tuple[int, ...], scale_shape: tuple[int, ...]) -> None:
        want = self._scale_shape(tuple(codes_shape[:-1]))
        if tuple(scale_shape) != want:
            raise FormatError(f"{self.name}: field 'scale' has shape {tuple(scale_shape)}, expected {want} "
                              f"for codes of shape {tuple(codes_shape)}")

    def decode(self, enc: dict[str, np.ndarray], *, dtype: Any = np.float32, backend: str = "numba",
               out: Any = None) -> Any:
        check_backend(backend, self.name)
        require(enc, ("codes", "scale"), self.name)
        codes = np.ascontiguousarray(enc["codes"], np.uint8)
        scale = np.asarray(enc["scale"], np.float32)
        if codes.ndim == 0:
            raise FormatError(f"{self.name}: field 'codes' must have at least one dimension")
        self._check_enc(codes.shape, scale.shape)
        check_stored_shape(enc, codes.shape, self.name)
        rows, n = math.prod(codes.shape[:-1]), codes.shape[-1]
        codes2 = codes.reshape(rows, n)
        row_scale = np.broadcast_to(scale.reshape(-1), (rows,)) if rows else np.zeros(0, np.float32)
        target, f32 = start_decode(out, codes.shape, dtype, self.name, codes, scale)
        if backend == "numba":
            _decode_nb(codes2, np.ascontiguousarray(row_scale), mf.lut(self.spec), f32.reshape(rows, n))
        else:
            np.copyto(f32, (mf.decode_ref(codes2, self.spec) * row_scale[:, None]).reshape(f32.shape))
        return finish_decode(f32, dtype, target, out)

    # -- torch --
    def encode_torch(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        x32 = as_float32_torch(x, 1, self.name)
        dev = x32.device
        top = torch.full((), float(self.spec.max_normal), dtype=torch.float32, device=dev)
        zero = torch.zeros((), dtype=torch.float32, device=dev)
        if self.granularity == "channel":
            amax = x32.abs().amax(-1, keepdim=True) if x32.shape[-1] else x32.new_zeros((*x32.shape[:-1], 1))
            scale = amax / top
        else:
            scale = (x32.abs().amax() if x32.numel() else zero) / top
        pos = scale > zero
        y = x32 / torch.where(pos, scale, 1.0)
        codes = torch.where(pos, mf.encode_torch(y, self.spec, saturate=True), 0).to(torch.uint8)
        return {"codes": codes, "scale": scale, "shape": shape_tensor(tuple(x32.shape))}

    def decode_torch(self, enc: dict[str, torch.Tensor], *, dtype: Any = torch.float32,
                     out: torch.Tensor | None = None) -> torch.Tensor:
        require(enc, ("codes", "scale"), self.name)
        codes, scale = enc["codes"], enc["scale"].to(torch.float32)
        self._check_enc(tuple(codes.shape), tuple(scale.shape))
        return finish_decode_torch(mf.decode_torch(codes, self.spec) * scale, dtype, out, self.name)


FORMATS: dict[str, FP8Format] = {
    f.name: f for f in (FP8Format(e, g) for e in ELEMENTS for g in GRANULARITIES)
}
