import numpy as np
import pytest

from linreg.errors import InputError
from linreg.models.exact import ExactAccumulator
from tests.exact_reference import exact_lstsq  # noqa: F401  (tests/models/test_exact_gram.py imports it from here)


def lstsq_fit(X, Y, fit_intercept=True):
    """numpy.linalg.lstsq on [X, 1] (or X) in float64: coef (k, p), intercept (k,)."""
    A = np.hstack([X, np.ones((len(X), 1))]) if fit_intercept else X
    B = np.linalg.lstsq(A, Y, rcond=None)[0]
    return (B[:-1].T, B[-1]) if fit_intercept else (B.T, np.zeros(Y.shape[1]))


def fit(X, Y, sample_weight=None, fit_intercept=True, **solve_kw):
    acc = ExactAccumulator(X.shape[1], Y.shape[1], fit_intercept=fit_intercept)
    acc.update(X, Y, sample_weight)
    return acc.solve(**solve_kw)


def params(coef, intercept):
    """All parameters as one (k, p + 1) array."""
    return np.hstack([coef, np.asarray(intercept)[:, None]])


def rel_err(got, want):
    return np.linalg.norm(got - want) / np.linalg.norm(want)


def random_problem(m=500, p=4, k=3, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((m, p)) * [1.0, 10.0, 0.1, 5.0][:p] + [3.0, -20.0, 100.0, 0.0][:p]
    B = rng.standard_normal((k, p))
    Y = X @ B.T + rng.standard_normal(k) + 0.1 * rng.standard_normal((m, k))
    return X, Y


def polynomial_problem(x, degree, noise, seed=0, balanced=True):
    """Features x, x^2, ..., x^degree; one target from a known polynomial plus deterministic noise.

    balanced: coefficients c_j ~ U(-1, 1) / max|x|^j, so every term is of order 1;
    otherwise c_j ~ U(-1, 1) and the target is dominated by the highest power.
    """
    rng = np.random.default_rng(seed)
    X = np.column_stack([x**j for j in range(1, degree + 1)])
    c = rng.uniform(-1, 1, degree + 1)
    if balanced:
        c = c / np.max(np.abs(x)) ** np.arange(degree + 1)
    y = X @ c[1:] + c[0] + noise * rng.standard_normal(len(x))
    return X, y[:, None]


def assert_as_accurate_as_lstsq(X, Y, abs_bound):
    want = params(*exact_lstsq(X, Y))
    s = fit(X, Y)
    ours = rel_err(params(s.coef, s.intercept), want)
    theirs = rel_err(params(*lstsq_fit(X, Y)), want)
    assert ours <= max(10 * theirs, 1e-12), (ours, theirs)
    assert ours <= abs_bound, ours


def test_fraction_reference_recovers_exact_fit():
    # Data on an exact line in binary fractions: the reference must give the line itself.
    X = np.array([[0.0, 1.0], [1.0, 0.5], [2.0, 0.25], [3.0, 4.0], [4.0, 2.0]])
    Y = (X @ [[1.5], [-0.25]] + 0.75) * [1.0, 2.0]
    coef, intercept = exact_lstsq(X, Y)
    np.testing.assert_array_equal(coef, [[1.5, -0.25], [3.0, -0.5]])
    np.testing.assert_array_equal(intercept, [0.75, 1.5])


# Worst relative errors observed over seeds 0-5, ours / lstsq (standardized condition number):
#   degree 5, x = 0..20 (1.6e3):     balanced 3.6e-15 / 8.8e-13, raw 6.0e-11 / 1.1e-10
#   degree 10, x in [0, 2] (1.1e7):  balanced 8.5e-12 / 2.3e-11, raw 5.7e-10 / 5.0e-10
#   degree 10, x in [1, 2] (7.4e10): 6.9e-6 / 1.2e-5
# Worst single-case ratio ours / lstsq: 1.9.
@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("balanced, bound", [(True, 1e-13), (False, 1e-9)])
def test_degree5_polynomial_matches_exact_solution(seed, balanced, bound):
    X, Y = polynomial_problem(np.arange(21.0), 5, noise=1e-3, seed=seed, balanced=balanced)
    assert_as_accurate_as_lstsq(X, Y, abs_bound=bound)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("balanced, bound", [(True, 1e-10), (False, 1e-8)])
def test_degree10_polynomial_matches_exact_solution(seed, balanced, bound):
    X, Y = polynomial_problem(np.linspace(0.0, 2.0, 40), 10, noise=1e-6, seed=seed, balanced=balanced)
    assert_as_accurate_as_lstsq(X, Y, abs_bound=bound)


@pytest.mark.parametrize("seed", range(4))
def test_degree10_polynomial_on_shifted_range_matches_exact_solution(seed):
    X, Y = polynomial_problem(np.linspace(1.0, 2.0, 30), 10, noise=1e-6, seed=seed)
    assert_as_accurate_as_lstsq(X, Y, abs_bound=1e-4)


def test_nearly_collinear_columns_match_exact_solution():
    # x2 = x1 + 1e-7 * noise, far from the origin (condition number 1.9e7): observed ours 6.9e-10, lstsq 8.8e-7.
    rng = np.random.default_rng(1)
    x1, x3 = rng.standard_normal((2, 200))
    x2 = x1 + 1e-7 * rng.standard_normal(200)
    X = np.column_stack([x1, x2, x3]) + 100.0
    Y = np.column_stack([2 * x1 - x2 + 0.5 * x3 + 0.01 * rng.standard_normal(200), x3 + 1.0])
    assert_as_accurate_as_lstsq(X, Y, abs_bound=1e-8)


def test_weighted_fit_matches_exact_solution():
    X, Y = random_problem(m=40, p=3, k=2, seed=2)
    w = np.random.default_rng(3).uniform(0.0, 3.0, 40)
    w[:5] = 0.0
    s = fit(X, Y, w)
    want = params(*exact_lstsq(X, Y, w))
    assert rel_err(params(s.coef, s.intercept), want) < 1e-13


def test_fit_without_intercept_matches_exact_solution():
    X, Y = random_problem(m=40, p=3, k=2, seed=4)
    s = fit(X, Y, fit_intercept=False)
    want_coef, _ = exact_lstsq(X, Y, fit_intercept=False)
    assert rel_err(s.coef, want_coef) < 1e-13
    np.testing.assert_array_equal(s.intercept, np.zeros(2))


def test_random_data_matches_lstsq():
    X, Y = random_problem()
    s = fit(X, Y)
    coef, intercept = lstsq_fit(X, Y)
    assert s.coef.shape == (3, 4) and s.intercept.shape == (3,)
    assert rel_err(params(s.coef, s.intercept), params(coef, intercept)) < 1e-10


def test_fit_without_intercept_matches_lstsq():
    X, Y = random_problem()
    s = fit(X, Y, fit_intercept=False)
    coef, _ = lstsq_fit(X, Y, fit_intercept=False)
    assert rel_err(s.coef, coef) < 1e-10
    # Through the origin is a different fit from the one with an intercept.
    assert rel_err(s.coef, fit(X, Y).coef) > 1e-3


def test_rss_equals_direct_residual_sum_of_squares():
    X, Y = random_problem()
    s = fit(X, Y)
    residuals = Y - X @ s.coef.T - s.intercept
    np.testing.assert_allclose(s.rss, (residuals**2).sum(axis=0), rtol=1e-10)


def test_rss_is_weighted_with_sample_weight():
    X, Y = random_problem(seed=5)
    w = np.random.default_rng(6).uniform(0.0, 2.0, len(X))
    s = fit(X, Y, w)
    residuals = Y - X @ s.coef.T - s.intercept
    np.testing.assert_allclose(s.rss, w @ residuals**2, rtol=1e-10)


def test_rss_without_intercept_equals_direct_residual_sum_of_squares():
    X, Y = random_problem(seed=7)
    s = fit(X, Y, fit_intercept=False)
    np.testing.assert_allclose(s.rss, ((Y - X @ s.coef.T) ** 2).sum(axis=0), rtol=1e-10)


def test_batches_of_random_sizes_give_same_solution():
    X, Y = random_problem(m=3000)
    whole = fit(X, Y)
    rng = np.random.default_rng(8)
    acc = ExactAccumulator(4, 3)
    start = 0
    while start < len(X):
        size = int(rng.choice([0, 1, 2, 7, 100, 900]))
        acc.update(X[start : start + size], Y[start : start + size])
        start += size
    s = acc.solve()
    assert acc.n_rows == len(X)
    assert rel_err(params(s.coef, s.intercept), params(whole.coef, whole.intercept)) < 1e-12
    np.testing.assert_allclose(s.rss, whole.rss, rtol=1e-12)


def test_large_batch_is_split_into_blocks_consistently():
    X, Y = random_problem(m=20000, seed=9)
    whole = fit(X, Y)
    coef, intercept = lstsq_fit(X, Y)
    assert rel_err(params(whole.coef, whole.intercept), params(coef, intercept)) < 1e-10
    assert whole.n_rows == 20000


def test_fewer_rows_than_columns_of_augmented_design():
    # p + 1 + k = 8 columns, 5 rows: R stays padded; the fit is determined (p + 1 = 4 <= 5).
    X, Y = random_problem(m=5, p=3, k=4, seed=10)
    acc = ExactAccumulator(3, 4)
    for i in range(5):
        acc.update(X[i : i + 1], Y[i : i + 1])
    s = acc.solve()
    coef, intercept = lstsq_fit(X, Y)
    assert rel_err(params(s.coef, s.intercept), params(coef, intercept)) < 1e-10


def test_merge_equals_one_accumulator_over_all_rows():
    X, Y = random_problem(m=1000, seed=11)
    order = np.argsort(X[:, 0])  # halves with very different means, hence different shifts
    X, Y = X[order], Y[order]
    whole = fit(X, Y)
    a, b = ExactAccumulator(4, 3), ExactAccumulator(4, 3)
    a.update(X[:300], Y[:300])
    b.update(X[300:], Y[300:])
    a.merge(b)
    s = a.solve()
    assert a.n_rows == 1000
    assert rel_err(params(s.coef, s.intercept), params(whole.coef, whole.intercept)) < 1e-12
    np.testing.assert_allclose(s.rss, whole.rss, rtol=1e-12)


def test_merge_into_empty_and_with_empty_accumulator():
    X, Y = random_problem(seed=12)
    whole = fit(X, Y)
    acc = ExactAccumulator(4, 3)
    other = ExactAccumulator(4, 3)
    other.update(X, Y)
    acc.merge(other)
    acc.merge(ExactAccumulator(4, 3))
    s = acc.solve()
    assert acc.n_rows == whole.n_rows
    assert rel_err(params(s.coef, s.intercept), params(whole.coef, whole.intercept)) < 1e-12


def test_merge_of_weighted_parts_equals_weighted_fit():
    X, Y = random_problem(m=600, seed=13)
    w = np.random.default_rng(14).uniform(0.0, 2.0, 600)
    whole = fit(X, Y, w)
    parts = []
    for rows in np.array_split(np.arange(600), 3):
        acc = ExactAccumulator(4, 3)
        acc.update(X[rows] * 1.0, Y[rows], w[rows])
        parts.append(acc)
    parts[2].merge(parts[0])
    parts[2].merge(parts[1])
    s = parts[2].solve()
    assert rel_err(params(s.coef, s.intercept), params(whole.coef, whole.intercept)) < 1e-12


def test_state_round_trip_gives_same_solution_and_merges():
    X, Y = random_problem(seed=15)
    whole = fit(X, Y)
    a, b = ExactAccumulator(4, 3), ExactAccumulator(4, 3)
    a.update(X[:200], Y[:200])
    b.update(X[200:], Y[200:])
    states = [a.state(), b.state()]  # what an all_gather would exchange
    assert states[0].dtype == np.float64 and states[0].shape == states[1].shape
    merged = ExactAccumulator.from_state(states[0])
    merged.merge(ExactAccumulator.from_state(states[1]))
    s = merged.solve()
    assert merged.n_rows == len(X)
    assert rel_err(params(s.coef, s.intercept), params(whole.coef, whole.intercept)) < 1e-12
    np.testing.assert_array_equal(ExactAccumulator.from_state(states[0]).state(), states[0])


def test_state_of_empty_accumulator_has_the_same_length():
    acc = ExactAccumulator(4, 3)
    empty = acc.state()
    acc.update(*random_problem(m=10))
    assert empty.shape == acc.state().shape
    assert ExactAccumulator.from_state(empty).n_rows == 0


def test_float32_input_is_not_rounded_further():
    X, Y = random_problem(seed=16)
    X32, Y32 = X.astype(np.float32), Y.astype(np.float32)
    s32 = fit(X32, Y32)
    s64 = fit(X32.astype(np.float64), Y32.astype(np.float64))
    np.testing.assert_array_equal(s32.coef, s64.coef)
    np.testing.assert_array_equal(s32.intercept, s64.intercept)
    np.testing.assert_array_equal(s32.rss, s64.rss)


def test_float64_input_is_not_rounded_to_float32():
    X, Y = polynomial_problem(np.arange(21.0) * 0.37, 5, noise=1e-3)
    s = fit(X, Y)
    want = params(*exact_lstsq(X, Y))
    rounded = params(*exact_lstsq(X.astype(np.float32).astype(np.float64), Y))
    assert rel_err(params(s.coef, s.intercept), want) < 1e-3 * rel_err(rounded, want)


def test_integer_sample_weights_equal_repeated_rows():
    X, Y = random_problem(m=200, seed=17)
    w = np.random.default_rng(18).integers(0, 4, 200)
    weighted = fit(X, Y, w.astype(np.float64))
    repeated = fit(np.repeat(X, w, axis=0), np.repeat(Y, w, axis=0))
    assert rel_err(weighted.coef, repeated.coef) < 1e-10
    assert rel_err(weighted.intercept, repeated.intercept) < 1e-10
    np.testing.assert_allclose(weighted.rss, repeated.rss, rtol=1e-10)
    assert weighted.n_rows == np.count_nonzero(w)


def test_zero_weight_rows_contribute_nothing():
    X, Y = random_problem(m=100, seed=19)
    w = np.ones(100)
    w[::3] = 0.0
    Xz = X.copy()
    Xz[::3] = 1e6  # wild values at zero weight must not matter
    a = fit(Xz, Y, w)
    b = fit(X[w > 0], Y[w > 0])
    assert rel_err(params(a.coef, a.intercept), params(b.coef, b.intercept)) < 1e-10


def test_collinear_features_raise_input_error_naming_columns():
    rng = np.random.default_rng(20)
    temp, rainfall, wind = rng.uniform(0, 30, (3, 100))
    humidity = 2 * temp - rainfall + 3
    X = np.column_stack([wind, temp, rainfall, humidity])
    Y = rng.standard_normal((100, 1))
    with pytest.raises(InputError, match=r"collinear \(condition number .* > 1e13\)") as info:
        fit(X, Y, feature_names=["wind", "temp", "rainfall", "humidity"])
    message = str(info.value)
    assert "is (nearly) a linear combination of" in message
    assert all(f"'{name}'" in message for name in ["temp", "rainfall", "humidity"])
    assert "'wind'" not in message


def test_collinear_features_without_names_use_positional_names():
    rng = np.random.default_rng(21)
    X = rng.standard_normal((50, 3))
    X[:, 2] = X[:, 0] * 3.0
    with pytest.raises(InputError, match=r"'x[02]' is \(nearly\) a linear combination of 'x[02]'\.") as info:
        fit(X, rng.standard_normal((50, 2)))
    assert "'x1'" not in str(info.value)


def test_constant_feature_with_intercept_raises_input_error():
    rng = np.random.default_rng(22)
    X = np.column_stack([rng.standard_normal(30), np.full(30, 7.5)])
    with pytest.raises(InputError, match=r"'rain' is constant, which duplicates the intercept"):
        fit(X, rng.standard_normal((30, 1)), feature_names=["temp", "rain"])


def test_constant_feature_without_intercept_is_fine():
    rng = np.random.default_rng(23)
    X = np.column_stack([rng.standard_normal(30), np.full(30, 7.5)])
    Y = rng.standard_normal((30, 1))
    s = fit(X, Y, fit_intercept=False)
    assert rel_err(s.coef, lstsq_fit(X, Y, fit_intercept=False)[0]) < 1e-10


def test_ill_conditioned_but_below_limit_does_not_raise_until_rcond_says_so():
    X, Y = polynomial_problem(np.linspace(1.0, 2.0, 30), 10, noise=1e-6)
    s = fit(X, Y)
    assert 1e9 < s.condition_number < 1e13
    with pytest.raises(InputError, match="collinear"):
        fit(X, Y, rcond=1.0 / 1e9)


def test_too_few_rows_raise_input_error():
    X, Y = random_problem(m=4, p=4, k=1)
    with pytest.raises(InputError, match=r"Need at least 5 rows to fit 4 features with an intercept; got 4\."):
        fit(X, Y)
    fit(X, Y, fit_intercept=False)  # 4 rows are enough through the origin


def test_zero_weight_rows_do_not_count_towards_enough_rows():
    X, Y = random_problem(m=6, p=4, k=1)
    with pytest.raises(InputError, match="got 4"):
        fit(X, Y, sample_weight=np.array([1.0, 1.0, 0.0, 1.0, 0.0, 1.0]))


def test_negative_or_nan_weight_raises_input_error():
    X, Y = random_problem(m=10)
    for bad in [-1.0, np.nan]:
        w = np.ones(10)
        w[3] = bad
        with pytest.raises(InputError, match="sample_weight must be finite and non-negative; rows 3"):
            fit(X, Y, w)


def test_nan_in_data_raises_input_error():
    X, Y = random_problem(m=10)
    Y[7, 1] = np.nan
    with pytest.raises(InputError, match="NaN or infinity in rows 7"):
        fit(X, Y)


def test_condition_number_matches_standardized_design():
    X, _ = random_problem(m=300, seed=24)
    X[:, 3] += 0.9 * X[:, 1]  # make it interesting
    Y = np.zeros((300, 1))
    centred = X - X.mean(axis=0)
    want = np.linalg.cond(centred / np.linalg.norm(centred, axis=0))
    assert abs(fit(X, Y).condition_number - want) < 1e-6 * want
    scaled = X / np.linalg.norm(X, axis=0)
    want_origin = np.linalg.cond(scaled)
    assert abs(fit(X, Y, fit_intercept=False).condition_number - want_origin) < 1e-6 * want_origin


def test_condition_number_of_polynomial_design_matches_numpy():
    X, Y = polynomial_problem(np.arange(21.0), 5, noise=1e-3)
    centred = X - X.mean(axis=0)
    want = np.linalg.cond(centred / np.linalg.norm(centred, axis=0))
    assert abs(fit(X, Y).condition_number - want) < 1e-6 * want


def test_zero_feature_without_intercept_raises_input_error():
    rng = np.random.default_rng(25)
    X = np.column_stack([rng.standard_normal(30), np.zeros(30)])
    with pytest.raises(InputError, match=r"'x1' is all zeros"):
        fit(X, rng.standard_normal((30, 1)), fit_intercept=False)
