"""The Fraction least-squares reference (tests/exact_reference.py) is itself right."""

from fractions import Fraction

import numpy as np

from tests.exact_reference import exact_lstsq, rational_fit


def test_recovers_an_exact_fit_exactly():
    """Targets that are exactly linear in the (small integer) features: the reference returns the weights."""
    X = np.array([[1.0, 2.0], [3.0, -1.0], [0.0, 4.0], [2.0, 2.0], [5.0, 0.5]])
    Y = np.column_stack([X @ [2.0, -3.0] + 7.0, X @ [0.5, 0.25] - 1.0])
    coef, intercept = exact_lstsq(X, Y)
    np.testing.assert_array_equal(coef, [[2.0, -3.0], [0.5, 0.25]])
    np.testing.assert_array_equal(intercept, [7.0, -1.0])


def test_the_inverse_is_exact_and_the_residuals_are_orthogonal_to_the_design():
    rng = np.random.default_rng(3)
    X, y, w = rng.standard_normal((9, 2)), rng.standard_normal(9), rng.uniform(0.5, 2.0, 9)
    for weights in (None, w):
        for fit_intercept in (True, False):
            fit = rational_fit(X, y, weights, fit_intercept)
            q = len(fit.columns)
            gram = [[sum(wi * a * b for wi, a, b in zip(fit.weights, ci, cj)) for cj in fit.columns]
                    for ci in fit.columns]
            assert all(sum(gram[i][t] * fit.inverse[t][j] for t in range(q)) == Fraction(int(i == j))
                       for i in range(q) for j in range(q))
            resid = [Fraction(float(yi)) - sum(fit.beta[0][j] * fit.columns[j][i] for j in range(q))
                     for i, yi in enumerate(y)]
            assert all(sum(wi * c * r for wi, c, r in zip(fit.weights, col, resid)) == 0 for col in fit.columns)


def test_rounds_once_to_the_float64_of_numpy_lstsq_on_a_well_conditioned_problem():
    rng = np.random.default_rng(0)
    X = rng.standard_normal((30, 3))
    Y = X @ rng.standard_normal((3, 2)) + 0.1 * rng.standard_normal((30, 2))
    coef, intercept = exact_lstsq(X, Y)
    B = np.linalg.lstsq(np.hstack([X, np.ones((30, 1))]), Y, rcond=None)[0]
    np.testing.assert_allclose(coef, B[:-1].T, rtol=1e-12)
    np.testing.assert_allclose(intercept, B[-1], rtol=1e-12, atol=1e-15)
