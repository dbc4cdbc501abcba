"""MLX's affine quantization (``mx.quantize(w, group_size, bits)``, mode ``"affine"``), bit for bit.

Names: ``mlx-affine-b{bits}-g{group}`` for bits 1, 2, 3, 4, 5, 6, 8 and groups 32, 64, 128, with the
weights in bfloat16 (the dtype of almost every checkpoint, and so of ``mlx_lm``'s quantized models);
``...-f16`` and ``...-f32`` are the same with float16 / float32 weights. The input is first rounded
to that dtype (exact for a checkpoint stored in it), as loading the model into MLX does.

Per group of ``g`` weights along the last axis, in float32 (every step one IEEE op, no FMA),
``N = 2^bits - 1``, ``eps = 1e-7``:

* ``w_max`` / ``w_min`` by ``std::max`` / ``std::min`` from -Inf / +Inf, so NaN weights are skipped.
* **bits >= 2, the edge rule.** The edge is the extreme of larger magnitude (``w_min`` when
  ``|w_min| > |w_max|``, else ``w_max``). ``scale = max((w_max - w_min) / N, eps)``, negated when the
  edge is ``w_max``; ``q0 = rint(edge / scale)``; if ``q0 != 0``: ``scale = edge / q0`` and
  ``bias = edge``, else ``bias = 0``. So the edge decodes to itself exactly (code 0), the scale is
  negative when the edge is the maximum (codes then count down from it), and zero sits on the grid
  (code ``-q0``) whenever it is inside the group's range.
* **bits == 1.** No edge rule: ``scale = max(w_max - w_min, eps)``, ``bias = w_min``.
* code ``clamp(rint((w - bias) / scale), 0, N)`` (half to even); a NaN code (a NaN weight, or a group
  whose scale is NaN) is stored as 0, as x86's float -> uint64 conversion leaves it.
* ``scales`` and ``biases`` are the float32 values rounded to the weight dtype: the codes were chosen
  with the unrounded ones, so a 16-bit scale moves the decoded values slightly off the grid the
  codes were rounded to. Their dtype is the weight dtype (bits per weight ``bits + 32/g`` for the
  16-bit dtypes, ``bits + 64/g`` for float32).
* **All-equal group** (``w_max == w_min == c``): ``scale = -eps``, ``q0 = rint(-c / eps)``; every code
  is 0 and the group decodes to ``c`` exactly, unless ``|c| <= eps / 2`` (``q0 == 0``: bias 0, the
  group decodes to 0). The stored scale is ``c / q0`` (about ``-1e-7``; a float16 subnormal).
* **Inf in a group**: the scale becomes NaN and the bias +-Inf, every code 0: the group decodes to
  NaN. A NaN weight alone only takes code 0 (it decodes to the bias).

Decode: ``round_dt(round_dt(q * scale) + bias)`` (MLX computes in the scales' dtype), then the
requested output dtype (float32: exact widening; bfloat16: nearest-even). Packing: an LSB-first bit
stream per row in little-endian uint32 words (:func:`kernels.formats.mlx_numerics.pack_bits`).

Against the generic ``int{4,8}-g*`` formats (:mod:`kernels.formats.affine`): those take the group
minimum as the bias and round scale and bias *outward* to float16 so nothing is clipped; MLX keeps
the larger-magnitude edge exact, puts zero on the grid and rounds to nearest, so its other extreme
can land up to half a step outside the grid and be clipped.

Encoded dict (numpy): ``wq`` uint32 ``[..., n*bits/32]``, ``scales`` and ``biases`` ``[..., n/g]`` in
the weight dtype (bfloat16 as uint16 bit patterns), ``shape``. Torch: ``wq`` int32 (the same bits),
``scales`` / ``biases`` torch tensors of the weight dtype. ``backend="mlx"`` runs MLX itself
(:mod:`kernels.formats.mlx_native`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch
from moesim.kernels.formats import mlx_numerics as mn
from moesim.kernels.formats._blockutil import (
    check_stored_shape,
    finish_decode,
    shape_tensor,
)
from moesim.kernels.formats.base import (
    FormatError,
    as_float32,
    check_backend,
    check_last_dim,
    check_out_torch,
    deliver,
    require,
    shape_array,
)
from moesim.kernels.jit import njit
from numba import prange

GROUP_SIZES = (32, 64, 128)
BIT_WIDTHS = (1, 2, 3, 4, 5, 6, 8)
EPS = np.float32(1e-7)
SUFFIX = {mn.BF16: "", mn.F16: "-f16", mn.F32: "-f32"}


# ---- numba kernels (parallel over groups) ------------------------------------------------------

@njit(inline="always")
def _cmax(a, b):
    # std::max(a, b): b only when a < b, so a NaN in b is dropped and a NaN in a is kept
    return b if a < b else a


@njit(inline="always")
def _cmin(a, b):
    return b if b < a else a


@njit(inline="always")
def _group_params(w, lo, group, bits, nbins):
    """(scale, bias) in float32 for the group ``w[lo:lo+group]`` (values on the weight dtype's grid;
    see the module docstring). The loop order is MLX's: of equal extremes (+0 / -0) the first stays."""
    w_min = np.float32(np.inf)
    w_max = np.float32(-np.inf)
    for i in range(lo, lo + group):
        v = w[i]
        w_max = _cmax(w_max, v)
        w_min = _cmin(w_min, v)
    if bits == 1:
        return _cmax(np.float32(w_max - w_min), EPS), w_min
    mask = abs(w_min) > abs(w_max)
    scale = _cmax(np.float32(np.float32(w_max - w_min) / nbins), EPS)
    if not mask:
        scale = -scale
    edge = w_min if mask else w_max
    q0 = np.rint(np.float32(edge / scale))
    bias = np.float32(0.0)
    if q0 != 0:
        scale = np.float32(edge / q0)
        bias = edge
    return scale, bias


