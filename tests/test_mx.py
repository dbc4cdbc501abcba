"""MX formats: hand-derived blocks with exact bits, the edge cases the module documents, and the numpy
reference == numba == torch on random inputs."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from moesim.kernels.formats import FormatError, _stream, get_format
from moesim.kernels.formats import _mx_numba as nbk
from moesim.kernels.formats._mx_common import ELEMENTS, element_lut
from moesim.kernels.formats.mx import FORMATS, MXFormat, decode_mx

MX_NAMES = sorted(FORMATS)
BASE_NAMES = sorted(n for n in MX_NAMES if not n.endswith("-rceil"))


def _encode_all(fmt: MXFormat, x: np.ndarray) -> dict[str, np.ndarray]:
    """Encode with every backend, assert they agree bit for bit, return the reference result."""
    ref = fmt.encode(x, backend="reference")
    nb = fmt.encode(x, backend="numba")
    tt = fmt.encode_torch(torch.from_numpy(np.asarray(x, dtype=np.float32)))
    for key in (fmt.data_key, "scales"):
        assert np.array_equal(ref[key], nb[key]), key
        assert np.array_equal(ref[key], tt[key].numpy()), key
    return ref


def _decode_all(fmt: MXFormat, enc: dict[str, np.ndarray]) -> np.ndarray:
    """Decode with every backend (float32 and bf16), assert identical bits, return float32."""
    ref = fmt.decode(enc, backend="reference")
    nb = fmt.decode(enc, backend="numba")
    tt = fmt.decode_torch({k: torch.from_numpy(v) for k, v in enc.items() if k != "shape"}).numpy()
    nan = np.isnan(ref)
    for other in (nb, tt.reshape(ref.shape)):
        assert np.array_equal(np.isnan(other), nan)
        assert np.array_equal(other.view(np.uint32)[~nan], ref.view(np.uint32)[~nan])
    bf_ref = fmt.decode(enc, dtype="bfloat16", backend="reference")
    bf_nb = fmt.decode(enc, dtype="bfloat16", backend="numba")
    bf_t = fmt.decode_torch({k: torch.from_numpy(v) for k, v in enc.items() if k != "shape"},
                            dtype=torch.bfloat16).view(torch.uint16).numpy().reshape(ref.shape)
    assert np.array_equal(bf_ref, bf_nb)
    assert np.array_equal(bf_ref[~nan], bf_t[~nan]) and (bf_ref[nan] == 0x7FC0).all()
    return ref


def _block(values: list[float], fill: float = 0.0) -> np.ndarray:
    x = np.full(32, fill, np.float32)
    x[: len(values)] = values
    return x


def _e2m1_codes(enc: dict[str, np.ndarray]) -> np.ndarray:
    b = enc["blocks"].reshape(-1, 16)
    out = np.empty((b.shape[0], 32), np.uint8)
    out[:, 0::2], out[:, 1::2] = b & 0xF, b >> 4
    return out


# ---- MXFP4 by hand ---------------------------------------------------------------------------------

def test_mxfp4_ties_and_saturation_by_hand() -> None:
    # amax 7: floor(log2 7) = 2, minus emax_elem 2 -> e = 0, scale byte 127.
    x = _block([2.5, 3.5, 5.0, 7.0, -2.5, 0.25, 0.75, -0.1, 6.5, 1.25])
    enc = _encode_all(get_format("mxfp4"), x)
    assert enc["scales"].tolist() == [127]
    codes = _e2m1_codes(enc)[0]
    # 2.5->2, 3.5->4, 5->4 (ties to even), 7->6 (saturates), -2.5->-2, 0.25->0, 0.75->1, -0.1->-0,
    # 6.5->6 (saturates), 1.25->1 (tie)
    assert codes[:10].tolist() == [0x4, 0x6, 0x6, 0x7, 0xC, 0x0, 0x2, 0x8, 0x7, 0x2]
    out = _decode_all(get_format("mxfp4"), enc)
    assert out[:10].tolist() == [2.0, 4.0, 4.0, 6.0, -2.0, 0.0, 1.0, -0.0, 6.0, 1.0]
    assert np.signbit(out[7])
    # the packed layout: element 2j in the low nibble of byte j
    assert enc["blocks"][0, 0] == (0x4 | 0x6 << 4)


def test_mxfp4_large_value_saturates_at_six_times_the_scale() -> None:
    # 1e9: floor(log2 1e9) = 29 -> e = 27; 1e9 / 2^27 = 7.45 -> 6; 6 * 2^27 = 805306368.
    enc = _encode_all(get_format("mxfp4"), _block([1e9, 1.0e8]))
    assert enc["scales"].tolist() == [127 + 27]
    out = _decode_all(get_format("mxfp4"), enc)
    assert out[0] == 6 * 2.0**27
    assert out[1] == 2.0**27 * 0.5  # 1e8 / 2^27 = 0.745 is nearer 0.5 (by .245) than 1.0 (by .255)


def test_floor_and_rceil_differ_when_amax_over_scale_exceeds_six() -> None:
    x = _block([7.0, 2.5, 3.0, -5.0])
    floor = _encode_all(get_format("mxfp4"), x)
    rceil = _encode_all(get_format("mxfp4-rceil"), x)
    # floor: e = 0, 7 saturates to 6 and -5 ties to -4; rceil: 7/6 > 1 -> e = 1, 7/2 = 3.5 ties to 4,
    # 2.5/2 = 1.25 ties to 1, 3/2 = 1.5 is exact, -5/2 = -2.5 ties to -2.
    assert floor["scales"].tolist() == [127] and rceil["scales"].tolist() == [128]
    assert _decode_all(get_format("mxfp4"), floor)[:4].tolist() == [6.0, 2.0, 3.0, -4.0]
    assert _decode_all(get_format("mxfp4-rceil"), rceil)[:4].tolist() == [8.0, 2.0, 3.0, -4.0]
    # 6 * 2^k exactly: both rules agree (rceil does not bump on equality).
    y = _block([6.0, 1.0])
    assert _encode_all(get_format("mxfp4-rceil"), y)["scales"].tolist() == [127]
    assert _encode_all(get_format("mxfp4"), y)["scales"].tolist() == [127]


def test_all_zero_block_takes_scale_byte_zero_and_keeps_negative_zero() -> None:
    x = np.concatenate([np.zeros(32, np.float32), np.full(32, -0.0, np.float32)])
    for name in [*BASE_NAMES, "mxfp4-rceil"]:
        fmt = get_format(name)
        enc = _encode_all(fmt, x)
        assert enc["scales"].tolist() == [0, 0]
        out = _decode_all(fmt, enc)
        assert (out == 0).all()
        assert not np.signbit(out[:32]).any()
        # MXINT8's two's complement has no -0.
        assert np.signbit(out[32:]).all() == (name != "mxint8")


def test_nan_or_inf_in_a_block_makes_the_whole_block_nan() -> None:
    x = np.tile(_block([1.0, 2.0, 3.0]), 3)
    x[33] = np.nan
    x[70] = -np.inf
    for name in MX_NAMES:
        fmt = get_format(name)
        enc = _encode_all(fmt, x)
        assert enc["scales"].tolist()[1:] == [0xFF, 0xFF]
        assert (enc[fmt.data_key].reshape(3, -1)[1:] == 0).all()
        out = _decode_all(fmt, enc).reshape(3, 32)
        assert np.isnan(out[1:]).all() and not np.isnan(out[0]).any()


def test_scale_byte_ff_decodes_to_nan_whatever_the_codes() -> None:
    fmt = get_format("mxfp4")
    enc = {"blocks": np.full((2, 16), 0x21, np.uint8), "scales": np.array([0xFF, 127], np.uint8),
           "shape": np.array([64])}
    out = _decode_all(fmt, enc)
    assert np.isnan(out[:32]).all()
    assert out[32:34].tolist() == [0.5, 1.0]  # low nibble 1 -> 0.5 first, high nibble 2 -> 1.0


def test_subnormal_elements_are_kept() -> None:
    cases = [  # (format, block max fixing e = 0, subnormal inputs, expected decoded values)
        ("mxfp8_e4m3", 448.0, [2.0**-9, 3 * 2.0**-10, 2.0**-10, -7 * 2.0**-9], [2.0**-9, 2.0**-8, 0.0, -7 * 2.0**-9]),
        ("mxfp8_e5m2", 57344.0, [2.0**-16, 3 * 2.0**-17, 2.0**-17], [2.0**-16, 2.0**-15, 0.0]),
        ("mxfp6_e2m3", 4.0, [0.125, 0.0625, 0.1875, -0.875], [0.125, 0.0, 0.25, -0.875]),
        ("mxfp6_e3m2", 16.0, [0.0625, 0.03125, 0.1875], [0.0625, 0.0, 0.1875]),
        ("mxfp4", 4.0, [0.5, 0.25, -0.75], [0.5, 0.0, -1.0]),
    ]
    for name, amax, xs, expected in cases:
        fmt = get_format(name)
        enc = _encode_all(fmt, _block([amax, *xs]))
        assert enc["scales"].tolist() == [127], name
        out = _decode_all(fmt, enc)
        assert out[1: 1 + len(xs)].tolist() == expected, name


FLOAT_NAMES = ["mxfp4", "mxfp6_e2m3", "mxfp6_e3m2", "mxfp8_e4m3", "mxfp8_e5m2"]


def _codes(fmt: MXFormat, enc: dict[str, np.ndarray]) -> np.ndarray:
    return _e2m1_codes(enc) if fmt.element.packed else enc["codes"].reshape(-1, 32)


def _blocks_after_max(fmt: MXFormat, xs: np.ndarray, shift: int = 0) -> np.ndarray:
    """Blocks of 32 whose element 0 is the element's largest value times ``2^shift`` (so the shared
    exponent is ``shift`` under both rules) followed by 31 of ``xs`` each, zero-padded."""
    nblocks = -(-xs.size // 31)
    body = np.zeros(nblocks * 31, np.float32)
    body[: xs.size] = xs
    x = np.empty((nblocks, 32), np.float32)
    x[:, 0] = fmt.element.max_value * 2.0**shift
    x[:, 1:] = body.reshape(nblocks, 31)
    return x


@pytest.mark.parametrize(("name", "shift"), [*((n, 0) for n in FLOAT_NAMES), ("mxfp8_e4m3-rceil", 0),
                                           ("mxfp4", -127), ("mxfp4", -90), ("mxfp4", 125), ("mxfp4-rceil", 120)])
def test_every_midpoint_ties_to_the_even_code(name: str, shift: int) -> None:
    # every midpoint of the element grid, and the float32 values either side of it, at scale 2^shift
    # (2^-127: float32 subnormal inputs; 2^125: the largest scale a float32 block can get by floor)
    fmt = get_format(name)
    el = fmt.element
    max_code, sign = el.params[3], 1 << (el.bits - 1)
    grid = element_lut(el.name)[: max_code + 1].astype(np.float64)  # codes in increasing value order
    assert (np.diff(grid) > 0).all()
    lo = np.arange(max_code)
    mids = ((grid[:-1] + grid[1:]) / 2 * 2.0**shift).astype(np.float32)  # exact: one bit more than grid
    even = np.where(lo % 2 == 0, lo, lo + 1)
    below = np.nextafter(mids, np.float32(-np.inf))
    above = np.nextafter(mids, np.float32(np.inf))
    xs = np.concatenate([mids, -mids, below, above])
    want = np.concatenate([even, even | sign, lo, lo + 1])
    x = _blocks_after_max(fmt, xs, shift)
    enc = _encode_all(fmt, x)
    assert (enc["scales"] == 127 + shift).all()
    codes = _codes(fmt, enc)
    assert (codes[:, 0] == max_code).all()
    assert codes[:, 1:].reshape(-1)[: xs.size].tolist() == want.tolist()
    out = _decode_all(fmt, enc).reshape(-1, 32)[:, 1:].reshape(-1)[: xs.size]
    values = np.where(want & sign, -grid[want & (sign - 1)], grid[want & (sign - 1)]) * 2.0**shift
    assert out.tolist() == values.tolist()


def _fp4_kernels_agree(x: np.ndarray, rceil: bool) -> None:
    """MXFP4's own encode kernel (midpoint comparisons) == the generic integer core run on E2M1."""
    el = ELEMENTS["fp4_e2m1"]
    bits = np.ascontiguousarray(x, np.float32).reshape(-1).view(np.uint32)
    nb = bits.size // 32
    for parallel in (False, True):
        blocks, scales = np.empty(nb * 16, np.uint8), np.empty(nb, np.uint8)
        nbk.pick("encode_fp4", nb, parallel)(bits, blocks, scales, el.emax, el.max_frac, rceil)
        codes, scales2 = np.empty(nb * 32, np.uint8), np.empty(nb, np.uint8)
        nbk.pick("encode_unpacked", nb, parallel)(bits, codes, scales2, el.emax, el.max_frac, rceil, *el.params)
        assert np.array_equal(scales, scales2)
        assert np.array_equal(blocks, codes[0::2] | (codes[1::2] << 4))


