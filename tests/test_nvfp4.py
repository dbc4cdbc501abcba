"""NVFP4: hand-derived element, block-scale and tensor-scale bits (ties, saturation, zero blocks,
block scales raised to the 2^-6 floor), the nearest-value and decode-order properties, decoding
into a caller's buffer, and numba == reference == torch bit for bit. The comparison with torchao's
own NVFP4Tensor lives in test_torchao_reference.py."""

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

FMT = get_format("nvfp4")
ENCODED = {"codes", "scale", "tensor_scale", "shape"}  # the arrays every encoding holds
F32_MAX = float(np.finfo(np.float32).max)
E2M1 = np.array([0, 0.5, 1, 1.5, 2, 3, 4, 6, -0.0, -0.5, -1, -1.5, -2, -3, -4, -6], np.float32)  # code order


def unpack(codes: np.ndarray) -> np.ndarray:
    out = np.empty((*codes.shape[:-1], codes.shape[-1] * 2), np.uint8)
    out[..., 0::2], out[..., 1::2] = codes & 15, codes >> 4  # low nibble first
    return out


def e4m3_value(code: np.ndarray) -> np.ndarray:
    """Positive E4M3 codes (sign bit clear, never 0x7F here) from the bit-field formula."""
    c = code.astype(np.int64)
    e, m = c >> 3, c & 7
    return np.where(e == 0, m * 2.0**-9, (1 + m / 8) * 2.0 ** (e - 7))


def with_unit_tensor_scale(*blocks: list[float]) -> np.ndarray:
    """Rows of one 16-wide block each, plus a last row whose amax 2688 makes the tensor scale 1."""
    rows = [np.pad(np.float32(b), (0, 16 - len(b))) for b in blocks]
    return np.stack([*rows, np.pad(np.float32([2688.0]), (0, 15))]).astype(np.float32)


# ---- hand-derived vectors ------------------------------------------------------------------------

def test_e2m1_values_with_block_amax_6_and_tensor_scale_1() -> None:
    x = with_unit_tensor_scale(list(E2M1))
    enc = assert_backends_agree(FMT, x, ENCODED)
    assert enc["tensor_scale"].dtype == np.float32 and enc["tensor_scale"].shape == ()
    assert float(enc["tensor_scale"]) == 1.0
    assert enc["scale"].tolist() == [[0x38], [0x7E]]  # 1.0 and 448 in E4M3
    assert enc["codes"][0].tolist() == [0x10, 0x32, 0x54, 0x76, 0x98, 0xBA, 0xDC, 0xFE]
    assert enc["codes"][1].tolist() == [0x07, 0, 0, 0, 0, 0, 0, 0]  # 2688 / 448 = 6 -> code 7
    dec = FMT.decode(enc)
    assert np.array_equal(dec.view(np.uint32), x.view(np.uint32))  # -0.0 included


def test_element_ties_go_to_the_even_code() -> None:
    halfway = [0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0, -2.5, -0.25]
    x = with_unit_tensor_scale([6.0, *halfway])
    codes = unpack(assert_backends_agree(FMT, x, ENCODED)["codes"])[0]
    # 0.25->0, 0.75->1.0, 1.25->1.0, 1.75->2.0, 2.5->2.0, 3.5->4.0, 5->4.0, -2.5->-2.0, -0.25->-0
    assert codes[1:10].tolist() == [0, 2, 2, 4, 4, 6, 6, 0xC, 0x8]


def test_block_scale_rounds_to_nearest_even_e4m3_and_elements_saturate() -> None:
    x = with_unit_tensor_scale([6.375, -6.375], [6.75, 5.0])
    enc = assert_backends_agree(FMT, x, ENCODED)
    # 6.375 / 6 = 1.0625: halfway between 1.0 (0x38) and 1.125 (0x39) -> 0x38; 6.75 / 6 = 1.125 -> 0x39
    assert enc["scale"][:2, 0].tolist() == [0x38, 0x39]
    codes = unpack(enc["codes"])
    assert codes[0, :2].tolist() == [7, 15]  # 6.375 / 1.0 saturates to +-6
    assert codes[1, :2].tolist() == [7, 6]  # 6.75 / 1.125 = 6; 5 / 1.125 = 4.44 -> 4
    assert FMT.decode(enc)[0, :2].tolist() == [6.0, -6.0]


