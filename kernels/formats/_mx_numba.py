"""numba MX kernels: parallel over blocks (``prange``), exact encode, table-lookup decode.

Each kernel is a block routine (``_*_block``) looped over by a ``prange`` wrapper and a serial one;
:func:`pick` chooses by size. The generic encode is integer arithmetic on the float32 bits
(:func:`kernels.minifloat.nb_encode_bits`); MXFP4 has its own encode, comparisons of the exact
quotient against the E2M1 midpoints. The decode is one exact multiply per element (a table value
times a power of two). No fastmath: ``nsz`` would lose -0.0 and ``nnan``/``ninf`` would break NaN
blocks, and nothing else would be faster. Each decode also has a streaming twin (``*_stream``,
parallel only) that writes every 16 bytes of output with one non-temporal store; :func:`decode_into`
picks it for large, aligned outputs on x86-64 (:mod:`kernels.formats._stream`).

The decode kernels release the GIL (``nogil``): an offloading engine decodes fetched experts on a
worker thread while its main thread runs the model, and a decode that held the GIL would stop the
main thread's Python between its torch calls (on the project's 2-core machine a Python loop ran at
about a quarter of its speed beside a decode loop that held it).
"""

from __future__ import annotations

import math

import numpy as np
from moesim.kernels.formats._stream import can_stream, store_fence, stream_copy, stream_store
from moesim.kernels.jit import njit
from moesim.kernels.minifloat import nb_encode_bits
from numba import prange

_CHUNK = 256  # blocks per work item in the bf16 decode and FP4 encode kernels (one scratch buffer each)
# Below this many blocks the serial kernels run instead: a parallel launch costs more than the work,
# and on a shared machine it can wait behind other processes' OpenMP threads (torch's, say).
PARALLEL_MIN_BLOCKS = 2048


@njit
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



@njit
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


@njit(inline="always")
def _e2m1_magnitude(a):
    """E2M1 magnitude code (0-7) of ``a >= 0``, a value already divided by the block's scale.

    The code is the number of grid midpoints (0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5) that ``a`` passes:
    ``>`` where the lower neighbour has the even code, ``>=`` where the upper one has, which is round
    to nearest, ties to even; everything above 5 is 7 (saturation at 6).
    """
    return ((a > 0.25) + (a >= 0.75) + (a > 1.25) + (a >= 1.75) + (a > 2.5) + (a >= 3.5)
            + (a > 5.0))


@njit(inline="always")
def _encode_fp4_block(b, x_bits, x, blocks, scales, emax, max_frac, rceil, codes):
    """One MXFP4 block by comparisons against the E2M1 midpoints instead of the generic integer core
    (bit for bit the same codes, twice as fast or more: branch-free, so the loop vectorises).

    ``|x| * 2^-e`` is exact in float64 (a float32 of at least 2^-149 times at most 2^127, or one
    below 2^128 times at least 2^-127), so the comparisons see the exact quotient. ``codes`` is a
    32-byte scratch buffer.
    """
    base = b * 32
    e, bad = block_exponent(x_bits, base, emax, max_frac, rceil)
    if bad:
        scales[b] = 0xFF
        for j in range(16):
            blocks[b * 16 + j] = 0
        return
    scales[b] = e + 127
    inv = np.float64(2.0) ** np.float64(-e)
    for j in range(32):
        mag = _e2m1_magnitude(abs(np.float64(x[base + j])) * inv)
        codes[j] = np.uint8(mag) | np.uint8((x_bits[base + j] >> 28) & 8)  # sign bit 31 -> bit 3
    for j in range(16):
        blocks[b * 16 + j] = codes[2 * j] | (codes[2 * j + 1] << 4)


# The decode block routines are inlined into their loops (numba-level ``inline="always"``): called
# as separate functions they are not inlined by LLVM, and the call per block ran the FP4 decode at
# about 60% of its inlined speed (one thread, 64 MiB float32 output: 15 ms against 9.3 ms; a plain
# copy of the output takes 9-10 ms). ``inline="always"`` does not combine with ``*args``, so the
# decode wrappers spell their arguments out.

@njit(inline="always")
def _decode_fp4_block(b, blocks, scales, pairs, scale_table, out):
    s = scale_table[scales[b]]
    src = b * 16
    dst = b * 32
    for j in range(16):
        byte = blocks[src + j]
        out[dst + 2 * j] = pairs[byte, 0] * s
        out[dst + 2 * j + 1] = pairs[byte, 1] * s


@njit(inline="always")
def _decode_unpacked_block(b, codes, scales, lut, scale_table, out):
    s = scale_table[scales[b]]
    base = b * 32
    for j in range(32):
        out[base + j] = lut[codes[base + j]] * s