def test_fp4_kernel_equals_the_generic_core_on_random_bit_patterns() -> None:
    rng = np.random.default_rng(21)
    raw = rng.integers(0, 2**32, 1 << 19, dtype=np.uint64).astype(np.uint32).view(np.float32)
    # grid points, midpoints and their float32 neighbours at every scale a float32 block can have
    grid = np.array([0, .25, .5, .75, 1, 1.25, 1.5, 1.75, 2, 2.5, 3, 3.5, 4, 5, 6, 7, 8])
    g = rng.choice(grid, (1 << 14, 32)) * rng.choice([-1.0, 1.0], (1 << 14, 32))
    with np.errstate(over="ignore"):
        g = (g * np.exp2(rng.integers(-150, 126, (1 << 14, 1)))).astype(np.float32).reshape(-1)
    nudged = g.copy()
    pick = rng.random(g.size) < 0.3
    nudged[pick] = np.nextafter(g[pick], np.where(rng.random(pick.sum()) < 0.5, -np.inf, np.inf).astype(np.float32))
    for x in (raw, g, nudged):
        for rceil in (False, True):
            _fp4_kernels_agree(x, rceil)


@pytest.mark.parametrize("name", FLOAT_NAMES)
def test_floor_rule_saturates_just_below_the_next_power_of_two(name: str) -> None:
    # amax just under 2^(emax_elem + 1) keeps e = 0 under floor and is held at the largest element
    fmt = get_format(name)
    top = np.nextafter(np.float32(2.0 ** (fmt.element.emax + 1)), np.float32(0))
    enc = _encode_all(fmt, _block([top, -top, fmt.element.max_value]))
    assert enc["scales"].tolist() == [127]
    out = _decode_all(fmt, enc)
    m = fmt.element.max_value
    assert out[:3].tolist() == [m, -m, m]
    rceil = get_format(f"{name}-rceil")
    assert _encode_all(rceil, _block([top]))["scales"].tolist() == [128]


