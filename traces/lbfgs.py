"""A small L-BFGS minimiser for smooth convex objectives (the fitter's likelihood).

Nocedal & Wright, *Numerical Optimization* (2nd ed.), Algorithm 7.4 (two-loop recursion) and 7.5,
with a backtracking Armijo line search: enough for a convex objective, where every descent
direction with a sufficient decrease makes progress and there is one optimum. Kept here rather than
depending on SciPy for one routine.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

Objective = Callable[[np.ndarray], tuple[float, np.ndarray]]


@dataclass(frozen=True)
class LbfgsResult:
    x: np.ndarray
    value: float
    grad_norm: float  # largest absolute gradient component at x
    iterations: int
    converged: bool


def minimize(fun: Objective, x0: np.ndarray, *, max_iter: int = 300, memory: int = 10, gtol: float = 1e-6,
             ftol: float = 1e-10) -> LbfgsResult:
    """Minimise ``fun`` (returning value and gradient) from ``x0``.

    Stops when the largest gradient component is below ``gtol``, when an iteration lowers the value
    by less than ``ftol * max(1, |value|)``, or after ``max_iter`` iterations."""
    x = np.array(x0, np.float64)
    f, g = fun(x)
    s_hist: list[np.ndarray] = []
    y_hist: list[np.ndarray] = []
    for it in range(max_iter):
        gnorm = float(np.abs(g).max(initial=0.0))
        if gnorm < gtol:
            return LbfgsResult(x, f, gnorm, it, True)
        # Two-loop recursion: d = -H g.
        q = g.copy()
        alphas = []
        for s, y in zip(reversed(s_hist), reversed(y_hist), strict=True):
            a = float(s @ q) / float(y @ s)
            alphas.append(a)
            q -= a * y
        if s_hist:
            q *= float(s_hist[-1] @ y_hist[-1]) / float(y_hist[-1] @ y_hist[-1])
        else:
            q /= max(gnorm, 1.0)  # a first step of at most unit length per component
        for (s, y), a in zip(zip(s_hist, y_hist, strict=True), reversed(alphas), strict=True):
            b = float(y @ q) / float(y @ s)
            q += (a - b) * s
        d = -q
        slope = float(g @ d)
        if not slope < 0:  # not a descent direction (rounding): restart from the gradient
            s_hist.clear()
            y_hist.clear()
            d = -g / max(gnorm, 1.0)
            slope = float(g @ d)
        step = 1.0
        while True:
            x_new = x + step * d
            f_new, g_new = fun(x_new)
            if f_new <= f + 1e-4 * step * slope or step < 1e-12:
                break
            step *= 0.5
        s_vec, y_vec = x_new - x, g_new - g
        if float(s_vec @ y_vec) > 1e-12:
            s_hist.append(s_vec)
            y_hist.append(y_vec)
            if len(s_hist) > memory:
                s_hist.pop(0)
                y_hist.pop(0)
        done = f - f_new < ftol * max(1.0, abs(f))
        x, f, g = x_new, f_new, g_new
        if done:
            return LbfgsResult(x, f, float(np.abs(g).max(initial=0.0)), it + 1, True)
    return LbfgsResult(x, f, float(np.abs(g).max(initial=0.0)), max_iter, False)