@njit(inline="always")
def _bf16(bits):
    """float32 bits -> bfloat16 bits, round to nearest even; NaN -> 0x7FC0."""
    if (bits & 0x7FFFFFFF) > 0x7F800000:
        return 0x7FC0
    return (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16


@njit(inline="always")
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
# ---- decode inputs [nb, 16 or 32], outputs [nb, 32] (float32, or uint16 for bf16), all C-contiguous

@njit(parallel=True)
def encode_unpacked_par(x_bits, codes, scales, *p):
    for b in prange(scales.shape[0]):
        _encode_unpacked_block(b, x_bits, codes, scales, *p)


@njit
def encode_unpacked_ser(x_bits, codes, scales, *p):
    for b in range(scales.shape[0]):
        _encode_unpacked_block(b, x_bits, codes, scales, *p)


@njit(parallel=True)
def encode_fp4_par(x_bits, blocks, scales, emax, max_frac, rceil):
    x = x_bits.view(np.float32)
    nb = scales.shape[0]
    for c in prange((nb + _CHUNK - 1) // _CHUNK):
        codes = np.empty(32, np.uint8)
        for b in range(c * _CHUNK, min(nb, (c + 1) * _CHUNK)):
            _encode_fp4_block(b, x_bits, x, blocks, scales, emax, max_frac, rceil, codes)


@njit
def encode_fp4_ser(x_bits, blocks, scales, emax, max_frac, rceil):
    x = x_bits.view(np.float32)
    codes = np.empty(32, np.uint8)
    for b in range(scales.shape[0]):
        _encode_fp4_block(b, x_bits, x, blocks, scales, emax, max_frac, rceil, codes)


@njit(parallel=True, nogil=True)
def decode_fp4_par(blocks, scales, pairs, scale_table, out):
    src, dst = blocks.reshape(-1), out.reshape(-1)
    for b in prange(scales.shape[0]):
        _decode_fp4_block(b, src, scales, pairs, scale_table, dst)


@njit(nogil=True)
def decode_fp4_ser(blocks, scales, pairs, scale_table, out):
    src, dst = blocks.reshape(-1), out.reshape(-1)
    for b in range(scales.shape[0]):
        _decode_fp4_block(b, src, scales, pairs, scale_table, dst)


@njit(parallel=True, nogil=True)
def decode_unpacked_par(codes, scales, lut, scale_table, out):
    src, dst = codes.reshape(-1), out.reshape(-1)
    for b in prange(scales.shape[0]):
        _decode_unpacked_block(b, src, scales, lut, scale_table, dst)


@njit(nogil=True)
def decode_unpacked_ser(codes, scales, lut, scale_table, out):
    src, dst = codes.reshape(-1), out.reshape(-1)
    for b in range(scales.shape[0]):
        _decode_unpacked_block(b, src, scales, lut, scale_table, dst)


@njit(parallel=True, nogil=True)
def decode_bf16_par(data, packed, scales, lut, pairs, scale_table, out):
    for c in prange((scales.shape[0] + _CHUNK - 1) // _CHUNK):
        _decode_bf16_chunk(c, data, packed, scales, lut, pairs, scale_table, out)


@njit(nogil=True)
def decode_bf16_ser(data, packed, scales, lut, pairs, scale_table, out):
    for c in range((scales.shape[0] + _CHUNK - 1) // _CHUNK):
        _decode_bf16_chunk(c, data, packed, scales, lut, pairs, scale_table, out)


# ---- packed FP4 into bfloat16: a table of both halves of every byte, per scale byte --------------
#
# A packed byte holds two of 16 values and a block has one scale byte, so the bf16 bits of both
# values of a byte under a scale are one of 256 x 256 words. The table is built once per call for
# the scale bytes the data uses (a block then costs 16 table reads and 16 word stores, no arithmetic
# per element); rounding each element instead kept the bf16 decode at 0.3-0.6x of a plain copy of
# its output. The table holds the same bits as :func:`_bf16` of the float32 product.

@njit(nogil=True)
def fp4_bf16_pair_table(scales, pairs, scale_table):
    """uint32 ``[256, 256]``: at ``[scale byte, packed byte]`` the bf16 bits of the low nibble's
    value times that scale in the low half and the high nibble's in the high half (the order of two
    uint16 in memory on a little-endian machine); rows only for the scale bytes in ``scales``."""
    table = np.zeros((256, 256), np.uint32)
    used = np.zeros(256, np.uint8)
    for b in range(scales.shape[0]):
        used[scales[b]] = 1
    tmp = np.empty(2, np.float32)
    tb = tmp.view(np.uint32)
    for row in range(256):
        if used[row]:
            s = scale_table[row]
            for byte in range(256):
                tmp[0] = pairs[byte, 0] * s
                tmp[1] = pairs[byte, 1] * s
                table[row, byte] = np.uint32(_bf16(np.int64(tb[0]))) | (np.uint32(_bf16(np.int64(tb[1]))) << 16)
    return table


@njit(parallel=True, nogil=True)
def decode_fp4_bf16_par(blocks, scales, pair_table, out):
    """``out``: uint32 ``[nb, 16]``, the bf16 output seen two values per word."""
    for b in prange(scales.shape[0]):
        row = scales[b]
        for j in range(16):
            out[b, j] = pair_table[row, blocks[b, j]]


@njit(nogil=True)
def decode_fp4_bf16_ser(blocks, scales, pair_table, out):
    for b in range(scales.shape[0]):
        row = scales[b]
        for j in range(16):
            out[b, j] = pair_table[row, blocks[b, j]]


# ---- streaming decode (x86-64, large outputs): the same arithmetic, each 16 bytes of output written
# ---- with one non-temporal store (:mod:`kernels.formats._stream`); ``out`` is 16-byte aligned, 1-d

@njit(parallel=True, nogil=True)
def decode_fp4_stream(blocks, scales, pairs, scale_table, out):
    src = blocks.reshape(-1)
    nb = scales.shape[0]
    for c in prange((nb + _CHUNK - 1) // _CHUNK):
        for b in range(c * _CHUNK, min(nb, (c + 1) * _CHUNK)):
            s = scale_table[scales[b]]
            for j in range(0, 16, 2):
                p = src[b * 16 + j]
                q = src[b * 16 + j + 1]
                stream_store(out, b * 32 + 2 * j, (pairs[p, 0] * s, pairs[p, 1] * s, pairs[q, 0] * s,
                                                   pairs[q, 1] * s))
        store_fence()


@njit(parallel=True, nogil=True)
def decode_fp4_bf16_stream(blocks, scales, pair_table, out):
    src = blocks.reshape(-1)
    nb = scales.shape[0]
    for c in prange((nb + _CHUNK - 1) // _CHUNK):
        for b in range(c * _CHUNK, min(nb, (c + 1) * _CHUNK)):
            row = scales[b]
            base = b * 16
            for j in range(0, 16, 4):
                stream_store(out, base + j, (pair_table[row, src[base + j]], pair_table[row, src[base + j + 1]],
                                             pair_table[row, src[base + j + 2]], pair_table[row, src[base + j + 3]]))
        store_fence()


@njit(parallel=True, nogil=True)
def decode_unpacked_stream(codes, scales, lut, scale_table, out):
    src = codes.reshape(-1)
    nb = scales.shape[0]
    for c in prange((nb + _CHUNK - 1) // _CHUNK):
        for b in range(c * _CHUNK, min(nb, (c + 1) * _CHUNK)):
            s = scale_table[scales[b]]
            for j in range(0, 32, 4):
                i = b * 32 + j
                stream_store(out, i, (lut[src[i]] * s, lut[src[i + 1]] * s, lut[src[i + 2]] * s,
                                      lut[src[i + 3]] * s))
        store_fence()


@njit(parallel=True, nogil=True)
def decode_bf16_stream(data, packed, scales, lut, pairs, scale_table, out):
    """Like :func:`_decode_bf16_chunk`, the bf16 bits of a block gathered in a 32-value scratch row
    and streamed from there: building each 8-lane store from scalars instead took twice the time
    (one thread, 64 MiB of weights to 32 MiB of bf16: 19.6 ms against 11.7 ms of CPU time)."""
    nb = scales.shape[0]
    for c in prange((nb + _CHUNK - 1) // _CHUNK):
        tmp = np.empty(32, np.float32)
        tb = tmp.view(np.uint32)
        half = np.empty(32, np.uint16)
        for b in range(c * _CHUNK, min(nb, (c + 1) * _CHUNK)):
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
                half[j] = _bf16(np.int64(tb[j]))
            for g in range(0, 32, 8):
                stream_copy(out, b * 32 + g, half, g)
        store_fence()


_KERNELS = {
    "encode_unpacked": (encode_unpacked_ser, encode_unpacked_par),
    "encode_fp4": (encode_fp4_ser, encode_fp4_par),
    "decode_fp4": (decode_fp4_ser, decode_fp4_par),
    "decode_unpacked": (decode_unpacked_ser, decode_unpacked_par),
    "decode_bf16": (decode_bf16_ser, decode_bf16_par),
    "decode_fp4_bf16": (decode_fp4_bf16_ser, decode_fp4_bf16_par),
}


_STREAM_KERNELS = {
    "decode_fp4": decode_fp4_stream,
    "decode_unpacked": decode_unpacked_stream,
    "decode_bf16": decode_bf16_stream,
    "decode_fp4_bf16": decode_fp4_bf16_stream,
}


def pick(name: str, nblocks: int, parallel: bool | None = None):
    """The serial or the parallel kernel ``name``: parallel from PARALLEL_MIN_BLOCKS blocks unless forced."""
    ser, par = _KERNELS[name]
    use_par = nblocks >= PARALLEL_MIN_BLOCKS if parallel is None else parallel
    return par if use_par else ser


def decode_into(name: str, out: np.ndarray, parallel: bool | None, *args) -> None:
    """Run decode kernel ``name`` on ``args`` into ``out`` (``[nblocks, 32]``, C-contiguous): the
    streaming kernel where ``out`` is large and aligned enough (:func:`_stream.can_stream`) and the
    call is not forced serial, else :func:`pick`'s."""
    nblocks = out.shape[0]
    if parallel is not False and can_stream(out):
        _STREAM_KERNELS[name](*args, out.reshape(-1))
    else:
        pick(name, nblocks, parallel)(*args, out)
