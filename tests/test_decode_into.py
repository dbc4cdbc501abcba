"""Decoding into a caller's buffer, for every registered format: ``decode(enc, out=buffer)`` and
``decode_torch(enc, out=tensor)`` return the buffer holding exactly what the allocating call returns
(float32 and bfloat16, both numpy backends, numpy arrays and CPU tensors as buffers), and every
wrong buffer is refused with one line that says what is wrong."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from moesim.kernels.formats import FormatError, get_format, list_formats

SHAPE = (3, 128)  # the last axis is a multiple of every block and group size


def _weights() -> np.ndarray:
    rng = np.random.default_rng(7)
    x = rng.standard_normal(SHAPE).astype(np.float32)
    x[0, :5] = [0.0, -0.0, 1e-3, -250.0, 3.5]
    return x


def _bits(a: np.ndarray) -> np.ndarray:
    a = np.asarray(a)
    return a.view(np.uint32) if a.dtype == np.float32 else a


@pytest.mark.parametrize("name", list_formats())
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_numpy_decode_into_a_buffer_equals_the_allocating_call(name: str, dtype: str) -> None:
    fmt = get_format(name)
    enc = fmt.encode(_weights())
    for backend in ("numba", "reference"):
        want = np.asarray(fmt.decode(enc, dtype=dtype, backend=backend))
        assert want.shape == SHAPE
        buf = np.full(SHAPE, 0x7F, want.dtype)  # stale contents must all be overwritten
        assert fmt.decode(enc, dtype=dtype, backend=backend, out=buf) is buf
        assert np.array_equal(_bits(buf), _bits(want))
        # a CPU tensor as the buffer (e.g. pinned host memory an engine copies from)
        tbuf = torch.full(SHAPE, 3.0, dtype=torch.float32 if dtype == "float32" else torch.bfloat16)
        assert fmt.decode(enc, dtype=dtype, backend=backend, out=tbuf) is tbuf
        got = tbuf.numpy() if dtype == "float32" else tbuf.view(torch.uint16).numpy()
        assert np.array_equal(_bits(got), _bits(want))


@pytest.mark.parametrize("name", list_formats())
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_torch_decode_into_a_tensor_equals_the_allocating_call(name: str, dtype: torch.dtype) -> None:
    fmt = get_format(name)
    enc = fmt.encode_torch(torch.from_numpy(_weights()))
    want = fmt.decode_torch(enc, dtype=dtype)
    out = torch.full(tuple(want.shape), 5.0, dtype=dtype)
    assert fmt.decode_torch(enc, dtype=dtype, out=out) is out
    assert torch.equal(out.view(torch.int16 if dtype == torch.bfloat16 else torch.int32),
                       want.view(torch.int16 if dtype == torch.bfloat16 else torch.int32))


@pytest.mark.parametrize("name", ["mxfp4", "mxfp8_e4m3", "nvfp4", "nf4", "int4-g32", "fp8-e4m3-channel", "bf16"])
def test_wrong_buffers_are_refused_with_one_clear_line(name: str) -> None:
    fmt = get_format(name)
    enc = fmt.encode(_weights())
    cases = [
        (np.empty((3, 127), np.float32), r"out has shape \(3, 127\); the decoded tensor has shape \(3, 128\)"),
        (np.empty(SHAPE, np.float64), r"out has dtype float64; decoding to float32 needs a float32 buffer"),
        (np.empty((128, 3), np.float32).T, r"out \(shape \(3, 128\)\) is not C-contiguous"),
        (np.empty((3, 256), np.float32)[:, ::2], r"out \(shape \(3, 128\)\) is not C-contiguous"),
        ([[0.0] * 128] * 3, r"out must be a numpy array or a CPU tensor, got list"),
        (torch.empty(SHAPE, device="meta"), r"out is a tensor on meta"),
        (torch.empty(SHAPE, dtype=torch.float16), r"out has dtype torch.float16"),
    ]
    ro = np.empty(SHAPE, np.float32)
    ro.flags.writeable = False
    cases.append((ro, "out is read-only"))
    for out, message in cases:
        with pytest.raises(FormatError, match=f"^{name}: {message}"):
            fmt.decode(enc, out=out)
    with pytest.raises(FormatError, match=f"^{name}: out has dtype float32; decoding to bfloat16 needs a uint16"):
        fmt.decode(enc, dtype="bfloat16", out=np.empty(SHAPE, np.float32))
    tenc = fmt.encode_torch(torch.from_numpy(_weights()))
    torch_cases = [
        (torch.empty(3, 127), r"out has shape \(3, 127\)"),
        (torch.empty(SHAPE, dtype=torch.bfloat16), r"out has dtype torch.bfloat16; decoding to torch.float32"),
        (torch.empty(128, 3).T, r"out \(shape \(3, 128\)\) is not contiguous"),
        (torch.empty(SHAPE, device="meta"), "out is on meta; the codes are on cpu"),
        (np.empty(SHAPE, np.float32), "out must be a torch.Tensor, got ndarray"),
    ]
    for out, message in torch_cases:
        with pytest.raises(FormatError, match=f"^{name}: {message}"):
            fmt.decode_torch(tenc, dtype=torch.float32, out=out)


def test_a_buffer_overlapping_the_codes_is_refused() -> None:
    fmt = get_format("mxfp4")
    enc = fmt.encode(_weights())
    memory = np.zeros(SHAPE, np.float32)
    blocks = memory.view(np.uint8).reshape(-1)[: enc["blocks"].size].reshape(enc["blocks"].shape)
    blocks[:] = enc["blocks"]
    with pytest.raises(FormatError, match="out overlaps the encoded input"):
        fmt.decode({**enc, "blocks": blocks}, out=memory)
