"""The MLX formats (``mlx-affine-b*-g*``, ``mlx-mxfp4``, ``mlx-mxfp8``, ``mlx-nvfp4`` and their ``-f16`` /
``-f32`` twins): codes, scales, biases and dequantised values equal to MLX itself (``mx.quantize`` /
``mx.dequantize``, skipped when MLX is not installed) for every mode, bit width, group size and
weight dtype, on random shapes, scales and edge cases; numba == numpy == torch bit for bit; MLX's
conversions (dtype rounding, FP8) over every 16-bit pattern; hand-derived vectors of MLX's rules;
each documented difference from the OCP MX, NVIDIA NVFP4 and generic affine formats; sizes; and
the weight analysis with ``backend="mlx"``, with and without MLX."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from moesim.kernels.analysis import analyze_checkpoint, format_backend, quant_error
from moesim.kernels.formats import FormatError, get_format, list_formats, mlx_native
from moesim.kernels.formats import mlx_numerics as mn
from moesim.kernels.formats.base import bf16_bits_to_f32, f32_to_bf16_bits
from moesim.kernels.sizes import expert_bytes, gated_expert_shapes

AFFINE = sorted(n for n in list_formats() if n.startswith("mlx-affine-"))
FP = sorted(n for n in list_formats() if n.startswith("mlx-") and not n.startswith("mlx-affine-"))
ALL = AFFINE + FP
HAS_MLX = mlx_native.available()
needs_mlx = pytest.mark.skipif(not HAS_MLX, reason="MLX is not installed (the optional mlx extra)")
CONF_QUANT = Path(__file__).resolve().parents[1] / "conf" / "quant"


# ---- helpers ---------------------------------------------------------------------------------------

def bits_of(a: np.ndarray) -> np.ndarray:
    """The raw bytes of an array, for bit-for-bit comparisons (NaN payloads included)."""
    return np.ascontiguousarray(a).reshape(-1).view(np.uint8)


def torch_enc_to_numpy(fmt, enc: dict) -> dict:
    """A torch encoded dict in the numpy conventions (uint32 words, bfloat16 as uint16 patterns)."""
    out = {"wq": enc["wq"].numpy().view(np.uint32), "shape": enc["shape"].numpy()}
    for key in ("scales", "biases"):
        if key in enc:
            t = enc[key]
            out[key] = t.view(torch.int16).numpy().view(np.uint16) if t.dtype == torch.bfloat16 else t.numpy()
    return out


def encodings(fmt, x: np.ndarray) -> dict[str, dict]:
    return {"numba": fmt.encode(x), "reference": fmt.encode(x, backend="reference"),
            "torch": torch_enc_to_numpy(fmt, fmt.encode_torch(torch.from_numpy(x)))}


def assert_same_encoding(got: dict, want: dict, label: str) -> None:
    assert got.keys() == want.keys(), label
    for k in want:
        g, w = np.asarray(got[k]), np.asarray(want[k])
        assert g.dtype == w.dtype and g.shape == w.shape, f"{label}: field {k} {g.dtype}{g.shape} != {w.dtype}{w.shape}"
        assert np.array_equal(bits_of(g), bits_of(w)), f"{label}: field {k} differs"


def decodings(fmt, enc: dict, dtype: str) -> dict[str, np.ndarray]:
    tenc = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in enc.items()}
    if "scales" in enc and np.asarray(enc["scales"]).dtype == np.uint16:  # bfloat16 patterns
        tenc["scales"] = tenc["scales"].view(torch.bfloat16)
        tenc["biases"] = tenc["biases"].view(torch.bfloat16)
    tenc["wq"] = torch.from_numpy(np.asarray(enc["wq"]).view(np.int32))
    t = fmt.decode_torch(tenc, dtype=getattr(torch, dtype))
    t = t.view(torch.int16).numpy().view(np.uint16) if dtype == "bfloat16" else t.numpy()
    return {"numba": fmt.decode(enc, dtype=dtype), "reference": fmt.decode(enc, dtype=dtype, backend="reference"),
            "torch": t}


def assert_backends_agree(fmt, x: np.ndarray) -> dict:
    encs = encodings(fmt, x)
    for name in ("reference", "torch"):
        assert_same_encoding(encs[name], encs["numba"], f"{fmt.name} {name} vs numba")
    for dtype in ("float32", "bfloat16"):
        outs = decodings(fmt, encs["numba"], dtype)
        for name in ("reference", "torch"):
            assert np.array_equal(bits_of(outs[name]), bits_of(outs["numba"])), f"{fmt.name} decode {dtype} {name}"
    return encs["numba"]


def assert_matches_mlx(fmt, x: np.ndarray) -> None:
    want = mlx_native.encode(fmt, x)
    for name, enc in encodings(fmt, x).items():
        assert_same_encoding(enc, want, f"{fmt.name} {name} vs MLX")
    for dtype in ("float32", "bfloat16"):
        ref = mlx_native.decode(fmt, want, dtype)
        for name, out in decodings(fmt, want, dtype).items():
            assert out.dtype == ref.dtype and out.shape == ref.shape
            assert np.array_equal(bits_of(out), bits_of(ref)), f"{fmt.name} decode to {dtype} ({name}) vs MLX"


def edge_case_weights(n: int, seed: int, specials: bool) -> np.ndarray:
    """Rows of 128-wide stretches, each one kind of trouble: constant groups, zeros of both signs,
    huge and tiny magnitudes, exact FP4 midpoints, repeated extremes, and (``specials``) NaN / +-Inf."""
    rng = np.random.default_rng(seed)
    rows = []
    for kind in range(8):
        r = rng.standard_normal(n).astype(np.float32)
        if kind == 0:
            r[:] = np.float32(rng.standard_normal())  # every group constant
        elif kind == 1:
            r[:] = np.where(rng.random(n) < 0.5, np.float32(-0.0), np.float32(0.0))
            r[n // 2:] *= np.float32(1e-41)
        elif kind == 2:
            r *= np.float32(10.0 ** rng.integers(-44, 37))
        elif kind == 3:  # midpoints of the FP4 grid at a block scale of 1 (amax 6)
            r[:] = rng.choice(np.float32([0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0, -0.25, -0.75, -5.0, 6.0, -0.0]), n)
            r[::16] = np.float32(6.0)
        elif kind == 4:
            r *= np.float32(1e-39)  # subnormal scales
        elif kind == 5:
            r[: n // 2] = np.float32(rng.integers(-8, 8))  # exact integers: ties of (w - bias) / scale
        elif kind == 6:
            r *= np.float32(3e37)
        elif specials:
            r[rng.integers(0, n, 3)] = np.float32([np.nan, np.inf, -np.inf])
        rows.append(r)
    return np.stack(rows)


@st.composite
def weights(draw, block: int) -> np.ndarray:
    """Random shapes (1-3 leading rows or a 3-D batch), random magnitudes (1e-40 .. 1e37), runs of
    repeated values (constant groups), zeros, FP4 midpoints and, sometimes, NaN / +-Inf."""
    lead = draw(st.sampled_from([(1,), (2,), (3,), (2, 2)]))
    unit = max(block, 32)  # rows of nvfp4's 16-blocks: whole 32s, or MLX refuses (see below)
    n = unit * draw(st.integers(1, 256 // unit))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    x = rng.standard_normal((*lead, n)).astype(np.float32)
    x *= np.float32(10.0 ** draw(st.integers(-40, 37)))
    run = draw(st.integers(0, n))
    x[..., :run] = x.reshape(-1)[0]
    if draw(st.booleans()):
        x[..., draw(st.integers(0, n - 1))] = np.float32(0.0) if draw(st.booleans()) else np.float32(-0.0)
    if draw(st.booleans()):
        mids = np.float32([0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0, 6.0, -0.75, -2.5])
        x.reshape(-1)[: min(x.size, 16)] = rng.choice(mids, min(x.size, 16))
    if draw(st.integers(0, 4)) == 0:
        flat = x.reshape(-1)
        flat[draw(st.integers(0, flat.size - 1))] = draw(st.sampled_from([np.nan, np.inf, -np.inf]))
    return x


# ---- equal to MLX itself ------------------------------------------------------------------------

@needs_mlx
@pytest.mark.parametrize("name", ALL)
def test_every_mode_bits_group_and_dtype_matches_mlx_on_edge_cases(name: str) -> None:
    fmt = get_format(name)
    assert_matches_mlx(fmt, edge_case_weights(256, seed=len(name), specials=True))


@needs_mlx
@settings(max_examples=150, deadline=None)
@given(data=st.data())
def test_random_shapes_scales_and_edge_cases_match_mlx(data: st.DataObject) -> None:
    fmt = get_format(data.draw(st.sampled_from(ALL)))
    assert_matches_mlx(fmt, data.draw(weights(fmt.block_size)))


@needs_mlx
def test_mlx_version_is_the_one_these_rules_were_read_from() -> None:
    # the rules above (the exponent's step up, FP8 saturating from 464) are MLX 0.32's; a new
    # minor version is a reason to re-read its quantize source before trusting the formats
    assert mlx_native.version().startswith("0.32.")


@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_numba_reference_and_torch_agree_bit_for_bit(data: st.DataObject) -> None:
    fmt = get_format(data.draw(st.sampled_from(ALL)))
    assert_backends_agree(fmt, data.draw(weights(fmt.block_size)))


@pytest.mark.parametrize("name", ["mlx-affine-b3-g64", "mlx-affine-b5-g32-f16", "mlx-mxfp4", "mlx-nvfp4-f16"])
def test_backends_agree_on_edge_cases_without_mlx(name: str) -> None:
    assert_backends_agree(get_format(name), edge_case_weights(256, seed=3, specials=True))


# ---- MLX's conversions, pattern by pattern ----------------------------------------------------------

ALL_16 = np.arange(65536, dtype=np.uint32).astype(np.uint16)


@needs_mlx
@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(0, 2**32 - 1), min_size=1, max_size=300))
def test_rounding_to_the_weight_dtype_matches_mlx_astype(patterns: list[int]) -> None:
    mx = mlx_native.mlx_core()
    specials = [0x7F800000, 0xFF800000, 0x7FC00000, 0xFFC00000, 0x7F800001, 0x00000001, 0x477FF000, 0x477FEFFF,
                0x33000000, 0x33000001, 0x80000000]
    x = np.array(patterns + specials, dtype=np.uint32).view(np.float32)
    assert np.array_equal(mn.f32_to_f16_bits(x), np.array(mx.array(x).astype(mx.float16).view(mx.uint16)))
    assert np.array_equal(f32_to_bf16_bits(x), np.array(mx.array(x).astype(mx.bfloat16).view(mx.uint16)))
    # the numba and torch twins of the rounding agree with numpy, bits and all
    for dt in (mn.BF16, mn.F16):
        want = mn.round_to(x, dt).view(np.uint32)
        assert np.array_equal(_rd_numba(x, dt).view(np.uint32), want)
        assert np.array_equal(mn.round_torch(torch.from_numpy(x), dt).numpy().view(np.uint32), want)


def _rd_numba(x: np.ndarray, dt: int) -> np.ndarray:
    from moesim.kernels.jit import njit

    @njit
    def run(v, dt):
        out = np.empty_like(v)
        for i in range(v.size):
            out[i] = mn.rd(v[i], dt)
        return out

    return run(x, dt)


@needs_mlx
def test_float16_widening_and_fp8_decoding_match_mlx_for_every_pattern() -> None:
    mx = mlx_native.mlx_core()
    widened = np.array(mx.array(ALL_16).view(mx.float16).astype(mx.float32)).view(np.uint32)
    assert np.array_equal(mn.f16_bits_to_f32(ALL_16).view(np.uint32), widened)
    assert np.array_equal(mn.from_storage_torch(torch.from_numpy(ALL_16.view(np.int16)).view(torch.float16),
                                                mn.F16).numpy().view(np.uint32), widened)
    codes = np.arange(256, dtype=np.uint8)
    got = np.array(mx.from_fp8(mx.array(codes), dtype=mx.float32)).view(np.uint32)
    assert np.array_equal(mn.FP8_VALUES.view(np.uint32), got)


@needs_mlx
def test_fp8_encoding_matches_mlx_on_every_16_bit_value_and_around_every_e4m3_boundary() -> None:
    mx = mlx_native.mlx_core()
    grid = np.arange(0x3A000000, 0x44000000, 101, dtype=np.uint32).view(np.float32)  # 2^-11 .. 512
    boundaries = (mn.FP8_VALUES[:0x7F].astype(np.float64)[:-1] + mn.FP8_VALUES[1:0x7F]) / 2  # midpoints
    near = np.concatenate([np.nextafter(boundaries.astype(np.float32), np.float32(v)) for v in (-np.inf, np.inf)])
    for x in (bf16_bits_to_f32(ALL_16), mn.f16_bits_to_f32(ALL_16), grid, boundaries.astype(np.float32), near):
        want = np.array(mx.to_fp8(mx.array(x)))
        assert np.array_equal(mn.fp8_encode(x), want)
        assert np.array_equal(mn.fp8_encode_torch(torch.from_numpy(x)).numpy(), want)


def test_fp8_twins_agree_without_mlx() -> None:
    from moesim.kernels.jit import njit

    @njit
    def run(v):
        out = np.empty(v.size, np.uint8)
        for i in range(v.size):
            out[i] = mn.fp8_encode_nb(v[i])
        return out

    x = np.concatenate([bf16_bits_to_f32(ALL_16), np.float32([463.99, 464, 470, 479.9, 480, 1e30])])
    want = mn.fp8_encode(x)
    assert np.array_equal(run(x), want)
    assert np.array_equal(mn.fp8_encode_torch(torch.from_numpy(x)).numpy(), want)
    assert list(want[-6:]) == [0x7E] * 6  # saturated at 448 from 464 (the 448 | NaN midpoint) up


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(0, 2**32 - 1), min_size=1, max_size=400), st.sampled_from([mn.BF16, mn.F16, mn.F32]))
def test_fp4_code_closed_form_is_the_argmin_search(patterns: list[int], dt: int) -> None:
    # the numba codec searches MLX's table like its argmin; numpy and torch use the closed form
    from moesim.kernels.jit import njit

    @njit
    def search(v, dt, table):
        out = np.empty(v.size, np.uint8)
        for i in range(v.size):
            out[i] = mn.fp4_code_nb(v[i], dt, table)
        return out

    edges = [12.0, -12.0, 2.0**24 + 8, -(2.0**24) - 8, 2.0**25 + 16, 1e7, 6.0 * 2**24, np.inf, -np.inf, np.nan]
    v = mn.round_to(np.concatenate([np.array(patterns, np.uint32).view(np.float32), np.float32(edges)]), dt)
    want = search(v, dt, mn.FP4_VALUES)
    assert np.array_equal(mn.fp4_codes(v, dt), want)
    assert np.array_equal(mn.fp4_codes_torch(torch.from_numpy(v), dt).numpy(), want)


# ---- hand-derived: the affine edge rule -------------------------------------------------------------

def group_of(values: list[float], group: int = 32) -> np.ndarray:
    g = np.full(group, np.float32(values[-1]), np.float32)
    g[: len(values)] = values
    return g.reshape(1, group)


def unpacked(fmt, enc: dict) -> np.ndarray:
    return mn.unpack_bits(enc["wq"].reshape(1, -1), fmt.bits)[0]


def test_affine_edge_is_the_larger_magnitude_extreme_and_zero_lands_on_the_grid() -> None:
    fmt = get_format("mlx-affine-b4-g32-f32")
    x = group_of([-1.5, 1.0, 0.0, 0.5])  # |min| > |max|: the edge is the minimum
    enc = fmt.encode(x)
    # scale = 2.5 / 15; q0 = rint(-1.5 / scale) = -9; scale = -1.5 / -9; bias = -1.5
    assert enc["scales"][0, 0] == np.float32(-1.5) / np.float32(-9.0) and enc["biases"][0, 0] == np.float32(-1.5)
    codes = unpacked(fmt, enc)
    assert list(codes[:4]) == [0, 15, 9, 12]
    dec = fmt.decode(enc)[0]
    assert dec[0] == np.float32(-1.5) and dec[2] == np.float32(0.0)  # the edge and zero, exactly


def test_affine_scale_is_negative_when_the_edge_is_the_maximum() -> None:
    fmt = get_format("mlx-affine-b4-g32-f32")
    enc = fmt.encode(group_of([2.0, -1.0, 0.0]))
    # scale = -(3 / 15); q0 = rint(2 / -0.2) = -10; scale = 2 / -10; bias = 2: codes count down from 2
    assert enc["scales"][0, 0] == np.float32(2.0) / np.float32(-10.0) and enc["biases"][0, 0] == np.float32(2.0)
    assert list(unpacked(fmt, enc)[:3]) == [0, 15, 10]
    assert fmt.decode(enc)[0, 0] == np.float32(2.0)


@pytest.mark.parametrize("dtype", ["", "-f16", "-f32"])
@pytest.mark.parametrize("c", [0.3, -7.25, 0.0, -0.0, 6e-8, 4e-8, 1e-30])
def test_affine_constant_group_decodes_to_itself_unless_below_half_eps(dtype: str, c: float) -> None:
    fmt = get_format(f"mlx-affine-b4-g64{dtype}")
    x = np.full((1, 64), np.float32(c))
    enc = assert_backends_agree(fmt, x)
    xr = mn.round_to(x, fmt.dt)[0, 0]
    assert not unpacked(fmt, enc).any()
    scale = mn.from_storage(enc["scales"], fmt.dt, fmt.name, "scales")[0, 0]
    bias = mn.from_storage(enc["biases"], fmt.dt, fmt.name, "biases")[0, 0]
    # q0 = rint(c / -eps); the scale is c / q0 (about -eps) or, when q0 == 0, -eps itself, and a
    # constant at most eps / 2 in magnitude gets bias 0 and decodes to 0
    q0 = np.rint(xr / np.float32(-1e-7))
    assert scale == mn.round_to(np.float32([xr / q0 if q0 != 0 else -1e-7]), fmt.dt)[0]
    want = xr if q0 != 0 else np.float32(0.0)
    assert bias == want and bits_of(np.float32(bias)).tolist() == bits_of(want + np.float32(0)).tolist()
    assert (fmt.decode(enc) == want).all()


def test_affine_one_bit_has_no_edge_rule() -> None:
    fmt = get_format("mlx-affine-b1-g32-f32")
    x = group_of([-1.0, 3.0, 1.0, 0.9999, 1.0001])  # midpoint 1.0: a tie, rint goes to the even 0
    enc = fmt.encode(x)
    assert enc["scales"][0, 0] == np.float32(4.0) and enc["biases"][0, 0] == np.float32(-1.0)
    assert list(unpacked(fmt, enc)[:5]) == [0, 1, 0, 0, 1]


def test_affine_nan_weight_takes_code_zero_and_an_infinite_group_decodes_to_nan() -> None:
    fmt = get_format("mlx-affine-b4-g32-f32")
    x = np.concatenate([group_of([np.nan, -1.0, 1.0]), group_of([np.inf, 1.0])], axis=1)
    enc = assert_backends_agree(fmt, x)
    codes = unpacked(fmt, enc)
    dec = fmt.decode(enc)[0]
    assert codes[0] == 0 and dec[0] == enc["biases"][0, 0]  # the NaN is dropped by min / max
    assert np.isnan(enc["scales"][0, 1]) and enc["biases"][0, 1] == np.inf and not codes[32:].any()
    assert np.isnan(dec[32:]).all()


@pytest.mark.parametrize("bits", [3, 5, 6])
def test_packing_is_one_lsb_first_bit_stream_in_little_endian_words(bits: int) -> None:
    codes = (np.arange(64) * 7 % (1 << bits)).astype(np.uint8).reshape(1, 64)
    stream = sum(int(c) << (bits * i) for i, c in enumerate(codes[0]))  # the stream as one integer
    want = np.frombuffer(stream.to_bytes(64 * bits // 8, "little"), dtype="<u4")
    assert np.array_equal(mn.pack_bits(codes, bits)[0], want)
    assert np.array_equal(mn.pack_bits_torch(torch.from_numpy(codes), bits).numpy().view(np.uint32)[0], want)
    assert np.array_equal(mn.unpack_bits(want.reshape(1, -1), bits), codes)


# ---- hand-derived: MX and NV modes, and how they differ from OCP / NVIDIA ---------------------------

def fp4_codes_of(enc: dict) -> np.ndarray:
    return mn.unpack_bits(enc["wq"].reshape(1, -1), 4)[0]


def test_fp4_ties_go_toward_zero_and_zero_loses_its_sign() -> None:
    fmt = get_format("mlx-mxfp4-f32")
    vals = [6.0, 0.75, 1.75, 2.5, 3.5, 5.0, 0.25, -0.25, -0.75, -0.0, -1e-30, 1.25, -5.0]
    x = group_of([*vals, 0.0])
    enc = assert_backends_agree(fmt, x)
    assert enc["scales"][0, 0] == 127  # amax 6 -> s = 1 -> exponent 0
    # MLX: first table entry at equal distance, i.e. the smaller magnitude; +0 for whatever rounds to zero
    assert list(fp4_codes_of(enc)[:13]) == [7, 1, 3, 4, 5, 6, 0, 0, 9, 0, 0, 2, 14]
    ocp = get_format("mxfp4-rceil").encode(x)  # same scale (2^0 for amax 6), OCP's element rounding
    ocp_codes = ocp["blocks"].reshape(-1)
    ocp_codes = np.stack([ocp_codes & 15, ocp_codes >> 4], axis=1).reshape(-1)
    assert ocp["scales"][0, 0] == 127
    assert list(ocp_codes[:13]) == [7, 2, 4, 4, 6, 6, 0, 8, 10, 8, 8, 2, 14]  # ties to even, -0 kept


@pytest.mark.parametrize(("name", "byte"), [("mlx-mxfp4-f32", 0x80), ("mlx-mxfp4", 0x00), ("mlx-mxfp8-f16", 0x00),
                                           ("mlx-mxfp8-f32", 0x80)])
def test_nonfinite_block_scale_byte_is_the_int32_min_cast(name: str, byte: int) -> None:
    fmt = get_format(name)
    x = np.concatenate([group_of([np.nan, 1.0, -2.0]), group_of([np.inf, 3.0])], axis=1)
    enc = assert_backends_agree(fmt, x)
    assert list(enc["scales"][0]) == [byte, byte]
    # the power of two is 2^INT32_MIN = 0: every element is +-Inf or NaN -> FP4 code 0, FP8 +-448
    data = enc["wq"].reshape(-1).view(np.uint8)
    if fmt.bits == 4:
        assert not data.any()
    else:
        assert set(data.tolist()) <= {0x7E, 0xFE}
    assert np.isfinite(fmt.decode(enc)).all()  # where OCP's block decodes to NaN
    assert get_format("mxfp4").encode(x)["scales"][0, 0] == 0xFF  # OCP: the NaN scale


def test_nvfp4_nonfinite_block_gets_scale_448_and_zero_codes() -> None:
    fmt = get_format("mlx-nvfp4-f32")
    x = np.concatenate([group_of([np.nan, 1.0], 16), group_of([1.0, 2.0], 16)], axis=1)
    enc = assert_backends_agree(fmt, x)
    assert list(enc["scales"][0]) == [0x7E, 0x2B]  # NaN / 6 -> to_fp8 -> 448; 2 / 6 -> 0x2B (1.375 * 2^-2)
    assert not fp4_codes_of(enc)[:16].any()  # w / 448 < 0.25: every element, the NaN too, is code 0


@pytest.mark.parametrize("name", ["mlx-mxfp4", "mlx-mxfp8-f32"])
def test_all_zero_block_gets_scale_byte_127(name: str) -> None:
    enc = get_format(name).encode(np.zeros((1, 32), np.float32))
    assert enc["scales"][0, 0] == 127 and not enc["wq"].any()
    assert get_format("mxfp4").encode(np.zeros((1, 32), np.float32))["scales"][0, 0] == 0  # OCP


def test_tiny_float32_block_wraps_the_scale_byte() -> None:
    fmt = get_format("mlx-mxfp4-f32")
    x = np.full((1, 32), np.float32(1e-41))
    s = np.float32(1e-41) / np.float32(6.0)
    e = math.ceil(math.log2(float(s)))  # -138
    enc = fmt.encode(x)
    assert enc["scales"][0, 0] == (e + 127) % 256 == 245
    assert get_format("mxfp4").encode(x)["scales"][0, 0] == 0  # OCP clamps the exponent at -127
    dec = fmt.decode(enc)
    assert dec[0, 0] == np.float32(3.0 * 2.0**118)  # 1e-41 / 2^-138 ~ 3.5 -> 3, times 2^(245 - 127)


@settings(max_examples=80, deadline=None)
@given(st.integers(0, 2**32 - 1), st.integers(-100, 100))
def test_scale_exponent_is_rceils_and_ocps_or_one_more(seed: int, k: int) -> None:
    # magnitudes whose exponents stay inside E8M0's range (below it MLX wraps and OCP clamps: see
    # test_tiny_float32_block_wraps_the_scale_byte)
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal((4, 32)) * np.float32(2.0**k)).astype(np.float32)
    for mlx_name, ocp_name, ratio in (("mlx-mxfp4-f32", "mxfp4", 1.5), ("mlx-mxfp8-f32", "mxfp8_e4m3", 1.75),
                                      ("mlx-mxfp4", "mxfp4", 1.5)):
        fmt = get_format(mlx_name)
        xr = mn.round_to(x, fmt.dt)
        ours = fmt.encode(xr)["scales"][:, 0].astype(int)
        ocp = get_format(ocp_name).encode(xr)["scales"][:, 0].astype(int)
        rceil = get_format(f"{ocp_name}-rceil").encode(xr)["scales"][:, 0].astype(int)
        amax = np.abs(xr).max(-1).astype(np.float64)
        m = amax / 2.0 ** np.floor(np.log2(amax))
        assert np.array_equal(ours, rceil)
        assert np.array_equal(ours, ocp + (m > ratio))


def test_float16_subnormal_scale_can_round_down_and_saturate() -> None:
    # amax = 448 * 2^-17 + 2^-19 (a float16): amax / 448 is a float16 subnormal that rounds down to
    # 2^-17, so the exponent stays -17 and the block maximum saturates at 448; rceil takes -16.
    amax = np.float32(448 * 2.0**-17 + 2.0**-19)
    x = group_of([amax, 0.001])
    fmt = get_format("mlx-mxfp8-f16")
    enc = assert_backends_agree(fmt, x)
    assert enc["scales"][0, 0] == 127 - 17
    assert fmt.decode(enc)[0, 0] == np.float32(448 * 2.0**-17) < amax
    assert get_format("mxfp8_e4m3-rceil").encode(x)["scales"][0, 0] == 127 - 16


def test_nvfp4_has_no_tensor_scale_so_small_blocks_vanish() -> None:
    x = np.ones((1, 32), np.float32)
    x[0, 16:] *= np.float32(5e-4)  # amax / 6 < 2^-10: the E4M3 scale rounds to 0
    fmt = get_format("mlx-nvfp4-f32")
    enc = assert_backends_agree(fmt, x)
    assert list(enc["scales"][0]) == [0x23, 0x00]  # 1/6 -> E4M3 0x23 (1.375 * 2^-3); the small block -> 0
    dec = fmt.decode(enc)[0]
    assert not dec[16:].any()
    nv = get_format("nvfp4")  # NVIDIA's per-tensor scale keeps the small block
    assert nv.decode(nv.encode(x))[0, 16:].all()
    assert fmt.bits_per_weight((4, 32)) == 4.5 < nv.bits_per_weight((4, 32))


def test_nvfp4_rows_of_odd_blocks_are_taken_where_mlx_refuses_them() -> None:
    fmt = get_format("mlx-nvfp4")
    x = np.random.default_rng(4).standard_normal((1, 48)).astype(np.float32)
    enc = assert_backends_agree(fmt, x)
    assert enc["wq"].shape == (1, 6) and enc["scales"].shape == (1, 3)
    if HAS_MLX:  # MLX packs FP4 by reshaping the whole tensor into words of 8 and groups of 32
        with pytest.raises(FormatError, match="MLX refused an array of shape"):
            mlx_native.encode(fmt, x)
        # a tensor of whole 32s is the same rows as MLX's
        assert_matches_mlx(fmt, np.concatenate([x, x]))


def test_nvfp4_scale_saturates_from_464() -> None:
    fmt = get_format("mlx-nvfp4-f32")
    x = np.zeros((1, 32), np.float32)
    x[0, 0], x[0, 16] = np.float32(6 * 463.0), np.float32(6 * 470.0)
    enc = fmt.encode(x)
    assert list(enc["scales"][0]) == [0x7E, 0x7E]  # 463 rounds to 448; 470 saturates to 448, never 0x7F


def test_affine_keeps_the_edge_and_zero_exact_where_the_generic_int4_rounds_outward() -> None:
    rng = np.random.default_rng(5)
    x = rng.standard_normal((8, 64)).astype(np.float32)
    x[:, 5] = 0.0
    mlx4, int4 = get_format("mlx-affine-b4-g64-f32"), get_format("int4-g64")
    dm, di = mlx4.decode(mlx4.encode(x)), int4.decode(int4.encode(x))
    edge = np.where(np.abs(x.min(-1)) > np.abs(x.max(-1)), x.min(-1), x.max(-1))
    idx = np.argmax(x == edge[:, None], axis=1)
    assert np.array_equal(dm[np.arange(8), idx], edge) and not dm[:, 5].any()
    assert not np.array_equal(di[np.arange(8), idx], edge) or di[:, 5].any()


# ---- sizes, errors, registry ------------------------------------------------------------------------

MIXTRAL = gated_expert_shapes(4096, 14336)
N_MIXTRAL = 3 * 4096 * 14336


@pytest.mark.parametrize(("name", "bits"), [
    ("mlx-affine-b4-g64", 4 + 32 / 64), ("mlx-affine-b4-g64-f32", 4 + 64 / 64), ("mlx-affine-b3-g32", 3 + 1),
    ("mlx-affine-b2-g128-f16", 2 + 32 / 128), ("mlx-affine-b8-g32", 9), ("mlx-mxfp4", 4.25), ("mlx-mxfp8-f32", 8.25),
    ("mlx-nvfp4", 4.5),
])
def test_exact_bits_per_weight_and_expert_bytes(name: str, bits: float) -> None:
    fmt = get_format(name)
    assert fmt.bits_per_weight((256, 128)) == bits
    assert expert_bytes(name, MIXTRAL) == N_MIXTRAL * bits / 8
    enc = fmt.encode(np.ones((256, 128), np.float32))
    stored = sum(np.asarray(enc[k]).nbytes for k in ("wq", "scales", "biases") if k in enc)
    assert stored == 256 * 128 * bits / 8  # what the size model counts is what the encoding holds


def test_registry_names_and_sweep_choices() -> None:
    assert len(AFFINE) == 7 * 3 * 3 and len(FP) == 3 * 3
    assert "mlx-affine-b4-g64" in AFFINE and {"mlx-mxfp4", "mlx-nvfp4-f16", "mlx-mxfp8-f32"} <= set(FP)
    conf = {p.stem for p in CONF_QUANT.glob("mlx-*.yaml")}
    assert conf == {n for n in ALL if not n.endswith(("-f16", "-f32"))}  # the bfloat16 formats, one file each
    for stem in conf:
        assert (CONF_QUANT / f"{stem}.yaml").read_text().splitlines()[-1] == f"format: {stem}"


def test_bad_input_and_bad_encodings_say_which_field() -> None:
    fmt = get_format("mlx-affine-b4-g64")
    with pytest.raises(FormatError, match="not a multiple of the block size 64"):
        fmt.encode(np.zeros((2, 96), np.float32))
    with pytest.raises(FormatError, match="floating-point"):
        fmt.encode(np.zeros((2, 64), np.int32))
    enc = fmt.encode(np.ones((2, 128), np.float32))
    with pytest.raises(FormatError, match="field 'scales' has dtype float32, expected uint16"):
        fmt.decode({**enc, "scales": enc["scales"].view(np.float16).astype(np.float32)})
    with pytest.raises(FormatError, match="field 'biases' has shape"):
        fmt.decode({**enc, "biases": enc["biases"][:, :1]})
    with pytest.raises(FormatError, match="lacks field"):
        fmt.decode({"wq": enc["wq"]})
    fp = get_format("mlx-mxfp4")
    with pytest.raises(FormatError, match="field 'scales' has dtype int32, expected uint8"):
        fp.decode({"wq": np.zeros((1, 4), np.uint32), "scales": np.zeros((1, 1), np.int32)})
    with pytest.raises(FormatError, match="unknown MLX weight dtype"):
        type(fp)("mxfp4", "float64")


def test_backend_mlx_without_mlx_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    import builtins

    real_import = builtins.__import__

    def no_mlx(name, *args, **kwargs):
        if name == "mlx" or name.startswith("mlx."):
            raise ImportError("No module named 'mlx'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_mlx)
    with pytest.raises(FormatError, match=r"mlx-mxfp4: backend 'mlx' needs MLX.*moesim\[mlx\]"):
        get_format("mlx-mxfp4").encode(np.ones((1, 32), np.float32), backend="mlx")


# ---- the weight analysis with backend="mlx" ------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from safetensors.torch import save_file

    d = tmp_path_factory.mktemp("mlx_ckpt")
    g = torch.Generator().manual_seed(0)
    tensors = {f"model.layers.{layer}.block_sparse_moe.experts.{e}.{p}.weight":
               (torch.randn(64, 128, generator=g) * 0.02).to(torch.bfloat16)
               for layer in range(2) for e in range(2) for p in ("w1", "w2", "w3")}
    save_file(tensors, str(d / "model.safetensors"))
    return d / "model.safetensors"


FORMATS_MIX = "int4-g64,mlx-affine-b4-g64,mlx-mxfp4,mlx-nvfp4"


def test_analysis_tables_gain_the_mlx_formats_and_run_without_mlx(tiny_checkpoint: Path, tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(mlx_native, "available", lambda: False)
    tables = analyze_checkpoint(tiny_checkpoint, rules="mixtral", formats=FORMATS_MIX, out_dir=tmp_path, quiet=True,
                                backend="mlx")
    names = FORMATS_MIX.split(",")
    assert [r["format"] for r in tables["quant_error"]] == [n for n in names for _ in range(12)]
    bits = {r["format"]: r["bits_per_weight"] for r in tables["quant_error"]}
    assert bits == {"int4-g64": 4.5, "mlx-affine-b4-g64": 4.5, "mlx-mxfp4": 4.25, "mlx-nvfp4": 4.5}
    summary = {r["format"] for r in tables["summary"] if r["layer"] == -1 and r["proj"] == "all"}
    assert summary == set(names)
    assert {r["format"] for r in tables["format_deltas"]} == set(names[1:])
    missing = [r["format"] for r in tables["warnings"] if r["code"] == "mlx_unavailable"]
    assert missing == names[1:]
    meta = json.loads((tmp_path / "run_meta.json").read_text())
    assert meta["settings"]["backend"] == "mlx" and set(meta["settings"]["backends"].values()) == {"numba"}
    # without MLX the numbers are the numba codec's, which are MLX's bit for bit
    w = np.random.default_rng(0).standard_normal((16, 128)).astype(np.float32)
    assert quant_error(w, "mlx-mxfp4") == quant_error(w, "mlx-mxfp4", backend="reference")


@needs_mlx
def test_analysis_backend_mlx_runs_mlx_and_gives_the_same_numbers(tiny_checkpoint: Path, tmp_path: Path) -> None:
    assert format_backend("mlx-affine-b4-g64", "mlx") == "mlx" and format_backend("int4-g64", "mlx") == "numba"
    via_mlx = analyze_checkpoint(tiny_checkpoint, rules="mixtral", formats=FORMATS_MIX, out_dir=tmp_path, quiet=True,
                                 backend="mlx")
    via_numba = analyze_checkpoint(tiny_checkpoint, rules="mixtral", formats=FORMATS_MIX, out_dir=None, quiet=True)
    assert via_mlx["quant_error"] == via_numba["quant_error"]
    assert not [r for r in via_mlx["warnings"] if r["code"] == "mlx_unavailable"]
    meta = json.loads((tmp_path / "run_meta.json").read_text())
    assert meta["settings"]["backends"]["mlx-mxfp4"] == "mlx" and meta["versions"]["mlx"].startswith("0.32.")


def test_analysis_app_takes_quant_backend(tiny_checkpoint: Path, tmp_path: Path) -> None:
    from hydra import compose, initialize_config_dir
    from moesim.kernels.analysis_app import CONF_DIR, run_analysis

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="analysis", overrides=[f"checkpoint={tiny_checkpoint}", "rules=mixtral",
                                                         "formats=[mlx-affine-b3-g32]", "quant.backend=mlx",
                                                         "plots=false", "quiet=true"])
    status = run_analysis(cfg, tmp_path)
    assert status["status"] == "ok" and status["matrices"] == 12
    meta = json.loads((tmp_path / "run_meta.json").read_text())
    assert meta["settings"]["backends"] == {"mlx-affine-b3-g32": "mlx" if HAS_MLX else "numba"}
    with pytest.raises(ValueError, match="unknown backend 'gpu'"):
        format_backend("mlx-mxfp4", "gpu")


def test_experiment_sweep_picks_an_mlx_format_and_sizes_experts_by_it(tmp_path: Path) -> None:
    from hydra import compose, initialize_config_dir
    from moesim.sim.app import CONF_DIR  # registers the schema the config composes onto
    from moesim.sim.experiment import run_experiment

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="config", overrides=["trace.requests=2", "quant.error_rows=8", "quant=mlx-affine-b4-g64",
                                                       "cache.l1_gib=2.5", f"trace.cache_dir={tmp_path}"])
    m = run_experiment(cfg)
    # gpt-oss-20b: three 2880 x 2880 matrices per expert, 4 bits + a bfloat16 scale and bias per 64
    assert m["capacity"]["expert_bytes"] == 3 * 2880 * 2880 * (4 + 32 / 64) / 8 == 13_996_800
    assert m["capacity"]["l1_experts"] == int(2.5 * 2**30 // 13_996_800)
    assert m["quant"]["format"] == "mlx-affine-b4-g64" and m["quant"]["bits_per_weight"] == 4.5
    assert 0 < m["quant"]["rel_frobenius"] < 0.2


# ---- torch: one graph, and the same bits on CUDA --------------------------------------------------------

TORCH_CASES = ["mlx-affine-b4-g64", "mlx-affine-b3-g32-f16", "mlx-affine-b6-g128-f32", "mlx-mxfp4", "mlx-nvfp4-f32",
               "mlx-mxfp8-f16"]


def test_torch_codecs_trace_as_one_graph() -> None:
    # fullgraph=True fails on any graph break; aot_eager traces as inductor would, without a compiler
    torch._dynamo.reset()
    x = torch.from_numpy(edge_case_weights(128, seed=8, specials=False))
    for name in TORCH_CASES:
        fmt = get_format(name)
        compiled = torch.compile(lambda t, f=fmt: f.decode_torch(f.encode_torch(t)), fullgraph=True,
                                 backend="aot_eager")
        assert torch.equal(compiled(x).view(torch.int32), fmt.decode_torch(fmt.encode_torch(x)).view(torch.int32))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("name", TORCH_CASES)
def test_cuda_matches_cpu_bit_for_bit(name: str) -> None:
    fmt = get_format(name)
    x = edge_case_weights(256, seed=9, specials=True)
    cpu = fmt.encode_torch(torch.from_numpy(x))
    gpu = fmt.encode_torch(torch.from_numpy(x).cuda())
    for k in cpu:
        assert cpu[k].dtype == gpu[k].dtype and torch.equal(cpu[k].view(torch.uint8), gpu[k].cpu().view(torch.uint8)), k
    for dtype in (torch.float32, torch.bfloat16):
        a = fmt.decode_torch(cpu, dtype=dtype)
        b = fmt.decode_torch(gpu, dtype=dtype).cpu()
        assert torch.equal(a.view(torch.int16 if dtype == torch.bfloat16 else torch.int32),
                           b.view(torch.int16 if dtype == torch.bfloat16 else torch.int32))
