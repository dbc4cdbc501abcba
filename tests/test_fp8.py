"""FP8 per-channel and per-tensor: hand-derived codes and scales (ties, signed zero, subnormals,
zero rows), the nearest-value and single-rounding properties, numba == reference == torch."""

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
from moesim.kernels.formats.fp8 import FORMATS, FP8Format

NAMES = sorted(FORMATS)
ENCODED = {"codes", "scale", "shape"}  # the arrays every encoding holds
F32_MAX = float(np.finfo(np.float32).max)


def fp8_values(fmt: FP8Format) -> np.ndarray:
    """Value of each of the 256 codes from the bit fields (float64), NaN/Inf for the special codes."""
    c = np.arange(256)
    mbits, bias = (3, 7) if fmt.element == "e4m3" else (2, 15)
    ebits = 7 - mbits
    e, m = (c >> mbits) & ((1 << ebits) - 1), c & ((1 << mbits) - 1)
    mag = np.where(e == 0, m * 2.0 ** (1 - bias - mbits), (1 + m / 2**mbits) * 2.0 ** (e - bias))
    if fmt.element == "e4m3":
        mag = np.where((c & 0x7F) == 0x7F, np.nan, mag)
    else:
        mag = np.where(e == 31, np.where(m == 0, np.inf, np.nan), mag)
    return np.where(c >= 128, -mag, mag)


# ---- hand-derived vectors ------------------------------------------------------------------------

def test_e4m3_per_channel_hand_vector() -> None:
    fmt = get_format("fp8-e4m3-channel")
    x = np.zeros((3, 8), np.float32)
    x[0] = [448, 1.0, -2.0, 0.0, 1.0625, 1.1875, -0.0, 0.001]
    x[2, :2] = [-896, 2]
    enc = assert_backends_agree(fmt, x, ENCODED)
    assert enc["scale"].tolist() == [[1.0], [0.0], [2.0]]
    # 1.0625 ties 1.0 (0x38) / 1.125 (0x39) -> 0x38; 1.1875 ties 0x39 / 1.25 (0x3A) -> 0x3A;
    # 0.001 is above half the smallest subnormal 2^-9 -> 0x01; -0.0 keeps its sign
    assert enc["codes"][0].tolist() == [0x7E, 0x38, 0xC0, 0x00, 0x38, 0x3A, 0x80, 0x01]
    assert not enc["codes"][1].any()
    assert enc["codes"][2, :2].tolist() == [0xFE, 0x38]
    dec = fmt.decode(enc)
    assert dec[0].tolist() == [448, 1.0, -2.0, 0.0, 1.0, 1.25, -0.0, 2.0**-9]
    assert not dec[1].any() and dec[2, :2].tolist() == [-896, 2]


def test_e5m2_per_channel_hand_vector() -> None:
    fmt = get_format("fp8-e5m2-channel")
    x = np.float32([[57344, 1.0, -0.5, 3.0, 1.125, 2.0**-16]])
    enc = assert_backends_agree(fmt, x, ENCODED)
    assert enc["scale"].tolist() == [[1.0]]
    # 1.125 ties 1.0 (0x3C) / 1.25 (0x3D) -> 0x3C; 2^-16 is E5M2's smallest subnormal (0x01)
    assert enc["codes"][0].tolist() == [0x7B, 0x3C, 0xB8, 0x42, 0x3C, 0x01]


def test_per_tensor_shares_one_scale() -> None:
    fmt = get_format("fp8-e4m3-tensor")
    x = np.float32([[1.0, -4.0], [0.0, 0.0], [896.0, 0.5]])
    enc = assert_backends_agree(fmt, x, ENCODED)
    assert enc["scale"].shape == () and float(enc["scale"]) == 2.0
    assert enc["codes"].tolist() == [[0x30, 0xC0], [0, 0], [0x7E, 0x28]]
    assert np.array_equal(fmt.decode(enc), x)


# ---- properties ----------------------------------------------------------------------------------

@st.composite
def weights(draw: st.DrawFn) -> np.ndarray:
    shape = (draw(st.integers(1, 3)), draw(st.integers(1, 40)))
    if draw(st.booleans()):
        return draw(arrays(np.float32, shape, elements=st.floats(-F32_MAX, F32_MAX, width=32)))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    x = rng.standard_normal(shape).astype(np.float32) * np.float32(draw(st.sampled_from([1e-35, 1e-3, 1.0, 1e30])))
    x[: draw(st.integers(0, shape[0]))] *= np.float32(1e-6)  # rows far below the tensor's amax
    x[:, : draw(st.integers(0, shape[1]))] = 0.0
    return x


