"""torch MX codecs for CPU and CUDA: vectorised integer bit manipulation, ``torch.compile``-friendly.

Same algorithm as the numba kernels (the block maximum on magnitude bits, the shared exponent from
the exponent field, elements through :func:`kernels.minifloat.torch_encode_bits`), so results agree
bit for bit. Decoding builds each power of two from its bits, so it is exact on any device.
"""

from __future__ import annotations

import torch
from moesim.kernels import minifloat as mf
from moesim.kernels.formats._mx_common import BLOCK, MXElement
from moesim.kernels.formats.base import check_out_torch


def _pow2(exp: torch.Tensor) -> torch.Tensor:
    """float32 ``2^exp`` for integer ``exp`` in [-127, 127] (2^-127 is the subnormal 0x00400000)."""
    bits = torch.where(exp == -127, 0x00400000, (exp + 127) << 23)
    return bits.to(torch.int32).view(torch.float32)


def shared_exponent(ab: torch.Tensor, el: MXElement, rule: str) -> torch.Tensor:
    """Shared exponent from the block maximum's magnitude bits (int32, finite blocks)."""
    ex = ab >> 23
    frac = ab & 0x7FFFFF
    sub = ex == 0
    bl = mf.torch_floor_log2_int(frac)
    fl = torch.where(sub, bl - 149, ex - 127)
    shift = torch.clamp(23 - bl, 0, 23)  # frac == 0 gives a bogus bl; that case is masked below
    frac = torch.where(sub, (frac << shift) & 0x7FFFFF, frac)
    e = fl - el.emax
    if rule == "rceil":
        e = e + (frac > el.max_frac).to(e.dtype)
    e = torch.where(ab == 0, -127, e)
    return torch.clamp(e, -127, 127)


def encode(x: torch.Tensor, el: MXElement, rule: str) -> dict[str, torch.Tensor]:
    """``x [..., N]`` (N a multiple of 32) -> {"codes" or "blocks", "scales"}."""
    xb = x.to(torch.float32).reshape(*x.shape[:-1], x.shape[-1] // BLOCK, BLOCK)
    bits = xb.contiguous().view(torch.int32)
    ab = (bits & 0x7FFFFFFF).amax(dim=-1)
    bad = ab >= 0x7F800000
    e = shared_exponent(ab, el, rule)
    codes = mf.torch_encode_bits(bits, e.unsqueeze(-1), el.params, True)
    codes = torch.where(bad.unsqueeze(-1), 0, codes.to(torch.int32))
    scales = torch.where(bad, 0xFF, e + 127).to(torch.uint8)
    if el.packed:
        return {"blocks": (codes[..., 0::2] | (codes[..., 1::2] << 4)).to(torch.uint8), "scales": scales}
    return {"codes": codes.to(torch.uint8), "scales": scales}


def element_values(codes: torch.Tensor, el: MXElement) -> torch.Tensor:
    if el.spec is None:
        return codes.view(torch.int8).to(torch.float32) * (1.0 / 64.0)
    return mf.decode_torch(codes, el.spec)


def unpack_fp4(blocks: torch.Tensor) -> torch.Tensor:
    b = blocks.to(torch.int32)
    return torch.stack([b & 0xF, b >> 4], dim=-1).reshape(*b.shape[:-1], b.shape[-1] * 2).to(torch.uint8)


def scale_factor(scales: torch.Tensor, nan_scale: float = float("nan")) -> torch.Tensor:
    """float32 ``2^(s-127)`` per scale byte; 0xFF -> ``nan_scale``."""
    s = scales.to(torch.int32)
    return torch.where(s == 0xFF, nan_scale, _pow2(s - 127))


def decode(enc: dict[str, torch.Tensor], el: MXElement, *, dtype: torch.dtype = torch.float32,
           nan_scale: float = float("nan"), out: torch.Tensor | None = None, fmt: str = "mx") -> torch.Tensor:
    """codes and scales -> ``[..., G * 32]`` of ``dtype``; with ``out``, written there (the product
    is formed in float32 and rounded once to ``out``'s dtype, as ``.to(dtype)`` would) and returned."""
    codes = unpack_fp4(enc["blocks"]) if el.packed else enc["codes"]
    vals = element_values(codes, el)
    factor = scale_factor(enc["scales"], nan_scale).unsqueeze(-1)
    shape = (*vals.shape[:-2], vals.shape[-2] * BLOCK)
    if out is None:
        return (vals * factor).reshape(shape).to(dtype)
    check_out_torch(out, shape, dtype, codes.device, fmt)
    torch.mul(vals, factor, out=out.view(vals.shape))
    return out
