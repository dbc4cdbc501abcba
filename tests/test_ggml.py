"""ggml ``block_mxfp4``: hand-built bytes decode to exact values, conversion to and from the gpt-oss
layout is lossless for every byte, and ggml's own arithmetic (written out here) equals the gpt-oss
decode of the same weights."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from moesim.kernels.formats import FormatError
from moesim.kernels.formats.ggml_mxfp4 import BLOCK_BYTES, decode_ggml, from_ggml, to_ggml
from moesim.kernels.formats.gptoss import decode_gptoss, encode_gptoss

# ggml's kvalues_mxfp4: the E2M1 values doubled (codes 8-15 negative).
KVALUES = [0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12]


def ggml_half_scale(e: int) -> np.float32:
    """ggml's ``e8m0_to_fp32_half``: 2^(e-128) built from float32 bits."""
    bits = 0x00200000 if e == 0 else 0x00400000 if e == 1 else (e - 1) << 23
    return np.array([bits], np.uint32).view(np.float32)[0]


def ggml_dequantize(raw: np.ndarray) -> np.ndarray:
    """ggml's ``dequantize_row_mxfp4`` on ``[nblocks, 17]`` bytes, one float32 multiply per value."""
    raw = np.asarray(raw, np.uint8).reshape(-1, BLOCK_BYTES)
    out = np.empty((raw.shape[0], 32), np.float32)
    with np.errstate(over="ignore"):
        for i, blk in enumerate(raw):
            d = ggml_half_scale(int(blk[0]))
            for j in range(16):
                q = int(blk[1 + j])
                out[i, j] = np.float32(KVALUES[q & 0xF]) * d
                out[i, j + 16] = np.float32(KVALUES[q >> 4]) * d
    return out.reshape(-1)


def _bits(a: np.ndarray) -> np.ndarray:
    return np.asarray(a, np.float32).view(np.uint32)


def _assert_same_but_zero_sign(gptoss: np.ndarray, ggml: np.ndarray, blocks: np.ndarray) -> None:
    """Equal bits wherever the gpt-oss code (element order) is not 8; +0.0 vs -0.0 where it is."""
    codes = np.stack([blocks & 0xF, blocks >> 4], axis=-1).reshape(-1)
    minus_zero = codes == 8
    a, b = gptoss.reshape(-1), ggml.reshape(-1)
    assert np.array_equal(_bits(a)[~minus_zero], _bits(b)[~minus_zero])
    assert (a[minus_zero] == 0).all() and np.signbit(a[minus_zero]).all()
    assert (b[minus_zero] == 0).all() and not np.signbit(b[minus_zero]).any()


def test_hand_built_block_decodes_to_exact_values() -> None:
    # scale byte 128 -> 2^1. Byte j holds element j (low nibble) and element j + 16 (high nibble).
    raw = np.zeros(17, np.uint8)
    raw[0] = 128
    raw[1] = 0x72      # element 0: code 2 (+1.0) -> 2.0;  element 16: code 7 (+6.0) -> 12.0
    raw[2] = 0xF9      # element 1: code 9 (-0.5) -> -1.0; element 17: code 15 (-6.0) -> -12.0
    # element 15: code 3 (+1.5) -> 3.0; element 31: code 8, E2M1's -0, but ggml's int8 table holds
    # the integer 0 there, so +0.0
    raw[16] = 0x83
    out = decode_ggml(raw)
    expected = np.zeros(32, np.float32)
    expected[[0, 16, 1, 17, 15]] = [2.0, 12.0, -1.0, -12.0, 3.0]
    assert np.array_equal(_bits(out), _bits(expected))  # +0.0 at element 31 included
    assert np.array_equal(_bits(ggml_dequantize(raw)), _bits(expected))
    # the same block in gpt-oss order: element 2j low, 2j + 1 high
    blocks, scales = from_ggml(raw)
    assert scales.tolist() == [128]
    assert blocks[0, 0] == (0x2 | 0x9 << 4)  # elements 0 and 1
    assert blocks[0, 8] == (0x7 | 0xF << 4)  # elements 16 and 17
    assert blocks[0, 7] == 0x3 << 4 and blocks[0, 15] == 0x8 << 4  # elements 15 and 31: high nibbles