@njit(parallel=True)
def _encode_nb(w, dt, group, bits, data, scales, biases):
    """``w`` float32 ``[rows, n]`` already on the ``dt`` grid; ``data`` uint8 ``[rows, n*bits/8]`` (the
    little-endian bytes of the uint32 words); ``scales`` / ``biases`` float32 ``[rows, n/group]``.

    Codes go out eight at a time: eight ``bits``-bit codes are exactly ``bits`` bytes, so a chunk is
    assembled in a uint64 and written byte by byte, and no byte is shared between chunks or groups.
    """
    rows, n = w.shape
    ng = n // group
    nbins = np.float32((1 << bits) - 1)
    zero = np.float32(0.0)
    for t in prange(rows * ng):
        r = t // ng
        gi = t - r * ng
        lo = gi * group
        row = w[r]
        scale, bias = _group_params(row, lo, group, bits, nbins)
        scales[r, gi] = mn.rd(scale, dt)
        biases[r, gi] = mn.rd(bias, dt)
        out = lo * bits // 8
        for c in range(lo, lo + group, 8):
            v = np.uint64(0)
            for k in range(8):
                q = np.rint(np.float32(np.float32(row[c + k] - bias) / scale))
                q = zero if q < zero else q  # std::max(q, 0): a NaN stays
                q = nbins if nbins < q else q
                code = np.uint64(0) if q != q else np.uint64(q)
                v |= code << np.uint64(bits * k)
            for j in range(bits):
                data[r, out + j] = np.uint8((v >> np.uint64(8 * j)) & np.uint64(0xFF))
            out += bits


_CHUNK = 64  # groups per work item of the decode (one value table each, not one per group)


