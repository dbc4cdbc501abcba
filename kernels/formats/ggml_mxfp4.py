"""ggml's ``block_mxfp4`` (GGUF type MXFP4) and lossless conversion to and from the gpt-oss layout.

One block is 17 bytes: the E8M0 scale byte ``e``, then 16 bytes ``qs`` where byte ``j`` holds element
``j`` in its low nibble and element ``j + 16`` in its high nibble (gpt-oss pairs ``2j`` / ``2j + 1``
instead). A row of K values is K/32 consecutive blocks; :func:`to_ggml` returns ``[..., G, 17]``,
whose ``.reshape(-1)`` is the byte stream of a tensor.

ggml decodes with a doubled table (the E2M1 values times 2: 0, 1, 2, 3, 4, 6, 8, 12 and negatives)
and a *half* scale ``2^(e-128)`` built from bits (``e < 2``: the subnormals 2^-128, 2^-127; else
``(e - 1) << 23``), so its values are exactly ``E2M1 * 2^(e-127)`` for every byte, including 0xFF:
ggml has no NaN scale, and 0xFF gives ``E2M1 * 2^128`` (+-0.5 -> +-2^127, zeros -> +0, larger
magnitudes +-Inf), where OCP decoding gives a NaN block. ggml's table is ``int8_t``, so code 8
(E2M1's -0) is the integer 0 and decodes to +0.0 where the gpt-oss reader keeps -0.0; otherwise the
two agree bit for bit (with the reader's ``ldexp="exact"`` convention at 0xFF). :func:`decode_ggml`
reproduces ggml's arithmetic. Conversion only moves nibbles and bytes, so ggml -> gpt-oss -> ggml
(and the reverse) is bit-identical for every input, 0xFF scales included.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from moesim.kernels.formats._mx_common import element_lut
from moesim.kernels.formats.base import FormatError
from moesim.kernels.formats.gptoss import FP4, HALF_SCALES
from moesim.kernels.formats.mx import decode_mx

BLOCK_BYTES = 17

# ggml's kvalues_mxfp4 (int8): the E2M1 values doubled, with code 8 the integer 0 (so +0.0, not -0.0).
KVALUES = (element_lut("fp4_e2m1").astype(np.float64) * 2.0).astype(np.float32)
KVALUES[8] = 0.0
KVALUES.setflags(write=False)


def to_ggml(blocks: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """gpt-oss ``blocks [..., G, 16]`` + ``scales [..., G]`` -> ggml ``block_mxfp4`` bytes ``[..., G, 17]``."""
    b = np.asarray(blocks, dtype=np.uint8)
    s = np.asarray(scales, dtype=np.uint8)
    if b.ndim < 1 or b.shape[-1] != 16 or b.shape[:-1] != s.shape:
        raise FormatError(f"to_ggml: blocks {b.shape} / scales {s.shape} are not [..., G, 16] / [..., G]")
    # Unpack to element order (2j low, 2j+1 high), then repack as (j low, j+16 high).
    elems = np.empty((*b.shape[:-1], 32), np.uint8)
    elems[..., 0::2] = b & 0xF
    elems[..., 1::2] = b >> 4
    out = np.empty((*b.shape[:-1], BLOCK_BYTES), np.uint8)
    out[..., 0] = s
    out[..., 1:] = elems[..., :16] | (elems[..., 16:] << 4)
    return out


def from_ggml(raw: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """ggml bytes ``[..., G, 17]`` (or a flat stream whose length is a multiple of 17) -> gpt-oss
    ``(blocks [..., G, 16], scales [..., G])``."""
    r = np.asarray(raw, dtype=np.uint8)
    if r.ndim == 1:
        if r.size % BLOCK_BYTES != 0:
            raise FormatError(f"from_ggml: a flat stream of {r.size} bytes is not a whole number of "
                              f"{BLOCK_BYTES}-byte blocks")
        r = r.reshape(-1, BLOCK_BYTES)
    if r.shape[-1] != BLOCK_BYTES:
        raise FormatError(f"from_ggml: last dimension of shape {r.shape} must be {BLOCK_BYTES}")
    qs = r[..., 1:]
    elems = np.concatenate([qs & 0xF, qs >> 4], axis=-1)  # element j, then element j + 16
    blocks = (elems[..., 0::2] | (elems[..., 1::2] << 4)).astype(np.uint8)
    return blocks, np.ascontiguousarray(r[..., 0])


def decode_ggml(raw: np.ndarray, *, dtype: Any = np.float32, backend: str = "numba", out: Any = None) -> Any:
    """ggml's own dequantization (``kvalue * half_scale``) of ``[..., G, 17]`` -> ``[..., G * 32]``,
    into ``out`` if given."""
    blocks, scales = from_ggml(raw)
    return decode_mx(blocks, scales, FP4, dtype=dtype, backend=backend, scale_table=HALF_SCALES,
                     lut=KVALUES, fmt="ggml MXFP4", out=out)