def test_extreme_scale_bytes_by_hand() -> None:
    raw = np.zeros((3, 17), np.uint8)
    raw[:, 0] = [0, 1, 0xFF]
    raw[:, 1] = 0x71  # element 0: +0.5, element 16: +6.0
    raw[:, 2] = 0x09  # element 1: -0.5, element 17: +0
    out = decode_ggml(raw).reshape(3, 32)
    # byte 0: 2^-127 (a float32 subnormal, kept); byte 1: 2^-126; byte 0xFF: 2^128, no NaN
    assert out[0, [0, 1, 16]].tolist() == [2.0**-128, -(2.0**-128), 6 * 2.0**-127]
    assert out[1, [0, 1, 16]].tolist() == [2.0**-127, -(2.0**-127), 6 * 2.0**-126]
    assert out[2, [0, 1, 16, 17]].tolist() == [2.0**127, -(2.0**127), np.inf, 0.0]
    assert not np.isnan(out).any()
    assert np.array_equal(_bits(out.reshape(-1)), _bits(ggml_dequantize(raw)))


def test_layout_shapes_and_flat_streams() -> None:
    rng = np.random.default_rng(0)
    blocks = rng.integers(0, 256, (2, 3, 4, 16), dtype=np.uint8)
    scales = rng.integers(0, 256, (2, 3, 4), dtype=np.uint8)
    raw = to_ggml(blocks, scales)
    assert raw.shape == (2, 3, 4, 17) and raw.dtype == np.uint8
    assert np.array_equal(raw[..., 0], scales)
    b_flat, s_flat = from_ggml(raw.reshape(-1))  # a tensor's byte stream
    assert np.array_equal(b_flat, blocks.reshape(-1, 16)) and np.array_equal(s_flat, scales.reshape(-1))
    assert decode_ggml(raw).shape == (2, 3, 128)


def test_layout_errors() -> None:
    with pytest.raises(FormatError, match="17-byte blocks"):
        from_ggml(np.zeros(35, np.uint8))
    with pytest.raises(FormatError, match="must be 17"):
        from_ggml(np.zeros((2, 16), np.uint8))
    with pytest.raises(FormatError, match=r"\[\.\.\., G, 16\]"):
        to_ggml(np.zeros((2, 16), np.uint8), np.zeros(3, np.uint8))


@settings(max_examples=50, deadline=None)
@given(raw=hnp.arrays(np.uint8, st.integers(1, 40).map(lambda n: n * BLOCK_BYTES)))
def test_ggml_to_gptoss_to_ggml_is_lossless(raw: np.ndarray) -> None:
    blocks, scales = from_ggml(raw)
    assert np.array_equal(to_ggml(blocks, scales).reshape(-1), raw)
    # the values agree too: ggml's arithmetic == gpt-oss decoding under the exact-ldexp convention,
    # bit for bit except the sign of zero at code 8
    ggml = decode_ggml(raw)
    assert np.array_equal(_bits(ggml), _bits(ggml_dequantize(raw)))
    assert not np.signbit(ggml[ggml == 0]).any()
    _assert_same_but_zero_sign(decode_gptoss(blocks, scales, ldexp="exact"), ggml, blocks)


@settings(max_examples=50, deadline=None)
@given(blocks=hnp.arrays(np.uint8, st.tuples(st.integers(1, 4), st.integers(1, 5), st.just(16))),
       data=st.data())
def test_gptoss_to_ggml_to_gptoss_is_lossless(blocks: np.ndarray, data: st.DataObject) -> None:
    scales = data.draw(hnp.arrays(np.uint8, blocks.shape[:-1]))
    b2, s2 = from_ggml(to_ggml(blocks, scales))
    assert np.array_equal(b2, blocks) and np.array_equal(s2, scales)


def test_decode_ggml_equals_gptoss_decode_of_the_same_weights() -> None:
    rng = np.random.default_rng(1)
    w = (rng.standard_normal((4, 8, 96)) * np.exp2(rng.integers(-30, 30, (4, 8, 1)))).astype(np.float32)
    blocks, scales = encode_gptoss(w)
    raw = to_ggml(blocks, scales)
    assert (np.stack([blocks & 0xF, blocks >> 4]) == 8).any()  # the data has negative zeros
    want = decode_gptoss(blocks, scales)  # the default ("pow2") convention; no 0xFF scale here
    got = decode_ggml(raw)
    assert got.shape == want.shape == (4, 8, 96)
    _assert_same_but_zero_sign(want, got, blocks)
    assert np.array_equal(_bits(decode_ggml(raw, backend="reference")), _bits(got))
    assert np.array_equal(_bits(ggml_dequantize(raw)), _bits(got.reshape(-1)))
    bf = decode_ggml(raw, dtype="bfloat16")
    assert np.array_equal(bf, decode_ggml(raw, dtype="bfloat16", backend="reference"))
    assert np.array_equal(bf & 0x7FFF, decode_gptoss(blocks, scales, dtype="bfloat16") & 0x7FFF)