def test_block_scales_below_the_smallest_normal_e4m3_take_the_floor() -> None:
    # s = amax / 6 with tensor scale 1; s below 2^-6 is raised to 2^-6 (code 0x08), so r = 64
    x = with_unit_tensor_scale([0.005, -0.004, 0.0039, -0.0, 2.0**-8, 3 * 2.0**-8],
                               [6 * 2.0**-6, 2.0**-7], [6 * 2.0**-7, 2.0**-9])
    enc = assert_backends_agree(FMT, x, ENCODED)
    assert enc["scale"][:3, 0].tolist() == [0x08, 0x08, 0x08]  # raised; exactly 2^-6; raised
    codes = unpack(enc["codes"])
    # 0.005 * 64 = 0.32 -> 0.5; -0.256 -> -0.5; 0.2496 -> 0; -0.0 keeps its sign; 0.25 ties to 0; 0.75 ties to 1
    assert codes[0, :6].tolist() == [1, 9, 0, 8, 0, 2]
    assert codes[1, :2].tolist() == [7, 1]  # 6 * 2^-6 * 64 = 6; 2^-7 * 64 = 0.5
    assert codes[2, :2].tolist() == [5, 0]  # raised from 2^-7: 6 * 2^-7 * 64 = 3; 2^-9 * 64 = 0.125 -> 0
    dec = FMT.decode(enc)
    assert dec[0, :2].tolist() == [0.5 * 2.0**-6, -0.5 * 2.0**-6]


def test_zero_blocks_and_the_all_zero_tensor() -> None:
    x = np.zeros((2, 32), np.float32)
    x[0, 5] = -0.0
    enc = assert_backends_agree(FMT, x, ENCODED)
    assert float(enc["tensor_scale"]) == 0.0 and (enc["scale"] == 0x08).all()
    assert unpack(enc["codes"])[0].tolist() == [0] * 5 + [8] + [0] * 26  # r = 0: signed zeros
    assert not FMT.decode(enc).any()
    x[1, 20] = -3.0
    enc = assert_backends_agree(FMT, x, ENCODED)
    assert enc["scale"].tolist() == [[0x08, 0x08], [0x08, 0x7E]]
    # -3 -> -6 * (ts * 448), with ts = 3 / 2688 rounded to float32: -3 up to that rounding
    ts = enc["tensor_scale"]
    assert FMT.decode(enc)[1, 20] == np.float32(-6.0) * (ts * np.float32(448.0))
    assert abs(FMT.decode(enc)[1, 20] + 3.0) <= 2.0**-22


def test_tensor_scale_is_amax_over_2688() -> None:
    x = np.random.default_rng(5).standard_normal((8, 64)).astype(np.float32)
    enc = FMT.encode(x)
    assert enc["tensor_scale"] == np.float32(np.abs(x).max()) / np.float32(2688)
    assert 0x08 <= enc["scale"].min() and enc["scale"].max() <= 0x7E  # normal E4M3, never NaN 0x7F


def test_a_tensor_scale_whose_reciprocal_overflows_saturates_every_nonzero_element() -> None:
    # amax 1e-37: ts ~ 3.7e-41 (subnormal), 1 / ts = inf, so r = inf and |x| * r saturates at 6
    x = np.zeros((1, 16), np.float32)
    x[0, :4] = [1e-37, -1e-38, 0.0, -0.0]
    enc = assert_backends_agree(FMT, x, ENCODED)
    with np.errstate(over="ignore"):
        assert np.isinf(np.float32(1.0) / enc["tensor_scale"])
    assert unpack(enc["codes"])[0, :4].tolist() == [7, 15, 0, 0]  # 0 * inf is NaN, encoded +0


# ---- properties ----------------------------------------------------------------------------------