def test_float32_subnormals_are_neither_flushed_on_input_nor_on_output() -> None:
    # scale byte 0 (2^-127): the FP4 values times 2^-127; 0.5, 1 and 1.5 of them are float32 subnormals
    fp4 = get_format("mxfp4")
    x = (element_lut("fp4_e2m1")[:16].astype(np.float64) * 2.0**-127).astype(np.float32)
    x = np.concatenate([x, x[::-1]])
    tiny = np.finfo(np.float32).tiny
    assert ((np.abs(x) < tiny) & (x != 0)).sum() == 12
    enc = _encode_all(fp4, x)
    assert enc["scales"].tolist() == [0]
    assert _e2m1_codes(enc)[0].tolist() == [*range(16), *range(15, -1, -1)]
    assert np.array_equal(_decode_all(fp4, enc).view(np.uint32), x.view(np.uint32))
    # E4M3 at the same scale: element subnormals k * 2^-9 and normals (1 + m/8) * 2^-3, all float32
    # subnormals (below 2^-126), come back bit for bit
    e4 = get_format("mxfp8_e4m3")
    y = np.array([k * 2.0**-136 for k in range(1, 8)] + [(1 + m / 8) * 2.0**-130 for m in range(8)],
                 np.float32)
    y = _block([*y.tolist(), *(-y).tolist()])
    assert (np.abs(y) < tiny).all()
    enc = _encode_all(e4, y)
    assert enc["scales"].tolist() == [0]
    assert np.array_equal(_decode_all(e4, enc).view(np.uint32), y.view(np.uint32))


