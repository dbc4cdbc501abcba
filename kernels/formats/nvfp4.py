"""NVFP4: E2M1 elements in blocks of 16, an E4M3 scale per block, an fp32 scale per tensor.

Name: ``nvfp4``. Bits per weight: 4 + 8/16 = 4.5, plus the 32-bit tensor scale amortised over the
tensor (``4.5 + 32 / numel``). The arithmetic is torchao's ``NVFP4Tensor`` two-level recipe
(``nvfp4_quantize`` with a per-tensor scale, which its authors keep equal to NVIDIA's MSLK
kernels), and the tests compare against torchao itself bit for bit. All of it float32, every
rounding explicit:

* tensor scale ``ts = amax(|x|) / 2688`` (2688 = 6 * 448: E2M1's and E4M3's largest values), over
  the whole array passed to ``encode`` (torchao's ``per_tensor_amax_to_scale``).
* block scale ``s = (amax(|block|) / 6) / ts``, clamped to ``[2^-6, 448]`` (E4M3's smallest normal
  and largest value: no block scale is subnormal or zero), then encoded to E4M3 with
  round-to-nearest-even; ``S`` is the decoded E4M3 value.
* element code: ``r = (1 / ts) / S``, then ``x * r`` encoded to E2M1 (RNE, saturating at 6: the
  E4M3 rounding of ``s`` can leave ``|x| * r`` up to ~6.4). A multiply by a reciprocal, not a
  division: TensorRT Model Optimizer divides by ``S * ts`` instead, which can pick the neighbouring
  code for a value within an ulp of a midpoint.
* decode: ``e2m1 * (ts * S)``, the tensor scale times the block scale first (torchao's
  ``get_hp_scales``), then the element: two float32 roundings. (``(e2m1 * S) * ts`` is another
  order that differs in the last bit for about 6% of Gaussian weights.)

Edge cases:

* All-zero block in a nonzero tensor: ``s = 0`` clamps to 2^-6 (scale code 0x08) and the element
  codes are signed zeros (``-0.0`` keeps its sign); decodes to the same zeros.
* Tiny blocks: a block whose amax is below ``6 * 2^-6 * ts`` (about 1/28672 of the tensor's amax)
  gets the floor scale 2^-6 and its elements round at that quantum, most of them to zero.
* All-zero tensor: ``ts = 0``. torchao divides 0 by 0 there (scale code 0xFF, a NaN, element
  codes 0xC, every value NaN); here the block scales take the floor 2^-6 (0x08), ``r`` is 0 and
  every code is a signed zero, so the tensor decodes to zeros.
* A tensor amax below ``2688 * 2^-128`` (~7.9e-36): ``1 / ts`` overflows to +Inf, so every nonzero
  element saturates (+-6), as in torchao; a zero element times Inf is NaN, which torchao's FP4
  cast turns into code 0xB (-1.5), and which is encoded here as +0 (E2M1 has no NaN).
* NaN / Inf inputs are refused (``FormatError`` naming the first index): the per-tensor amax
  would poison every block. The E4M3 scale never holds NaN (0x7F) because ``s`` is finite.

Codes: ``codes`` uint8 ``[..., n/2]`` (two E2M1 codes per byte, low nibble first), ``scale``
uint8 ``[..., n/16]`` (E4M3 codes), ``tensor_scale`` float32 ``()``, ``shape``. ``decode`` and
``decode_torch`` take ``out=`` (:func:`kernels.formats.base.decode_target`).
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
    start_decode,
    unpack_nibbles,
    unpack_nibbles_torch,
)
from moesim.kernels.formats.base import FormatError, check_backend, check_last_dim, require, shape_array
from moesim.kernels.jit import njit
from numba import prange

BLOCK = 16
E2M1_MAX = np.float32(6.0)
E4M3_MAX = np.float32(448.0)
SCALE_MIN = np.float32(2.0**-6)  # E4M3's smallest normal: the floor of every block scale
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
    inv_ts = np.float32(1.0) / ts if ts > zero else zero
    for t in prange(rows * nb):
        r = t // nb
        bi = t - r * nb
        lo = bi * block
        amax = zero
        for i in range(lo, lo + block):
            amax = max(amax, abs(x2[r, i]))
        s = (amax / E2M1_MAX) / ts if ts > zero else zero
        sbuf[r, bi] = min(max(s, SCALE_MIN), E4M3_MAX)
        sc = _mf_code(sbits[r, bi], p4)
        scale[r, bi] = sc
        rcp = inv_ts / lut4[sc]
        for i in range(lo, lo + block):
            ybuf[r, i] = x2[r, i] * rcp
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
        d = ts * lut4[scale[r, bi]]
        for i in range(bi * block, (bi + 1) * block):
            c = (codes[r, i >> 1] >> (4 * (i & 1))) & 0x0F
            out[r, i] = lut2[c] * d


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
            ybuf = np.empty((rows, n), np.float32)
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
        scale = mf.encode_ref(np.clip(s, SCALE_MIN, E4M3_MAX), mf.E4M3, saturate=True)
        with np.errstate(over="ignore", invalid="ignore"):  # 1 / ts may overflow; 0 * inf is NaN -> +0
            inv_ts = np.float32(1.0) / ts if ts > 0 else np.float32(0.0)
            rcp = inv_ts / mf.decode_ref(scale, mf.E4M3)
            elem = mf.encode_ref(xb * rcp[..., None], mf.E2M1, saturate=True)
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

    def decode(self, enc: dict[str, np.ndarray], *, dtype: Any = np.float32, backend: str = "numba",
               out: Any = None) -> Any:
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
        target, f32 = start_decode(out, (*lead, n), dtype, self.name, codes, scale)
        if backend == "numba":
            _decode_nb(codes2, scale2, ts, self.block, _E4M3_LUT, _E2M1_LUT, f32.reshape(rows, n))
        else:
            elem = mf.decode_ref(unpack_nibbles(codes2), mf.E2M1).reshape(rows, n // self.block, self.block)
            with np.errstate(over="ignore", invalid="ignore"):  # Inf / NaN products, as the kernel gives
                d = (ts * mf.decode_ref(scale2, mf.E4M3))[..., None]
                np.copyto(f32, (elem * d).reshape(f32.shape))
        return finish_decode(f32, dtype, target, out)

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
        safe_ts = torch.where(pos_ts, ts, 1.0)
        s = torch.where(pos_ts, (bamax / torch.full((), float(E2M1_MAX), device=dev)) / safe_ts, zero)
        s = torch.clamp(s, float(SCALE_MIN), float(E4M3_MAX))
        scale = mf.encode_torch(s, mf.E4M3, saturate=True)
        inv_ts = torch.where(pos_ts, torch.reciprocal(safe_ts), zero)
        rcp = (inv_ts / mf.decode_torch(scale, mf.E4M3)).unsqueeze(-1)
        elem = mf.encode_torch(xb * rcp, mf.E2M1, saturate=True).to(torch.uint8)
        return {"codes": pack_nibbles_torch(elem.reshape(*lead, n)), "scale": scale, "tensor_scale": ts,
                "shape": shape_tensor((*lead, n))}

    def decode_torch(self, enc: dict[str, torch.Tensor], *, dtype: Any = torch.float32,
                     out: torch.Tensor | None = None) -> torch.Tensor:
        require(enc, ("codes", "scale", "tensor_scale"), self.name)
        codes, scale = enc["codes"], enc["scale"]
        lead, n = self._check_enc(enc, tuple(codes.shape), tuple(scale.shape))
        ts = enc["tensor_scale"].to(torch.float32).reshape(())
        elem = mf.decode_torch(unpack_nibbles_torch(codes), mf.E2M1)
        d = (ts * mf.decode_torch(scale, mf.E4M3)).unsqueeze(-1)
        f32 = elem.reshape(*lead, n // self.block, self.block) * d
        return finish_decode_torch(f32.reshape(*lead, n), dtype, out, self.name)


FORMATS: dict[str, NVFP4Format] = {"nvfp4": NVFP4Format()}
