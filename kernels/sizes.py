"""Bytes per expert from the format registry, so the simulator's sizes can never drift from the kernels."""

from __future__ import annotations

from collections.abc import Sequence

from moesim.kernels.formats import get_format
from moesim.kernels.formats.base import FormatError


def matrix_bytes(format_name: str, shape: tuple[int, ...]) -> float:
    """Storage bytes of one weight tensor of ``shape`` (quantized along its last axis)."""
    shape = tuple(int(s) for s in shape)
    if any(s <= 0 for s in shape):
        raise FormatError(f"{format_name}: matrix shape {shape} has a non-positive dimension")
    count = 1
    for s in shape:
        count *= s
    # Every format stores a whole number of bits per tensor; rounding the float product to it drops
    # the last-place error of an amortised per-tensor scale (32 / count is rarely exact in binary).
    return round(get_format(format_name).bits_per_weight(shape) * count) / 8.0


def expert_bytes(format_name: str, matrix_shapes: Sequence[tuple[int, ...]]) -> float:
    """Bytes of one expert made of ``matrix_shapes`` (e.g. a gated MLP: gate, up and down), every
    scale included. May be fractional only for formats with a per-tensor scale amortised over it."""
    if len(matrix_shapes) == 0:
        raise FormatError(f"{format_name}: an expert needs at least one matrix shape")
    return float(sum(matrix_bytes(format_name, tuple(s)) for s in matrix_shapes))


def gated_expert_shapes(hidden: int, intermediate: int) -> list[tuple[int, int]]:
    """The three matrices of a gated (SwiGLU) expert, each quantized along ``hidden`` for gate/up
    (``[intermediate, hidden]``) and along ``intermediate`` for down (``[hidden, intermediate]``)."""
    return [(intermediate, hidden), (intermediate, hidden), (hidden, intermediate)]