def test_bad_values_anywhere_in_a_block_make_it_nan() -> None:
    # NaN in the last slot, a lone +Inf, a lone -Inf among zeros, the largest float32 next to a NaN
    x = np.zeros((4, 32), np.float32)
    x[0, :31], x[0, 31] = 1.0, np.nan
    x[1, 17] = np.inf
    x[2, 0] = -np.inf
    x[3, 0], x[3, 1] = np.finfo(np.float32).max, np.nan
    ok = _block([0.5, -3.0])
    x = np.concatenate([x, ok[None, :]])
    for name in MX_NAMES:
        fmt = get_format(name)
        enc = _encode_all(fmt, x)
        scales = enc["scales"].reshape(-1)
        assert scales.tolist()[:4] == [0xFF] * 4 and scales[4] != 0xFF
        assert (enc[fmt.data_key][:4] == 0).all()
        out = _decode_all(fmt, enc).reshape(5, 32)
        assert np.isnan(out[:4]).all() and not np.isnan(out[4]).any()


@pytest.mark.parametrize("name", BASE_NAMES)
def test_scale_byte_ff_is_nan_for_every_element_type(name: str) -> None:
    fmt = get_format(name)
    width = 16 if fmt.element.packed else 32
    rng = np.random.default_rng(4)
    data = rng.integers(0, 256, (3, width), dtype=np.uint8)
    if fmt.element.spec is not None and not fmt.element.packed:
        data &= (1 << fmt.element.bits) - 1
    enc = {fmt.data_key: data, "scales": np.array([0xFF, 127, 0xFF], np.uint8)}
    out = _decode_all(fmt, enc).reshape(3, 32)
    assert np.isnan(out[[0, 2]]).all()
    # the middle block is the element table at scale 1 (E4M3 / E5M2 NaN codes aside)
    codes = _codes(fmt, enc)[1]
    want = element_lut(fmt.element.name)[codes]
    assert np.array_equal(np.isnan(out[1]), np.isnan(want))
    assert np.array_equal(out[1][~np.isnan(want)], want[~np.isnan(want)])