@st.composite
def weights(draw: st.DrawFn) -> np.ndarray:
    rows, n = draw(st.integers(1, 3)), 16 * draw(st.integers(1, 4))
    if draw(st.booleans()):
        return draw(arrays(np.float32, (rows, n), elements=st.floats(-F32_MAX, F32_MAX, width=32)))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    x = rng.standard_normal((rows, n)).astype(np.float32) * np.float32(draw(st.sampled_from([1e-30, 1e-3, 1.0, 1e20])))
    # per-block dynamic range, so some block scales land in E4M3's subnormals or round to zero
    x *= np.repeat(np.float32(10.0) ** rng.integers(-8, 1, (rows, n // 16)).astype(np.float32), 16, axis=1)
    x[:, : draw(st.integers(0, n))] = 0.0
    return x


@settings(max_examples=60, deadline=None)
@given(weights())
def test_numba_reference_and_torch_agree_bit_for_bit(x: np.ndarray) -> None:
    assert_backends_agree(FMT, x, ENCODED)


@settings(max_examples=40, deadline=None)
@given(weights())
def test_codes_are_nearest_values_and_decode_scales_first(x: np.ndarray) -> None:
    enc = FMT.encode(x)
    ts = np.float32(enc["tensor_scale"])
    s_val = e4m3_value(enc["scale"])  # float64, exact
    # block scale: a nearest E4M3 value to s = (amax / 6) / ts clamped to [2^-6, 448]
    bamax = np.abs(x.reshape(*x.shape[:-1], -1, 16)).max(-1)
    s = (bamax / np.float32(6)) / ts if ts > 0 else np.zeros_like(bamax)
    s = np.clip(s, np.float32(2.0**-6), np.float32(448))
    grid4 = e4m3_value(np.arange(0x7F))
    best = np.abs(s.astype(np.float64)[..., None] - grid4).min(-1)
    assert np.all(np.abs(s - s_val) <= best)
    # elements: a nearest E2M1 value to x * r, r = (1 / ts) / S in float32 (0 for an all-zero tensor)
    with np.errstate(over="ignore", invalid="ignore"):
        inv_ts = np.float32(1) / ts if ts > 0 else np.float32(0)
        r = np.repeat((inv_ts / s_val.astype(np.float32)).astype(np.float32), 16, axis=-1)
        y = (x * r).astype(np.float64)
    codes = unpack(enc["codes"])
    dist = np.abs(np.nan_to_num(y)[..., None] - E2M1.astype(np.float64))
    chosen = np.take_along_axis(dist, codes.astype(np.int64)[..., None], -1)[..., 0]
    assert np.all(chosen <= dist.min(-1))  # beyond 6 (or Inf) the nearest is 6; NaN (0 * Inf) is +0
    # decode: ts * S rounded to float32 first, then times the element (exact values in float64)
    d = (np.float64(ts) * s_val).astype(np.float32).astype(np.float64)
    exact = E2M1[codes].astype(np.float64) * np.repeat(d, 16, axis=-1)
    assert np.array_equal(FMT.decode(enc), exact.astype(np.float32))


def test_reconstruction_error_on_gaussian_weights() -> None:
    x = np.random.default_rng(0).standard_normal((256, 512)).astype(np.float32)
    dec = FMT.decode(FMT.encode(x))
    rel = np.linalg.norm(dec - x) / np.linalg.norm(x)
    assert 0.05 < rel < 0.12  # 4-bit elements with fine-grained E4M3 scales: ~0.094


# ---- sizes, dtypes, bad input --------------------------------------------------------------------

def test_bits_per_weight_counts_every_stored_byte() -> None:
    assert FMT.bits_per_weight((16, 64)) == 4.5 + 32 / 1024
    assert FMT.bits_per_weight((2880, 2880)) == 4.5 + 32 / (2880 * 2880)
    enc = FMT.encode(np.ones((16, 64), np.float32))
    assert sum(v.nbytes for k, v in enc.items() if k != "shape") * 8 == FMT.bits_per_weight((16, 64)) * 1024


def test_bfloat16_decode_and_leading_axes() -> None:
    x = np.random.default_rng(1).standard_normal((2, 3, 32)).astype(np.float32) * 1e-3
    enc = assert_backends_agree(FMT, x, ENCODED)
    assert enc["codes"].shape == (2, 3, 16) and enc["scale"].shape == (2, 3, 2)
    assert np.array_equal(FMT.decode(enc, dtype="bfloat16"), f32_to_bf16_bits(FMT.decode(enc)))
    t = FMT.decode_torch({k: torch.from_numpy(v) for k, v in enc.items()}, dtype=torch.bfloat16)
    assert torch.equal(t, torch.from_numpy(FMT.decode(enc)).to(torch.bfloat16))


def test_bad_input_is_refused() -> None:
    for call in (lambda: FMT.encode(np.zeros((3, 24), np.float32)),
                 lambda: FMT.encode_torch(torch.zeros(3, 24)), lambda: FMT.bits_per_weight((3, 24))):
        with pytest.raises(FormatError, match=r"\(3, 24\).*16"):
            call()
    x = np.zeros((2, 16), np.float32)
    x[1, 3] = np.nan
    with pytest.raises(FormatError, match=r"index \(1, 3\)"):
        FMT.encode(x, backend="reference")
    with pytest.raises(FormatError, match="empty"):
        FMT.bits_per_weight((0, 16))
    enc = FMT.encode(np.ones((2, 32), np.float32))
    with pytest.raises(FormatError, match="tensor_scale"):
        FMT.decode({"codes": enc["codes"], "scale": enc["scale"]})
    with pytest.raises(FormatError, match="scale"):
        FMT.decode({**enc, "scale": enc["scale"][:, :1]})
