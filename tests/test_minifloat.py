"""Minifloat element formats: hand-derived code tables, rounding ties, saturation, specials, and the
numpy reference == numba == torch, bit for bit."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from moesim.kernels import minifloat as mf

ALL = list(mf.SPECS.values())
IDS = [s.name for s in ALL]


def _enc_all(x: np.ndarray, spec: mf.MiniFloatSpec, saturate: bool) -> tuple[np.ndarray, ...]:
    x32 = np.asarray(x, dtype=np.float32)
    return (mf.encode_ref(x32, spec, saturate=saturate), mf.encode_nb(x32, spec, saturate=saturate),
            mf.encode_torch(torch.from_numpy(x32), spec, saturate=saturate).numpy())


# ---- code tables written out from the spec ------------------------------------------------------

def test_e2m1_every_code_value() -> None:
    expected = [0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0]
    vals = mf.decode_ref(np.arange(16), mf.E2M1)
    assert vals[:8].tolist() == expected
    assert vals[8:].tolist() == [-v for v in expected]
    assert np.signbit(vals[8]) and not np.signbit(vals[0])  # code 0x8 is -0.0


@pytest.mark.parametrize(("spec", "max_code", "max_normal", "min_sub", "emin", "emax"), [
    (mf.E2M1, 0x7, 6.0, 0.5, 0, 2),
    (mf.E2M3, 0x1F, 7.5, 0.125, 0, 2),
    (mf.E3M2, 0x1F, 28.0, 0.0625, -2, 4),
    (mf.E4M3, 0x7E, 448.0, 2.0**-9, -6, 8),
    (mf.E5M2, 0x7B, 57344.0, 2.0**-16, -14, 15),
], ids=IDS)
def test_spec_constants(spec, max_code, max_normal, min_sub, emin, emax) -> None:
    assert (spec.max_code, spec.max_normal, spec.min_subnormal, spec.emin, spec.emax) == \
        (max_code, max_normal, min_sub, emin, emax)
    assert mf.decode_ref(np.array([max_code]), spec)[0] == max_normal
    assert mf.decode_ref(np.array([1]), spec)[0] == min_sub


def test_e4m3_and_e5m2_specials_decode() -> None:
    e4 = mf.decode_ref(np.array([0x7F, 0xFF, 0x7E, 0xFE, 0x08]), mf.E4M3)
    assert np.isnan(e4[:2]).all() and e4[2:].tolist() == [448.0, -448.0, 2.0**-6]
    e5 = mf.decode_ref(np.array([0x7C, 0xFC, 0x7D, 0x7E, 0x7F, 0xFF, 0x7B, 0x04]), mf.E5M2)
    assert e5[0] == math.inf and e5[1] == -math.inf
    assert np.isnan(e5[2:6]).all() and e5[6:].tolist() == [57344.0, 2.0**-14]
    # FP4 / FP6 have no special codes: the all-ones code is a number.
    assert mf.decode_ref(np.array([0x3F]), mf.E3M2)[0] == -28.0


def test_all_backends_decode_every_byte_identically() -> None:
    codes = np.arange(256, dtype=np.uint8)
    for spec in ALL:
        r = mf.decode_ref(codes, spec)
        n = mf.decode_nb(codes, spec)
        t = mf.decode_torch(torch.from_numpy(codes), spec).numpy()
        finite = ~np.isnan(r)
        for other in (n, t):
            assert np.array_equal(np.isnan(other), ~finite)
            assert np.array_equal(other.view(np.uint32)[finite], r.view(np.uint32)[finite])


# ---- rounding: ties, saturation, signed zero ----------------------------------------------------

@pytest.mark.parametrize(("x", "code"), [
    (0.25, 0x0),   # tie 0 | 0.5 -> the even code 0
    (0.26, 0x1),
    (0.75, 0x2),   # tie 0.5 (code 1) | 1 (code 2) -> 1
    (1.25, 0x2),   # tie 1 (2) | 1.5 (3) -> 1
    (1.75, 0x4),   # tie 1.5 (3) | 2 (4) -> 2
    (2.5, 0x4),    # tie 2 (4) | 3 (5) -> 2
    (3.5, 0x6),    # tie 3 (5) | 4 (6) -> 4
    (5.0, 0x6),    # tie 4 (6) | 6 (7) -> 4
    (5.01, 0x7),
    (7.0, 0x7),    # saturates to 6
    (1e9, 0x7),
    (math.inf, 0x7),
    (-2.5, 0xC),
    (-0.1, 0x8),   # rounds to -0
    (-0.0, 0x8),
    (-math.inf, 0xF),
    (math.nan, 0x0),  # no NaN encoding: +0
])
def test_e2m1_rounding_by_hand(x: float, code: int) -> None:
    for out in _enc_all(np.array([x]), mf.E2M1, True):
        assert int(out[0]) == code


@pytest.mark.parametrize(("spec", "x", "sat_code", "ieee_code"), [
    (mf.E4M3, 464.0, 0x7E, 0x7E),        # tie 448 (0x7E, even) | 480 -> 448
    (mf.E4M3, 465.0, 0x7E, 0x7F),        # beyond: saturate, or NaN (no Inf in E4M3)
    (mf.E4M3, -1e6, 0xFE, 0x7F),         # NaN is the canonical positive code
    (mf.E4M3, math.inf, 0x7E, 0x7F),
    (mf.E4M3, 2.0**-10, 0x00, 0x00),     # tie 0 | 2^-9 -> 0
    (mf.E4M3, 3 * 2.0**-10, 0x02, 0x02),  # tie 2^-9 (1) | 2^-8 (2) -> 2^-8
    (mf.E4M3, 7 * 2.0**-9, 0x07, 0x07),  # largest subnormal
    (mf.E4M3, 15 * 2.0**-10, 0x08, 0x08),  # tie 7*2^-9 (7) | 2^-6 (8) -> the smallest normal
    (mf.E4M3, math.nan, 0x7F, 0x7F),
    (mf.E5M2, 61440.0, 0x7B, 0x7C),      # tie 57344 (0x7B, odd) | 65536 -> up: Inf when not saturating
    (mf.E5M2, 61439.0, 0x7B, 0x7B),
    (mf.E5M2, -math.inf, 0xFB, 0xFC),
    (mf.E5M2, 2.0**-17, 0x00, 0x00),     # tie 0 | 2^-16 -> 0
    (mf.E5M2, 3 * 2.0**-17, 0x02, 0x02),
    (mf.E5M2, -(2.0**-16), 0x81, 0x81),
    (mf.E5M2, math.nan, 0x7F, 0x7F),
    (mf.E2M3, 0.0625, 0x00, 0x00),       # tie 0 | 0.125
    (mf.E2M3, 0.1875, 0x02, 0x02),       # tie 0.125 (1) | 0.25 (2)
    (mf.E2M3, 7.75, 0x1F, 0x1F),         # tie 7.5 (odd) | 8: no Inf/NaN -> saturates either way
    (mf.E2M3, 100.0, 0x1F, 0x1F),
    (mf.E3M2, 26.0, 0x1E, 0x1E),         # tie 24 (0x1E) | 28 (0x1F) -> 24
    (mf.E3M2, 0.03125, 0x00, 0x00),      # tie 0 | 2^-4
    (mf.E3M2, -0.09375, 0x22, 0x22),     # tie 2^-4 (1) | 2^-3 (2), negative: sign bit 0x20
])
def test_minifloat_rounding_by_hand(spec, x: float, sat_code: int, ieee_code: int) -> None:
    for out in _enc_all(np.array([x]), spec, True):
        assert int(out[0]) == sat_code
    for out in _enc_all(np.array([x]), spec, False):
        assert int(out[0]) == ieee_code


@pytest.mark.parametrize("spec", ALL, ids=IDS)
def test_every_finite_code_round_trips(spec: mf.MiniFloatSpec) -> None:
    codes = np.arange(1 << spec.bits)
    vals = mf.decode_ref(codes, spec)
    finite = np.isfinite(vals)
    for out in _enc_all(vals[finite], spec, False):
        assert np.array_equal(out, codes[finite].astype(np.uint8))


@pytest.mark.parametrize("spec", ALL, ids=IDS)
def test_every_midpoint_ties_to_the_even_code(spec: mf.MiniFloatSpec) -> None:
    table = mf.positive_values(spec)
    mids = (table[1:] + table[:-1]) / 2  # exact in float32 for these short significands
    lo_code = np.arange(spec.max_code)
    expected = np.where(lo_code % 2 == 0, lo_code, lo_code + 1).astype(np.uint8)
    for out in _enc_all(mids, spec, True):
        assert np.array_equal(out, expected)
    for out in _enc_all(-mids, spec, True):
        assert np.array_equal(out, expected | (1 << spec.sign_shift))


@pytest.mark.parametrize(("spec", "dtype"), [(mf.E4M3, torch.float8_e4m3fn), (mf.E5M2, torch.float8_e5m2)])
def test_ieee_mode_matches_torch_float8_casts(spec: mf.MiniFloatSpec, dtype: torch.dtype) -> None:
    rng = np.random.default_rng(7)
    x = (rng.standard_normal(50_000) * np.exp2(rng.integers(-24, 20, 50_000))).astype(np.float32)
    x[:4] = [spec.max_normal * 1.5, -spec.max_normal * 4, math.inf, math.nan]
    # Whether torch's cast saturates differs between dtypes and torch releases (recent builds clamp
    # E4M3 overflow, Inf included, to 448): probe it and compare with our matching mode.
    probe = int(torch.tensor([spec.max_normal * 4]).to(dtype).view(torch.uint8)[0])
    assert probe in (spec.max_code, spec.nan_code, spec.inf_code)
    ours = mf.encode_ref(x, spec, saturate=probe == spec.max_code)
    theirs = torch.from_numpy(x).to(dtype).view(torch.uint8).numpy()
    nan = np.isnan(mf.decode_ref(ours, spec))
    assert np.array_equal(ours[~nan], theirs[~nan])
    assert np.array_equal(theirs[nan] & 0x7F, ours[nan])  # torch keeps the sign of NaN, we do not


# ---- reference == numba == torch on random inputs -----------------------------------------------

_floats = hnp.arrays(np.float32, st.integers(1, 64),
                     elements=st.floats(width=32, allow_nan=True, allow_infinity=True, allow_subnormal=True))


@settings(max_examples=60, deadline=None)
@given(x=_floats, scale_exp=st.integers(-20, 20), saturate=st.booleans())
def test_backends_agree_bit_for_bit(x: np.ndarray, scale_exp: int, saturate: bool) -> None:
    with np.errstate(over="ignore", under="ignore"):
        x = (x * np.float32(2.0**scale_exp)).astype(np.float32)
    for spec in ALL:
        r, n, t = _enc_all(x, spec, saturate)
        assert np.array_equal(r, n) and np.array_equal(r, t)


def test_backends_agree_on_a_dense_sweep() -> None:
    # every float32 bit pattern with the low 13 mantissa bits dropped covers each format's
    # subnormals, normals, ties and overflow edges with a fixed, reproducible set.
    bits = (np.arange(1 << 19, dtype=np.uint32) << 13)
    x = bits.view(np.float32)
    for spec in ALL:
        for sat in (True, False):
            r, n, t = _enc_all(x, spec, sat)
            assert np.array_equal(r, n) and np.array_equal(r, t)