def test_mxint8_by_hand() -> None:
    fmt = get_format("mxint8")
    x = _block([1.5, -1.5, 1 / 128, 3 / 128, -0.0, 1.99, -1.999, 0.5])
    enc = _encode_all(fmt, x)
    assert enc["scales"].tolist() == [127]  # floor(log2 1.999) = 0, emax_elem 0
    codes = enc["codes"][0, :8].view(np.int8).tolist()
    # 1.5*64 = 96; 0.5 and 1.5 ulp ties go to even (0, 2); 1.99*64 = 127.36 -> 127; -127.9 saturates
    assert codes == [96, -96, 0, 2, 0, 127, -127, 32]
    assert _decode_all(fmt, enc)[:8].tolist() == [1.5, -1.5, 0.0, 2 / 64, 0.0, 127 / 64, -127 / 64, 0.5]
    # rceil: 1.999 > 127/64 -> e = 1
    assert _encode_all(get_format("mxint8-rceil"), x)["scales"].tolist() == [128]
    # 0x80 decodes to -2 (two's complement) though the encoder never writes it
    dec = fmt.decode({"codes": np.array([[0x80] + [0] * 31], np.uint8), "scales": np.array([127], np.uint8)})
    assert dec[0] == -2.0


def test_scale_exponent_clamps_at_the_e8m0_range() -> None:
    # amax 2^-140: floor rule asks for 2^-142 (FP4) / 2^-155 (E5M2): both clamp to 2^-127 (byte 0).
    x = _block([2.0**-140, -(2.0**-141), 2.0**-149])
    fp4 = _encode_all(get_format("mxfp4"), x)
    assert fp4["scales"].tolist() == [0]
    out = _decode_all(get_format("mxfp4"), fp4)
    assert out[:3].tolist() == [0.0, -0.0, 0.0] and np.signbit(out[1])  # 2^-13 rounds to signed zero
    e5 = _encode_all(get_format("mxfp8_e5m2"), x)
    assert e5["scales"].tolist() == [0]
    # at scale 2^-127 the E5M2 grid reaches 2^-143: 2^-140 and 2^-141 are exact, 2^-149 rounds to 0
    assert _decode_all(get_format("mxfp8_e5m2"), e5)[:3].tolist() == [2.0**-140, -(2.0**-141), 0.0]
    # at the top: rceil for MXINT8 on float32's maximum wants 2^128 and is held at 2^127 (saturating)
    big = _block([float(np.finfo(np.float32).max)])
    enc = _encode_all(get_format("mxint8-rceil"), big)
    assert enc["scales"].tolist() == [254] and enc["codes"][0, 0] == 127


