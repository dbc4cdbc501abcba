"""numba MX kernels: parallel over blocks (``prange``), integer-only encode, table-lookup decode.

Each kernel is a block routine (``_*_block``) looped over by a ``prange`` wrapper and a serial one;
:func:`pick` chooses by size. No fastmath: the encode is integer arithmetic and the decode one exact multiply per element (a
table value times a power of two), both memory-bound; ``nsz`` would lose -0.0 and ``nnan``/``ninf``
would break NaN blocks, and nothing else would be faster.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

from kernels.minifloat import nb_encode_bits

_CHUNK = 256  # blocks per work item in the bf16 kernels (one scratch buffer per item)
# Below this many blocks the serial kernels run instead: a parallel launch costs more than the work,
# and on a shared machine it can wait behind other processes' OpenMP threads (torch's, say).
PARALLEL_MIN_BLOCKS = 2048


@njit(cache=True)
def block_exponent(x_bits, base, emax, max_frac, rceil):
    """(shared exponent, block is bad) for the 32 float32 bit patterns from ``x_bits[base]``.

    The block maximum is taken on the magnitude bits as integers: for finite floats their order is
    the value order, and NaN / Inf patterns (>= 0x7F800000) sort above every finite one.
    """
    ab = 0
    for j in range(32):
        a = np.int64(x_bits[base + j]) & 0x7FFFFFFF
        if a > ab:
            ab = a
    if ab >= 0x7F800000:
        return 0, True
    if ab == 0:
        return -127, False
    ex = ab >> 23
    frac = ab & 0x7FFFFF
    if ex == 0:  # subnormal maximum: normalise the significand
        bl = math.frexp(float(frac))[1] - 1
        fl = bl - 149
        frac = (frac << (23 - bl)) & 0x7FFFFF
    else:
        fl = ex - 127
    e = fl - emax
    if rceil and frac > max_frac:
        e += 1
    return min(max(e, -127), 127), False



@njit(cache=True)
def _encode_unpacked_block(b, x_bits, codes, scales, emax, max_frac, rceil, mbits, emin, elem_emax, max_code,
                           inf_code, nan_code, sign_shift, int_elem):
    base = b * 32
    e, bad = block_exponent(x_bits, base, emax, max_frac, rceil)
    if bad:
        scales[b] = 0xFF
        for j in range(32):
            codes[base + j] = 0
        return
    scales[b] = e + 127
    for j in range(32):
        codes[base + j] = nb_encode_bits(np.int64(x_bits[base + j]), e, mbits, emin, elem_emax, max_code,
                                         inf_code, nan_code, sign_shift, int_elem, True)


@njit(cache=True)
def _encode_fp4_block(b, x_bits, blocks, scales, emax, max_frac, rceil, mbits, emin, elem_emax, max_code,
                      inf_code, nan_code, sign_shift, int_elem):
    base = b * 32
    e, bad = block_exponent(x_bits, base, emax, max_frac, rceil)
    if bad:
        scales[b] = 0xFF
        for j in range(16):
            blocks[b * 16 + j] = 0
        return
    scales[b] = e + 127
    for j in range(16):
        lo = nb_encode_bits(np.int64(x_bits[base + 2 * j]), e, mbits, emin, elem_emax, max_code, inf_code,
                            nan_code, sign_shift, int_elem, True)
        hi = nb_encode_bits(np.int64(x_bits[base + 2 * j + 1]), e, mbits, emin, elem_emax, max_code,
                            inf_code, nan_code, sign_shift, int_elem, True)
        blocks[b * 16 + j] = lo | (hi << 4)


@njit(cache=True)
def _decode_fp4_block(b, blocks, scales, pairs, scale_table, out):
    s = scale_table[scales[b]]
    for j in range(16):
        byte = blocks[b, j]
        out[b, 2 * j] = pairs[byte, 0] * s
        out[b, 2 * j + 1] = pairs[byte, 1] * s


@njit(cache=True)
def _decode_unpacked_block(b, codes, scales, lut, scale_table, out):
    s = scale_table[scales[b]]
    for j in range(32):
        out[b, j] = lut[codes[b, j]] * s


@njit(cache=True)
def _bf16(bits):
    """float32 bits -> bfloat16 bits, round to nearest even; NaN -> 0x7FC0."""
    if (bits & 0x7FFFFFFF) > 0x7F800000:
        return 0x7FC0
    return (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16


@njit(cache=True)
def _decode_bf16_chunk(c, data, packed, scales, lut, pairs, scale_table, out):
    """float32 decode of blocks ``[c*_CHUNK, (c+1)*_CHUNK)`` then float32 -> bf16 into uint16 ``out``."""
    tmp = np.empty(32, np.float32)
    tb = tmp.view(np.uint32)
    for b in range(c * _CHUNK, min(scales.shape[0], (c + 1) * _CHUNK)):
        s = scale_table[scales[b]]
        if packed:
            for j in range(16):
                byte = data[b, j]
                tmp[2 * j] = pairs[byte, 0] * s
                tmp[2 * j + 1] = pairs[byte, 1] * s
        else:
            for j in range(32):
                tmp[j] = lut[data[b, j]] * s
        for j in range(32):
            out[b, j] = _bf16(np.int64(tb[j]))


# ---- wrappers: x_bits uint32 [nb*32]; codes uint8 [nb*32] or blocks [nb*16]; scales uint8 [nb];
# ---- decode inputs [nb, 16 or 32], outputs [nb, 32] (float32, or uint16 for bf16)

@njit(cache=True, parallel=True)
def encode_unpacked_par(x_bits, codes, scales, *p):
    for b in prange(scales.shape[0]):
        _encode_unpacked_block(b, x_bits, codes, scales, *p)


@njit(cache=True)
def encode_unpacked_ser(x_bits, codes, scales, *p):
    for b in range(scales.shape[0]):
        _encode_unpacked_block(b, x_bits, codes, scales, *p)


@njit(cache=True, parallel=True)
def encode_fp4_par(x_bits, blocks, scales, *p):
    for b in prange(scales.shape[0]):
        _encode_fp4_block(b, x_bits, blocks, scales, *p)


@njit(cache=True)
def encode_fp4_ser(x_bits, blocks, scales, *p):
    for b in range(scales.shape[0]):
        _encode_fp4_block(b, x_bits, blocks, scales, *p)


@njit(cache=True, parallel=True)
def decode_fp4_par(blocks, scales, pairs, scale_table, out):
    for b in prange(scales.shape[0]):
        _decode_fp4_block(b, blocks, scales, pairs, scale_table, out)


@njit(cache=True)
def decode_fp4_ser(blocks, scales, pairs, scale_table, out):
    for b in range(scales.shape[0]):
        _decode_fp4_block(b, blocks, scales, pairs, scale_table, out)


@njit(cache=True, parallel=True)
def decode_unpacked_par(codes, scales, lut, scale_table, out):
    for b in prange(scales.shape[0]):
        _decode_unpacked_block(b, codes, scales, lut, scale_table, out)


@njit(cache=True)
def decode_unpacked_ser(codes, scales, lut, scale_table, out):
    for b in range(scales.shape[0]):
        _decode_unpacked_block(b, codes, scales, lut, scale_table, out)


@njit(cache=True, parallel=True)
def decode_bf16_par(data, packed, scales, lut, pairs, scale_table, out):
    for c in prange((scales.shape[0] + _CHUNK - 1) // _CHUNK):
        _decode_bf16_chunk(c, data, packed, scales, lut, pairs, scale_table, out)


@njit(cache=True)
def decode_bf16_ser(data, packed, scales, lut, pairs, scale_table, out):
    for c in range((scales.shape[0] + _CHUNK - 1) // _CHUNK):
        _decode_bf16_chunk(c, data, packed, scales, lut, pairs, scale_table, out)


_KERNELS = {
    "encode_unpacked": (encode_unpacked_ser, encode_unpacked_par),
    "encode_fp4": (encode_fp4_ser, encode_fp4_par),
    "decode_fp4": (decode_fp4_ser, decode_fp4_par),
    "decode_unpacked": (decode_unpacked_ser, decode_unpacked_par),
    "decode_bf16": (decode_bf16_ser, decode_bf16_par),
}


def pick(name: str, nblocks: int, parallel: bool | None = None):
    """The serial or the parallel kernel ``name``: parallel from PARALLEL_MIN_BLOCKS blocks unless forced."""
    ser, par = _KERNELS[name]
    use_par = nblocks >= PARALLEL_MIN_BLOCKS if parallel is None else parallel
    return par if use_par else ser
