"""Affine integer groups: hand-derived codes and parameters, outward float16 rounding, the
half-step error bound, numba == reference == torch bit for bit, sizes and bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from codec_support import assert_backends_agree, u8
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from moesim.kernels.formats import get_format
from moesim.kernels.formats._blockutil import (
    ROUND_DOWN,
    ROUND_NEAREST,
    ROUND_UP,
    fp16_round_nb,
    fp16_round_ref,
    fp16_round_torch,
)
from moesim.kernels.formats.affine import FORMATS, AffineFormat
from moesim.kernels.formats.base import FormatError, f32_to_bf16_bits

NAMES = sorted(FORMATS)


def unpacked_codes(fmt: AffineFormat, enc: dict[str, np.ndarray]) -> np.ndarray:
    c = enc["codes"]
    if fmt.bits == 8:
        return c
    out = np.empty((*c.shape[:-1], c.shape[-1] * 2), np.uint8)
    out[..., 0::2], out[..., 1::2] = c & 15, c >> 4
    return out


# ---- hand-derived vectors ------------------------------------------------------------------------

def test_group_0_to_15_gives_scale_1_bias_0_and_the_values_as_codes() -> None:
    fmt = get_format("int4-g32")
    x = np.tile(np.arange(16, dtype=np.float32), 2)[None, :]
    enc = fmt.encode(x)
    assert enc["scale"].dtype == np.float16 and enc["scale"].tolist() == [[1.0]]
    assert enc["bias"].tolist() == [[0.0]]
    # two codes per byte, low nibble first: (0,1) -> 0x10, (2,3) -> 0x32, ...
    assert enc["codes"].tolist() == [[0x10, 0x32, 0x54, 0x76, 0x98, 0xBA, 0xDC, 0xFE] * 2]
    assert np.array_equal(fmt.decode(enc), x)
    assert enc["shape"].tolist() == [1, 32]


def test_int8_group_with_exact_grid_decodes_exactly() -> None:
    fmt = get_format("int8-g32")
    q = np.array([0, 255, *range(7, 7 * 31, 7)], dtype=np.float32)  # 32 codes, both ends present
    x = (np.float32(-3.0) + np.float32(0.5) * q)[None, :]
    enc = fmt.encode(x)
    assert enc["scale"].tolist() == [[0.5]] and enc["bias"].tolist() == [[-3.0]]
    assert np.array_equal(enc["codes"][0], q.astype(np.uint8))
    assert np.array_equal(fmt.decode(enc), x)


def test_half_steps_round_to_even_codes() -> None:
    fmt = get_format("int4-g32")
    halves = [0.5, 1.5, 2.5, 3.5, 12.5, 13.5, 14.5]
    x = np.array([0.0, 15.0, *halves] + [7.0] * 23, dtype=np.float32)[None, :]
    codes = unpacked_codes(fmt, fmt.encode(x))[0]
    assert codes[2:9].tolist() == [0, 2, 2, 4, 12, 14, 14]


def test_constant_group_of_a_float16_value_has_zero_scale_and_decodes_exactly() -> None:
    fmt = get_format("int4-g64")
    x = np.full((2, 64), 0.25, np.float32)
    x[1] = -3.0
    enc = assert_backends_agree(fmt, x)
    assert enc["scale"].tolist() == [[0.0], [0.0]]
    assert enc["bias"].tolist() == [[0.25], [-3.0]]
    assert not unpacked_codes(fmt, enc).any()
    assert np.array_equal(fmt.decode(enc), x)


def test_constant_group_off_the_float16_grid_still_decodes_within_half_a_step() -> None:
    fmt = get_format("int4-g32")
    x = np.full((1, 32), 0.1, np.float32)
    enc = assert_backends_agree(fmt, x)
    b, s = float(enc["bias"][0, 0]), float(enc["scale"][0, 0])
    assert b < 0.1 and s > 0  # outward rounding: bias below the constant, a positive step
    assert np.all(np.abs(fmt.decode(enc).astype(np.float64) - x) <= s / 2)


def test_parameters_round_outward_so_the_grid_covers_the_group() -> None:
    fmt = get_format("int4-g32")
    x = np.linspace(1 / 3, 10 / 3, 32, dtype=np.float32)[None, :]
    enc = assert_backends_agree(fmt, x)
    b, s = np.float64(enc["bias"][0, 0]), np.float64(enc["scale"][0, 0])
    assert b <= x.min() < np.float64(np.nextafter(np.float16(b), np.float16(np.inf)))
    assert b + 15 * s >= x.max()
    codes = unpacked_codes(fmt, enc)[0]
    assert codes[0] == 0 and codes[-1] == 15


def test_symmetric_hand_vector_and_zero_group() -> None:
    fmt = get_format("int4-sym-g32")
    x = np.zeros((2, 32), np.float32)
    x[0, :15] = np.arange(-7, 8)
    x[0, 15] = 2.5  # tie -> 2
    enc = fmt.encode(x)
    assert enc.keys() == {"codes", "scale", "shape"}
    assert enc["scale"].tolist() == [[1.0], [0.0]]
    codes = unpacked_codes(fmt, enc)
    assert codes[0, :16].tolist() == [*range(1, 16), 10]
    assert (codes[1] == 8).all()  # zero group: code of 0 is the offset 8
    dec = fmt.decode(enc)
    assert np.array_equal(dec[0, :15], x[0, :15]) and dec[0, 15] == 2.0 and not dec[1].any()


# ---- properties ----------------------------------------------------------------------------------

@st.composite
def weights(draw: st.DrawFn, group: int) -> np.ndarray:
    rows = draw(st.integers(1, 3))
    n = group * draw(st.integers(1, 3))
    if draw(st.booleans()):
        return draw(arrays(np.float32, (rows, n), elements=st.floats(-60000, 60000, width=32)))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    x = rng.standard_normal((rows, n)).astype(np.float32) * np.float32(draw(st.sampled_from([1e-7, 1e-3, 0.02, 1.0, 900.0])))
    x[:, : draw(st.integers(0, n))] = x[0, 0]  # a run of repeated values (whole constant groups too)
    return x


@pytest.mark.parametrize("name", NAMES)
@settings(max_examples=15, deadline=None)
@given(data=st.data())
def test_numba_reference_and_torch_agree_bit_for_bit(name: str, data: st.DataObject) -> None:
    fmt = FORMATS[name]
    assert_backends_agree(fmt, data.draw(weights(fmt.group)))


@pytest.mark.parametrize("name", ["int4-g32", "int4-g128", "int8-g64", "int4-sym-g64", "int8-sym-g32"])
@settings(max_examples=25, deadline=None)
@given(data=st.data())
def test_every_weight_is_within_half_a_step(name: str, data: st.DataObject) -> None:
    fmt = FORMATS[name]
    x = data.draw(weights(fmt.group))
    enc = fmt.encode(x)
    dec = fmt.decode(enc).astype(np.float64)
    s = np.repeat(enc["scale"].astype(np.float64), fmt.group, axis=-1)
    b = 0.0 if fmt.symmetric else np.repeat(enc["bias"].astype(np.float64), fmt.group, axis=-1)
    top = 2 ** (fmt.bits - 1) - 1 if fmt.symmetric else 2**fmt.bits - 1
    # float32 rounding of (w - b) / s and of s * q + b adds a few float32 ulps of the magnitudes
    slack = 2.0**-20 * (np.abs(b) + top * s + np.abs(x))
    assert np.all(np.abs(x - dec) <= s / 2 + slack)


def test_decode_bfloat16_matches_the_rounded_float32_decode() -> None:
    fmt = get_format("int4-g64")
    x = np.random.default_rng(1).standard_normal((4, 128)).astype(np.float32)
    enc = fmt.encode(x)
    f32 = fmt.decode(enc)
    assert np.array_equal(fmt.decode(enc, dtype="bfloat16"), f32_to_bf16_bits(f32))
    via_torch = fmt.decode_torch({k: torch.from_numpy(v) for k, v in enc.items()}, dtype=torch.bfloat16)
    assert np.array_equal(via_torch.view(torch.int16).numpy().view(np.uint16), f32_to_bf16_bits(f32))


def test_leading_axes_and_float64_input() -> None:
    fmt = get_format("int8-g32")
    x = np.random.default_rng(2).standard_normal((2, 3, 64))
    enc = assert_backends_agree(fmt, x.astype(np.float32))
    assert enc["codes"].shape == (2, 3, 64) and enc["scale"].shape == (2, 3, 2)
    assert np.array_equal(u8(fmt.encode(x)["codes"]), u8(enc["codes"]))  # float64 rounds to float32 first


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_torch_input_is_quantized_as_its_float32_value(dtype: torch.dtype) -> None:
    fmt = get_format("int4-g32")
    xt = torch.randn(3, 64, generator=torch.Generator().manual_seed(3)).to(dtype)
    enc = fmt.encode_torch(xt)
    ref = fmt.encode(xt.to(torch.float32).numpy())
    for k in ref:
        assert np.array_equal(u8(enc[k].numpy()), u8(ref[k])), k


# ---- float16 rounding helpers --------------------------------------------------------------------

@settings(max_examples=30, deadline=None)
@given(arrays(np.float32, 64, elements=st.floats(-65504, 65504, width=32)))
def test_fp16_rounding_helpers_agree(x: np.ndarray) -> None:
    x = np.concatenate([x, np.float32([0.0, -0.0, 1e-8, -1e-8, 2.0**-25, 3 * 2.0**-26, 65504, 65519.99, 1 / 3])])
    for mode in (ROUND_NEAREST, ROUND_DOWN, ROUND_UP):
        ref = fp16_round_ref(x, mode)
        nb = np.array([fp16_round_nb(np.float32(v), mode) for v in x], np.float32)
        tc = fp16_round_torch(torch.from_numpy(x), mode).numpy()
        assert np.array_equal(ref.astype(np.float32), nb, equal_nan=True)
        assert np.array_equal(ref.view(np.uint16) & 0x7FFF, tc.view(np.uint16) & 0x7FFF)  # up to the sign of 0
        r = ref.astype(np.float64)
        if mode == ROUND_DOWN:
            assert np.all(r <= x)
        elif mode == ROUND_UP:
            assert np.all(r >= x)
        else:
            assert np.array_equal(ref, x.astype(np.float16))


# ---- sizes and bad input -------------------------------------------------------------------------

@pytest.mark.parametrize(("name", "bits"), [("int4-g32", 5.0), ("int4-g64", 4.5), ("int4-g128", 4.25),
                                            ("int8-g32", 9.0), ("int8-g128", 8.25), ("int4-sym-g128", 4.125),
                                            ("int8-sym-g64", 8.25)])
def test_bits_per_weight_counts_every_stored_byte(name: str, bits: float) -> None:
    fmt = get_format(name)
    assert fmt.bits_per_weight((256, 512)) == bits
    enc = fmt.encode(np.random.default_rng(0).standard_normal((4, 256)).astype(np.float32))
    stored = sum(v.nbytes for k, v in enc.items() if k != "shape")
    assert stored * 8 == bits * 4 * 256


def test_registered_names() -> None:
    assert NAMES == sorted(f"int{b}{s}-g{g}" for b in (4, 8) for s in ("", "-sym") for g in (32, 64, 128))


def test_last_dim_not_a_multiple_of_the_group_is_refused() -> None:
    fmt = get_format("int4-g64")
    x = np.zeros((2, 96), np.float32)
    for call in (lambda: fmt.encode(x), lambda: fmt.encode(x, backend="reference"),
                 lambda: fmt.encode_torch(torch.from_numpy(x)), lambda: fmt.bits_per_weight((2, 96))):
        with pytest.raises(FormatError, match=r"\(2, 96\).*64"):
            call()


def test_bad_values_and_arguments_are_refused() -> None:
    fmt = get_format("int4-g32")
    x = np.zeros((2, 32), np.float32)
    x[1, 5] = np.nan
    with pytest.raises(FormatError, match=r"index \(1, 5\)"):
        fmt.encode(x)
    with pytest.raises(FormatError, match=r"index \(1, 5\)"):
        fmt.encode_torch(torch.from_numpy(x))
    x[1, 5] = 70000.0  # beyond float16: the bias could not be stored
    with pytest.raises(FormatError, match="65504"):
        fmt.encode(x)
    with pytest.raises(FormatError, match="backend"):
        fmt.encode(np.zeros((1, 32), np.float32), backend="cuda")
    with pytest.raises(FormatError, match=r"integer|floating"):
        fmt.encode(np.zeros((1, 32), np.int32))
    enc = fmt.encode(np.zeros((1, 64), np.float32))
    with pytest.raises(FormatError, match="bias"):
        fmt.decode({"codes": enc["codes"], "scale": enc["scale"]})
    with pytest.raises(FormatError, match="scale"):
        fmt.decode({**enc, "scale": enc["scale"][:, :1]})
