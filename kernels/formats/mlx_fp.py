"""MLX's floating-point quantization modes (``mx.quantize(w, mode=...)``: ``mxfp4``, ``mxfp8``,
``nvfp4``), bit for bit, and exactly how they differ from the OCP / NVIDIA formats of this package.

Names: ``mlx-mxfp4``, ``mlx-mxfp8``, ``mlx-nvfp4`` with bfloat16 weights (MLX computes in the
weight's dtype); ``...-f16`` / ``...-f32`` for float16 / float32 weights. The input is first
rounded to that dtype. Every op below is one MLX op in the weight dtype ``dt`` (computed in float32,
rounded to ``dt``: :func:`kernels.formats.mlx_numerics.round_to`).

**mxfp4 / mxfp8** (blocks of 32, one E8M0 byte each; elements E2M1 / E4M3):

* ``s = amax(|block|) / M`` with ``M`` = 6 (E2M1's largest value) or 448 (E4M3's); a NaN anywhere
  makes ``amax`` NaN.
* exponent ``e = ceil(log2(s))``, the smallest power of two not below ``s`` (MLX rounds ``log2 s`` to
  nearest and steps up when ``2^e < s``), ``e = 0`` when ``s == 0``; elements ``w / 2^e``; scale byte
  ``uint8(e + 127)``.
* FP4 element: the first index of the smallest ``|v - table[k]|`` over MLX's 16-entry table
  (:func:`~kernels.formats.mlx_numerics.fp4_codes`); FP8 element: MLX's ``to_fp8``.
* Packing: FP4 eight codes per uint32 (element ``8j + i`` in bits ``4i..4i+3`` of word ``j``), FP8
  four per word (byte order); scales uint8 ``[..., n/32]``.

Where this differs from OCP MX v1.0 (:mod:`kernels.formats.mx`, ``mxfp4`` / ``mxfp8_e4m3``):

1. **Scale rule.** OCP: ``e = floor(log2(amax)) - emax_elem`` (emax 2 for E2M1, 8 for E4M3), and a
   block maximum above the element range saturates. MLX rounds up: with ``amax = 2^k * m``,
   ``1 <= m < 2``, its exponent is OCP's when ``m <= M / 2^emax_elem`` (1.5 for FP4, 1.75 for FP8) and
   one larger otherwise, so nothing saturates. That is this package's ``-rceil`` rule, except where
   ``s`` is a subnormal of the weight dtype: rounded there to a coarse grid it can land on the power
   of two just below ``amax / M``, the exponent stays one smaller and the block maximum saturates
   (float16 weights: FP8 blocks with amax below ``448 * 2^-14 ~ 0.027``, FP4 below ``3.7e-4``; and ``s``
   below half the smallest subnormal becomes 0: byte 127, elements unscaled). In the normal range
   no rounding of ``amax / M`` reaches a power of two from above. (The MLX source up to 0.32.2
   rounded ``log2 s`` to nearest without the step up: models quantized with it have the smaller
   exponent in about half their blocks.)
2. **FP4 ties.** OCP rounds to nearest, ties to even (0.75 -> 1, 1.75 -> 2, 5 -> 4); MLX's argmin
   takes the first table entry, i.e. ties toward zero (0.75 -> 0.5, 1.75 -> 1.5, 2.5 -> 2, 3.5 -> 3,
   5 -> 4).
3. **Signed zero.** OCP keeps -0 (code 0x8) and a tiny negative rounds to -0; MLX's FP4 gives +0
   (code 0) to everything whose nearest value is zero. MLX's FP8 keeps the sign (0x80).
4. **All-zero block.** OCP: scale byte 0 (2^-127); MLX: byte 127 (2^0), codes 0.
5. **Tiny blocks.** OCP clamps the exponent at -127; MLX does not: ``e + 127`` wraps through the
   uint8 cast (a float32 block of 1e-41 gets byte 245 and decodes to 3 * 2^118 ~ 1e36).
6. **NaN / Inf.** OCP: scale byte 0xFF, codes 0, the block decodes to NaN. MLX: ``log2`` gives NaN /
   Inf, the int32 cast gives INT32_MIN, the power of two is 0, the elements become +-Inf / NaN (FP4
   code 0, FP8 0x7E / 0xFE by the sign bit) and the scale byte is ``uint8(INT32_MIN + 127)`` in the
   weight dtype: 0x80 in float32 (-2147483520 truncates to 0x80000080), 0x00 in bfloat16 and
   float16; the block decodes to finite values. Decoding, byte 0xFF is ``2^128 = Inf`` (OCP: NaN).

FP8 elements round as OCP's saturating E4M3 (nearest-even, 448 at most), except that Inf and NaN
become +-448 instead of poisoning the block.

**nvfp4** (blocks of 16, an E4M3 scale byte each; no per-tensor scale: ``global_scale`` unused):

* ``S = to_fp8(amax(|block|) / 6)``; elements ``(w / from_fp8(S))`` in the weight dtype, widened to
  float32 (MLX multiplies them by a float32 1.0) and encoded by the FP4 argmin in float32.

Against NVIDIA's two-level NVFP4 (:mod:`kernels.formats.nvfp4`): there the block scale is
``amax / 6 / ts`` with a per-tensor float32 ``ts = amax(tensor) / 2688``, so E4M3 always works near
its top; MLX (without ``global_scale``) encodes ``amax / 6`` itself, so blocks of small weights land
in E4M3's subnormals (a block with ``amax / 6 < 2^-10`` gets scale 0 and decodes to all zeros) and
blocks with ``amax / 6 >= 464`` saturate the scale at 448. Ties (2) and signed zero (3) as for
mxfp4; a NaN / Inf block gets scale 448 and codes 0. Bits per weight 4.5 exactly (no per-tensor
float). MLX refuses tensors whose element count is not a multiple of 32 (its FP4 packing reshapes
the whole tensor); this format only needs rows of whole blocks.

Decode (``mx.dequantize(..., dtype=out)`` with ``out`` float32 or bfloat16): ``value * 2^(s - 127)``
(mx modes; the power of two rounded to ``out``; byte 255 gives Inf) or ``value * from_fp8(S)``
(nvfp4), one product rounded to ``out``. Encoded dict: ``wq`` uint32 ``[..., n*bits/32]``, ``scales``
uint8 ``[..., n/block]``, ``shape`` (torch: ``wq`` int32 with the same bits). ``backend="mlx"``
runs MLX itself (:mod:`kernels.formats.mlx_native`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch
from moesim.kernels.formats import mlx_numerics as mn
from moesim.kernels.formats._blockutil import check_stored_shape, shape_tensor
from moesim.kernels.formats.base import (
    BFLOAT16,
    FormatError,
    as_float32,
    check_backend,
    check_last_dim,
    check_out_torch,
    deliver,
    f32_to_bf16_bits,
    require,
    resolve_dtype,
    shape_array,
)
from moesim.kernels.jit import njit
from numba import prange

MXFP4, MXFP8, NVFP4 = 0, 1, 2
MODES = {"mxfp4": MXFP4, "mxfp8": MXFP8, "nvfp4": NVFP4}
BLOCKS = {MXFP4: 32, MXFP8: 32, NVFP4: 16}
ELEMENT_BITS = {MXFP4: 4, MXFP8: 8, NVFP4: 4}
SCALE_BIAS = 127
MAXVAL = {4: np.float32(6.0), 8: np.float32(448.0)}


# ---- numba kernels (parallel over blocks) --------------------------------------------------------

@njit(inline="always")
def _block_amax(w, lo, block):
    """MLX's ``max(abs(block))``: a NaN anywhere makes it NaN."""
    amax = np.float32(0.0)
    nan = False
    for i in range(lo, lo + block):
        a = abs(w[i])
        nan |= a != a
        amax = a if a > amax else amax
    return np.float32(np.nan) if nan else amax


