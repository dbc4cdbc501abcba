"""The gpt-oss MXFP4 checkpoint layout (``original/`` folder) and its reference reader's arithmetic.

Tensors ``block.{i}.mlp.mlp1_weight.blocks`` / ``.scales`` and ``block.{i}.mlp.mlp2_weight.*``:

* ``blocks``: uint8 ``[..., G, 16]``; each byte holds two E2M1 codes, the LOW nibble first, so byte
  ``j`` of a group holds elements ``2j`` (low) and ``2j + 1`` (high) of that group of 32.
* ``scales``: uint8 ``[..., G]``, E8M0: the group's values are ``E2M1(code) * 2^(scale - 127)``.
* The decoded weight is ``[..., G * 32]``. ``mlp1`` rows interleave the two SwiGLU projections:
  even rows are the gate, odd rows the up projection (the reader's swiglu takes ``x[..., ::2]`` as
  the gate and ``x[..., 1::2]`` as the linear part); :func:`deinterleave_rows` splits them.

The reference reader (gpt-oss's ``torch/weights.py``, and transformers' ``convert_moe_packed_tensors``)
decodes a group as ``torch.ldexp(lut[code], scale - 127)`` with the table in the output dtype
(bfloat16 by default). For every scale byte but 0xFF that is exact (an E2M1 value times a power of
two from 2^-127 to 2^127 is a float32, and a bfloat16 too), so it equals OCP decoding. At 0xFF
torch's ldexp computes ``x * 2^128`` without forming 2^128 first: +-0 stays +-0, +-0.5 gives
+-2^127 and larger magnitudes +-Inf. :func:`decode_gptoss` reproduces that (``ldexp="exact"``, the
default), checked against ``torch.ldexp`` itself for all 256 scale bytes x 16 codes, in float32 and
bfloat16. ``ldexp="pow2"`` is the other arithmetic a reader could use, ``x * 2.0 ** e`` with the
power in float32, where 2^128 overflows to +Inf: nonzero codes give +-Inf and +-0 codes NaN.

OCP itself says 0xFF is NaN for the whole group (:mod:`kernels.formats.mx`); the encoder here never
writes 0xFF for finite inputs. bfloat16 output is the float32 result rounded to nearest-even (numpy:
uint16 bit patterns, torch: ``torch.bfloat16``); every NaN is the canonical one. Both decoders take
``out=`` to decode into a caller's buffer (:func:`kernels.formats.base.decode_target`).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from moesim.kernels.formats import _mx_torch as tk
from moesim.kernels.formats._mx_common import ELEMENTS, element_lut, scale_values
from moesim.kernels.formats.base import FormatError, check_out_torch
from moesim.kernels.formats.mx import decode_mx, encode_mx

FP4 = ELEMENTS["fp4_e2m1"]
LDEXP_MODES = ("pow2", "exact")

# "exact": twice the E2M1 values times 2^(s-128), which reaches 2^127 at s = 0xFF without overflow
# (the same products, exact, as ggml's half-scale convention).
HALF_SCALES = np.ldexp(1.0, np.arange(256) - 128).astype(np.float32)
_DOUBLE_LUT = (element_lut("fp4_e2m1").astype(np.float64) * 2.0).astype(np.float32)
# "pow2": E2M1 values times float32 2^(s-127), 2^128 -> +Inf.
_POW2_SCALES = scale_values(nan_scale=np.inf)


def mlp_tensor_names(layer: int) -> dict[str, tuple[str, str]]:
    """Checkpoint names of one layer's expert weights: {"mlp1": (blocks, scales), "mlp2": (...)}."""
    return {m: (f"block.{layer}.mlp.{m}_weight.blocks", f"block.{layer}.mlp.{m}_weight.scales")
            for m in ("mlp1", "mlp2")}


def _check(blocks: np.ndarray | torch.Tensor, scales: np.ndarray | torch.Tensor) -> None:
    bshape, sshape = tuple(blocks.shape), tuple(scales.shape)
    if len(bshape) < 2 or bshape[-1] != 16 or bshape[:-1] != sshape:
        raise FormatError(f"gpt-oss MXFP4: blocks of shape {bshape} and scales of shape {sshape} do not "
                          "form the layout blocks [..., G, 16] / scales [..., G]")
    if str(blocks.dtype).split(".")[-1] != "uint8" or str(scales.dtype).split(".")[-1] != "uint8":
        raise FormatError(f"gpt-oss MXFP4: blocks and scales must be uint8, got {blocks.dtype} and {scales.dtype}")


def _check_mode(ldexp: str) -> None:
    if ldexp not in LDEXP_MODES:
        raise FormatError(f"gpt-oss MXFP4: unknown ldexp mode {ldexp!r}; expected one of {LDEXP_MODES}")


