"""The Gram pass (`GramAccumulator`): as accurate as the QR on well-conditioned designs, checked against
exact rational arithmetic, and refused (a QR pass instead) where the normal equations would lose digits."""

import logging

import numpy as np
import pytest

from linreg.models.exact import ExactAccumulator, GRAM_MAX_CONDITION, GramAccumulator
from linreg.models.fit import fit
from tests.models.test_exact import exact_lstsq, params, polynomial_problem, rel_err


def random_problem(m=500, p=4, k=3, seed=0, noise=1.0):
    """Features of different scales and offsets; targets linear in them plus noise of sd `noise`."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((m, p)) * [1.0, 10.0, 0.1, 5.0][:p] + [3.0, -20.0, 100.0, 0.0][:p]
    B = rng.standard_normal((k, p))
    return X, X @ B.T + rng.standard_normal(k) + noise * rng.standard_normal((m, k))


def accumulate(cls, X, Y, w=None, fit_intercept=True, batch=97):
    acc = cls(X.shape[1], Y.shape[1], fit_intercept=fit_intercept)
    for start in range(0, len(X), batch):
        acc.update(X[start:start + batch], Y[start:start + batch], None if w is None else w[start:start + batch])
    return acc


@pytest.mark.parametrize("fit_intercept", [True, False])
@pytest.mark.parametrize("weighted", [False, True])
def test_gram_solution_equals_the_exact_rational_one(fit_intercept, weighted):
    X, Y = random_problem(m=300, p=3, k=2, seed=3)
    w = np.random.default_rng(0).integers(0, 4, len(X)).astype(float) if weighted else None  # zeros too
    gram = accumulate(GramAccumulator, X, Y, w, fit_intercept)
    assert gram.factor() is not None  # well conditioned: trusted
    got = gram.solve()
    want = params(*exact_lstsq(X, Y, w, fit_intercept))
    assert rel_err(params(got.coef, got.intercept), want) < 1e-12
    qr = accumulate(ExactAccumulator, X, Y, w, fit_intercept).solve()
    assert np.allclose(got.rss, qr.rss, rtol=1e-10)
    assert got.n_rows == qr.n_rows == (len(X) if w is None else np.count_nonzero(w))
    np.testing.assert_allclose(got.factor.unscaled_variance, qr.factor.unscaled_variance, rtol=1e-9)


def test_gram_merge_and_state_round_trip_equal_one_pass():
    X, Y = random_problem(m=600, p=4, k=3, seed=5)
    Y = Y + 1000.0  # parts with far apart first-block shifts
    X[300:] += [0.5, 5.0, 0.05, 2.5]  # half a standard deviation: the parts have different shifts
    whole = accumulate(GramAccumulator, X, Y).solve()
    left = accumulate(GramAccumulator, X[:300], Y[:300])
    right = GramAccumulator.from_state(accumulate(GramAccumulator, X[300:], Y[300:]).state())
    left.merge(right)
    left.merge(GramAccumulator(4, 3))  # an empty part (a rank without rows)
    merged = left.solve()
    assert rel_err(params(merged.coef, merged.intercept), params(whole.coef, whole.intercept)) < 1e-12


@pytest.mark.parametrize("degree", [4, 6])
def test_ill_conditioned_design_is_refused_and_fit_makes_a_qr_pass(degree, caplog):
    x = np.linspace(1.0, 3.0, 400)
    X, Y = polynomial_problem(x, degree, noise=1e-3)
    gram = accumulate(GramAccumulator, X, Y)
    assert gram.factor() is None  # condition number far above GRAM_MAX_CONDITION
    with pytest.raises(ValueError, match="ill-conditioned"):
        gram.solve()
    passes = []

    def batches():
        passes.append(1)
        return ((X[i:i + 50], Y[i:i + 50]) for i in range(0, len(X), 50))

    with caplog.at_level(logging.INFO, logger="linreg.models.fit"):
        two_pass = fit(batches, trainer="exact", features=[f"x{j}" for j in range(degree)], targets=["y"])
    assert len(passes) == 2 and "QR" in caplog.text
    one_pass = fit(batches(), trainer="exact", features=[f"x{j}" for j in range(degree)], targets=["y"])
    # the QR pass is the single-pass QR solution, bit for bit (same rows, same order)
    np.testing.assert_array_equal(two_pass.model.coef_, one_pass.model.coef_)
    want = params(*exact_lstsq(X, Y))
    assert rel_err(params(two_pass.model.coef_, two_pass.model.intercept_), want) < 1e-6


def test_well_conditioned_fit_takes_one_pass_and_matches_the_qr():
    X, Y = random_problem(m=2000, p=3, k=2, seed=8)
    passes = []

    def batches():
        passes.append(1)
        return ((X[i:i + 256], Y[i:i + 256]) for i in range(0, len(X), 256))

    got = fit(batches, trainer="exact", features=["a", "b", "c"], targets=["u", "v"])
    assert len(passes) == 1
    want = fit(batches(), trainer="exact", features=["a", "b", "c"], targets=["u", "v"])
    assert rel_err(params(got.model.coef_, got.model.intercept_),
                   params(want.model.coef_, want.model.intercept_)) < 1e-12
    assert got.exact.condition_number < GRAM_MAX_CONDITION


def test_a_nearly_perfect_fit_is_refused():
    """RSS read off a Cholesky factor loses the digits the fit explains: such a target goes to the QR."""
    X, Y = random_problem(m=500, p=3, k=2, seed=4, noise=1e-5)
    assert accumulate(GramAccumulator, X, Y).factor() is None
    X, Y = random_problem(m=500, p=3, k=2, seed=4, noise=1.0)
    assert accumulate(GramAccumulator, X, Y).factor() is not None


def test_collinear_features_still_fail_with_the_qr_message():
    X, Y = random_problem(m=200, p=3, k=1, seed=2)
    X[:, 2] = 2 * X[:, 0] - X[:, 1]
    from linreg.errors import InputError

    with pytest.raises(InputError, match="collinear"):
        fit(lambda: iter([(X, Y)]), trainer="exact", features=["a", "b", "c"], targets=["y"])
