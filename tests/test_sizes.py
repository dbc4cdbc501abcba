"""Bytes per expert for each format, against sizes worked out by hand."""

from __future__ import annotations

import pytest
from moesim.kernels.formats import FormatError
from moesim.kernels.sizes import expert_bytes, gated_expert_shapes, matrix_bytes

# Mixtral-8x7B's expert: hidden 4096, intermediate 14336; three matrices of 4096 * 14336 weights.
MIXTRAL = gated_expert_shapes(4096, 14336)
N_MIXTRAL = 3 * 4096 * 14336  # 176,160,768 weights
# A small expert with distinct dimensions, so the quantized axis of each matrix matters.
SMALL = gated_expert_shapes(128, 256)  # (256, 128), (256, 128), (128, 256): 98,304 weights
N_SMALL = 98_304


def test_gated_expert_shapes() -> None:
    assert SMALL == [(256, 128), (256, 128), (128, 256)]


def test_bf16_is_two_bytes_per_weight() -> None:
    assert expert_bytes("bf16", MIXTRAL) == 352_321_536.0  # 2 * 176,160,768
    assert expert_bytes("fp16", SMALL) == 196_608.0
    assert expert_bytes("fp32", SMALL) == 393_216.0


def test_mxfp4_is_4_25_bits_per_weight() -> None:
    # one E8M0 byte per 32 four-bit values: 16 + 1 = 17 bytes per 32 weights
    assert expert_bytes("mxfp4", MIXTRAL) == N_MIXTRAL // 32 * 17 == 93_585_408
    assert expert_bytes("mxfp4", SMALL) == N_SMALL // 32 * 17 == 52_224
    assert expert_bytes("mxfp4-rceil", SMALL) == 52_224
    assert expert_bytes("mxfp8_e4m3", SMALL) == N_SMALL // 32 * 33


def test_nvfp4_counts_block_scales_and_one_scale_per_tensor() -> None:
    # per 16 weights 8 bytes + one FP8 scale byte; plus a float32 scale per matrix
    per_matrix = 32_768 // 16 * 9 + 4  # 18,436 bytes for each 32,768-weight matrix
    assert expert_bytes("nvfp4", SMALL) == 3 * per_matrix == 55_308
    assert matrix_bytes("nvfp4", (256, 128)) == 18_436
    # 32 bits over 58,720,256 weights is not a binary fraction; the byte count is still exact
    assert expert_bytes("nvfp4", MIXTRAL) == N_MIXTRAL // 16 * 9 + 3 * 4 == 99_090_444


@pytest.mark.parametrize(("name", "bytes_per_group"), [
    # int4 asymmetric: G/2 code bytes + float16 scale + float16 bias; symmetric: scale only
    ("int4-g32", 16 + 4), ("int4-g64", 32 + 4), ("int4-g128", 64 + 4),
    ("int4-sym-g32", 16 + 2), ("int4-sym-g64", 32 + 2), ("int4-sym-g128", 64 + 2),
    ("int8-g128", 128 + 4),
])
def test_grouped_int_formats(name: str, bytes_per_group: int) -> None:
    group = int(name.rsplit("g", 1)[1])
    assert expert_bytes(name, SMALL) == N_SMALL // group * bytes_per_group
    assert expert_bytes(name, MIXTRAL) == N_MIXTRAL // group * bytes_per_group


def test_int4_sizes_by_hand() -> None:
    # 5, 4.5 and 4.25 bits per weight
    assert expert_bytes("int4-g32", MIXTRAL) == 110_100_480
    assert expert_bytes("int4-g64", MIXTRAL) == 99_090_432
    assert expert_bytes("int4-g128", MIXTRAL) == 93_585_408


def test_fp8_scale_per_channel_or_per_tensor() -> None:
    # one byte per weight plus a float32 scale per row (channel) or per matrix (tensor)
    assert expert_bytes("fp8-e4m3-channel", SMALL) == N_SMALL + 4 * (256 + 256 + 128) == 100_864
    assert expert_bytes("fp8-e5m2-tensor", SMALL) == N_SMALL + 3 * 4 == 98_316
    assert expert_bytes("fp8-e4m3-channel", MIXTRAL) == N_MIXTRAL + 4 * (14336 + 14336 + 4096)


def test_size_errors() -> None:
    with pytest.raises(FormatError, match="at least one matrix"):
        expert_bytes("bf16", [])
    with pytest.raises(FormatError, match="non-positive"):
        matrix_bytes("bf16", (0, 64))
    with pytest.raises(FormatError, match="multiple of"):
        expert_bytes("mxfp4", [(4, 48)])
    with pytest.raises(FormatError, match="unknown weight format"):
        expert_bytes("fp5", SMALL)
