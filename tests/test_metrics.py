"""Error metrics on hand-computed inputs (exact values), their edge cases, and output_error against
its formula computed here."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from moesim.kernels.metrics import (
    cosine_similarity,
    max_abs_error,
    mse,
    output_error,
    relative_frobenius,
    sqnr_db,
)

# w = [3, 4], w_q = [3, 3]: error [0, 1]; ||w|| = 5, ||e|| = 1, sum w^2 = 25, sum e^2 = 1
W = np.array([3.0, 4.0], np.float32)
WQ = np.array([3.0, 3.0], np.float32)


def test_hand_computed_values() -> None:
    assert mse(W, WQ) == 0.5
    assert relative_frobenius(W, WQ) == 0.2
    assert sqnr_db(W, WQ) == 10.0 * math.log10(25.0)
    assert max_abs_error(W, WQ) == 1.0
    assert cosine_similarity(W, WQ) == 21.0 / (5.0 * math.sqrt(18.0))


def test_two_dimensional_and_signed_inputs() -> None:
    w = np.array([[1.0, -2.0], [0.5, 4.0]])
    wq = np.array([[1.0, -1.0], [0.0, 4.0]])
    # errors 0, -1, 0.5, 0: sum e^2 = 1.25; sum w^2 = 1 + 4 + 0.25 + 16 = 21.25
    assert mse(w, wq) == 1.25 / 4
    assert max_abs_error(w, wq) == 1.0
    assert relative_frobenius(w, wq) == math.sqrt(1.25) / math.sqrt(21.25)
    assert sqnr_db(w, wq) == pytest.approx(10 * math.log10(17.0), rel=1e-15)  # 21.25 / 1.25 = 17
    # w . wq = 1 + 2 + 0 + 16 = 19; ||wq||^2 = 1 + 1 + 0 + 16 = 18
    assert cosine_similarity(w, wq) == pytest.approx(19 / math.sqrt(21.25 * 18), rel=1e-15)
    assert cosine_similarity(w, -w) == pytest.approx(-1.0, rel=1e-15)


def test_sqnr_in_db_is_ten_per_decade_of_noise() -> None:
    w = np.ones(100)
    assert sqnr_db(w, w * 1.1) == pytest.approx(20.0, rel=1e-12)  # noise 0.01 per element
    assert sqnr_db(w, w * 1.01) == pytest.approx(40.0, rel=1e-12)


def test_identical_arrays() -> None:
    w = np.array([1.5, -2.0, 0.0, 7.0], np.float32)
    assert mse(w, w) == 0.0
    assert max_abs_error(w, w) == 0.0
    assert relative_frobenius(w, w) == 0.0
    assert sqnr_db(w, w) == math.inf
    assert cosine_similarity(w, w) == pytest.approx(1.0, rel=1e-15)
    assert output_error(w.reshape(2, 2), w.reshape(2, 2)) == 0.0


def test_zero_signal() -> None:
    z = np.zeros(4)
    e = np.array([0.0, 1.0, 0.0, 0.0])
    # zero error over a zero reference is perfect; nonzero error over zero is infinite
    assert relative_frobenius(z, z) == 0.0
    assert relative_frobenius(z, e) == math.inf
    assert sqnr_db(z, z) == math.inf
    assert sqnr_db(z, e) == -math.inf
    assert mse(z, e) == 0.25
    assert math.isnan(cosine_similarity(z, e))
    assert math.isnan(cosine_similarity(e, z))
    assert output_error(z.reshape(2, 2), e.reshape(2, 2)) == math.inf
    assert output_error(z.reshape(2, 2), z.reshape(2, 2)) == 0.0


def test_nan_and_inf_propagate() -> None:
    w = np.array([1.0, 2.0])
    assert math.isnan(mse(w, np.array([1.0, np.nan])))
    assert math.isnan(max_abs_error(w, np.array([np.nan, 2.0])))
    assert math.isnan(sqnr_db(w, np.array([np.nan, 2.0])))
    assert mse(w, np.array([1.0, np.inf])) == math.inf
    assert sqnr_db(w, np.array([1.0, np.inf])) == -math.inf


def test_inputs_accumulate_in_float64_and_accept_tensors() -> None:
    # float32 inputs, float64 arithmetic: (2^-23)^2 = 2^-46 exactly, and (2^-80)^2 = 2^-160, which
    # float32 would flush to zero
    w = np.full(8, 1.0 + 2.0**-23, np.float32)
    wq = np.ones(8, np.float32)
    assert mse(w, wq) == 2.0**-46
    t = torch.tensor([3.0, 4.0], dtype=torch.float16)
    assert mse(t, torch.tensor([3.0, 3.0])) == 0.5
    tiny = np.array([2.0**-80], np.float32)
    assert mse(tiny, np.zeros(1, np.float32)) == 2.0**-160


def test_output_error_with_given_activations_is_the_formula() -> None:
    rng = np.random.default_rng(0)
    w = rng.standard_normal((16, 5)).astype(np.float32)
    wq = (w + 0.05 * rng.standard_normal((16, 5))).astype(np.float32)
    x = rng.standard_normal((7, 16))
    ref = x @ w.astype(np.float64)
    want = np.linalg.norm(ref - x @ wq.astype(np.float64)) / np.linalg.norm(ref)
    assert output_error(w, wq, x) == pytest.approx(want, rel=1e-12)
    # a single activation row may be given as a vector
    want1 = np.linalg.norm(x[0] @ (w.astype(np.float64) - wq)) / np.linalg.norm(x[0] @ w.astype(np.float64))
    assert output_error(w, wq, x[0]) == pytest.approx(want1, rel=1e-12)


def test_output_error_by_hand() -> None:
    # W = I (2x2), W_q = diag(1, 0.5); x = [[2, 2]]: xW = [2, 2], xW_q = [2, 1]; error 1 / sqrt(8)
    w = np.eye(2)
    wq = np.diag([1.0, 0.5])
    assert output_error(w, wq, np.array([[2.0, 2.0]])) == 1.0 / math.sqrt(8.0)
    # a 1-D w is one output column: x . w = 2*3 + 1*4 = 10, x . wq = 6 + 2 = 8
    assert output_error(np.array([3.0, 4.0]), np.array([3.0, 2.0]), np.array([2.0, 1.0])) == 0.2


def test_output_error_default_activations_are_seeded_normals() -> None:
    rng = np.random.default_rng(1)
    w = rng.standard_normal((12, 3))
    wq = w + 0.1 * rng.standard_normal((12, 3))
    x = np.random.default_rng(5).standard_normal((10, 12))
    assert output_error(w, wq, seed=5, n=10) == output_error(w, wq, x)
    assert output_error(w, wq, seed=5, n=10) != output_error(w, wq, seed=6, n=10)


def test_shape_errors() -> None:
    with pytest.raises(ValueError, match=r"\(2,\).*\(3,\)"):
        mse(np.zeros(2), np.zeros(3))
    with pytest.raises(ValueError, match="empty"):
        sqnr_db(np.zeros(0), np.zeros(0))
    with pytest.raises(ValueError, match="1-D or 2-D"):
        output_error(np.zeros((2, 2, 2)), np.zeros((2, 2, 2)))
    with pytest.raises(ValueError, match="does not match"):
        output_error(np.zeros((4, 2)), np.zeros((4, 2)), np.zeros((3, 5)))
    with pytest.raises(ValueError, match="n must be positive"):
        output_error(np.zeros((4, 2)), np.zeros((4, 2)), n=0)