@pytest.mark.parametrize("name", NAMES)
@settings(max_examples=30, deadline=None)
@given(x=weights())
def test_numba_reference_and_torch_agree_bit_for_bit(name: str, x: np.ndarray) -> None:
    assert_backends_agree(FORMATS[name], x, ENCODED)


@pytest.mark.parametrize("name", NAMES)
@settings(max_examples=25, deadline=None)
@given(x=weights())
def test_codes_are_nearest_finite_values_and_decode_rounds_once(name: str, x: np.ndarray) -> None:
    fmt = FORMATS[name]
    enc = fmt.encode(x)
    top = np.float32(fmt.spec.max_normal)
    amax = np.abs(x).max(-1, keepdims=True) if fmt.granularity == "channel" else np.abs(x).max()
    assert np.array_equal(enc["scale"], np.float32(amax) / top)
    values = fp8_values(fmt)
    codes = enc["codes"].astype(np.int64)
    assert np.all(np.isfinite(values[codes]))  # saturating: never a NaN or Inf code
    s = np.broadcast_to(enc["scale"], x.shape)
    y = (x / np.where(s > 0, s, np.float32(1))).astype(np.float64)
    finite = values[np.isfinite(values)]
    best = np.abs(y[..., None] - finite).min(-1)
    assert np.all(np.where(s > 0, np.abs(y - values[codes]) <= best, codes == 0))
    exact = values[codes] * s.astype(np.float64)  # exact in float64, rounded to float32 once
    assert np.array_equal(fmt.decode(enc), exact.astype(np.float32))


@pytest.mark.parametrize(("name", "lo", "hi"), [("fp8-e4m3-channel", 0.015, 0.035), ("fp8-e5m2-channel", 0.03, 0.07)])
def test_reconstruction_error_on_gaussian_weights(name: str, lo: float, hi: float) -> None:
    fmt = get_format(name)
    x = np.random.default_rng(0).standard_normal((256, 512)).astype(np.float32)
    dec = fmt.decode(fmt.encode(x))
    assert lo < np.linalg.norm(dec - x) / np.linalg.norm(x) < hi  # 3 vs 2 mantissa bits


# ---- sizes, dtypes, bad input --------------------------------------------------------------------

def test_bits_per_weight_counts_every_stored_byte() -> None:
    assert get_format("fp8-e4m3-channel").bits_per_weight((4096, 1024)) == 8 + 32 / 1024
    assert get_format("fp8-e5m2-tensor").bits_per_weight((4096, 1024)) == 8 + 32 / (4096 * 1024)
    x = np.ones((4, 256), np.float32)
    for name in NAMES:
        fmt = FORMATS[name]
        stored = sum(v.nbytes for k, v in fmt.encode(x).items() if k != "shape")
        assert stored * 8 == fmt.bits_per_weight(x.shape) * x.size


def test_one_dimensional_and_leading_axes() -> None:
    fmt = get_format("fp8-e4m3-channel")
    enc = assert_backends_agree(fmt, np.float32([3.0, -1.0, 0.5]), ENCODED)
    assert enc["scale"].shape == (1,)
    x = np.random.default_rng(1).standard_normal((2, 3, 5)).astype(np.float32)
    enc = assert_backends_agree(fmt, x, ENCODED)
    assert enc["scale"].shape == (2, 3, 1) and enc["shape"].tolist() == [2, 3, 5]
    assert np.array_equal(fmt.decode(enc, dtype="bfloat16"), f32_to_bf16_bits(fmt.decode(enc)))
    t = fmt.decode_torch({k: torch.from_numpy(v) for k, v in enc.items()}, dtype=torch.bfloat16)
    assert torch.equal(t, torch.from_numpy(fmt.decode(enc)).to(torch.bfloat16))


def test_bad_input_is_refused() -> None:
    fmt = get_format("fp8-e4m3-channel")
    with pytest.raises(FormatError, match=r"0-d|shape"):
        fmt.encode(np.float32(1.0))
    x = np.zeros((2, 3), np.float32)
    x[0, 2] = np.inf
    with pytest.raises(FormatError, match=r"index \(0, 2\)"):
        fmt.encode(x)
    with pytest.raises(FormatError, match=r"index \(0, 2\)"):
        fmt.encode_torch(torch.from_numpy(x))
    with pytest.raises(FormatError, match="empty"):
        fmt.bits_per_weight((4, 0))
    enc = fmt.encode(np.ones((2, 3), np.float32))
    with pytest.raises(FormatError, match="scale"):
        fmt.decode({**enc, "scale": np.ones((3, 1), np.float32)})
    with pytest.raises(FormatError, match="scale"):
        get_format("fp8-e4m3-tensor").decode(enc)  # a per-channel scale handed to the per-tensor format
