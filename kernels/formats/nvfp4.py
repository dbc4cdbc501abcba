"""NVFP4: E2M1 elements in blocks of 16, an E4M3 scale per block, an fp32 scale per tensor.

Name: ``nvfp4``. Bits per weight: 4 + 8/16 = 4.5, plus the 32-bit tensor scale amortised over the
tensor (``4.5 + 32 / numel``). Arithmetic (all float32, every rounding explicit):

* tensor scale ``ts = amax(|x|) / 2688`` (2688 = 6 * 448: E2M1's and E4M3's largest values), over
  the whole array passed to ``encode``.
* block scale ``s = (amax(|block|) / 6) / ts``, encoded to E4M3 with round-to-nearest-even and
  saturation at 448 (:mod:`kernels.minifloat`); ``S`` is the decoded E4M3 value. NVIDIA's
  TensorRT Model Optimizer computes ``amax / (6 * ts)`` instead, which can differ in the last bit
  of the float32 before the E4M3 rounding.
* element code: ``d = S * ts``; ``x / d`` encoded to E2M1 (RNE, saturating at 6: the E4M3 rounding
  of ``s`` can leave ``|x| / d`` up to ~6.4).
* decode: ``e2m1 * S * ts``; ``e2m1 * S`` is exact in float32, so the result is the exact product
  rounded once.

Edge cases:

* All-zero tensor: ``ts = 0``; every block scale code is 0x00 and every element code 0; decodes to 0.
* All-zero block: ``s = 0`` -> scale code 0x00, element codes 0 (Model Optimizer stores 1.0 for such
  a block instead; the decoded zeros are the same).
* Block scale that rounds to zero: ``s < 2^-10`` (half the smallest E4M3 subnormal), i.e. a block
  whose amax is below ~2.2e-6 of the tensor's amax. Its scale code is 0x00 and, since ``d == 0``,
  its element codes are 0: the block decodes to zeros (error = the block's own tiny values). The
  same holds when ``S * ts`` underflows float32 (a tensor amax below ~1e-35).
* NaN / Inf inputs are refused (``FormatError`` naming the first index): the per-tensor amax
  would poison every block. The E4M3 scale never holds NaN (0x7F) because ``s`` is finite.

Codes: ``codes`` uint8 ``[..., n/2]`` (two E2M1 codes per byte, low nibble first), ``scale``
uint8 ``[..., n/16]`` (E4M3 codes), ``tensor_scale`` float32 ``()``, ``shape``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
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
    pack_nibbles,
    pack_nibbles_torch,
    shape_tensor,
    unpack_nibbles,
    unpack_nibbles_torch,
)
from moesim.kernels.formats.base import FormatError, check_backend, check_last_dim, require, shape_array
from moesim.kernels.jit import njit
from numba import prange

BLOCK = 16
E2M1_MAX = np.float32(6.0)
E4M3_MAX = np.float32(448.0)
TENSOR_DIVISOR = np.float32(6.0 * 448.0)
_E4M3_LUT = mf.lut(mf.E4M3)
_E2M1_LUT = mf.lut(mf.E2M1)
_E4M3_P = np.array(mf.E4M3.nb_params(), np.int64)
_E2M1_P = np.array(mf.E2M1.nb_params(), np.int64)


# ---- numba -----------------------------------------------------------------------------------------

@njit(inline="always")
def _mf_code(bits, p):
    return mf.nb_encode_bits(np.int64(bits), 0, p[0], p[1], p[2], p[3], p[4], p[5], p[6], p[7], True)


@njit(parallel=True)
def _row_amax_nb(x2, out):
    for r in prange(x2.shape[0]):
        m = np.float32(0.0)
        for i in range(x2.shape[1]):
            m = max(m, abs(x2[r, i]))
        out[r] = m


@njit(parallel=True)
def _encode_nb(x2, ts, block, p4, p2, lut4, sbuf, sbits, ybuf, ybits, codes, scale):
    """``sbuf``/``ybuf`` are float32 scratch arrays and ``sbits``/``ybits`` their uint32 views: the
    shared minifloat core reads float32 bit patterns, and a store + reload is how numba gets them."""
    rows, n = x2.shape
    nb = n // block
    zero = np.float32(0.0)
    six = np.float32(6.0)
    for t in prange(rows * nb):
        r = t // nb
        bi = t - r * nb
        lo = bi * block
        amax = zero
        for i in range(lo, lo + block):
            amax = max(amax, abs(x2[r, i]))
        s = (amax / six) / ts if ts > zero else zero
        sbuf[r, bi] = s
        sc = _mf_code(sbits[r, bi], p4)
        scale[r, bi] = sc
        d = lut4[sc] * ts
        for i in range(lo, lo + block):
            c = 0
            if d > zero:
                ybuf[r, i] = x2[r, i] / d
                c = _mf_code(ybits[r, i], p2)
            if i & 1 == 0:
                codes[r, i >> 1] = c
            else:
                codes[r, i >> 1] = codes[r, i >> 1] | (c << 4)


@njit(parallel=True)
def _decode_nb(codes, scale, ts, block, lut4, lut2, out):
    rows, n = out.shape
    nb = n // block
    for t in prange(rows * nb):
        r = t // nb
        bi = t - r * nb
        sv = lut4[scale[r, bi]]
        for i in range(bi * block, (bi + 1) * block):
            c = (codes[r, i >> 1] >> (4 * (i & 1))) & 0x0F
            out[r, i] = (lut2[c] * sv) * ts


# ---- the format --------------------------------------------------------------------------------------

@dataclass(frozen=True)
class NVFP4Format:
    """NVFP4; see the module docstring for the exact arithmetic and edge cases."""

    name: str = "nvfp4"
    block: int = BLOCK

    @property
    def block_size(self) -> int:
        return self.block

    def bits_per_weight(self, shape: tuple[int, ...]) -> float:
        check_last_dim(tuple(shape), self.block, self.name)
        count = math.prod(int(s) for s in shape)
        if count == 0:
            raise FormatError(f"{self.name}: shape {tuple(shape)} is empty; the per-tensor scale cannot "
                              f"be amortised over zero weights")
        return 4 + 8 / self.block + 32 / count

    # -- numpy / numba --
    def encode(self, x: np.ndarray, *, backend: str = "numba") -> dict[str, np.ndarray]:
        check_backend(backend, self.name)
        x2 = as_rows(x, self.block, self.name)
        shape = np.shape(x)
        rows, n = x2.shape
        nb = n // self.block
        if backend == "numba":
            row_amax = np.empty(rows, np.float32)
            _row_amax_nb(x2, row_amax)
            ts = np.float32(row_amax.max(initial=np.float32(0))) / TENSOR_DIVISOR
            codes = np.empty((rows, n // 2), np.uint8)
            scale = np.empty((rows, nb), np.uint8)
            sbuf = np.empty((rows, nb), np.float32)
            ybuf = np.zeros((rows, n), np.float32)
            _encode_nb(x2, ts, self.block, _E4M3_P, _E2M1_P, _E4M3_LUT, sbuf, sbuf.view(np.uint32), ybuf,
                       ybuf.view(np.uint32), codes, scale)
        else:
            codes, scale, ts = self._encode_reference(x2)
        return {"codes": codes.reshape(*shape[:-1], n // 2), "scale": scale.reshape(*shape[:-1], nb),
                "tensor_scale": np.array(ts, np.float32), "shape": shape_array(shape)}

    def _encode_reference(self, x2: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.float32]:
        rows, n = x2.shape
        xb = x2.reshape(rows, n // self.block, self.block)
        ts = np.float32(np.abs(x2).max(initial=np.float32(0))) / TENSOR_DIVISOR
        bamax = np.abs(xb).max(-1, initial=np.float32(0))
        s = (bamax / E2M1_MAX) / ts if ts > 0 else np.zeros_like(bamax)
        scale = mf.encode_ref(s, mf.E4M3, saturate=True)
        d = (mf.decode_ref(scale, mf.E4M3) * ts)[..., None]
        y = xb / np.where(d > 0, d, np.float32(1))
        elem = np.where(d > 0, mf.encode_ref(y, mf.E2M1, saturate=True), np.uint8(0)).astype(np.uint8)
        return pack_nibbles(elem.reshape(rows, n)), scale, np.float32(ts)

    def _check_enc(self, enc: dict[str, Any], codes_shape: tuple[int, ...],
                   scale_shape: tuple[int, ...]) -> tuple[tuple[int, ...], int]:
        lead = tuple(codes_shape[:-1])
        n = codes_shape[-1] * 2
        want = (*lead, n // self.block)
        if n % self.block or tuple(scale_shape) != want:
            raise FormatError(f"{self.name}: field 'scale' has shape {tuple(scale_shape)}, expected {want} "
                              f"for codes of shape {tuple(codes_shape)} (blocks of {self.block})")
        if math.prod(enc["tensor_scale"].shape) != 1:
            raise FormatError(f"{self.name}: field 'tensor_scale' must hold one value, has shape "
                              f"{tuple(enc['tensor_scale'].shape)}")
        return lead, n

    def decode(self, enc: dict[str, np.ndarray], *, dtype: Any = np.float32, backend: str = "numba") -> Any:
        check_backend(backend, self.name)
        require(enc, ("codes", "scale", "tensor_scale"), self.name)
        codes = np.ascontiguousarray(enc["codes"], np.uint8)
        scale = np.ascontiguousarray(enc["scale"], np.uint8)
        lead, n = self._check_enc(enc, codes.shape, scale.shape)
        check_stored_shape(enc, (*lead, n), self.name)
        ts = np.float32(np.asarray(enc["tensor_scale"], np.float32).reshape(()))
        rows = int(np.prod(lead, dtype=np.int64))
        codes2 = codes.reshape(rows, n // 2)
        scale2 = scale.reshape(rows, n // self.block)
        if backend == "numba":
            out = np.empty((rows, n), np.float32)
            _decode_nb(codes2, scale2, ts, self.block, _E4M3_LUT, _E2M1_LUT, out)
        else:
            elem = mf.decode_ref(unpack_nibbles(codes2), mf.E2M1).reshape(rows, n // self.block, self.block)
            sv = mf.decode_ref(scale2, mf.E4M3)[..., None]
            out = ((elem * sv) * ts).reshape(rows, n)
        return finish_decode(out.reshape(*lead, n), dtype)

    # -- torch --
    def encode_torch(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        x32 = as_float32_torch(x, self.block, self.name)
        lead, n = x32.shape[:-1], x32.shape[-1]
        xb = x32.reshape(*lead, n // self.block, self.block)
        dev = x32.device
        zero = torch.zeros((), dtype=torch.float32, device=dev)
        if x32.numel():
            ts = x32.abs().amax() / torch.full((), float(TENSOR_DIVISOR), device=dev)
        else:
            ts = zero
        bamax = xb.abs().amax(-1)
        pos_ts = ts > zero
        s = torch.where(pos_ts, (bamax / torch.full((), 6.0, device=dev)) / torch.where(pos_ts, ts, 1.0), zero)
        scale = mf.encode_torch(s, mf.E4M3, saturate=True)
        d = (mf.decode_torch(scale, mf.E4M3) * ts).unsqueeze(-1)
        pos = d > zero
        y = xb / torch.where(pos, d, 1.0)
        elem = torch.where(pos, mf.encode_torch(y, mf.E2M1, saturate=True), 0).to(torch.uint8)
        return {"codes": pack_nibbles_torch(elem.reshape(*lead, n)), "scale": scale, "tensor_scale": ts,
                "shape": shape_tensor((*lead, n))}

    def decode_torch(self, enc: dict[str, torch.Tensor], *, dtype: Any = torch.float32) -> torch.Tensor:
        require(enc, ("codes", "scale", "tensor_scale"), self.name)
        codes, scale = enc["codes"], enc["scale"]
        lead, n = self._check_enc(enc, tuple(codes.shape), tuple(scale.shape))
        ts = enc["tensor_scale"].to(torch.float32).reshape(())
        elem = mf.decode_torch(unpack_nibbles_torch(codes), mf.E2M1)
        sv = mf.decode_torch(scale, mf.E4M3).unsqueeze(-1)
        out = (elem.reshape(*lead, n // self.block, self.block) * sv) * ts
        return finish_decode_torch(out.reshape(*lead, n), dtype)


FORMATS: dict[str, NVFP4Format] = {"nvfp4": NVFP4Format()}
