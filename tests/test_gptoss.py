"""gpt-oss MXFP4 checkpoint layout: decoding bit-exact against the reference reader's arithmetic
(written out again here, independently of kernels/, around torch's own ``ldexp``) for every scale
byte and element code, decoding into a caller's buffer, encode/decode round trips, the mlp1 row
interleave, numpy == torch, and the checkpoint tensor names."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from moesim.kernels.formats import FormatError, get_format
from moesim.kernels.formats.gptoss import (
    decode_gptoss,
    decode_gptoss_torch,
    deinterleave_rows,
    encode_gptoss,
    encode_gptoss_torch,
    interleave_rows,
    mlp_tensor_names,
)

# The reader's table: codes 0-7 positive, 8-15 the same magnitudes negative (8 is -0.0).
FP4_VALUES = [+0.0, +0.5, +1.0, +1.5, +2.0, +3.0, +4.0, +6.0,
              -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0]


def _pow2_ldexp(x: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
    """ldexp as ``x * 2.0 ** e`` with the power in float32 (2^128 overflows to +Inf)."""
    return (x.to(torch.float32) * torch.pow(2.0, e.to(torch.float32))).to(x.dtype)


def reader_decode(blocks: np.ndarray, scales: np.ndarray, dtype: torch.dtype = torch.float32,
                  ldexp=torch.ldexp) -> torch.Tensor:
    """The gpt-oss ``torch/weights.py`` MXFP4 reader: LUT, low nibble first, ldexp by scale - 127."""
    b = torch.from_numpy(np.ascontiguousarray(blocks))
    exp = torch.from_numpy(np.ascontiguousarray(scales)).to(torch.int32) - 127
    lut = torch.tensor(FP4_VALUES, dtype=dtype)
    *prefix, groups, width = b.shape
    rows = math.prod(prefix) * groups
    b = b.reshape(rows, width)
    exp = exp.reshape(rows, 1)
    out = torch.empty(rows, width * 2, dtype=dtype)
    out[:, 0::2] = lut[(b & 0x0F).to(torch.long)]
    out[:, 1::2] = lut[(b >> 4).to(torch.long)]
    out = ldexp(out, exp)
    return out.reshape(*prefix, groups * width * 2)


def _random_checkpoint(seed: int, shape: tuple[int, ...], with_ff: bool) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    blocks = rng.integers(0, 256, (*shape, 16), dtype=np.uint8)
    scales = rng.integers(0, 255 if not with_ff else 256, shape, dtype=np.uint8)
    # realistic checkpoint scales sit near 127; make sure both ends of the byte range appear too
    flat = scales.reshape(-1)
    flat[:4] = [0, 1, 254, 127]
    if with_ff:
        flat[4] = 0xFF
    return blocks, scales


def _same(a: np.ndarray, b: np.ndarray) -> bool:
    """Identical values, NaN where NaN (every NaN is one value here), bits elsewhere."""
    nan = np.isnan(a)
    return bool(np.array_equal(nan, np.isnan(b)) and np.array_equal(a.view(np.uint32)[~nan],
                                                                    b.view(np.uint32)[~nan]))


def _bf16_bits(t: torch.Tensor) -> np.ndarray:
    return t.contiguous().view(torch.uint16).numpy()


# ---- decoding == the reader's arithmetic ----------------------------------------------------------

@pytest.mark.parametrize("backend", ["numba", "reference"])
def test_decode_is_bit_exact_against_the_reader_float32(backend: str) -> None:
    blocks, scales = _random_checkpoint(0, (3, 8, 4), with_ff=False)
    want = reader_decode(blocks, scales).numpy()
    for mode in ("pow2", "exact"):  # away from 0xFF both conventions are the exact OCP values
        got = decode_gptoss(blocks, scales, ldexp=mode, backend=backend)
        assert got.shape == (3, 8, 128) and got.dtype == np.float32
        assert np.array_equal(got.view(np.uint32), want.view(np.uint32))
    # equal to OCP MXFP4 decoding too
    ocp = get_format("mxfp4").decode({"blocks": blocks, "scales": scales}, backend=backend)
    assert np.array_equal(ocp.view(np.uint32), want.view(np.uint32))


@pytest.mark.parametrize("backend", ["numba", "reference"])
def test_decode_is_bit_exact_against_the_reader_bfloat16(backend: str) -> None:
    blocks, scales = _random_checkpoint(1, (2, 6, 3), with_ff=False)
    want = _bf16_bits(reader_decode(blocks, scales, dtype=torch.bfloat16))
    got = decode_gptoss(blocks, scales, dtype="bfloat16", backend=backend)
    assert got.dtype == np.uint16
    assert np.array_equal(got, want)
    got_t = decode_gptoss_torch(torch.from_numpy(blocks), torch.from_numpy(scales))
    assert got_t.dtype == torch.bfloat16
    assert np.array_equal(_bf16_bits(got_t), want)


def _every_byte_and_code() -> tuple[np.ndarray, np.ndarray]:
    """256 groups, one per scale byte 0x00-0xFF, each holding every element code twice (4096 pairs x 2)."""
    codes = np.tile(np.arange(16, dtype=np.uint8), 2)
    blocks = np.tile((codes[0::2] | (codes[1::2] << 4)).astype(np.uint8), (256, 1))
    return blocks, np.arange(256, dtype=np.uint8)


@pytest.mark.parametrize("backend", ["numba", "reference"])
def test_decode_equals_torch_ldexp_for_every_scale_byte_and_code(backend: str) -> None:
    blocks, scales = _every_byte_and_code()
    want = reader_decode(blocks, scales).numpy()
    want_bf = _bf16_bits(reader_decode(blocks, scales, dtype=torch.bfloat16))
    assert not np.isnan(want).any()  # torch.ldexp never forms 2^128 on its own: no 0 * Inf
    assert _same(decode_gptoss(blocks, scales, backend=backend), want)
    assert np.array_equal(decode_gptoss(blocks, scales, dtype="bfloat16", backend=backend), want_bf)
    tb, ts = torch.from_numpy(blocks), torch.from_numpy(scales)
    assert _same(decode_gptoss_torch(tb, ts, dtype=torch.float32).numpy(), want)
    assert np.array_equal(_bf16_bits(decode_gptoss_torch(tb, ts)), want_bf)
    # byte 0xFF (codes 0-15, twice): +-0 stay +-0, +-0.5 is +-2^127, larger magnitudes overflow
    ff = want.reshape(256, 32)[255]
    assert ff.tolist() == 2 * ([0.0, 2.0**127] + [np.inf] * 6 + [-0.0, -(2.0**127)] + [-np.inf] * 6)
    assert np.signbit(ff[[8, 24]]).all() and not np.signbit(ff[[0, 16]]).any()


def test_pow2_mode_is_the_float32_power_arithmetic() -> None:
    blocks, scales = _every_byte_and_code()
    pow2 = reader_decode(blocks, scales, ldexp=_pow2_ldexp).numpy()
    assert _same(decode_gptoss(blocks, scales, ldexp="pow2"), pow2)
    assert _same(decode_gptoss(blocks, scales, ldexp="pow2", backend="reference"), pow2)
    tb, ts = torch.from_numpy(blocks), torch.from_numpy(scales)
    assert _same(decode_gptoss_torch(tb, ts, dtype=torch.float32, ldexp="pow2").numpy(), pow2)
    # the two agree on every byte but 0xFF
    exact = decode_gptoss(blocks, scales)
    assert _same(exact[:255], pow2[:255]) and not _same(exact[255:], pow2[255:])


def test_scale_ff_by_hand() -> None:
    # codes: 0 (+0), 8 (-0), 1 (+0.5), 9 (-0.5), 2 (+1.0), 15 (-6.0), then zeros
    codes = [0x0, 0x8, 0x1, 0x9, 0x2, 0xF] + [0] * 26
    blocks = np.array([[codes[2 * j] | (codes[2 * j + 1] << 4) for j in range(16)]], np.uint8)
    scales = np.array([0xFF], np.uint8)
    pow2 = decode_gptoss(blocks, scales, ldexp="pow2")[:6]
    assert np.isnan(pow2[:2]).all() and pow2[2:].tolist() == [np.inf, -np.inf, np.inf, -np.inf]
    exact = decode_gptoss(blocks, scales, ldexp="exact")[:6]
    assert exact.tolist() == [0.0, -0.0, 2.0**127, -(2.0**127), np.inf, -np.inf]
    assert _same(decode_gptoss(blocks, scales), decode_gptoss(blocks, scales, ldexp="exact"))  # the default
    assert not np.signbit(exact[0]) and np.signbit(exact[1])
    # OCP decoding of the same group: all NaN
    assert np.isnan(get_format("mxfp4").decode({"blocks": blocks, "scales": scales})).all()


def test_decode_by_hand_low_nibble_first() -> None:
    # byte 0 = 0xF2: element 0 is code 2 (+1.0), element 1 is code 15 (-6.0); scale 2^(130-127) = 8
    blocks = np.zeros((1, 16), np.uint8)
    blocks[0, 0], blocks[0, 15] = 0xF2, 0x1B
    out = decode_gptoss(blocks, np.array([130], np.uint8))
    assert out[:2].tolist() == [8.0, -48.0]
    assert out[30:].tolist() == [-12.0, 4.0]  # byte 15 = 0x1B: low 0xB (-1.5), high 0x1 (+0.5)
    assert (out[2:30] == 0).all()


def test_decode_rejects_bad_layouts() -> None:
    with pytest.raises(FormatError, match="blocks"):
        decode_gptoss(np.zeros((2, 3, 17), np.uint8), np.zeros((2, 3), np.uint8))
    with pytest.raises(FormatError, match="blocks"):
        decode_gptoss(np.zeros((2, 3, 16), np.uint8), np.zeros((2, 4), np.uint8))
    with pytest.raises(FormatError, match="uint8"):
        decode_gptoss(np.zeros((2, 16), np.int8), np.zeros(2, np.uint8))
    with pytest.raises(FormatError, match="ldexp"):
        decode_gptoss(np.zeros((2, 16), np.uint8), np.zeros(2, np.uint8), ldexp="libm")
    with pytest.raises(FormatError, match="ldexp"):
        decode_gptoss_torch(torch.zeros(2, 16, dtype=torch.uint8), torch.zeros(2, dtype=torch.uint8),
                            ldexp="libm")


def test_decode_into_a_reused_buffer() -> None:
    # an engine's slot: one buffer per expert shape, decoded into again and again
    blocks, scales = _random_checkpoint(6, (2, 4, 3), with_ff=True)
    want = reader_decode(blocks, scales).numpy()
    want_bf = _bf16_bits(reader_decode(blocks, scales, dtype=torch.bfloat16))
    slot = np.full((2, 4, 96), np.nan, np.float32)
    for backend in ("numba", "reference"):
        assert decode_gptoss(blocks, scales, backend=backend, out=slot) is slot
        assert _same(slot, want)
        slot[:] = np.nan
    bf_slot = np.zeros((2, 4, 96), np.uint16)
    assert decode_gptoss(blocks, scales, dtype="bfloat16", out=bf_slot) is bf_slot
    assert np.array_equal(bf_slot, want_bf)
    t_slot = torch.zeros(2, 4, 96, dtype=torch.bfloat16)  # a torch host buffer, e.g. pinned for copies
    assert decode_gptoss(blocks, scales, dtype=torch.bfloat16, out=t_slot) is t_slot
    assert np.array_equal(_bf16_bits(t_slot), want_bf)
    tb, ts = torch.from_numpy(blocks), torch.from_numpy(scales)
    t_out = torch.empty(2, 4, 96, dtype=torch.bfloat16)
    assert decode_gptoss_torch(tb, ts, out=t_out) is t_out
    assert np.array_equal(_bf16_bits(t_out), want_bf)
    t32 = torch.empty(2, 4, 96)
    assert decode_gptoss_torch(tb, ts, dtype=torch.float32, out=t32) is t32 and _same(t32.numpy(), want)
    with pytest.raises(FormatError, match=r"out has shape \(2, 4, 95\)"):
        decode_gptoss(blocks, scales, out=np.empty((2, 4, 95), np.float32))
    with pytest.raises(FormatError, match=r"out has dtype torch\.bfloat16"):
        decode_gptoss_torch(tb, ts, dtype=torch.float32, out=t_out)


# ---- numpy == torch --------------------------------------------------------------------------------

@pytest.mark.parametrize("mode", ["pow2", "exact"])
def test_torch_decode_equals_numpy_decode(mode: str) -> None:
    blocks, scales = _random_checkpoint(3, (3, 7, 2), with_ff=True)
    tb, ts = torch.from_numpy(blocks), torch.from_numpy(scales)
    f32 = decode_gptoss(blocks, scales, ldexp=mode)
    assert _same(decode_gptoss_torch(tb, ts, dtype=torch.float32, ldexp=mode).numpy(), f32)
    bf = decode_gptoss(blocks, scales, dtype="bfloat16", ldexp=mode)
    bf_t = _bf16_bits(decode_gptoss_torch(tb, ts, ldexp=mode))
    nan = np.isnan(f32)
    assert np.array_equal(bf[~nan], bf_t[~nan])
    assert (bf[nan] == 0x7FC0).all() and ((bf_t[nan] & 0x7FFF) > 0x7F80).all()


# ---- encode -> decode round trips ------------------------------------------------------------------

def _canonical_checkpoint(seed: int, groups: int) -> tuple[np.ndarray, np.ndarray]:
    """Random groups the floor rule re-encodes to the same bytes: each group's largest magnitude
    is 4 or 6 (codes 6, 7), so floor(log2(amax)) - 2 is the group's own exponent. Scale bytes stop
    at 252: from 253 on, 4 * 2^(s-127) is at least 2^128 and decodes to Inf."""
    rng = np.random.default_rng(seed)
    codes = rng.integers(0, 16, (groups, 32), dtype=np.uint8)
    codes[:, 0] = rng.choice(np.array([0x6, 0x7, 0xE, 0xF], np.uint8), groups)
    blocks = (codes[:, 0::2] | (codes[:, 1::2] << 4)).astype(np.uint8)
    scales = rng.integers(0, 253, groups, dtype=np.uint8)
    scales[:3] = [0, 252, 127]
    return blocks, scales


def test_decode_then_encode_gives_the_same_bytes() -> None:
    blocks, scales = _canonical_checkpoint(4, 600)
    w = decode_gptoss(blocks, scales)
    for backend in ("numba", "reference"):
        b2, s2 = encode_gptoss(w, backend=backend)
        assert np.array_equal(b2, blocks) and np.array_equal(s2, scales)
    tb, ts = encode_gptoss_torch(torch.from_numpy(w))
    assert np.array_equal(tb.numpy(), blocks) and np.array_equal(ts.numpy(), scales)
    # all-zero groups (signed zeros kept) come back as scale byte 0
    zeros = np.zeros((2, 32), np.float32)
    zeros[1] = -0.0
    zb, zs = encode_gptoss(zeros)
    assert zs.tolist() == [[0], [0]]
    assert zb[0, 0].tolist() == [0] * 16 and zb[1, 0].tolist() == [0x88] * 16


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), shift=st.integers(-60, 60), rule=st.sampled_from(["floor", "rceil"]))
def test_encode_is_mxfp4_and_requantization_is_stable(seed: int, shift: int, rule: str) -> None:
    w = (np.random.default_rng(seed).standard_normal((3, 64)) * 2.0**shift).astype(np.float32)
    blocks, scales = encode_gptoss(w, rule=rule)
    assert blocks.shape == (3, 2, 16) and scales.shape == (3, 2)
    name = "mxfp4" if rule == "floor" else "mxfp4-rceil"
    enc = get_format(name).encode(w)
    assert np.array_equal(enc["blocks"], blocks) and np.array_equal(enc["scales"], scales)
    tb, ts = encode_gptoss_torch(torch.from_numpy(w), rule=rule)
    assert np.array_equal(tb.numpy(), blocks) and np.array_equal(ts.numpy(), scales)
    w1 = decode_gptoss(blocks, scales)
    assert np.array_equal(reader_decode(blocks, scales).numpy().reshape(w1.shape), w1)
    assert np.array_equal(decode_gptoss(*encode_gptoss(w1, rule=rule)), w1)


def test_encode_rejects_a_ragged_last_axis() -> None:
    with pytest.raises(FormatError, match="multiple of"):
        encode_gptoss(np.zeros((2, 40), np.float32))
    with pytest.raises(FormatError, match="multiple of 32"):
        encode_gptoss_torch(torch.zeros(2, 40))


# ---- the mlp1 row interleave -----------------------------------------------------------------------

def test_deinterleave_splits_even_rows_gate_odd_rows_up() -> None:
    w = np.arange(2 * 6 * 4).reshape(2, 6, 4)  # [E, 2I, H]
    gate, up = deinterleave_rows(w)
    assert np.array_equal(gate, w[:, [0, 2, 4], :]) and np.array_equal(up, w[:, [1, 3, 5], :])
    assert np.array_equal(interleave_rows(gate, up), w)
    tg, tu = deinterleave_rows(torch.from_numpy(w))
    assert torch.equal(tg, torch.from_numpy(gate)) and torch.equal(tu, torch.from_numpy(up))
    assert torch.equal(interleave_rows(tg, tu), torch.from_numpy(w))
    bias = np.arange(12).reshape(2, 6)
    bg, bu = deinterleave_rows(bias, axis=-1)
    assert bg.tolist() == [[0, 2, 4], [6, 8, 10]] and bu.tolist() == [[1, 3, 5], [7, 9, 11]]
    assert np.array_equal(interleave_rows(bg, bu, axis=-1), bias)


def test_deinterleave_commutes_with_decoding() -> None:
    # blocks [E, 2I, G, 16] split on axis -3, scales [E, 2I, G] on -2, decoded [E, 2I, H] on -2
    blocks, scales = _random_checkpoint(5, (2, 8, 3), with_ff=False)
    w = decode_gptoss(blocks, scales)
    gate_b, up_b = deinterleave_rows(blocks, axis=-3)
    gate_s, up_s = deinterleave_rows(scales, axis=-2)
    gate_w, up_w = deinterleave_rows(w, axis=-2)
    assert np.array_equal(decode_gptoss(np.ascontiguousarray(gate_b), np.ascontiguousarray(gate_s)), gate_w)
    assert np.array_equal(decode_gptoss(np.ascontiguousarray(up_b), np.ascontiguousarray(up_s)), up_w)
    assert np.array_equal(interleave_rows(gate_b, up_b, axis=-3), blocks)
    assert np.array_equal(interleave_rows(gate_s, up_s, axis=-2), scales)


def test_interleave_errors() -> None:
    with pytest.raises(FormatError, match="odd length 5"):
        deinterleave_rows(np.zeros((5, 4)), axis=0)
    with pytest.raises(FormatError, match="differ in shape"):
        interleave_rows(np.zeros((2, 4)), np.zeros((3, 4)))


# ---- checkpoint names --------------------------------------------------------------------------------

def test_mlp_tensor_names() -> None:
    assert mlp_tensor_names(0) == {
        "mlp1": ("block.0.mlp.mlp1_weight.blocks", "block.0.mlp.mlp1_weight.scales"),
        "mlp2": ("block.0.mlp.mlp2_weight.blocks", "block.0.mlp.mlp2_weight.scales"),
    }
    names = mlp_tensor_names(23)
    assert names["mlp2"] == ("block.23.mlp.mlp2_weight.blocks", "block.23.mlp.mlp2_weight.scales")
    assert not any("layers" in n for pair in names.values() for n in pair)