def test_bits_per_weight_and_shape_errors() -> None:
    assert get_format("mxfp4").bits_per_weight((4, 64)) == 4.25
    assert get_format("mxfp6_e3m2").bits_per_weight((64,)) == 6.25
    assert get_format("mxint8-rceil").bits_per_weight((2, 32)) == 8.25
    with pytest.raises(FormatError, match=r"\(4, 48\).*block size 32"):
        get_format("mxfp4").encode(np.zeros((4, 48), np.float32))
    with pytest.raises(FormatError, match=r"\(3, 33\).*block size 32"):
        get_format("mxfp8_e4m3").encode_torch(torch.zeros(3, 33))
    with pytest.raises(FormatError, match="block size 32"):
        get_format("mxfp4").bits_per_weight((7, 30))
    with pytest.raises(FormatError, match="backend"):
        get_format("mxfp4").encode(np.zeros(32, np.float32), backend="cuda")


def test_encode_keeps_leading_shape() -> None:
    fmt = get_format("mxfp6_e2m3")
    x = np.random.default_rng(3).standard_normal((2, 3, 64)).astype(np.float32)
    enc = _encode_all(fmt, x)
    assert enc["codes"].shape == (2, 3, 2, 32) and enc["scales"].shape == (2, 3, 2)
    assert _decode_all(fmt, enc).shape == (2, 3, 64)


# ---- rceil equals triton's float32 formula --------------------------------------------------------

def _triton_rceil_byte(amax: np.ndarray, max_value: float) -> np.ndarray:
    q = (amax.astype(np.float32) / np.float32(max_value)).astype(np.float32)
    bits = (q.view(np.uint32).astype(np.uint64) + 0x7FFFFF) & 0x7F800000
    return (bits >> 23).astype(np.int64)


@settings(max_examples=80, deadline=None)
@given(amax=hnp.arrays(np.float32, 32, elements=st.floats(min_value=2.0**-100, max_value=2.0**127, width=32)))
def test_rceil_matches_the_float32_bit_formula(amax: np.ndarray) -> None:
    for name in ("mxfp4-rceil", "mxfp6_e2m3-rceil", "mxfp8_e4m3-rceil", "mxfp8_e5m2-rceil", "mxint8-rceil"):
        fmt = get_format(name)
        x = np.zeros((32, 32), np.float32)
        x[:, 0] = amax
        enc = fmt.encode(x)
        expected = np.minimum(_triton_rceil_byte(amax, fmt.element.max_value), 254)
        ok = amax / fmt.element.max_value >= 2.0**-126
        assert np.array_equal(enc["scales"][:, 0][ok], expected[ok])


# ---- backends agree; decode(encode(.)) is idempotent -----------------------------------------------

_elems = st.floats(width=32, allow_nan=True, allow_infinity=True, allow_subnormal=True)


@settings(max_examples=40, deadline=None)
@given(x=hnp.arrays(np.float32, st.integers(1, 6).map(lambda g: (g, 32)), elements=_elems),
       shifts=st.lists(st.integers(-150, 140), min_size=6, max_size=6))
def test_backends_agree_on_random_blocks(x: np.ndarray, shifts: list[int]) -> None:
    with np.errstate(over="ignore", under="ignore", invalid="ignore"):
        scale = np.ldexp(np.float64(1.0), np.array(shifts[: x.shape[0]]))[:, None]
        x = (x.astype(np.float64) * scale).astype(np.float32)
    for name in MX_NAMES:
        fmt = get_format(name)
        _decode_all(fmt, _encode_all(fmt, x.reshape(-1)))


def test_backends_agree_on_structured_random_data() -> None:
    rng = np.random.default_rng(11)
    x = rng.standard_normal((1500, 32)) * np.exp2(rng.integers(-8, 8, (1500, 32)))
    x *= np.exp2(rng.integers(-150, 125, (1500, 1)))
    with np.errstate(over="ignore"):
        x = x.astype(np.float32)
    x[::97, 5] = np.float32(2.0) ** rng.integers(-149, -126)  # subnormal inputs
    for name in MX_NAMES:
        fmt = get_format(name)
        _decode_all(fmt, _encode_all(fmt, x))


@settings(max_examples=30, deadline=None)
@given(x=hnp.arrays(np.float32, (4, 32), elements=st.floats(-(2.0**100), 2.0**100, width=32)))
def test_quantization_is_idempotent(x: np.ndarray) -> None:
    for name in MX_NAMES:
        fmt = get_format(name)
        once = fmt.decode(fmt.encode(x))
        twice = fmt.decode(fmt.encode(once))
        assert np.array_equal(once, twice)


