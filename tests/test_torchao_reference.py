"""The MX and NVFP4 codecs against torchao itself (its CPU code, the pinned version of the dev extra).

MX, FLOOR rule: scale bytes and element codes bit for bit for FP4, both FP6 and both FP8 elements;
every difference is one torchao documents in code and is pinned here exactly:

* scale byte 0 (a block maximum below ``2^(emax_elem - 126)``): torchao divides by the smallest
  normal float32, 2^-126, instead of the stored 2^-127, so its codes are the elements of
  ``x * 2^126`` (and decode to half the value); ours are those of ``x * 2^127``.
* Inf (and no NaN) in a block: torchao stores ``255 - emax_elem`` and saturated elements; here the
  block is NaN (0xFF), as OCP says for a NaN or Inf in a block.

MX, RCEIL rule: torchao on CPU takes ``ceil(log2(float32(amax / max_elem)))`` in float32, and a
float32 log2 of a quotient just above a power of two ``2^k`` rounds to ``k`` exactly, so its scale
is one lower than the exact round-up rule's (and the largest element saturates) for a quotient
within ``n`` ulps above ``2^k``, where n is 22 when ``|log2 q|`` lies in [64, 128), 11 in [32, 64),
5 in [16, 32), 2 in [8, 16), 1 in [4, 8) and 0 below (measured on torch 2.13's CPU log2, which
rounds correctly; a subnormal quotient has coarser ulps and fewer). Its scale byte 0 multiplies the
elements by 1.0 instead of 2^127 (so they round to zero), and an Inf block gets byte 254. Each is
modelled and pinned below.

Decoding: every scale byte x every element code, float32 and bfloat16, bit for bit (NaN where
NaN). NVFP4: encode (tensor scale, E4M3 block scales, packed codes) and ``dequantize`` bit for bit
with ``NVFP4Tensor`` on ties, saturation, tiny blocks, signed zeros, subnormal and huge tensors;
decode over every E4M3 scale byte x every E2M1 code; the two documented differences (an all-zero
tensor, a tensor scale whose reciprocal overflows) pinned exactly.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from moesim.kernels import minifloat as mf
from moesim.kernels.formats import get_format
from moesim.kernels.formats._mx_common import ELEMENTS
from moesim.kernels.formats.mx import decode_mx, encode_mx
from torchao.prototype.mx_formats.config import ScaleCalculationMode
from torchao.prototype.mx_formats.constants import DTYPE_FP6_E2M3, DTYPE_FP6_E3M2
from torchao.prototype.mx_formats.mx_tensor import MXTensor, to_mx
from torchao.prototype.mx_formats.nvfp4_tensor import NVFP4Tensor, per_tensor_amax_to_scale
from torchao.quantization.quantize_.common.kernel_preference import KernelPreference

# our element name -> torchao's element dtype (MXINT8 has no torchao counterpart)
TORCHAO_ELEMENTS = {
    "fp4_e2m1": torch.float4_e2m1fn_x2,
    "fp6_e2m3": DTYPE_FP6_E2M3,
    "fp6_e3m2": DTYPE_FP6_E3M2,
    "fp8_e4m3": torch.float8_e4m3fn,
    "fp8_e5m2": torch.float8_e5m2,
}
RULES = {"floor": ScaleCalculationMode.FLOOR, "rceil": ScaleCalculationMode.RCEIL}
F32_MAX = float(np.finfo(np.float32).max)


def _same(a: np.ndarray, b: np.ndarray) -> bool:
    """float32 arrays: NaN exactly where NaN, identical bits everywhere else."""
    a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
    nan = np.isnan(a)
    return bool(a.shape == b.shape and np.array_equal(nan, np.isnan(b))
                and np.array_equal(a.view(np.uint32)[~nan], b.view(np.uint32)[~nan]))


def _same_bf16(a: np.ndarray, b: np.ndarray) -> bool:
    """bfloat16 bit patterns: NaN exactly where NaN, identical bits everywhere else."""
    a, b = np.asarray(a, np.uint16), np.asarray(b, np.uint16)
    nan = (a & 0x7FFF) > 0x7F80
    return bool(a.shape == b.shape and np.array_equal(nan, (b & 0x7FFF) > 0x7F80)
                and np.array_equal(a[~nan], b[~nan]))


def _bf16_bits(t: torch.Tensor) -> np.ndarray:
    return t.contiguous().view(torch.uint16).numpy()


# ---- MX: torchao's encoder and decoder -------------------------------------------------------------

def torchao_encode(x: np.ndarray, element: str, rule: str) -> tuple[np.ndarray, np.ndarray]:
    """torchao's ``to_mx`` of ``x [nblocks, 32]``: (scale bytes [nblocks], unpacked codes [nblocks, 32])."""
    scale, data = to_mx(torch.from_numpy(np.ascontiguousarray(x, np.float32)), TORCHAO_ELEMENTS[element],
                        32, RULES[rule])
    data = data.view(torch.uint8).numpy()
    if element == "fp4_e2m1":
        data = _unpack_fp4(data)
    return scale.view(torch.uint8).numpy().reshape(-1), data.reshape(-1, 32)