@njit(parallel=True)
def _decode_nb(data, scales, biases, dt, group, bits, out):
    """Eight codes at a time from ``bits`` bytes. With at most ``group / 2`` distinct codes per group
    (bits <= 5, or 6 with groups of 128) each group's decoded values are tabulated first (one
    multiply-add per code value instead of per weight)."""
    rows, n = out.shape
    ng = n // group
    total = rows * ng
    mask = np.uint64((1 << bits) - 1)
    levels = 1 << bits
    tabulate = 2 * levels <= group
    for chunk in prange((total + _CHUNK - 1) // _CHUNK):
        table = np.empty(levels, np.float32)
        for t in range(chunk * _CHUNK, min(total, (chunk + 1) * _CHUNK)):
            r = t // ng
            gi = t - r * ng
            s = scales[r, gi]
            b = biases[r, gi]
            lo = gi * group
            if tabulate:
                for q in range(levels):
                    table[q] = mn.rd(mn.rd(np.float32(q) * s, dt) + b, dt)
            src = lo * bits // 8
            for c in range(lo, lo + group, 8):
                v = np.uint64(0)
                for j in range(bits):
                    v |= np.uint64(data[r, src + j]) << np.uint64(8 * j)
                src += bits
                for k in range(8):
                    code = (v >> np.uint64(bits * k)) & mask
                    if tabulate:
                        out[r, c + k] = table[code]
                    else:
                        out[r, c + k] = mn.rd(mn.rd(np.float32(code) * s, dt) + b, dt)


# ---- the format ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class MLXAffineFormat:
    """One MLX affine format; see the module docstring for the exact arithmetic."""

    # the implementations encode / decode accept: "mlx" runs MLX itself (kernels.formats.mlx_native)
    backends: ClassVar[tuple[str, ...]] = ("numba", "reference", "mlx")

    bits: int
    group: int
    dtype: str = "bfloat16"
    name: str = field(init=False)

    def __post_init__(self) -> None:
        if self.bits not in BIT_WIDTHS:
            raise FormatError(f"mlx-affine: bits must be one of {BIT_WIDTHS}, got {self.bits}")
        if self.group not in GROUP_SIZES:
            raise FormatError(f"mlx-affine: group size must be one of {GROUP_SIZES}, got {self.group}")
        dt = mn.dtype_code(self.dtype, "mlx-affine")
        object.__setattr__(self, "name", f"mlx-affine-b{self.bits}-g{self.group}{SUFFIX[dt]}")

    @property
    def dt(self) -> int:
        return mn.DTYPES[self.dtype]

    @property
    def block_size(self) -> int:
        return self.group

    @property
    def mode(self) -> str:
        return "affine"

    def bits_per_weight(self, shape: tuple[int, ...]) -> float:
        check_last_dim(tuple(shape), self.group, self.name)
        return self.bits + 2 * mn.DTYPE_BITS[self.dt] / self.group

    def _rows(self, x: Any) -> tuple[np.ndarray, tuple[int, ...]]:
        x32 = as_float32(x, self.name)
        check_last_dim(x32.shape, self.group, self.name)
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
            scales = np.empty((rows, n // self.group), np.float32)
            biases = np.empty_like(scales)
            _encode_nb(mn.rounded_rows(x2, self.dt), self.dt, self.group, self.bits, data, scales, biases)
            wq = data.view("<u4").astype(np.uint32)
        else:
            wq, scales, biases = self._encode_reference(x2)
        lead = shape[:-1]
        return {"wq": wq.reshape(*lead, n * self.bits // 32),
                "scales": mn.to_storage(scales, self.dt).reshape(*lead, n // self.group),
                "biases": mn.to_storage(biases, self.dt).reshape(*lead, n // self.group),
                "shape": shape_array(shape)}

    def _encode_reference(self, x2: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        rows, n = x2.shape
        w = mn.round_to(x2, self.dt).reshape(rows, n // self.group, self.group)
        nbins = np.float32(2**self.bits - 1)
        # std::max / std::min from -Inf / +Inf skip NaN weights and keep the first of equal extremes
        # (+0 / -0): the first index of the extreme, NaN replaced by the starting value
        hi = np.where(np.isnan(w), -np.inf, w).astype(np.float32)
        lo = np.where(np.isnan(w), np.inf, w).astype(np.float32)
        w_max = np.take_along_axis(hi, hi.argmax(-1)[..., None], -1)[..., 0]
        w_min = np.take_along_axis(lo, lo.argmin(-1)[..., None], -1)[..., 0]
        with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
            span = (w_max - w_min).astype(np.float32)
            if self.bits == 1:
                scale = np.where(span < EPS, EPS, span).astype(np.float32)
                bias = w_min
            else:
                s0 = (span / nbins).astype(np.float32)
                s0 = np.where(s0 < EPS, EPS, s0).astype(np.float32)
                edge_is_min = np.abs(w_min) > np.abs(w_max)
                s0 = np.where(edge_is_min, s0, -s0).astype(np.float32)
                edge = np.where(edge_is_min, w_min, w_max).astype(np.float32)
                q0 = np.rint((edge / s0).astype(np.float32))
                keep = q0 != 0
                scale = np.where(keep, (edge / np.where(keep, q0, 1)).astype(np.float32), s0).astype(np.float32)
                bias = np.where(keep, edge, np.float32(0)).astype(np.float32)
            q = np.rint(((w - bias[..., None]).astype(np.float32) / scale[..., None]).astype(np.float32))
            q = np.where(q < 0, np.float32(0), q)  # std::max(q, 0): NaN stays NaN
            q = np.where(nbins < q, nbins, q)
        codes = np.where(np.isnan(q), 0, q).astype(np.uint8).reshape(rows, n)
        return (mn.pack_bits(codes, self.bits), mn.round_to(scale, self.dt), mn.round_to(bias, self.dt))

    def _check_enc(self, wq_shape: tuple[int, ...], scales_shape: tuple[int, ...],
                   biases_shape: tuple[int, ...]) -> tuple[tuple[int, ...], int]:
        lead = tuple(wq_shape[:-1])
        if len(wq_shape) == 0 or (wq_shape[-1] * 32) % (self.bits * self.group):
            raise FormatError(f"{self.name}: field 'wq' has shape {tuple(wq_shape)}; its last axis must hold "
                              f"whole groups of {self.group} {self.bits}-bit codes")
        n = wq_shape[-1] * 32 // self.bits
        want = (*lead, n // self.group)
        for field_name, got in (("scales", scales_shape), ("biases", biases_shape)):
            if tuple(got) != want:
                raise FormatError(f"{self.name}: field {field_name!r} has shape {tuple(got)}, expected {want} "
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
        require(enc, ("wq", "scales", "biases"), self.name)
        wq = np.asarray(enc["wq"])
        if wq.dtype != np.uint32:
            raise FormatError(f"{self.name}: field 'wq' has dtype {wq.dtype}, expected uint32")
        scales = mn.from_storage(enc["scales"], self.dt, self.name, "scales")
        biases = mn.from_storage(enc["biases"], self.dt, self.name, "biases")
        lead, n = self._check_enc(wq.shape, scales.shape, biases.shape)
        check_stored_shape(enc, (*lead, n), self.name)
        rows = math.prod(lead)
        s2 = np.ascontiguousarray(scales.reshape(rows, n // self.group))
        b2 = np.ascontiguousarray(biases.reshape(rows, n // self.group))
        data = np.ascontiguousarray(wq.reshape(rows, -1), dtype="<u4").view(np.uint8)
        if backend == "numba":
            out = np.empty((rows, n), np.float32)
            _decode_nb(data, s2, b2, self.dt, self.group, self.bits, out)
        else:
            q = mn.unpack_bits(wq.reshape(rows, -1), self.bits).astype(np.float32)
            qb = q.reshape(rows, n // self.group, self.group)
            with np.errstate(invalid="ignore", over="ignore"):
                y = mn.round_to((qb * s2[..., None]).astype(np.float32), self.dt)
                out = mn.round_to((y + b2[..., None]).astype(np.float32), self.dt).reshape(rows, n)
        return finish_decode(out.reshape(*lead, n), dtype)

    # -- torch --
    def encode_torch(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        if not isinstance(x, torch.Tensor) or not x.is_floating_point():
            raise FormatError(f"{self.name}: expected a floating-point torch.Tensor, got {type(x).__name__}")
        check_last_dim(tuple(x.shape), self.group, self.name)
        dt = self.dt
        lead, n = tuple(x.shape[:-1]), x.shape[-1]
        w = mn.round_torch(x.to(torch.float32), dt).reshape(*lead, n // self.group, self.group)
        nan = torch.isnan(w)
        inf = torch.tensor(float("inf"), device=w.device)
        hi = torch.where(nan, -inf, w)
        lo = torch.where(nan, inf, w)
        w_max = hi.gather(-1, hi.argmax(-1, keepdim=True)).squeeze(-1)  # argmax: the first of equal maxima
        w_min = lo.gather(-1, lo.argmin(-1, keepdim=True)).squeeze(-1)
        eps = torch.tensor(float(EPS), device=w.device)
        nbins = torch.tensor(float(2**self.bits - 1), device=w.device)
        zero = torch.zeros((), device=w.device)
        span = w_max - w_min
        if self.bits == 1:
            scale = torch.where(span < eps, eps, span)
            bias = w_min
        else:
            s0 = span / nbins
            s0 = torch.where(s0 < eps, eps, s0)
            edge_is_min = w_min.abs() > w_max.abs()
            s0 = torch.where(edge_is_min, s0, -s0)
            edge = torch.where(edge_is_min, w_min, w_max)
            q0 = torch.round(edge / s0)
            keep = q0 != 0
            scale = torch.where(keep, edge / torch.where(keep, q0, 1.0), s0)
            bias = torch.where(keep, edge, zero)
        q = torch.round((w - bias.unsqueeze(-1)) / scale.unsqueeze(-1))
        q = torch.where(q < 0, zero, q)
        q = torch.where(nbins < q, nbins, q)
        codes = torch.where(torch.isnan(q), zero, q).to(torch.uint8).reshape(*lead, n)
        return {"wq": mn.pack_bits_torch(codes, self.bits),
                "scales": mn.to_storage_torch(mn.round_torch(scale, dt), dt),
                "biases": mn.to_storage_torch(mn.round_torch(bias, dt), dt),
                "shape": shape_tensor((*lead, n))}

    def decode_torch(self, enc: Mapping[str, torch.Tensor], *, dtype: Any = torch.float32,
                     out: torch.Tensor | None = None) -> torch.Tensor:
        res = self._decode_torch(enc, dtype=dtype)
        if out is None:
            return res
        check_out_torch(out, tuple(res.shape), res.dtype, res.device, self.name)
        out.copy_(res)
        return out

    def _decode_torch(self, enc: Mapping[str, torch.Tensor], *, dtype: Any = torch.float32) -> torch.Tensor:
        require(enc, ("wq", "scales", "biases"), self.name)
        wq, scales, biases = enc["wq"], enc["scales"], enc["biases"]
        lead, n = self._check_enc(tuple(wq.shape), tuple(scales.shape), tuple(biases.shape))
        q = mn.unpack_bits_torch(wq, self.bits).to(torch.float32).reshape(*lead, n // self.group, self.group)
        s = mn.from_storage_torch(scales, self.dt).unsqueeze(-1)
        b = mn.from_storage_torch(biases, self.dt).unsqueeze(-1)
        y = mn.round_torch(mn.round_torch(q * s, self.dt) + b, self.dt)
        return mn.finish_torch(y.reshape(*lead, n), dtype)


FORMATS: dict[str, MLXAffineFormat] = {
    f.name: f for f in (MLXAffineFormat(b, g, d) for d in ("bfloat16", "float16", "float32")
                        for b in BIT_WIDTHS for g in GROUP_SIZES)
}