def test_rceil_never_saturates_and_errors_are_bounded() -> None:
    rng = np.random.default_rng(5)
    x = (rng.standard_normal((512, 32)) * np.exp2(rng.integers(-20, 20, (512, 1)))).astype(np.float32)
    for name in ("mxfp4", "mxfp4-rceil"):
        fmt = get_format(name)
        enc = fmt.encode(x)
        e = enc["scales"].reshape(-1).astype(np.int64) - 127
        rel = np.abs(x) / np.ldexp(1.0, e)[:, None]
        out = fmt.decode(enc)
        err = np.abs(out - x) / np.ldexp(1.0, e)[:, None]
        # within the element range the error is at most half the element spacing (1 above 4, 0.5 in
        # [2, 4), 0.25 below 2)
        half = np.where(rel >= 4, 1.0, np.where(rel >= 2, 0.5, 0.25))
        inside = rel <= 6
        assert (err[inside] <= half[inside]).all()
        if name.endswith("rceil"):
            assert inside.all()
        else:
            assert (~inside).any()  # the floor rule does saturate on such data


def test_torch_codecs_trace_as_one_graph() -> None:
    # fullgraph=True fails on any graph break (Python loop over data, .item(), data-dependent branch);
    # the aot_eager backend traces exactly as inductor would, without compiling C++.
    torch._dynamo.reset()
    x = torch.from_numpy(np.random.default_rng(2).standard_normal((4, 64)).astype(np.float32))
    for name in ("mxfp4", "mxfp8_e4m3-rceil", "mxint8"):
        fmt = get_format(name)
        compiled = torch.compile(lambda t, f=fmt: f.decode_torch(f.encode_torch(t)), fullgraph=True,
                                 backend="aot_eager")
        assert torch.equal(compiled(x), fmt.decode_torch(fmt.encode_torch(x)))


@pytest.mark.slow
def test_torch_compile_inductor_matches_eager() -> None:
    fmt = get_format("mxfp4")
    x = torch.from_numpy(np.random.default_rng(2).standard_normal((4, 64)).astype(np.float32))
    x[1, 3] = np.nan
    try:
        compiled = torch.compile(lambda t: fmt.decode_torch(fmt.encode_torch(t)), fullgraph=True)
        got = compiled(x)
    except Exception as exc:  # inductor needs a working C++ toolchain
        pytest.skip(f"inductor cannot compile here: {type(exc).__name__}")
    want = fmt.decode_torch(fmt.encode_torch(x))
    assert torch.equal(torch.isnan(got), torch.isnan(want))
    assert torch.equal(got.nan_to_num(0.0), want.nan_to_num(0.0))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu_bit_for_bit() -> None:
    rng = np.random.default_rng(9)
    x = (rng.standard_normal((256, 64)) * np.exp2(rng.integers(-140, 120, (256, 1)))).astype(np.float32)
    x[3, 7] = np.nan
    for name in MX_NAMES:
        fmt = get_format(name)
        cpu = fmt.encode_torch(torch.from_numpy(x))
        gpu = fmt.encode_torch(torch.from_numpy(x).cuda())
        for k in cpu:
            assert torch.equal(cpu[k], gpu[k].cpu())
        a = fmt.decode_torch(cpu)
        b = fmt.decode_torch(gpu).cpu()
        assert torch.equal(torch.isnan(a), torch.isnan(b))
        assert torch.equal(a.nan_to_num(0.0).view(torch.int32), b.nan_to_num(0.0).view(torch.int32))


# ---- decode kernels with streaming stores ------------------------------------------------------------