def torchao_decode(data: np.ndarray, scales: np.ndarray, element: str, dtype: torch.dtype) -> np.ndarray:
    """torchao's ``MXTensor.dequantize`` of our layout (codes packed as ours for FP4, one per byte else)."""
    elem = TORCHAO_ELEMENTS[element]
    qdata = torch.from_numpy(np.ascontiguousarray(data))
    if elem in (torch.float8_e4m3fn, torch.float8_e5m2):
        qdata = qdata.view(elem)
    scale = torch.from_numpy(np.ascontiguousarray(scales)).view(torch.float8_e8m0fnu)
    t = MXTensor(qdata, scale, elem, 32, torch.float32, KernelPreference.EMULATED, None, False)
    out = t.dequantize(dtype)
    return _bf16_bits(out) if dtype == torch.bfloat16 else out.numpy()


def _unpack_fp4(blocks: np.ndarray) -> np.ndarray:
    out = np.empty((*blocks.shape[:-1], blocks.shape[-1] * 2), np.uint8)
    out[..., 0::2], out[..., 1::2] = blocks & 0xF, blocks >> 4
    return out


def ours_encode(x: np.ndarray, element: str, rule: str) -> tuple[np.ndarray, np.ndarray]:
    data, scales = encode_mx(x, element, rule)
    data = _unpack_fp4(data) if ELEMENTS[element].packed else data
    return scales.reshape(-1), data.reshape(-1, 32)


def _element_codes(x64: np.ndarray, element: str) -> np.ndarray:
    """Element codes of float64 values already divided by the scale (RNE, saturating)."""
    return mf.round_ref(x64, ELEMENTS[element].spec, saturate=True)


