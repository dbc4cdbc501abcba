"""NF4: bitsandbytes' codebook and decision thresholds, codes of hand-made blocks (own values,
midpoint ties, zero blocks, nibble order), nearest-code property, numba == reference == torch."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from codec_support import assert_backends_agree
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from moesim.kernels.formats import get_format
from moesim.kernels.formats.base import FormatError, f32_to_bf16_bits
from moesim.kernels.formats.nf4 import CODEBOOK, THRESHOLDS

FMT = get_format("nf4")
ENCODED = {"codes", "absmax", "shape"}  # the arrays every encoding holds
F32_MAX = float(np.finfo(np.float32).max)

# bitsandbytes' dQuantizeNF4 decision-tree constants, sorted (transcribed, not computed).
BNB_THRESHOLDS = [-0.8480964004993439, -0.6106329262256622, -0.4599952697753906, -0.33967943489551544,
                  -0.23460740596055984, -0.13791173323988914, -0.045525018125772476, 0.03979014977812767,
                  0.1202552504837513, 0.2035212516784668, 0.2920137718319893, 0.3893125355243683,
                  0.5016634166240692, 0.6427869200706482, 0.8614784181118011]


def unpack(codes: np.ndarray) -> np.ndarray:
    out = np.empty((*codes.shape[:-1], codes.shape[-1] * 2), np.uint8)
    out[..., 0::2], out[..., 1::2] = codes >> 4, codes & 15  # first element in the high nibble
    return out


def test_codebook_is_bitsandbytes_and_thresholds_are_its_decision_tree() -> None:
    assert CODEBOOK.dtype == np.float32 and CODEBOOK.shape == (16,)
    assert CODEBOOK[0] == -1.0 and CODEBOOK[7] == 0.0 and CODEBOOK[15] == 1.0
    assert np.all(np.diff(CODEBOOK) > 0)
    assert np.array_equal(THRESHOLDS, np.array(BNB_THRESHOLDS, np.float32))


def test_codebook_values_map_to_their_own_codes() -> None:
    x = np.tile(CODEBOOK, 4)[None, :]  # absmax 1: the normalised values are the codebook itself
    enc = assert_backends_agree(FMT, x, ENCODED)
    assert enc["absmax"].tolist() == [[1.0]]
    assert unpack(enc["codes"])[0].tolist() == list(range(16)) * 4
    assert enc["codes"][0, :2].tolist() == [0x01, 0x23]  # high nibble first
    assert np.array_equal(FMT.decode(enc), x)


def test_scaled_codebook_decodes_to_codebook_times_absmax() -> None:
    x = (np.tile(CODEBOOK, 4) * np.float32(-2.5))[None, :]  # absmax 2.5, order reversed by the sign
    enc = assert_backends_agree(FMT, x, ENCODED)
    assert enc["absmax"].tolist() == [[2.5]]
    codes = unpack(enc["codes"])[0]
    # -2.5 * c is exactly 2.5 * (-c); -c is a codebook value only at -1/1 and 0
    assert codes[0] == 15 and codes[15] == 0 and codes[7] == 7


def test_values_exactly_on_a_threshold_take_the_lower_code() -> None:
    x = np.zeros((1, 64), np.float32)
    x[0, 0] = 1.0  # absmax 1 -> inv 1, normalised values are exact
    x[0, 1:16] = THRESHOLDS
    x[0, 16:31] = np.nextafter(THRESHOLDS, np.float32(np.inf))
    codes = unpack(assert_backends_agree(FMT, x, ENCODED)["codes"])[0]
    assert codes[1:16].tolist() == list(range(15))
    assert codes[16:31].tolist() == list(range(1, 16))


def test_zero_block_encodes_to_the_zero_code_and_decodes_to_zero() -> None:
    x = np.zeros((2, 128), np.float32)
    x[1, 64:] = np.linspace(-1, 1, 64)
    enc = assert_backends_agree(FMT, x, ENCODED)
    assert enc["absmax"].tolist() == [[0.0, 0.0], [0.0, 1.0]]
    assert (enc["codes"][0] == 0x77).all() and (enc["codes"][1, :32] == 0x77).all()
    assert not FMT.decode(enc)[0].any()


@st.composite
def weights(draw: st.DrawFn) -> np.ndarray:
    rows, n = draw(st.integers(1, 3)), 64 * draw(st.integers(1, 3))
    if draw(st.booleans()):
        return draw(arrays(np.float32, (rows, n), elements=st.floats(-F32_MAX, F32_MAX, width=32)))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    scale = np.float32(draw(st.sampled_from([1e-30, 1e-3, 1.0, 1e5])))
    x = rng.standard_normal((rows, n)).astype(np.float32) * scale
    x[:, : draw(st.integers(0, n))] = 0.0
    return x


@settings(max_examples=60, deadline=None)
@given(weights())
def test_numba_reference_and_torch_agree_bit_for_bit(x: np.ndarray) -> None:
    assert_backends_agree(FMT, x, ENCODED)


@settings(max_examples=40, deadline=None)
@given(weights())
def test_every_code_is_a_nearest_codebook_value(x: np.ndarray) -> None:
    enc = FMT.encode(x)
    absmax = np.repeat(enc["absmax"], 64, axis=-1)
    xn = (x / np.where(absmax > 0, absmax, np.float32(1))).astype(np.float64)  # what the code was chosen for
    assert np.all(np.abs(xn) <= 1)
    dist = np.abs(xn[..., None] - CODEBOOK.astype(np.float64))
    chosen = np.take_along_axis(dist, unpack(enc["codes"]).astype(np.int64)[..., None], -1)[..., 0]
    assert np.all(chosen <= dist.min(-1))
    # and the decoded weight is that codebook value times absmax (one float32 rounding)
    assert np.array_equal(FMT.decode(enc), (CODEBOOK[unpack(enc["codes"])] * absmax).astype(np.float32))


def test_reconstruction_error_on_gaussian_weights() -> None:
    x = np.random.default_rng(0).standard_normal((256, 512)).astype(np.float32)
    dec = FMT.decode(FMT.encode(x))
    rel = np.linalg.norm(dec - x) / np.linalg.norm(x)
    assert 0.05 < rel < 0.12  # NF4 on N(0,1) blocks of 64: ~0.09 (4-bit, ~20 dB SQNR)


def test_bits_per_weight_and_stored_bytes() -> None:
    assert FMT.bits_per_weight((4096, 1024)) == 4.5
    enc = FMT.encode(np.ones((3, 256), np.float32))
    assert sum(v.nbytes for k, v in enc.items() if k != "shape") * 8 == 4.5 * 3 * 256


def test_bfloat16_decode_and_leading_axes() -> None:
    x = np.random.default_rng(1).standard_normal((2, 3, 128)).astype(np.float32)
    enc = assert_backends_agree(FMT, x, ENCODED)
    assert enc["codes"].shape == (2, 3, 64) and enc["absmax"].shape == (2, 3, 2)
    assert enc["shape"].tolist() == [2, 3, 128]
    assert np.array_equal(FMT.decode(enc, dtype="bfloat16"), f32_to_bf16_bits(FMT.decode(enc)))
    t = FMT.decode_torch({k: torch.from_numpy(v) for k, v in enc.items()}, dtype=torch.bfloat16)
    assert t.dtype == torch.bfloat16 and torch.equal(t, torch.from_numpy(FMT.decode(enc)).to(torch.bfloat16))


def test_bad_input_is_refused() -> None:
    with pytest.raises(FormatError, match=r"\(4, 96\).*64"):
        FMT.encode(np.zeros((4, 96), np.float32))
    with pytest.raises(FormatError, match=r"\(4, 96\).*64"):
        FMT.encode_torch(torch.zeros(4, 96))
    with pytest.raises(FormatError, match=r"\(4, 96\).*64"):
        FMT.bits_per_weight((4, 96))
    x = np.zeros((1, 64), np.float32)
    x[0, 9] = -np.inf
    with pytest.raises(FormatError, match=r"index \(0, 9\)"):
        FMT.encode(x)
    enc = FMT.encode(np.ones((1, 128), np.float32))
    with pytest.raises(FormatError, match="absmax"):
        FMT.decode({**enc, "absmax": enc["absmax"][:, :1]})
    with pytest.raises(FormatError, match="absmax"):
        FMT.decode({"codes": enc["codes"]})
    with pytest.raises(FormatError, match="shape"):
        FMT.decode({**enc, "shape": np.array([2, 64])})