def decode_gptoss(blocks: np.ndarray, scales: np.ndarray, *, dtype: Any = np.float32, ldexp: str = "exact",
                  backend: str = "numba", out: Any = None) -> Any:
    """``blocks [..., G, 16]``, ``scales [..., G]`` -> ``[..., G * 32]`` exactly as the reader computes
    it with ``torch.ldexp`` (float32, or bfloat16 bit patterns as uint16); into ``out`` if given."""
    _check(blocks, scales)
    _check_mode(ldexp)
    if ldexp == "pow2":
        return decode_mx(blocks, scales, FP4, dtype=dtype, backend=backend, scale_table=_POW2_SCALES,
                         fmt="gpt-oss MXFP4", out=out)
    return decode_mx(blocks, scales, FP4, dtype=dtype, backend=backend, scale_table=HALF_SCALES,
                     lut=_DOUBLE_LUT, fmt="gpt-oss MXFP4", out=out)


def decode_gptoss_torch(blocks: torch.Tensor, scales: torch.Tensor, *, dtype: torch.dtype = torch.bfloat16,
                        ldexp: str = "exact", out: torch.Tensor | None = None) -> torch.Tensor:
    """torch twin of :func:`decode_gptoss` (CPU or CUDA); element ``2j`` from the low nibble. The
    product is formed in float32 and rounded once to ``dtype`` (into ``out`` if given)."""
    _check(blocks, scales)
    _check_mode(ldexp)
    vals = tk.element_values(tk.unpack_fp4(blocks), FP4)
    s = scales.to(torch.int32)
    if ldexp == "pow2":
        factor = tk.scale_factor(scales, nan_scale=float("inf"))
    else:  # twice the value times 2^(s-128): the 2^(s-128) factor is a float32 for every byte
        vals = vals * 2.0
        half = torch.where(s == 0, 0x00200000, torch.where(s == 1, 0x00400000, (s - 1) << 23))
        factor = half.to(torch.int32).view(torch.float32)
    factor = factor.unsqueeze(-1)
    shape = (*vals.shape[:-2], vals.shape[-2] * 32)
    if out is None:
        return (vals * factor).reshape(shape).to(dtype)
    check_out_torch(out, shape, dtype, blocks.device, "gpt-oss MXFP4")
    torch.mul(vals, factor, out=out.view(vals.shape))
    return out


def encode_gptoss(w: np.ndarray, *, rule: str = "floor", backend: str = "numba") -> tuple[np.ndarray, np.ndarray]:
    """float weights ``[..., K]`` (K a multiple of 32) -> (blocks ``[..., K/32, 16]``, scales ``[..., K/32]``),
    MXFP4 with the OCP ``floor`` scale rule (or ``"rceil"``)."""
    return encode_mx(w, FP4, rule, backend=backend, fmt="gpt-oss MXFP4")


def encode_gptoss_torch(w: torch.Tensor, *, rule: str = "floor") -> tuple[torch.Tensor, torch.Tensor]:
    if w.shape[-1] % 32 != 0:
        raise FormatError(f"gpt-oss MXFP4: last dimension of shape {tuple(w.shape)} is not a multiple of 32")
    enc = tk.encode(w, FP4, rule)
    return enc["blocks"], enc["scales"]


def deinterleave_rows(w: Any, axis: int = -2) -> tuple[Any, Any]:
    """Split gpt-oss ``mlp1`` rows into (gate, up): even rows along ``axis`` are the gate, odd rows up.

    ``axis=-2`` for a decoded weight ``[E, 2I, H]``; ``-3`` for its ``blocks`` ``[E, 2I, G, 16]``; ``-2``
    for its ``scales`` ``[E, 2I, G]``; ``-1`` for the bias ``[E, 2I]``. Works on numpy arrays and tensors.
    """
    n = w.shape[axis]
    if n % 2 != 0:
        raise FormatError(f"gpt-oss mlp1: axis {axis} of shape {tuple(w.shape)} has an odd length {n}")
    idx = [slice(None)] * w.ndim
    idx[axis] = slice(0, None, 2)
    gate = w[tuple(idx)]
    idx[axis] = slice(1, None, 2)
    return gate, w[tuple(idx)]


def interleave_rows(gate: Any, up: Any, axis: int = -2) -> Any:
    """Inverse of :func:`deinterleave_rows`."""
    if tuple(gate.shape) != tuple(up.shape):
        raise FormatError(f"gpt-oss mlp1: gate {tuple(gate.shape)} and up {tuple(up.shape)} differ in shape")
    ax = axis % gate.ndim
    if isinstance(gate, torch.Tensor):
        return torch.stack([gate, up], dim=ax + 1).flatten(ax, ax + 1)
    stacked = np.stack([gate, up], axis=ax + 1)
    return stacked.reshape(*gate.shape[:ax], 2 * gate.shape[ax], *gate.shape[ax + 1:])
