"""Affine integer groups (MLX / GPTQ / AWQ style): ``w ~= scale * q + bias`` per group.

Names: ``int{4,8}-g{32,64,128}`` (asymmetric) and ``int{4,8}-sym-g{32,64,128}`` (symmetric).

Asymmetric, b bits, group of g along the last axis, ``N = 2^b - 1``:

* ``bias = fp16_down(min(group))`` and ``scale = fp16_up((max - bias) / N)``, both stored as
  IEEE float16 (so bits per weight = b + 32/g). The stored values are rounded *outward* (bias
  toward -inf, scale toward +inf) rather than to nearest: the grid ``bias + scale * [0..N]`` then
  always covers ``[min, max]``, nothing is clipped, and every weight is within ``scale / 2`` of its
  decoded value (up to float32 rounding). With round-to-nearest a float16 bias above the group
  minimum would clip the smallest weights by up to half a float16 ulp of the minimum.
* ``q = clip(rint((w - bias) / scale), 0, N)`` with float32 arithmetic, ties to even.
* Constant group (``max == min``): the outward rounding makes ``scale`` positive unless the
  constant is itself a float16 value, in which case ``scale == 0``, every code is 0 and the group
  decodes exactly to ``bias``. A zero scale never reaches a division.
* decode: ``scale * q + bias`` in float32 (a multiply then an add, each rounded; no FMA).

Symmetric: ``scale = fp16_up(amax / Q)`` with ``Q = 2^(b-1) - 1``, ``q = clip(rint(w / scale), -Q, Q)``
stored as ``q + 2^(b-1)`` (so code 0 is never produced), float16 scale only: b + 16/g bits per
weight; an all-zero group has ``scale == 0`` and codes ``2^(b-1)``.

Inputs are converted to float32; non-finite values or magnitudes above 65504 (the float16 range
the scale and bias live in) are refused. 4-bit codes are packed two per byte, low nibble first.
Encoded dict: ``codes`` uint8 ``[..., n*b/8]``, ``scale`` float16 ``[..., n/g]``, and for the
asymmetric formats ``bias`` float16 ``[..., n/g]``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from moesim.kernels.formats._blockutil import (
    FP16_MAX,
    ROUND_DOWN,
    ROUND_UP,
    as_float32_torch,
    as_rows,
    check_stored_shape,
    finish_decode,
    finish_decode_torch,
    fp16_round_nb,
    fp16_round_ref,
    fp16_round_torch,
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

GROUP_SIZES = (32, 64, 128)
BIT_WIDTHS = (4, 8)


# ---- numba kernels (parallel over groups) ------------------------------------------------------

@njit(inline="always")
def _store_code(codes, r, i, c, bits):
    # Groups are even-sized and aligned, so one byte never straddles two groups (no race).
    if bits == 8:
        codes[r, i] = c
    elif i & 1 == 0:
        codes[r, i >> 1] = c
    else:
        codes[r, i >> 1] = codes[r, i >> 1] | (c << 4)


@njit(inline="always")
def _load_code(codes, r, i, bits):
    if bits == 8:
        return codes[r, i]
    return (codes[r, i >> 1] >> (4 * (i & 1))) & 0x0F


# The smallest positive float16 (a subnormal). A positive span divided by the code range may
# underflow float32 to 0 for denormal weights; rounding the true quotient *up* to the float16 grid
# gives at least this, so the quotient is clamped here instead of letting the scale become 0
# (which would decode the whole group to 0, beyond half a step from the weights). A zero span,
# including -0, gives +0 so every backend stores the same bits.
FP16_TINY = np.float32(2.0**-24)


@njit(inline="always")
def _span_over(span, top):
    if span > 0:
        return max(span / top, FP16_TINY)
    return np.float32(0.0)


def _span_over_ref(span: np.ndarray, top: np.float32) -> np.ndarray:
    span = np.asarray(span, np.float32)
    return np.where(span > 0, np.maximum(span / top, FP16_TINY), np.float32(0)).astype(np.float32)


def _span_over_torch(span: torch.Tensor, top: torch.Tensor) -> torch.Tensor:
    return torch.where(span > 0, torch.clamp(span / top, min=float(FP16_TINY)), torch.zeros_like(span))


@njit(parallel=True)
def _encode_asym_nb(x2, group, bits, codes, scale, bias):
    rows, n = x2.shape
    ng = n // group
    top = np.float32((1 << bits) - 1)
    zero = np.float32(0.0)
    for t in prange(rows * ng):
        r = t // ng
        gi = t - r * ng
        lo = gi * group
        mn = x2[r, lo]
        mx = mn
        for i in range(lo + 1, lo + group):
            v = x2[r, i]
            mn = min(mn, v)
            mx = max(mx, v)
        # ``+ 0`` turns a -0 minimum into +0: min() over mixed-sign zeros is order-dependent,
        # and the three backends must store the same bits.
        b = fp16_round_nb(mn, ROUND_DOWN) + zero
        s = fp16_round_nb(_span_over(mx - b, top), ROUND_UP)
        scale[r, gi] = s
        bias[r, gi] = b
        for i in range(lo, lo + group):
            q = zero
            if s > zero:
                q = min(max(np.rint((x2[r, i] - b) / s), zero), top)
            _store_code(codes, r, i, np.uint8(q), bits)


@njit(parallel=True)
def _encode_sym_nb(x2, group, bits, codes, scale):
    rows, n = x2.shape
    ng = n // group
    top = np.float32((1 << (bits - 1)) - 1)
    mid = np.float32(1 << (bits - 1))
    zero = np.float32(0.0)
    for t in prange(rows * ng):
        r = t // ng
        gi = t - r * ng
        lo = gi * group
        amax = zero
        for i in range(lo, lo + group):
            amax = max(amax, abs(x2[r, i]))
        s = fp16_round_nb(_span_over(amax, top), ROUND_UP)
        scale[r, gi] = s
        for i in range(lo, lo + group):
            q = zero
            if s > zero:
                q = min(max(np.rint(x2[r, i] / s), -top), top)
            _store_code(codes, r, i, np.uint8(q + mid), bits)


@njit(parallel=True)
def _decode_nb(codes, scale, bias, group, bits, symmetric, out):
    rows, n = out.shape
    ng = n // group
    mid = (1 << (bits - 1)) if symmetric else 0
    for t in prange(rows * ng):
        r = t // ng
        gi = t - r * ng
        s = scale[r, gi]
        b = bias[r, gi]
        for i in range(gi * group, (gi + 1) * group):
            q = np.float32(np.int32(_load_code(codes, r, i, bits)) - mid)
            if symmetric:
                out[r, i] = s * q
            else:
                out[r, i] = s * q + b


# ---- the format ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class AffineFormat:
    """One affine-integer format; see the module docstring for the exact arithmetic."""

    bits: int
    group: int
    symmetric: bool = False
    name: str = field(init=False)

    def __post_init__(self) -> None:
        if self.bits not in BIT_WIDTHS:
            raise FormatError(f"affine: bits must be one of {BIT_WIDTHS}, got {self.bits}")
        if self.group <= 0 or self.group % 2:
            raise FormatError(f"affine: group size must be a positive even number, got {self.group}")
        sym = "-sym" if self.symmetric else ""
        object.__setattr__(self, "name", f"int{self.bits}{sym}-g{self.group}")

    # -- sizes --
    @property
    def block_size(self) -> int:
        return self.group

    def bits_per_weight(self, shape: tuple[int, ...]) -> float:
        check_last_dim(tuple(shape), self.group, self.name)
        params = 16 if self.symmetric else 32  # float16 scale (+ float16 bias)
        return self.bits + params / self.group

    def _keys(self) -> tuple[str, ...]:
        return ("codes", "scale") if self.symmetric else ("codes", "scale", "bias")

    def _code_cols(self, n: int) -> int:
        return n * self.bits // 8

    # -- numpy / numba --
    def encode(self, x: np.ndarray, *, backend: str = "numba") -> dict[str, np.ndarray]:
        check_backend(backend, self.name)
        x2 = as_rows(x, self.group, self.name, max_abs=FP16_MAX)
        shape = np.shape(x)
        lead = shape[:-1]
        rows, n = x2.shape
        if backend == "numba":
            codes = np.zeros((rows, self._code_cols(n)), np.uint8)
            scale = np.empty((rows, n // self.group), np.float32)
            if self.symmetric:
                _encode_sym_nb(x2, self.group, self.bits, codes, scale)
                bias = None
            else:
                bias = np.empty_like(scale)
                _encode_asym_nb(x2, self.group, self.bits, codes, scale, bias)
            scale16 = scale.astype(np.float16)  # exact: the kernel produced float16 values
            bias16 = None if bias is None else bias.astype(np.float16)
        else:
            codes, scale16, bias16 = self._encode_reference(x2)
        enc = {"codes": codes.reshape(*lead, self._code_cols(n)),
               "scale": scale16.reshape(*lead, n // self.group)}
        if bias16 is not None:
            enc["bias"] = bias16.reshape(*lead, n // self.group)
        enc["shape"] = shape_array(shape)
        return enc

    def _encode_reference(self, x2: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        rows, n = x2.shape
        xb = x2.reshape(rows, n // self.group, self.group)
        if self.symmetric:
            top = np.float32(2 ** (self.bits - 1) - 1)
            scale16 = fp16_round_ref(_span_over_ref(np.abs(xb).max(-1, initial=0.0), top), ROUND_UP)
            s = scale16.astype(np.float32)[..., None]
            q = np.clip(np.rint(xb / np.where(s > 0, s, 1)), -top, top)
            q = np.where(s > 0, q, 0) + np.float32(2 ** (self.bits - 1))
            bias16 = None
        else:
            top = np.float32(2**self.bits - 1)
            bias16 = fp16_round_ref(xb.min(-1, initial=np.inf), ROUND_DOWN) + np.float16(0)
            b = bias16.astype(np.float32)
            scale16 = fp16_round_ref(_span_over_ref(xb.max(-1, initial=-np.inf) - b, top), ROUND_UP)
            s = scale16.astype(np.float32)[..., None]
            q = np.clip(np.rint((xb - b[..., None]) / np.where(s > 0, s, 1)), 0, top)
            q = np.where(s > 0, q, 0)
        codes = q.astype(np.uint8).reshape(rows, n)
        if self.bits == 4:
            codes = pack_nibbles(codes)
        return codes, scale16, bias16

    def _check_enc(self, codes_shape: tuple[int, ...], scale_shape: tuple[int, ...],
                   bias_shape: tuple[int, ...] | None) -> tuple[tuple[int, ...], int]:
        lead = tuple(codes_shape[:-1])
        n = codes_shape[-1] * 8 // self.bits
        want = (*lead, n // self.group)
        if tuple(scale_shape) != want:
            raise FormatError(f"{self.name}: field 'scale' has shape {tuple(scale_shape)}, expected {want} "
                             f"for codes of shape {tuple(codes_shape)}")
        if bias_shape is not None and tuple(bias_shape) != want:
            raise FormatError(f"{self.name}: field 'bias' has shape {tuple(bias_shape)}, expected {want}")
        return lead, n

    def decode(self, enc: dict[str, np.ndarray], *, dtype: Any = np.float32, backend: str = "numba",
               out: Any = None) -> Any:
        check_backend(backend, self.name)
        require(enc, self._keys(), self.name)
        codes = np.ascontiguousarray(enc["codes"], np.uint8)
        scale = np.asarray(enc["scale"]).astype(np.float32)
        bias = None if self.symmetric else np.asarray(enc["bias"]).astype(np.float32)
        lead, n = self._check_enc(codes.shape, scale.shape, None if bias is None else bias.shape)
        check_stored_shape(enc, (*lead, n), self.name)
        rows = int(np.prod(lead, dtype=np.int64))
        codes2 = codes.reshape(rows, codes.shape[-1])
        scale2 = scale.reshape(rows, n // self.group)
        bias2 = np.zeros_like(scale2) if bias is None else bias.reshape(rows, n // self.group)
        target, f32 = start_decode(out, (*lead, n), dtype, self.name, codes, enc["scale"],
                                   *(() if self.symmetric else (enc["bias"],)))
        if backend == "numba":
            _decode_nb(codes2, scale2, bias2, self.group, self.bits, self.symmetric, f32.reshape(rows, n))
        else:
            q = unpack_nibbles(codes2) if self.bits == 4 else codes2
            q = q.astype(np.float32)
            if self.symmetric:
                q = q - np.float32(2 ** (self.bits - 1))
            qb = q.reshape(rows, n // self.group, self.group)
            values = scale2[..., None] * qb
            if not self.symmetric:
                values = values + bias2[..., None]
            np.copyto(f32, values.reshape(f32.shape))
        return finish_decode(f32, dtype, target, out)

    # -- torch --
    def encode_torch(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        x32 = as_float32_torch(x, self.group, self.name, max_abs=FP16_MAX)
        lead, n = x32.shape[:-1], x32.shape[-1]
        xb = x32.reshape(*lead, n // self.group, self.group)
        zero = torch.zeros((), dtype=torch.float32, device=x32.device)
        if self.symmetric:
            top = torch.full((), 2 ** (self.bits - 1) - 1, dtype=torch.float32, device=x32.device)
            scale16 = fp16_round_torch(_span_over_torch(xb.abs().amax(-1), top), ROUND_UP)
            s = scale16.to(torch.float32).unsqueeze(-1)
            pos = s > zero
            q = torch.clamp(torch.round(xb / torch.where(pos, s, 1.0)), -top, top)
            q = torch.where(pos, q, zero) + (top + 1)
            enc = {"scale": scale16}
        else:
            top = torch.full((), 2**self.bits - 1, dtype=torch.float32, device=x32.device)
            bias16 = fp16_round_torch(xb.amin(-1), ROUND_DOWN) + 0.0
            b = bias16.to(torch.float32)
            scale16 = fp16_round_torch(_span_over_torch(xb.amax(-1) - b, top), ROUND_UP)
            s = scale16.to(torch.float32).unsqueeze(-1)
            pos = s > zero
            q = torch.clamp(torch.round((xb - b.unsqueeze(-1)) / torch.where(pos, s, 1.0)), zero, top)
            q = torch.where(pos, q, zero)
            enc = {"scale": scale16, "bias": bias16}
        codes = q.to(torch.uint8).reshape(*lead, n)
        if self.bits == 4:
            codes = pack_nibbles_torch(codes)
        return {"codes": codes, **enc, "shape": shape_tensor((*lead, n))}

    def decode_torch(self, enc: dict[str, torch.Tensor], *, dtype: torch.dtype = torch.float32,
                     out: torch.Tensor | None = None) -> torch.Tensor:
        require(enc, self._keys(), self.name)
        codes = enc["codes"]
        scale = enc["scale"].to(torch.float32)
        bias = None if self.symmetric else enc["bias"].to(torch.float32)
        lead, n = self._check_enc(tuple(codes.shape), tuple(scale.shape),
                                  None if bias is None else tuple(bias.shape))
        q = unpack_nibbles_torch(codes) if self.bits == 4 else codes
        q = q.to(torch.float32)
        if self.symmetric:
            q = q - float(2 ** (self.bits - 1))  # exact: small integers
        qb = q.reshape(*lead, n // self.group, self.group)
        f32 = scale.unsqueeze(-1) * qb
        if bias is not None:
            f32 = f32 + bias.unsqueeze(-1)
        return finish_decode_torch(f32.reshape(*lead, n), dtype, out, self.name)


FORMATS: dict[str, AffineFormat] = {
    f.name: f
    for f in (AffineFormat(b, g, sym) for sym in (False, True) for b in BIT_WIDTHS for g in GROUP_SIZES)
}