@njit(parallel=True)
def _encode_nb(w, dt, mode, block, bits, data, scales, fp4_table, fp8_values):
    """``w`` float32 ``[rows, n]`` already on the ``dt`` grid; ``data`` uint8 ``[rows, n*bits/8]`` (the
    little-endian bytes of the uint32 words); ``scales`` uint8 ``[rows, n/block]``.

    Dividing by the mx modes' power of two is a multiply by its inverse when that inverse is a
    float32 (the scaled values are then the same single rounding of the exact quotient); NVFP4's
    E4M3 divisor is divided by."""
    rows, n = w.shape
    nb = n // block
    maxval = np.float32(6.0) if bits == 4 else np.float32(448.0)
    for t in prange(rows * nb):
        r = t // nb
        bi = t - r * nb
        lo = bi * block
        row = w[r]
        s = mn.rd(_block_amax(row, lo, block) / maxval, dt)
        if mode == NVFP4:
            sc = mn.fp8_encode_nb(s)  # s * float32(1): exact
            scales[r, bi] = sc
            div = mn.rd(fp8_values[sc], dt)
            fdt = mn.F32  # the float32 1.0 factor promotes the elements: the argmin runs in float32
        else:
            e = mn.exponent_nb(s)
            e_dt = mn.rd(np.float32(e), dt)
            div = mn.pow2_nb(e_dt, dt)
            scales[r, bi] = mn.u8_cast_nb(mn.rd(e_dt + np.float32(SCALE_BIAS), dt))
            fdt = dt
        inv = np.float32(1.0) / div
        by_inverse = mode != NVFP4 and div > 0 and np.isfinite(inv)
        if bits == 8:
            for i in range(lo, lo + block):
                v = row[i] * inv if by_inverse else row[i] / div
                data[r, i] = mn.fp8_encode_nb(mn.rd(v, dt))
        else:
            for i in range(lo, lo + block, 2):
                v0 = row[i] * inv if by_inverse else row[i] / div
                v1 = row[i + 1] * inv if by_inverse else row[i + 1] / div
                c0 = mn.fp4_code_nb(mn.rd(v0, dt), fdt, fp4_table)
                c1 = mn.fp4_code_nb(mn.rd(v1, dt), fdt, fp4_table)
                data[r, i >> 1] = c0 | (c1 << 4)


