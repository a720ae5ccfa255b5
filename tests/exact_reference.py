"""The exact least-squares reference of the tests: (weighted) normal equations over Fraction.

Every float64 is an exact rational, so the solution below is the exact minimizer of the float64 inputs,
rounded once to float64 at the end. Small problems only (Python rationals): tens of rows, a few columns.
Tested itself in tests/models/test_exact_reference.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction

import numpy as np


@dataclass
class RationalFit:
    """Exact weighted least squares: design columns D (q lists of m rationals, the ones column last when
    fitting an intercept), weights (m,), the inverse of D^T W D (q, q) and the coefficients (k, q)."""

    columns: list[list[Fraction]]
    weights: list[Fraction]
    inverse: list[list[Fraction]]
    beta: list[list[Fraction]]


def rational_fit(X, Y, sample_weight=None, fit_intercept: bool = True) -> RationalFit:
    """X (m, p), Y (m, k) or (m,), optional weights (m,): the exact solution (Gauss-Jordan on [G | I])."""
    X, Y = np.asarray(X, dtype=np.float64), np.asarray(Y, dtype=np.float64)
    Y = Y[:, None] if Y.ndim == 1 else Y
    m, p = X.shape
    cols = [[Fraction(float(v)) for v in X[:, j]] for j in range(p)]
    if fit_intercept:
        cols.append([Fraction(1)] * m)
    ws = [Fraction(float(v)) for v in sample_weight] if sample_weight is not None else [Fraction(1)] * m
    q = len(cols)
    gram = [[sum(wi * a * b for wi, a, b in zip(ws, ci, cj)) for cj in cols] for ci in cols]
    aug = [row + [Fraction(int(i == j)) for j in range(q)] for i, row in enumerate(gram)]
    for c in range(q):  # Gauss-Jordan: aug = [I | gram^-1]
        pivot = next(r for r in range(c, q) if aug[r][c] != 0)
        aug[c], aug[pivot] = aug[pivot], aug[c]
        aug[c] = [v / aug[c][c] for v in aug[c]]
        for r in range(q):
            if r != c and aug[r][c] != 0:
                f = aug[r][c]
                aug[r] = [a - f * b for a, b in zip(aug[r], aug[c])]
    inverse = [row[q:] for row in aug]
    beta = []
    for t in range(Y.shape[1]):
        ys = [Fraction(float(v)) for v in Y[:, t]]
        rhs = [sum(wi * a * yi for wi, a, yi in zip(ws, col, ys)) for col in cols]
        beta.append([sum(inverse[i][j] * rhs[j] for j in range(q)) for i in range(q)])
    return RationalFit(cols, ws, inverse, beta)


def exact_lstsq(X, Y, sample_weight=None, fit_intercept: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Exact weighted least squares of the float64 inputs, rounded once: coef (k, p), intercept (k,)."""
    fit = rational_fit(X, Y, sample_weight, fit_intercept)
    sol = np.array([[float(b) for b in row] for row in fit.beta])
    p = np.asarray(X).shape[1]
    return (sol[:, :p], sol[:, p]) if fit_intercept else (sol, np.zeros(len(fit.beta)))
