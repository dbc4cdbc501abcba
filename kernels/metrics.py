"""Quantization error metrics shared by every format; all accumulate in float64.

Sums use numpy's own (pairwise) reductions, never BLAS dot / nrm2: BLAS splits long vectors across
threads, so the last bits would depend on the thread count and a sweep's worker processes would
not reproduce the parent's numbers bit for bit.

``w`` is the original tensor and ``w_q`` its decoded (quantized) version, of the same shape. Inputs
are anything ``np.asarray`` takes (numpy arrays, CPU tensors of float32 / float16 / float64); NaN or
Inf in either propagates to the result. Undefined ratios follow one convention: zero error over a
zero reference is 0 (perfect), nonzero error over a zero reference is Inf.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def _pair(w: Any, w_q: Any) -> tuple[np.ndarray, np.ndarray]:
    a = np.asarray(w, dtype=np.float64)
    b = np.asarray(w_q, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"metrics: w has shape {a.shape} but w_q has shape {b.shape}")
    if a.size == 0:
        raise ValueError(f"metrics: empty tensors (shape {a.shape})")
    return a, b


def _ratio(num: float, den: float) -> float:
    if den == 0.0:
        return 0.0 if num == 0.0 else float("inf")
    return num / den


def _norm(a: np.ndarray) -> float:
    return float(np.sqrt(np.sum(a * a)))


def mse(w: Any, w_q: Any) -> float:
    """Mean squared error."""
    a, b = _pair(w, w_q)
    return float(np.mean((a - b) ** 2))


def relative_frobenius(w: Any, w_q: Any) -> float:
    """``||w - w_q||_F / ||w||_F``."""
    a, b = _pair(w, w_q)
    return _ratio(_norm(a - b), _norm(a))


def sqnr_db(w: Any, w_q: Any) -> float:
    """Signal-to-quantization-noise ratio ``10 log10(sum w^2 / sum (w - w_q)^2)`` in dB; +Inf when the
    error is zero, -Inf when the signal is zero and the error is not."""
    a, b = _pair(w, w_q)
    signal = float(np.sum(a * a))
    noise = float(np.sum((a - b) ** 2))
    if noise == 0.0:
        return float("inf") if not np.isnan(signal) else float("nan")
    if signal == 0.0:
        return float("-inf")
    with np.errstate(divide="ignore"):  # infinite noise: log10(0) is the -Inf wanted, not a warning
        return 10.0 * float(np.log10(signal / noise))


def max_abs_error(w: Any, w_q: Any) -> float:
    a, b = _pair(w, w_q)
    return float(np.max(np.abs(a - b)))


def cosine_similarity(w: Any, w_q: Any) -> float:
    """Cosine of the angle between the flattened tensors; NaN when either is all zeros (undefined)."""
    a, b = _pair(w, w_q)
    na, nb = _norm(a), _norm(b)
    if na == 0.0 or nb == 0.0:
        return float("nan")
    return float(np.sum(a * b) / (na * nb))


def output_error(w: Any, w_q: Any, x: Any = None, *, seed: int = 0, n: int = 64) -> float:
    """Relative error of a layer's output, ``||x W - x W_q||_F / ||x W||_F``.

    ``w`` is ``[in, out]`` (a 1-D ``w`` is a single output column); ``x`` is ``[batch, in]``, or, when
    omitted, ``n`` rows of standard normal activations from ``np.random.default_rng(seed)``.
    """
    a, b = _pair(w, w_q)
    if a.ndim == 1:
        a, b = a[:, None], b[:, None]
    if a.ndim != 2:
        raise ValueError(f"output_error: w must be 1-D or 2-D [in, out], got shape {a.shape}")
    if x is None:
        if n <= 0:
            raise ValueError(f"output_error: n must be positive, got {n}")
        xs = np.random.default_rng(seed).standard_normal((n, a.shape[0]))
    else:
        xs = np.asarray(x, dtype=np.float64)
        if xs.ndim == 1:
            xs = xs[None, :]
        if xs.ndim != 2 or xs.shape[1] != a.shape[0]:
            raise ValueError(f"output_error: x of shape {xs.shape} does not match w of shape {a.shape} "
                             f"(expected [batch, {a.shape[0]}])")
    ref = xs @ a
    return _ratio(_norm(ref - xs @ b), _norm(ref))
