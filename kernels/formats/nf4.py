"""NF4 (QLoRA's 4-bit NormalFloat) with block-wise absmax, bitsandbytes-style.

Name: ``nf4`` (blocks of 64 along the last axis, absmax stored as float32: 4 + 32/64 = 4.5 bits
per weight).

* ``absmax = max |w|`` over the block (float32).
* ``x = w / absmax`` (float32 division; an all-zero block skips it and every weight gets the code
  of 0.0, 7, decoding to 0). bitsandbytes multiplies by a float32 reciprocal instead, which can
  differ in the last bit (so a value within an ulp of a threshold may get the neighbouring code)
  and overflows to inf for a subnormal absmax; the division keeps ``|x| <= 1`` always.
* The code is the number of thresholds strictly below ``x``: thresholds are the float64 midpoints
  of adjacent codebook values rounded to float32 (the constants in bitsandbytes' ``dQuantizeNF4``
  decision tree), so a value exactly on a midpoint goes to the *lower* code, as there.
* decode: ``CODEBOOK[code] * absmax`` in float32.

Codes are packed two per byte with the *first* element in the *high* nibble (bitsandbytes'
order, unlike the low-nibble-first MX / NVFP4 packing), so ``codes`` and ``absmax`` have
bitsandbytes' own layout for a tensor whose last dimension is a multiple of 64.
Encoded dict: ``codes`` uint8 ``[..., n/2]``, ``absmax`` float32 ``[..., n/64]``, ``shape``.
Non-finite inputs are refused.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
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

# bitsandbytes' NF4 codebook (float32 values, code order).
CODEBOOK = np.array([
    -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635,
    -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725,
    0.24611230194568634, 0.33791524171829224, 0.44070982933044434, 0.5626170039176941,
    0.7229568362236023, 1.0,
], dtype=np.float32)
ZERO_CODE = 7
# Decision thresholds: float64 midpoints of the float32 codebook, as float32 (C float literals).
THRESHOLDS = ((CODEBOOK[:-1].astype(np.float64) + CODEBOOK[1:].astype(np.float64)) / 2).astype(np.float32)
BLOCK = 64


# ---- numba -----------------------------------------------------------------------------------------

@njit(inline="always")
def _nearest_code(x, thresholds):
    # Binary search for the count of thresholds strictly below x (15 sorted thresholds, 4 steps).
    lo = 0
    hi = thresholds.shape[0]
    while lo < hi:
        mid = (lo + hi) >> 1
        if x > thresholds[mid]:
            lo = mid + 1
        else:
            hi = mid
    return lo


@njit(parallel=True)
def _encode_nb(x2, block, thresholds, codes, absmax):
    rows, n = x2.shape
    nb = n // block
    zero = np.float32(0.0)
    one = np.float32(1.0)
    for t in prange(rows * nb):
        r = t // nb
        bi = t - r * nb
        lo = bi * block
        amax = zero
        for i in range(lo, lo + block):
            amax = max(amax, abs(x2[r, i]))
        absmax[r, bi] = amax
        div = amax if amax > zero else one  # zero block: 0 / 1 = 0 -> the code of 0.0
        for i in range(lo, lo + block, 2):
            hi_code = _nearest_code(x2[r, i] / div, thresholds)
            lo_code = _nearest_code(x2[r, i + 1] / div, thresholds)
            codes[r, i >> 1] = np.uint8((hi_code << 4) | lo_code)


@njit(parallel=True)
def _decode_nb(codes, absmax, block, codebook, out):
    rows, n = out.shape
    nb = n // block
    for t in prange(rows * nb):
        r = t // nb
        bi = t - r * nb
        a = absmax[r, bi]
        for i in range(bi * block, (bi + 1) * block, 2):
            byte = codes[r, i >> 1]
            out[r, i] = codebook[byte >> 4] * a
            out[r, i + 1] = codebook[byte & 0x0F] * a


# ---- the format --------------------------------------------------------------------------------------

@dataclass(frozen=True)
class NF4Format:
    """NF4 with float32 absmax per block; see the module docstring for the exact arithmetic."""

    name: str = "nf4"
    block: int = BLOCK

    @property
    def block_size(self) -> int:
        return self.block

    def bits_per_weight(self, shape: tuple[int, ...]) -> float:
        check_last_dim(tuple(shape), self.block, self.name)
        return 4 + 32 / self.block

    # -- numpy / numba --
    def encode(self, x: np.ndarray, *, backend: str = "numba") -> dict[str, np.ndarray]:
        check_backend(backend, self.name)
        x2 = as_rows(x, self.block, self.name)
        shape = np.shape(x)
        rows, n = x2.shape
        if backend == "numba":
            codes = np.empty((rows, n // 2), np.uint8)
            absmax = np.empty((rows, n // self.block), np.float32)
            _encode_nb(x2, self.block, THRESHOLDS, codes, absmax)
        else:
            xb = x2.reshape(rows, n // self.block, self.block)
            absmax = np.abs(xb).max(-1, initial=np.float32(0))
            div = np.where(absmax > 0, absmax, np.float32(1))
            idx = np.searchsorted(THRESHOLDS, xb / div[..., None], side="left")  # count of t < x
            idx = idx.astype(np.uint8).reshape(rows, n)
            codes = ((idx[:, 0::2] << 4) | idx[:, 1::2]).astype(np.uint8)
        return {"codes": codes.reshape(*shape[:-1], n // 2),
                "absmax": absmax.reshape(*shape[:-1], n // self.block),
                "shape": shape_array(shape)}

    def _check_enc(self, codes_shape: tuple[int, ...], absmax_shape: tuple[int, ...]) -> tuple[tuple[int, ...], int]:
        lead = tuple(codes_shape[:-1])
        n = codes_shape[-1] * 2
        want = (*lead, n // self.block)
        if n % self.block or tuple(absmax_shape) != want:
            raise FormatError(f"{self.name}: field 'absmax' has shape {tuple(absmax_shape)}, expected {want} "
                              f"for codes of shape {tuple(codes_shape)} (blocks of {self.block})")
        return lead, n

    def decode(self, enc: dict[str, np.ndarray], *, dtype: Any = np.float32, backend: str = "numba",
               out: Any = None) -> Any:
        check_backend(backend, self.name)
        require(enc, ("codes", "absmax"), self.name)
        codes = np.ascontiguousarray(enc["codes"], np.uint8)
        absmax = np.ascontiguousarray(enc["absmax"], np.float32)
        lead, n = self._check_enc(codes.shape, absmax.shape)
        check_stored_shape(enc, (*lead, n), self.name)
        rows = int(np.prod(lead, dtype=np.int64))
        codes2 = codes.reshape(rows, n // 2)
        absmax2 = absmax.reshape(rows, n // self.block)
        target, f32 = start_decode(out, (*lead, n), dtype, self.name, codes, absmax)
        if backend == "numba":
            _decode_nb(codes2, absmax2, self.block, CODEBOOK, f32.reshape(rows, n))
        else:
            idx = np.empty((rows, n), np.uint8)
            idx[:, 0::2] = codes2 >> 4
            idx[:, 1::2] = codes2 & 0x0F
            vals = CODEBOOK[idx].reshape(rows, n // self.block, self.block)
            np.copyto(f32, (vals * absmax2[..., None]).reshape(f32.shape))
        return finish_decode(f32, dtype, target, out)

    # -- torch --
    def encode_torch(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        x32 = as_float32_torch(x, self.block, self.name)
        lead, n = x32.shape[:-1], x32.shape[-1]
        xb = x32.reshape(*lead, n // self.block, self.block)
        absmax = xb.abs().amax(-1)
        div = torch.where(absmax > 0, absmax, 1.0)
        thresholds = torch.from_numpy(THRESHOLDS).to(x32.device)
        idx = torch.bucketize(xb / div.unsqueeze(-1), thresholds, right=False)  # count of t < x
        idx = idx.to(torch.uint8).reshape(*lead, n)
        codes = (idx[..., 0::2] << 4) | idx[..., 1::2]
        return {"codes": codes, "absmax": absmax, "shape": shape_tensor((*lead, n))}

    def decode_torch(self, enc: dict[str, torch.Tensor], *, dtype: Any = torch.float32,
                     out: torch.Tensor | None = None) -> torch.Tensor:
        require(enc, ("codes", "absmax"), self.name)
        codes = enc["codes"]
        absmax = enc["absmax"].to(torch.float32)
        lead, n = self._check_enc(tuple(codes.shape), tuple(absmax.shape))
        idx = torch.stack((codes >> 4, codes & 0x0F), dim=-1).reshape(*lead, n).to(torch.int64)
        vals = torch.from_numpy(CODEBOOK).to(codes.device)[idx]
        f32 = vals.reshape(*lead, n // self.block, self.block) * absmax.unsqueeze(-1)
        return finish_decode_torch(f32.reshape(*lead, n), dtype, out, self.name)


FORMATS: dict[str, NF4Format] = {"nf4": NF4Format()}
