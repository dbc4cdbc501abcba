"""NVFP4: hand-derived element, block-scale and tensor-scale bits (ties, saturation, zero blocks,
block scales that round to zero), the nearest-value and single-rounding properties, and
numba == reference == torch bit for bit."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from moesim.kernels.formats import get_format
from moesim.kernels.formats.base import FormatError, f32_to_bf16_bits

FMT = get_format("nvfp4")
F32_MAX = float(np.finfo(np.float32).max)
E2M1 = np.array([0, 0.5, 1, 1.5, 2, 3, 4, 6, -0.0, -0.5, -1, -1.5, -2, -3, -4, -6], np.float32)  # code order


def u8(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a).reshape(-1).view(np.uint8)


def unpack(codes: np.ndarray) -> np.ndarray:
    out = np.empty((*codes.shape[:-1], codes.shape[-1] * 2), np.uint8)
    out[..., 0::2], out[..., 1::2] = codes & 15, codes >> 4  # low nibble first
    return out


def e4m3_value(code: np.ndarray) -> np.ndarray:
    """Positive E4M3 codes (sign bit clear, never 0x7F here) from the bit-field formula."""
    c = code.astype(np.int64)
    e, m = c >> 3, c & 7
    return np.where(e == 0, m * 2.0**-9, (1 + m / 8) * 2.0 ** (e - 7))


def assert_backends_agree(x: np.ndarray) -> dict[str, np.ndarray]:
    a = FMT.encode(x)
    b = FMT.encode(x, backend="reference")
    c = {k: v.numpy() for k, v in FMT.encode_torch(torch.from_numpy(x)).items()}
    assert a.keys() == b.keys() == c.keys() == {"codes", "scale", "tensor_scale", "shape"}
    for k in a:
        assert a[k].dtype == b[k].dtype == c[k].dtype and a[k].shape == b[k].shape == c[k].shape, k
        assert np.array_equal(u8(a[k]), u8(b[k])), f"numba != reference in {k}"
        assert np.array_equal(u8(a[k]), u8(c[k])), f"numba != torch in {k}"
    d_nb = FMT.decode(a)
    assert np.array_equal(d_nb.view(np.uint32), FMT.decode(a, backend="reference").view(np.uint32))
    d_t = FMT.decode_torch({k: torch.from_numpy(v) for k, v in a.items()}).numpy()
    assert np.array_equal(d_nb.view(np.uint32), d_t.view(np.uint32))
    return a


def with_unit_tensor_scale(*blocks: list[float]) -> np.ndarray:
    """Rows of one 16-wide block each, plus a last row whose amax 2688 makes the tensor scale 1."""
    rows = [np.pad(np.float32(b), (0, 16 - len(b))) for b in blocks]
    return np.stack([*rows, np.pad(np.float32([2688.0]), (0, 15))]).astype(np.float32)


# ---- hand-derived vectors ------------------------------------------------------------------------

def test_e2m1_values_with_block_amax_6_and_tensor_scale_1() -> None:
    x = with_unit_tensor_scale(list(E2M1))
    enc = assert_backends_agree(x)
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
    codes = unpack(assert_backends_agree(x)["codes"])[0]
    # 0.25->0, 0.75->1.0, 1.25->1.0, 1.75->2.0, 2.5->2.0, 3.5->4.0, 5->4.0, -2.5->-2.0, -0.25->-0
    assert codes[1:10].tolist() == [0, 2, 2, 4, 4, 6, 6, 0xC, 0x8]


def test_block_scale_rounds_to_nearest_even_e4m3_and_elements_saturate() -> None:
    x = with_unit_tensor_scale([6.375, -6.375], [6.75, 5.0])
    enc = assert_backends_agree(x)
    # 6.375 / 6 = 1.0625: halfway between 1.0 (0x38) and 1.125 (0x39) -> 0x38; 6.75 / 6 = 1.125 -> 0x39
    assert enc["scale"][:2, 0].tolist() == [0x38, 0x39]
    codes = unpack(enc["codes"])
    assert codes[0, :2].tolist() == [7, 15]  # 6.375 / 1.0 saturates to +-6
    assert codes[1, :2].tolist() == [7, 6]  # 6.75 / 1.125 = 6; 5 / 1.125 = 4.44 -> 4
    assert FMT.decode(enc)[0, :2].tolist() == [6.0, -6.0]


def test_block_scales_that_round_to_zero_give_a_zero_block() -> None:
    # s = amax / 6 with tensor scale 1; E4M3's smallest subnormal is 2^-9, half of it 2^-10
    x = with_unit_tensor_scale([0.005, -0.004], [6 * 2.0**-10, 1e-3], [6 * 1.5 * 2.0**-10, 1e-3])
    enc = assert_backends_agree(x)
    assert enc["scale"][:3, 0].tolist() == [0x00, 0x00, 0x01]  # below half; exactly half (tie to 0); 1.5x half
    codes = unpack(enc["codes"])
    assert not codes[:2].any()
    dec = FMT.decode(enc)
    assert not dec[:2].any()
    # third block: d = 2^-9; 6 * 1.5 * 2^-10 / d = 4.5 ties to 4 (code 6); 1e-3 / d = 0.512 -> 0.5 (code 1)
    assert codes[2, :2].tolist() == [6, 1]
    assert dec[2, :2].tolist() == [4 * 2.0**-9, 0.5 * 2.0**-9]


def test_zero_blocks_and_the_all_zero_tensor() -> None:
    x = np.zeros((2, 32), np.float32)
    enc = assert_backends_agree(x)
    assert float(enc["tensor_scale"]) == 0.0 and not enc["scale"].any() and not enc["codes"].any()
    assert not FMT.decode(enc).any()
    x[1, 20] = -3.0
    enc = assert_backends_agree(x)
    assert enc["scale"].tolist() == [[0, 0], [0, 0x7E]]
    # -3 -> -6 * 448 * ts, with ts = 3 / 2688 rounded to float32: -3 up to that rounding
    assert FMT.decode(enc)[1, 20] == np.float32(-2688.0) * enc["tensor_scale"]
    assert abs(FMT.decode(enc)[1, 20] + 3.0) <= 2.0**-22


def test_tensor_scale_is_amax_over_2688() -> None:
    x = np.random.default_rng(5).standard_normal((8, 64)).astype(np.float32)
    enc = FMT.encode(x)
    assert enc["tensor_scale"] == np.float32(np.abs(x).max()) / np.float32(2688)
    assert enc["scale"].max() <= 0x7E  # never the NaN code 0x7F


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
    assert_backends_agree(x)


@settings(max_examples=40, deadline=None)
@given(weights())
def test_codes_are_nearest_values_and_decode_rounds_once(x: np.ndarray) -> None:
    enc = FMT.encode(x)
    ts = np.float32(enc["tensor_scale"])
    s_val = e4m3_value(enc["scale"])  # float64, exact
    # block scale: a nearest E4M3 value to s = (amax / 6) / ts, or 448 when s is beyond it
    bamax = np.abs(x.reshape(*x.shape[:-1], -1, 16)).max(-1)
    s = (bamax / np.float32(6)) / ts if ts > 0 else np.zeros_like(bamax)
    grid4 = e4m3_value(np.arange(0x7F))
    best = np.abs(s.astype(np.float64)[..., None] - grid4).min(-1)
    assert np.all((np.abs(s - s_val) <= best) | ((s > 448) & (s_val == 448)))
    # elements: a nearest E2M1 value to x / d (d = S * ts), zero where d == 0
    d = np.repeat((s_val * ts).astype(np.float32), 16, axis=-1)
    codes = unpack(enc["codes"])
    y = (x / np.where(d > 0, d, np.float32(1))).astype(np.float64)
    dist = np.abs(y[..., None] - E2M1.astype(np.float64))
    chosen = np.take_along_axis(dist, codes.astype(np.int64)[..., None], -1)[..., 0]
    assert np.all(np.where(d > 0, chosen <= dist.min(-1), codes == 0))
    # decode: e2m1 * S * ts computed exactly (float64 holds it) and rounded to float32 once
    exact = E2M1[codes].astype(np.float64) * np.repeat(s_val, 16, axis=-1) * np.float64(ts)
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
    enc = assert_backends_agree(x)
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