def mx_edge_blocks(element: str, seed: int = 0) -> np.ndarray:
    """``[nblocks, 32]`` float32: every edge case the MX module documents, for one element type.

    Random blocks at every shared exponent (float32 subnormal inputs included), every grid midpoint
    and its float32 neighbours (ties) at scales 2^-127 .. 2^(127 - emax_elem), saturation just below the next power
    of two, blocks near float32's largest value, signed zeros, subnormal elements under a larger
    maximum, and NaN / +-Inf blocks.
    """
    el = ELEMENTS[element]
    rng = np.random.default_rng(seed)
    parts = []
    with np.errstate(over="ignore"):
        g = rng.standard_normal((3000, 32)) * np.exp2(rng.integers(-150, 127, (3000, 1)))
        parts.append(np.clip(g, -F32_MAX, F32_MAX).astype(np.float32))
    grid = mf.positive_values(el.spec)
    mids = (grid[:-1] + grid[1:]) / 2
    for shift in (-127, -126, -90, 0, 60, 127 - el.emax):  # the last: the largest scale a float32 gets
        xs = np.concatenate([mids, -mids]) * 2.0**shift
        xs = np.concatenate([xs.astype(np.float32), np.nextafter(xs.astype(np.float32), np.float32(np.inf)),
                             np.nextafter(xs.astype(np.float32), np.float32(-np.inf))])
        n = -(-xs.size // 31)
        body = np.zeros(n * 31, np.float32)
        body[: xs.size] = xs
        blocks = np.empty((n, 32), np.float32)
        blocks[:, 0] = el.max_value * 2.0**shift  # the block's maximum: shared exponent ``shift``
        blocks[:, 1:] = body.reshape(n, 31)
        parts.append(blocks)
    top = np.nextafter(np.float32(2.0 ** (el.emax + 1)), np.float32(0))
    for shift in (-126, 0, 100):
        parts.append(np.tile(np.float32([top, -top, el.max_value, 1.0] + [0.0] * 28) * np.float32(2.0**shift),
                             (1, 1)))
    parts.append(np.float32([F32_MAX, -F32_MAX / 3, 1e38] + [1.0] * 29)[None])
    zeros = np.zeros((3, 32), np.float32)
    zeros[1] = -0.0
    zeros[2, ::3] = -0.0
    parts.append(zeros)
    sub = (rng.standard_normal((4, 32)) * 1e-40).astype(np.float32)
    sub[:, 0] = [1.0, 2.0**-100, 2.0**-120, 2.0**-126]
    parts.append(sub)
    bad = rng.standard_normal((4, 32)).astype(np.float32)
    bad[0, 3], bad[1, 7], bad[2, 0], bad[3, [1, 2]] = np.nan, np.inf, -np.inf, [np.inf, np.nan]
    parts.append(bad)
    return np.concatenate(parts)


def _bad_blocks(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(blocks holding a NaN, blocks holding an Inf and no NaN)."""
    nan = np.isnan(x).any(1)
    return nan, np.isinf(x).any(1) & ~nan


@pytest.mark.parametrize("element", sorted(TORCHAO_ELEMENTS))
def test_mx_floor_encode_equals_torchao(element: str) -> None:
    x = mx_edge_blocks(element)
    assert_floor_matches_torchao(x, element)


def assert_floor_matches_torchao(x: np.ndarray, element: str) -> None:
    el = ELEMENTS[element]
    s_ao, c_ao = torchao_encode(x, element, "floor")
    s_us, c_us = ours_encode(x, element, "floor")
    nan, inf = _bad_blocks(x)
    finite = ~(nan | inf)
    assert np.array_equal(s_ao[finite], s_us[finite])
    # NaN blocks: 0xFF for both (torchao's codes there are whatever its cast makes of NaN)
    assert (s_ao[nan] == 0xFF).all() and (s_us[nan] == 0xFF).all()
    # Inf blocks: OCP NaN here; torchao takes Inf's exponent field (128) minus emax_elem
    assert (s_us[inf] == 0xFF).all() and (s_ao[inf] == 255 - el.emax).all()
    normal = finite & (s_us > 0)
    assert np.array_equal(c_ao[normal], c_us[normal])
    # scale byte 0: torchao divides by 2^-126, so its codes are those of x * 2^126
    low = finite & (s_us == 0)
    assert np.array_equal(c_ao[low], _element_codes(x[low].astype(np.float64) * 2.0**126, element))
    assert np.array_equal(c_us[low], _element_codes(x[low].astype(np.float64) * 2.0**127, element))


@pytest.mark.parametrize("element", sorted(TORCHAO_ELEMENTS))
def test_mx_edge_blocks_cover_every_documented_case(element: str) -> None:
    # the comparison above only means something if each case is in the data
    x = mx_edge_blocks(element)
    s_us, c_us = ours_encode(x, element, "floor")
    nan, inf = _bad_blocks(x)
    finite = ~(nan | inf)
    el = ELEMENTS[element]
    assert nan.sum() >= 2 and inf.sum() >= 2
    assert (finite & (s_us == 0) & (np.abs(x) > 0).any(1)).sum() >= 10  # tiny blocks, byte 0
    assert {1, 127, 254 - el.emax}.issubset(set(s_us[finite].tolist()))
    assert (c_us[finite] == (el.params[3] | (1 << (el.bits - 1)))).any()  # -max: saturation
    assert (c_us[finite] == (1 << (el.bits - 1))).any()  # -0
    assert ((np.abs(x) < np.finfo(np.float32).tiny) & (x != 0)).any()  # float32 subnormal inputs


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), element=st.sampled_from(sorted(TORCHAO_ELEMENTS)))
def test_mx_floor_equals_torchao_on_random_float32_bit_patterns(seed: int, element: str) -> None:
    bits = np.random.default_rng(seed).integers(0, 2**32, (64, 32), dtype=np.uint64).astype(np.uint32)
    x = bits.view(np.float32)  # every exponent, subnormals, NaN and Inf patterns included
    assert_floor_matches_torchao(x, element)


def torchao_rceil_bytes(x: np.ndarray, element: str) -> np.ndarray:
    """torchao's CPU RCEIL exponent, modelled independently: ceil of float32(log2(q)) for the float32
    quotient ``q = amax / max_elem``, clamped to [-127, 127]; NaN blocks 0xFF, Inf blocks 254."""
    el = ELEMENTS[element]
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        amax = np.abs(x).max(1)
        q = amax / np.float32(el.max_value)
        e = np.ceil(np.log2(q.astype(np.float64)).astype(np.float32))
        biased = np.clip(np.nan_to_num(e, nan=0.0, neginf=-127.0), -127, 127).astype(np.int64) + 127
    nan, inf = _bad_blocks(x)
    return np.where(nan, 255, np.where(inf, 254, biased)).astype(np.uint8)


def assert_rceil_matches_the_model(x: np.ndarray, element: str) -> int:
    """torchao RCEIL == the model above; where it differs from ours, it is one lower and its codes are
    the elements at its own scale. Returns how many finite blocks differ."""
    s_ao, c_ao = torchao_encode(x, element, "rceil")
    s_us, c_us = ours_encode(x, element, "rceil")
    assert np.array_equal(s_ao, torchao_rceil_bytes(x, element))
    nan, inf = _bad_blocks(x)
    finite = ~(nan | inf)
    differ = finite & (s_ao != s_us)
    assert (s_ao[differ].astype(int) == s_us[differ].astype(int) - 1).all()
    same = finite & ~differ & (s_us > 0)
    assert np.array_equal(c_ao[same], c_us[same])
    lower = differ & (s_ao > 0)
    scale = np.exp2(s_ao[lower].astype(np.float64) - 127)[:, None]
    assert np.array_equal(c_ao[lower], _element_codes(x[lower].astype(np.float64) / scale, element))
    # byte 0: torchao multiplies by 1.0, not 2^127
    low = finite & (s_ao == 0)
    assert np.array_equal(c_ao[low], _element_codes(x[low].astype(np.float64), element))
    return int(differ.sum())


@pytest.mark.parametrize("element", sorted(TORCHAO_ELEMENTS))
def test_mx_rceil_differs_from_torchao_only_where_its_float_log2_rounds(element: str) -> None:
    el = ELEMENTS[element]
    assert_rceil_matches_the_model(mx_edge_blocks(element, seed=1), element)
    # block maxima 1..40 float32 ulps above max_elem * 2^k, for k across the range
    ks = np.arange(-130, 126 - el.emax, 3)
    j = np.arange(0, 41)
    base = (np.float32(el.max_value) * np.exp2(ks.astype(np.float64))).astype(np.float32)
    amax = (base.view(np.uint32)[:, None] + j[None, :].astype(np.uint32)).view(np.float32).reshape(-1)
    x = np.zeros((amax.size, 32), np.float32)
    x[:, 0], x[:, 1], x[:, 2] = amax, -amax / 3, amax / 7
    differ = assert_rceil_matches_the_model(x, element)
    # the exact rule rounds up at every j >= 1; torchao's log2 misses it for |k| >= 4
    assert differ > 100


def test_mx_rceil_difference_by_hand() -> None:
    # amax = 6 * 2^100 plus one ulp: q = amax / 6 is 2^100 plus one ulp; log2(q) = 100 + 1.7e-7 rounds
    # to 100 in float32, so torchao takes 2^100 (byte 227) and saturates; the exact rule takes 2^101
    amax = np.nextafter(np.float32(6 * 2.0**100), np.float32(np.inf))
    x = np.zeros((1, 32), np.float32)
    x[0, 0] = amax
    s_ao, c_ao = torchao_encode(x, "fp4_e2m1", "rceil")
    s_us, c_us = ours_encode(x, "fp4_e2m1", "rceil")
    assert s_ao.tolist() == [227] and s_us.tolist() == [228]
    assert c_ao[0, 0] == 7 and c_us[0, 0] == 5  # 6 (saturated) at 2^100; 3 at 2^101
    assert s_ao.tolist() == torchao_encode(x, "fp4_e2m1", "floor")[0].tolist()


def _all_codes(element: str) -> np.ndarray:
    """Every valid element code, in blocks of 32 (FP4 twice over, FP6 in two blocks, FP8 in eight)."""
    el = ELEMENTS[element]
    codes = np.arange(1 << el.bits, dtype=np.uint8)
    return np.resize(codes, (max(1, codes.size // 32), 32))


@pytest.mark.parametrize("element", sorted(TORCHAO_ELEMENTS))
def test_mx_decode_equals_torchao_for_every_scale_byte_and_code(element: str) -> None:
    el = ELEMENTS[element]
    codes = _all_codes(element)
    per = codes.shape[0]
    scales = np.repeat(np.arange(256, dtype=np.uint8), per)
    codes = np.tile(codes, (256, 1))
    data = (codes[:, 0::2] | (codes[:, 1::2] << 4)).astype(np.uint8) if el.packed else codes
    want = torchao_decode(data, scales, element, torch.float32)
    want_bf = torchao_decode(data, scales, element, torch.bfloat16)
    assert np.isnan(want[scales == 255]).all()
    for backend in ("numba", "reference"):
        assert _same(decode_mx(data, scales, element, backend=backend).reshape(want.shape), want)
        got_bf = decode_mx(data, scales, element, dtype="bfloat16", backend=backend).reshape(want.shape)
        assert _same_bf16(got_bf, want_bf)
    fmt = get_format({"fp4_e2m1": "mxfp4", "fp6_e2m3": "mxfp6_e2m3", "fp6_e3m2": "mxfp6_e3m2",
                      "fp8_e4m3": "mxfp8_e4m3", "fp8_e5m2": "mxfp8_e5m2"}[element])
    enc = {fmt.data_key: torch.from_numpy(data), "scales": torch.from_numpy(scales)}
    assert _same(fmt.decode_torch(enc).numpy().reshape(want.shape), want)
    assert _same_bf16(_bf16_bits(fmt.decode_torch(enc, dtype=torch.bfloat16)).reshape(want.shape), want_bf)


# ---- NVFP4 -------------------------------------------------------------------------------------------

NVFP4 = get_format("nvfp4")
E2M1_VALUES = mf.positive_values(mf.E2M1)


def torchao_nvfp4(x: np.ndarray) -> tuple[NVFP4Tensor, torch.Tensor]:
    """torchao's two-level NVFP4 of ``x`` with the tensor scale from its own amax rule."""
    t = torch.from_numpy(np.ascontiguousarray(x, np.float32))
    ts = per_tensor_amax_to_scale(t.abs().amax())
    return NVFP4Tensor.to_nvfp4(t, per_tensor_scale=ts), ts


def assert_nvfp4_matches_torchao(x: np.ndarray) -> dict[str, np.ndarray]:
    nv, ts = torchao_nvfp4(x)
    enc = NVFP4.encode(x)
    assert enc["tensor_scale"].view(np.uint32) == np.float32(ts.item()).view(np.uint32)
    assert np.array_equal(enc["scale"], nv.scale.view(torch.uint8).numpy())
    assert np.array_equal(enc["codes"], nv.qdata.view(torch.uint8).numpy())
    want = nv.dequantize(torch.float32).numpy()
    want_bf = _bf16_bits(nv.dequantize(torch.bfloat16))
    for backend in ("numba", "reference"):
        assert _same(NVFP4.decode(enc, backend=backend), want)
        assert _same_bf16(NVFP4.decode(enc, dtype="bfloat16", backend=backend), want_bf)
    tenc = {k: torch.from_numpy(np.asarray(v)) for k, v in enc.items()}
    assert _same(NVFP4.decode_torch(tenc).numpy(), want)
    assert _same_bf16(_bf16_bits(NVFP4.decode_torch(tenc, dtype=torch.bfloat16)), want_bf)
    tt = NVFP4.encode_torch(torch.from_numpy(np.ascontiguousarray(x, np.float32)))
    assert np.array_equal(tt["codes"].numpy(), enc["codes"]) and np.array_equal(tt["scale"].numpy(), enc["scale"])
    return enc


def _unit_tensor_scale(*blocks: list[float]) -> np.ndarray:
    """Rows of one 16-wide block each, plus a last row whose amax 2688 makes the tensor scale 1."""
    rows = [np.pad(np.float32(b), (0, 16 - len(b))) for b in blocks]
    return np.stack([*rows, np.pad(np.float32([2688.0]), (0, 15))]).astype(np.float32)


def test_nvfp4_gaussian_and_wide_range_weights_equal_torchao() -> None:
    rng = np.random.default_rng(3)
    assert_nvfp4_matches_torchao(rng.standard_normal((64, 256)).astype(np.float32))
    x = rng.standard_normal((64, 256)).astype(np.float32)
    x *= np.repeat(np.float32(10.0) ** rng.integers(-9, 1, (64, 16)).astype(np.float32), 16, axis=1)
    enc = assert_nvfp4_matches_torchao(x)
    assert (enc["scale"] == 0x08).sum() > 50  # blocks raised to the 2^-6 floor are in the data


def test_nvfp4_ties_saturation_and_signed_zeros_equal_torchao() -> None:
    mids = (E2M1_VALUES[:-1] + E2M1_VALUES[1:]) / 2
    m32 = mids.astype(np.float32)
    blocks = [[6.0, *mids], [6.0, *-mids], [6.0, *np.nextafter(m32, np.float32(9))],
              [6.0, *np.nextafter(m32, np.float32(0))], [6.375, -6.375, 6.2], [6.75, 5.0, -0.0, 0.0],
              [0.0] * 16, [-0.0] * 16, [0.005, -0.004, 2.0**-8, 3 * 2.0**-8], [6 * 2.0**-6, 2.0**-7]]
    enc = assert_nvfp4_matches_torchao(_unit_tensor_scale(*blocks))
    assert float(enc["tensor_scale"]) == 1.0
    # the same blocks at other block scales, and under tensor scales that are not powers of two
    rng = np.random.default_rng(4)
    x = _unit_tensor_scale(*blocks)
    for factor in (3.0, 1e-3, 0.7, 1e30):
        scaled = x * np.float32(factor)
        scaled[:-1] *= rng.choice(np.float32([1.0, 0.1, 0.37, 1.5]), (x.shape[0] - 1, 1))
        assert_nvfp4_matches_torchao(scaled.astype(np.float32))


def test_nvfp4_subnormal_and_huge_tensors_equal_torchao() -> None:
    rng = np.random.default_rng(5)
    assert_nvfp4_matches_torchao((rng.standard_normal((8, 64)) * 1e-38).astype(np.float32))  # ts subnormal
    huge = np.clip(rng.standard_normal((8, 64)) * 1e38, -F32_MAX, F32_MAX).astype(np.float32)
    huge[0, 0] = F32_MAX
    assert_nvfp4_matches_torchao(huge)


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), exponent=st.integers(-25, 30), zeros=st.integers(0, 64))
def test_nvfp4_equals_torchao_on_random_weights(seed: int, exponent: int, zeros: int) -> None:
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal((4, 64)) * 10.0**exponent).astype(np.float32)
    x *= np.repeat(np.float32(10.0) ** rng.integers(-6, 1, (4, 4)).astype(np.float32), 16, axis=1)
    x.reshape(-1)[:zeros] = np.where(rng.random(zeros) < 0.5, 0.0, -0.0)
    if np.abs(x).max() > 0:
        assert_nvfp4_matches_torchao(x)


