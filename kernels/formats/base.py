"""The interface every weight format implements, and the small helpers all formats share.

A format quantizes along the LAST axis of an array in blocks (or groups) of a fixed size. ``encode``
returns a dict of numpy arrays holding everything ``decode`` needs (codes, scales, the original
shape); ``encode_torch`` / ``decode_torch`` do the same with tensors on any device and must stay
``torch.compile``-friendly (no Python loops over elements, no data-dependent Python control flow).

Decoded dtypes: ``float32`` (an ``np.float32`` array), or ``bfloat16``. numpy has no bfloat16, so
the numpy paths return the bf16 *bit pattern* as ``np.uint16``, rounded to nearest-even from the
float32 result (:func:`f32_to_bf16_bits`); the torch paths return a ``torch.bfloat16`` tensor
(torch's float32 -> bfloat16 cast is the same rounding).

Decoding into a caller's buffer: ``decode(enc, dtype=..., out=buffer)`` writes the result into
``buffer`` and returns it, so an engine can reuse one slot per expert instead of allocating each
call. The buffer has the decoded shape, is C-contiguous and writable, and holds the decoded dtype:
a float32 numpy array or tensor for float32; a uint16 numpy array or a ``torch.bfloat16`` CPU
tensor for bfloat16. ``decode_torch(enc, dtype=..., out=tensor)`` takes a tensor of ``dtype`` on
the codes' device. :func:`decode_target` / :func:`check_out_torch` check a buffer.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol, runtime_checkable

import numpy as np

BACKENDS = ("numba", "reference")
FLOAT32 = "float32"
BFLOAT16 = "bfloat16"


class FormatError(ValueError):
    """Bad input to a format: wrong shape, dtype, backend or encoded dict."""


@runtime_checkable
class QuantFormat(Protocol):
    """What the registry, the size model and the error sweeps rely on."""

    name: str

    def bits_per_weight(self, shape: tuple[int, ...]) -> float:
        """Storage bits per weight for a tensor of ``shape``, every scale included (a per-tensor
        scale is amortised over the whole tensor). Raises :class:`FormatError` for a bad shape."""
        ...

    def encode(self, x: np.ndarray, *, backend: str = "numba") -> dict[str, np.ndarray]: ...

    def decode(self, enc: Mapping[str, np.ndarray], *, dtype: Any = np.float32,
               backend: str = "numba", out: Any = None) -> np.ndarray: ...

    def encode_torch(self, x: Any) -> dict[str, Any]: ...

    def decode_torch(self, enc: Mapping[str, Any], *, dtype: Any = None, out: Any = None) -> Any: ...


# ---- argument checks ----------------------------------------------------------------------------

def check_backend(backend: str, fmt: str) -> None:
    if backend not in BACKENDS:
        raise FormatError(f"{fmt}: unknown backend {backend!r}; expected one of {BACKENDS}")


def check_last_dim(shape: tuple[int, ...], block: int, fmt: str) -> int:
    """Return the number of blocks along the last axis; raise if it is not a whole number."""
    shape = tuple(int(s) for s in shape)
    if len(shape) == 0:
        raise FormatError(f"{fmt}: cannot quantize a 0-d array (shape {shape}); it needs a last axis "
                          f"that is a multiple of the block size {block}")
    if shape[-1] % block != 0:
        raise FormatError(f"{fmt}: last dimension of shape {shape} is {shape[-1]}, not a multiple of "
                          f"the block size {block}")
    return shape[-1] // block


def as_float32(x: Any, fmt: str) -> np.ndarray:
    """``x`` as a C-contiguous float32 array. Floats only: float16 and bfloat16 values are exact in
    float32; float64 is rounded to float32 first (every backend quantizes the same float32 values)."""
    arr = np.asarray(x)
    if not np.issubdtype(arr.dtype, np.floating):
        raise FormatError(f"{fmt}: expected a floating-point array, got dtype {arr.dtype}")
    # ascontiguousarray promotes a 0-d array to 1-d; keep the caller's shape so 0-d is refused.
    return np.ascontiguousarray(arr, dtype=np.float32).reshape(arr.shape)


def resolve_dtype(dtype: Any) -> str:
    """Normalise a decode dtype to ``"float32"`` or ``"bfloat16"``."""
    if isinstance(dtype, str):
        name = dtype.lower()
    else:
        try:
            import torch

            if dtype in (torch.float32, torch.bfloat16):
                return FLOAT32 if dtype == torch.float32 else BFLOAT16
        except ImportError:  # pragma: no cover - torch is a dependency
            pass
        name = np.dtype(dtype).name
    if name in ("float32", "f4", "fp32"):
        return FLOAT32
    if name in ("bfloat16", "bf16"):
        return BFLOAT16
    raise FormatError(f"unsupported decode dtype {dtype!r}; use float32 or bfloat16")


def require(enc: Mapping[str, Any], keys: tuple[str, ...], fmt: str) -> None:
    missing = [k for k in keys if k not in enc]
    if missing:
        raise FormatError(f"{fmt}: encoded dict lacks field(s) {missing}; it has {sorted(enc)}")


def shape_array(shape: tuple[int, ...]) -> np.ndarray:
    """The original shape as stored in an encoded dict (``enc["shape"]``)."""
    return np.asarray(shape, dtype=np.int64)


def shape_of(enc: Mapping[str, Any]) -> tuple[int, ...]:
    return tuple(int(s) for s in np.asarray(enc["shape"]).reshape(-1))


# ---- decoding into a caller's buffer ------------------------------------------------------------

def decode_target(out: Any, shape: tuple[int, ...], dtype: Any, fmt: str, *inputs: np.ndarray) -> np.ndarray:
    """A numpy view of ``out``'s memory that a numpy-path decode to ``shape`` / ``dtype`` writes.

    ``out`` is a numpy array (float32, or uint16 bfloat16 bit patterns) or a CPU tensor (float32 or
    bfloat16). Anything else, another shape or dtype, a non-contiguous, read-only or
    overlapping-the-inputs buffer is refused with a :class:`FormatError` that says which.
    """
    kind = resolve_dtype(dtype)
    shape = tuple(int(s) for s in shape)
    array = _as_numpy_buffer(out, fmt)
    want = np.float32 if kind == FLOAT32 else np.uint16
    if array.dtype != want:
        spelled = "float32" if kind == FLOAT32 else "uint16 (bfloat16 bits) or torch.bfloat16"
        raise FormatError(f"{fmt}: out has dtype {getattr(out, 'dtype', array.dtype)}; decoding to {kind} "
                          f"needs a {spelled} buffer")
    if tuple(array.shape) != shape:
        raise FormatError(f"{fmt}: out has shape {tuple(array.shape)}; the decoded tensor has shape {shape}")
    if not array.flags.c_contiguous:
        raise FormatError(f"{fmt}: out (shape {shape}) is not C-contiguous; decode writes a contiguous buffer")
    if not array.flags.writeable:
        raise FormatError(f"{fmt}: out is read-only")
    for source in inputs:
        if np.may_share_memory(array, source):
            raise FormatError(f"{fmt}: out overlaps the encoded input it would be decoded from")
    return array


def deliver(result: Any, out: Any, dtype: Any, fmt: str, *inputs: np.ndarray) -> Any:
    """What a decode that computes ``result`` first returns: ``result`` itself when ``out`` is None,
    else ``out`` with ``result`` copied in (``out`` checked by :func:`decode_target`)."""
    if out is None:
        return result
    np.copyto(decode_target(out, np.shape(result), dtype, fmt, *inputs), np.asarray(result))
    return out


def _as_numpy_buffer(out: Any, fmt: str) -> np.ndarray:
    if isinstance(out, np.ndarray):
        return out
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a dependency
        torch = None
    if torch is not None and isinstance(out, torch.Tensor):
        if out.device.type != "cpu":
            raise FormatError(f"{fmt}: out is a tensor on {out.device}; the numpy decode writes host "
                              "memory (use decode_torch for device tensors)")
        if out.dtype == torch.bfloat16:
            return out.detach().view(torch.int16).numpy().view(np.uint16)
        if out.dtype == torch.float32:
            return out.detach().numpy()
        raise FormatError(f"{fmt}: out has dtype {out.dtype}; decode writes float32 or bfloat16")
    raise FormatError(f"{fmt}: out must be a numpy array or a CPU tensor, got {type(out).__name__}")


def check_out_torch(out: Any, shape: tuple[int, ...], dtype: Any, device: Any, fmt: str) -> None:
    """Refuse a torch decode buffer of another type, shape, dtype or device, or a non-contiguous one."""
    import torch

    if not isinstance(out, torch.Tensor):
        raise FormatError(f"{fmt}: out must be a torch.Tensor, got {type(out).__name__}")
    shape = tuple(int(s) for s in shape)
    if out.dtype != dtype:
        raise FormatError(f"{fmt}: out has dtype {out.dtype}; decoding to {dtype} needs a {dtype} tensor")
    if tuple(out.shape) != shape:
        raise FormatError(f"{fmt}: out has shape {tuple(out.shape)}; the decoded tensor has shape {shape}")
    if out.device != torch.device(device):
        raise FormatError(f"{fmt}: out is on {out.device}; the codes are on {device}")
    if not out.is_contiguous():
        raise FormatError(f"{fmt}: out (shape {shape}) is not contiguous; decode writes a contiguous tensor")


# ---- bfloat16 as bits ---------------------------------------------------------------------------

BF16_NAN = np.uint16(0x7FC0)


def f32_to_bf16_bits(x: np.ndarray) -> np.ndarray:
    """Round float32 to bfloat16, nearest-even, returned as the uint16 bit pattern.

    Subnormals round like any other value and overflow goes to +-Inf (the rounding carries into
    the exponent field); every NaN becomes the canonical quiet NaN 0x7FC0, as torch does.
    """
    f = np.ascontiguousarray(x, dtype=np.float32)
    bits = f.view(np.uint32).astype(np.uint64)
    rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16
    out = rounded.astype(np.uint16)
    return np.where(np.isnan(f), BF16_NAN, out).astype(np.uint16)


def bf16_bits_to_f32(bits: np.ndarray) -> np.ndarray:
    """Widen bfloat16 bit patterns (uint16) to float32 exactly."""
    b = np.ascontiguousarray(bits, dtype=np.uint16).astype(np.uint32) << 16
    return b.view(np.float32)