@njit(parallel=True)
def _decode_nb(data, scales, od, mode, block, bits, fp4_table, fp8_values, out):
    """One product per element, rounded to the output dtype (FP4: a byte gives two)."""
    rows, n = out.shape
    nb = n // block
    for t in prange(rows * nb):
        r = t // nb
        bi = t - r * nb
        sb = scales[r, bi]
        if mode == NVFP4:
            mult = mn.rd(fp8_values[sb], od)
        else:
            mult = mn.pow2_nb(np.float32(np.int64(sb) - SCALE_BIAS), od)
        lo = bi * block
        if bits == 8:
            for i in range(lo, lo + block):
                out[r, i] = mn.rd(mn.rd(fp8_values[data[r, i]], od) * mult, od)
        else:
            for i in range(lo, lo + block, 2):
                byte = data[r, i >> 1]
                out[r, i] = mn.rd(fp4_table[byte & 0x0F] * mult, od)
                out[r, i + 1] = mn.rd(fp4_table[byte >> 4] * mult, od)


# ---- the format ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class MLXFPFormat:
    """One MLX floating-point mode; see the module docstring for the exact arithmetic."""

    # the implementations encode / decode accept: "mlx" runs MLX itself (kernels.formats.mlx_native)
    backends: ClassVar[tuple[str, ...]] = ("numba", "reference", "mlx")

    mode_name: str
    dtype: str = "bfloat16"
    name: str = field(init=False)

    def __post_init__(self) -> None:
        if self.mode_name not in MODES:
            raise FormatError(f"mlx: unknown mode {self.mode_name!r}; expected one of {sorted(MODES)}")
        dt = mn.dtype_code(self.dtype, f"mlx-{self.mode_name}")
        suffix = {mn.BF16: "", mn.F16: "-f16", mn.F32: "-f32"}[dt]
        object.__setattr__(self, "name", f"mlx-{self.mode_name}{suffix}")

    @property
    def dt(self) -> int:
        return mn.DTYPES[self.dtype]

    @property
    def mode(self) -> str:
        return self.mode_name

    @property
    def code(self) -> int:
        return MODES[self.mode_name]

    @property
    def block_size(self) -> int:
        return BLOCKS[self.code]

    @property
    def group(self) -> int:
        return self.block_size

    @property
    def bits(self) -> int:
        return ELEMENT_BITS[self.code]

    def bits_per_weight(self, shape: tuple[int, ...]) -> float:
        check_last_dim(tuple(shape), self.block_size, self.name)
        return self.bits + 8 / self.block_size

    def _rows(self, x: Any) -> tuple[np.ndarray, tuple[int, ...]]:
        x32 = as_float32(x, self.name)
        check_last_dim(x32.shape, self.block_size, self.name)
        return x32.reshape(math.prod(x32.shape[:-1]), x32.shape[-1]), x32.shape

    # -- numpy / numba --
    def encode(self, x: np.ndarray, *, backend: str = "numba") -> dict[str, np.ndarray]:
        if backend == "mlx":
            from moesim.kernels.formats import mlx_native

            return mlx_native.encode(self, x)
        check_backend(backend, self.name)
        x2, shape = self._rows(x)
        rows, n = x2.shape
        if backend == "numba":
            data = np.zeros((rows, n * self.bits // 8), np.uint8)
            scales = np.empty((rows, n // self.block_size), np.uint8)
            _encode_nb(mn.rounded_rows(x2, self.dt), self.dt, self.code, self.block_size, self.bits, data,
                       scales, mn.FP4_VALUES, mn.FP8_VALUES)
            wq = data.view("<u4").astype(np.uint32)
        else:
            wq, scales = self._encode_reference(x2)
        lead = shape[:-1]
        return {"wq": wq.reshape(*lead, n * self.bits // 32), "scales": scales.reshape(*lead, n // self.block_size),
                "shape": shape_array(shape)}

    def _encode_reference(self, x2: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        rows, n = x2.shape
        dt, block = self.dt, self.block_size
        w = mn.round_to(x2, dt).reshape(rows, n // block, block)
        a = np.abs(w)
        amax = np.where(np.isnan(a).any(-1), np.float32(np.nan), np.where(np.isnan(a), 0, a).max(-1))
        with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
            s = mn.round_to((amax / MAXVAL[self.bits]).astype(np.float32), dt)
            if self.code == NVFP4:
                scales = mn.fp8_encode(s)
                div = mn.round_to(mn.FP8_VALUES[scales], dt)
                fdt = mn.F32
            else:
                e = mn.exponent(s)
                e_dt = mn.round_to(e.astype(np.float32), dt)
                div = mn.pow2(e_dt, dt)
                scales = mn.u8_cast(mn.round_to((e_dt + np.float32(SCALE_BIAS)).astype(np.float32), dt))
                fdt = dt
            v = mn.round_to((w / div[..., None]).astype(np.float32), dt).reshape(rows, n)
        codes = mn.fp8_encode(v) if self.bits == 8 else mn.fp4_codes(v, fdt)
        return mn.pack_bits(codes, self.bits), scales.astype(np.uint8)

    def _check_enc(self, wq_shape: tuple[int, ...], scales_shape: tuple[int, ...]) -> tuple[tuple[int, ...], int]:
        lead = tuple(wq_shape[:-1])
        if len(wq_shape) == 0 or (wq_shape[-1] * 32) % (self.bits * self.block_size):
            raise FormatError(f"{self.name}: field 'wq' has shape {tuple(wq_shape)}; its last axis must hold "
                              f"whole blocks of {self.block_size} {self.bits}-bit codes")
        n = wq_shape[-1] * 32 // self.bits
        want = (*lead, n // self.block_size)
        if tuple(scales_shape) != want:
            raise FormatError(f"{self.name}: field 'scales' has shape {tuple(scales_shape)}, expected {want} "
                              f"for wq of shape {tuple(wq_shape)}")
        return lead, n

    def decode(self, enc: Mapping[str, np.ndarray], *, dtype: Any = np.float32, backend: str = "numba",
               out: Any = None) -> Any:
        """Decode (into ``out`` when given: a float32, bfloat16-bits or tensor buffer, see
        :func:`~moesim.kernels.formats.base.decode_target`)."""
        return deliver(self._decode(enc, dtype=dtype, backend=backend), out, dtype, self.name,
                       *(np.asarray(v) for v in enc.values()))

    def _decode(self, enc: Mapping[str, np.ndarray], *, dtype: Any = np.float32, backend: str = "numba") -> Any:
        if backend == "mlx":
            from moesim.kernels.formats import mlx_native

            return mlx_native.decode(self, enc, dtype)
        check_backend(backend, self.name)
        require(enc, ("wq", "scales"), self.name)
        wq, scales = np.asarray(enc["wq"]), np.asarray(enc["scales"])
        for field_name, arr, want in (("wq", wq, np.uint32), ("scales", scales, np.uint8)):
            if arr.dtype != want:
                raise FormatError(f"{self.name}: field {field_name!r} has dtype {arr.dtype}, expected "
                                  f"{np.dtype(want).name}")
        lead, n = self._check_enc(wq.shape, scales.shape)
        check_stored_shape(enc, (*lead, n), self.name)
        od = mn.BF16 if resolve_dtype(dtype) == BFLOAT16 else mn.F32
        rows = math.prod(lead)
        s2 = np.ascontiguousarray(scales.reshape(rows, n // self.block_size))
        if backend == "numba":
            data = np.ascontiguousarray(wq.reshape(rows, -1), dtype="<u4").view(np.uint8)
            out = np.empty((rows, n), np.float32)
            _decode_nb(data, s2, od, self.code, self.block_size, self.bits, mn.FP4_VALUES, mn.FP8_VALUES, out)
        else:
            codes = mn.unpack_bits(wq.reshape(rows, -1), self.bits).reshape(rows, n // self.block_size,
                                                                           self.block_size)
            if self.code == NVFP4:
                mult = mn.round_to(mn.FP8_VALUES[s2], od)
            else:
                mult = mn.pow2(s2.astype(np.float32) - np.float32(SCALE_BIAS), od)
            vals = mn.round_to(mn.FP8_VALUES[codes], od) if self.bits == 8 else mn.FP4_VALUES[codes]
            with np.errstate(invalid="ignore", over="ignore"):
                out = mn.round_to((vals * mult[..., None]).astype(np.float32), od).reshape(rows, n)
        out = out.reshape(*lead, n)
        if od == mn.F32:
            return out
        bits = f32_to_bf16_bits(out)
        return torch.from_numpy(bits.view(np.int16)).view(torch.bfloat16) if dtype is torch.bfloat16 else bits

    # -- torch --
    def encode_torch(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        if not isinstance(x, torch.Tensor) or not x.is_floating_point():
            raise FormatError(f"{self.name}: expected a floating-point torch.Tensor, got {type(x).__name__}")
        check_last_dim(tuple(x.shape), self.block_size, self.name)
        dt, block = self.dt, self.block_size
        lead, n = tuple(x.shape[:-1]), x.shape[-1]
        w = mn.round_torch(x.to(torch.float32), dt).reshape(*lead, n // block, block)
        a = w.abs()
        amax = torch.where(torch.isnan(a).any(-1), float("nan"), torch.where(torch.isnan(a), 0.0, a).amax(-1))
        s = mn.round_torch(amax / torch.tensor(float(MAXVAL[self.bits]), device=w.device), dt)
        if self.code == NVFP4:
            scales = mn.fp8_encode_torch(s)
            fp8 = torch.from_numpy(mn.FP8_VALUES.copy()).to(w.device)
            div = mn.round_torch(fp8[scales.to(torch.int64)], dt)
            fdt = mn.F32
        else:
            e = mn.exponent_torch(s)
            e_dt = mn.round_torch(e.to(torch.float32), dt)
            div = mn.pow2_torch(e_dt, dt)
            scales = mn.u8_cast_torch(mn.round_torch(e_dt + float(SCALE_BIAS), dt))
            fdt = dt
        v = mn.round_torch(w / div.unsqueeze(-1), dt).reshape(*lead, n)
        codes = mn.fp8_encode_torch(v) if self.bits == 8 else mn.fp4_codes_torch(v, fdt)
        return {"wq": mn.pack_bits_torch(codes, self.bits), "scales": scales, "shape": shape_tensor((*lead, n))}

    def decode_torch(self, enc: Mapping[str, torch.Tensor], *, dtype: Any = torch.float32,
                     out: torch.Tensor | None = None) -> torch.Tensor:
        res = self._decode_torch(enc, dtype=dtype)
        if out is None:
            return res
        check_out_torch(out, tuple(res.shape), res.dtype, res.device, self.name)
        out.copy_(res)
        return out

    def _decode_torch(self, enc: Mapping[str, torch.Tensor], *, dtype: Any = torch.float32) -> torch.Tensor:
        require(enc, ("wq", "scales"), self.name)
        wq, scales = enc["wq"], enc["scales"]
        lead, n = self._check_enc(tuple(wq.shape), tuple(scales.shape))
        od = mn.BF16 if resolve_dtype(dtype) == BFLOAT16 else mn.F32
        dev = wq.device
        fp8 = torch.from_numpy(mn.FP8_VALUES.copy()).to(dev)
        fp4 = torch.from_numpy(mn.FP4_VALUES.copy()).to(dev)
        s = scales.to(torch.int64)
        if self.code == NVFP4:
            mult = mn.round_torch(fp8[s], od)
        else:
            mult = mn.pow2_torch((s - SCALE_BIAS).to(torch.float32), od)
        codes = mn.unpack_bits_torch(wq, self.bits).to(torch.int64)
        vals = mn.round_torch(fp8[codes], od) if self.bits == 8 else fp4[codes]
        vals = vals.reshape(*lead, n // self.block_size, self.block_size)
        y = mn.round_torch(vals * mult.unsqueeze(-1), od).reshape(*lead, n)
        return y if od == mn.F32 else mn.to_storage_torch(y, mn.BF16)


FORMATS: dict[str, MLXFPFormat] = {
    f.name: f for f in (MLXFPFormat(m, d) for d in ("bfloat16", "float16", "float32") for m in MODES)
}