def test_nvfp4_decode_equals_torchao_for_every_scale_byte_and_code() -> None:
    codes = np.tile(np.arange(16, dtype=np.uint8), (256, 1))  # one block per E4M3 byte, every code
    packed = (codes[:, 0::2] | (codes[:, 1::2] << 4)).astype(np.uint8)
    scale = np.arange(256, dtype=np.uint8)[:, None]
    for ts in (1.0, 0.3, 3e-41, 1.7e36):
        ts32 = torch.tensor(ts, dtype=torch.float32)
        nv = NVFP4Tensor(torch.from_numpy(packed), torch.from_numpy(scale).view(torch.float8_e4m3fn), 16,
                         torch.float32, per_tensor_scale=ts32)
        enc = {"codes": packed, "scale": scale, "tensor_scale": np.float32(ts)}
        want = nv.dequantize(torch.float32).numpy()
        want_bf = _bf16_bits(nv.dequantize(torch.bfloat16))
        for backend in ("numba", "reference"):
            assert _same(NVFP4.decode(enc, backend=backend), want)
            assert _same_bf16(NVFP4.decode(enc, dtype="bfloat16", backend=backend), want_bf)
        tenc = {k: torch.from_numpy(np.asarray(v)) for k, v in enc.items()}
        assert _same(NVFP4.decode_torch(tenc).numpy(), want)
        assert _same_bf16(_bf16_bits(NVFP4.decode_torch(tenc, dtype=torch.bfloat16)), want_bf)