def _random_codes(element: str, nblocks: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Random codes (every byte value) and scale bytes (0xFF included) in the layout of ``element``."""
    rng = np.random.default_rng(seed)
    width = 16 if ELEMENTS[element].packed else 32
    return (rng.integers(0, 256, (nblocks, width), dtype=np.uint8),
            rng.integers(0, 256, nblocks, dtype=np.uint8))


def _same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    return a.dtype == b.dtype and np.array_equal(a.view(np.uint32) if a.dtype == np.float32 else a,
                                                 b.view(np.uint32) if b.dtype == np.float32 else b)


@pytest.mark.parametrize("element", ["fp4_e2m1", "fp8_e4m3", "int8"])
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_streaming_decode_equals_the_plain_kernels(monkeypatch: pytest.MonkeyPatch, element: str,
                                                   dtype: str) -> None:
    data, scales = _random_codes(element, 3000, seed=len(element))
    want = decode_mx(data, scales, element, dtype=dtype, parallel=False)  # the serial kernel
    assert not _stream.can_stream(want)  # below MIN_BYTES: the plain kernels ran
    monkeypatch.setattr(_stream, "MIN_BYTES", 0)
    assert _stream.can_stream(want) == _stream.AVAILABLE
    got = decode_mx(data, scales, element, dtype=dtype)
    assert _same_bits(got, want)
    # into a caller's aligned buffer, and into one 4 bytes off alignment (the plain kernel then)
    raw = np.empty(want.nbytes + 64, np.uint8)
    start = (-raw.ctypes.data) % 16
    for offset in (start, start + 4):
        buf = raw[offset: offset + want.nbytes].view(want.dtype)
        buf[:] = 0
        assert _stream.can_stream(buf) == (_stream.AVAILABLE and offset == start)
        assert decode_mx(data, scales, element, dtype=dtype, out=buf) is buf
        assert _same_bits(buf, want)


@pytest.mark.parametrize("table", ["ocp", "gptoss-ldexp", "gptoss-half"])
@pytest.mark.parametrize("parallel", [False, True, None])
def test_packed_fp4_to_bfloat16_by_table_equals_rounding_every_product(monkeypatch: pytest.MonkeyPatch, table: str,
                                                                       parallel: bool | None) -> None:
    # every scale byte x every packed byte: the per-call table of bf16 pairs (serial, parallel,
    # streaming) gives the bits of rounding each float32 product (the per-element kernel), and a
    # buffer only 2-byte aligned (the per-element kernel itself) gives them too
    from moesim.kernels.formats import gptoss
    from moesim.kernels.formats._mx_common import OCP_SCALES, pair_lut

    scale_table = {"ocp": OCP_SCALES, "gptoss-ldexp": gptoss._POW2_SCALES, "gptoss-half": gptoss.HALF_SCALES}[table]
    scale_table = np.ascontiguousarray(scale_table, np.float32)
    blocks = np.tile(np.arange(256, dtype=np.uint8).reshape(16, 16), (256, 1))  # 16 blocks hold every byte
    scales = np.repeat(np.arange(256, dtype=np.uint8), 16)
    want = np.empty((scales.size, 32), np.uint16)
    lut = element_lut("fp4_e2m1")
    nbk.decode_bf16_ser(blocks, True, scales, lut, pair_lut("fp4_e2m1"), scale_table, want)
    if parallel is None:
        monkeypatch.setattr(_stream, "MIN_BYTES", 0)  # the streaming kernel, where the machine has it
    got = decode_mx(blocks, scales, "fp4_e2m1", dtype="bfloat16", parallel=parallel, scale_table=scale_table)
    assert np.array_equal(got.reshape(want.shape), want)
    raw = np.empty(want.nbytes + 2, np.uint8)
    start = 2 if raw.ctypes.data % 4 == 0 else 0
    buf = raw[start: start + want.nbytes].view(np.uint16).reshape(scales.size * 32)
    assert buf.ctypes.data % 4 == 2
    decode_mx(blocks, scales, "fp4_e2m1", dtype="bfloat16", parallel=parallel, scale_table=scale_table, out=buf)
    assert np.array_equal(buf.reshape(want.shape), want)


def test_streaming_decode_at_its_real_threshold() -> None:
    # an output of exactly MIN_BYTES streams without any patching
    nblocks = _stream.MIN_BYTES // (32 * 4)
    blocks, scales = _random_codes("fp4_e2m1", nblocks, seed=9)
    got = decode_mx(blocks, scales, "fp4_e2m1")
    assert _stream.can_stream(got) == _stream.AVAILABLE
    assert _same_bits(got, decode_mx(blocks, scales, "fp4_e2m1", parallel=False))


def test_unknown_format_lists_known_ones() -> None:
    with pytest.raises(FormatError, match="mxfp4-rceil"):
        get_format("mxfp5")
    assert math.isclose(get_format("mxfp8_e4m3").element.max_value, 448.0)