def test_nvfp4_documented_differences_from_torchao() -> None:
    # all-zero tensor: torchao's 0 / 0 gives NaN scales (0xFF) and NaN values; ours the 2^-6 floor and zeros
    z = np.zeros((2, 32), np.float32)
    nv, _ = torchao_nvfp4(z)
    assert (nv.scale.view(torch.uint8).numpy() == 0xFF).all() and nv.dequantize(torch.float32).isnan().all()
    enc = NVFP4.encode(z)
    assert (enc["scale"] == 0x08).all() and not enc["codes"].any() and not NVFP4.decode(enc).any()
    # amax below 2688 * 2^-128: 1 / ts overflows; zeros become 0 * inf = NaN, which torchao's FP4 cast
    # makes code 0xB (-1.5); every other element saturates in both
    x = np.zeros((1, 16), np.float32)
    x[0, :3] = [1e-37, -2e-38, 5e-38]
    nv, ts = torchao_nvfp4(x)
    with np.errstate(over="ignore"):
        assert np.isinf(np.float32(1.0) / np.float32(ts.item()))
    ao = _unpack_fp4(nv.qdata.view(torch.uint8).numpy())[0]
    us = _unpack_fp4(NVFP4.encode(x)["codes"])[0]
    assert ao.tolist() == [7, 15, 7] + [0xB] * 13
    assert us.tolist() == [7, 15, 7] + [0] * 13
    assert np.array_equal(NVFP4.encode(x)["scale"], nv.scale.view(torch.uint8).numpy())
