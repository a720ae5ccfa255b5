"""Inference statistics against exact rational arithmetic, SciPy's t distribution and statsmodels;
singular designs, ridge, sample weights, and the statistics in the output datasets."""

import math
from fractions import Fraction

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import scipy.special
import scipy.stats
import statsmodels.api as sm

from linreg.config import make_config
from linreg.errors import InputError
from linreg.models.exact import ExactAccumulator, SingularDesignWarning
from linreg.models.fit import TrainOptions, fit
from linreg.models.statistics import betainc, statistics, t_quantile, t_sf, t_two_sided_p
from linreg.pipeline import steps
from tests.exact_reference import rational_fit
from tests.helpers import linear_tables

# ---------------------------------------------------------------- the t distribution without SciPy

DOFS = [1, 2, 3, 5, 12, 30, 100, 1000, 2500, 1e5, 1e6, 1e9]


@pytest.mark.parametrize("dof", DOFS)
def test_two_sided_p_matches_scipy(dof):
    for t in [0.0, 1e-3, 0.3, 1.0, 1.7, 1.96, 2.5, 4.0, 9.0, 30.0, 1e3]:
        want = 2 * scipy.stats.t.sf(t, dof)
        if want > 1e-300:
            assert t_two_sided_p(t, dof) == pytest.approx(want, rel=1e-12, abs=0), t
            assert t_two_sided_p(-t, dof) == t_two_sided_p(t, dof)
        assert t_sf(t, dof) == pytest.approx(scipy.stats.t.sf(t, dof), rel=1e-12, abs=0)
        assert t_sf(-t, dof) == pytest.approx(scipy.stats.t.sf(-t, dof), rel=1e-12)


@pytest.mark.parametrize("dof", DOFS)
def test_quantile_matches_scipy(dof):
    for prob in [0.6, 0.9, 0.95, 0.975, 0.995, 0.9999999, 0.025, 0.4]:
        assert t_quantile(prob, dof) == pytest.approx(scipy.stats.t.ppf(prob, dof), rel=1e-12)
    assert t_quantile(0.5, dof) == 0.0


def test_incomplete_beta_matches_scipy():
    rng = np.random.default_rng(0)
    for _ in range(300):
        a, b = 10 ** rng.uniform(-1, 3, 2)
        x = rng.uniform()
        assert betainc(a, b, x) == pytest.approx(scipy.special.betainc(a, b, x), rel=1e-11, abs=1e-300)


def test_degenerate_arguments():
    assert math.isnan(t_two_sided_p(math.nan, 5))
    assert math.isnan(t_two_sided_p(1.0, 0))
    assert t_two_sided_p(math.inf, 5) == 0.0
    assert math.isnan(t_quantile(1.0, 5))


# ---------------------------------------------------------------- statistics against exact arithmetic

def exact_statistics(X, y, w=None, fit_intercept=True):
    """statsmodels/R formulas over Fraction (every float64 is an exact rational): design D = [X, 1] or X.

    Returns beta (q,), std errors (q,), and per-target dof, residual sd, R^2, adjusted R^2, F as floats,
    computed exactly and rounded once (square roots of exact rationals rounded to double).
    """
    fit = rational_fit(X, y, w, fit_intercept)
    cols, ws, inv, beta = fit.columns, fit.weights, fit.inverse, fit.beta[0]
    ys = [Fraction(float(v)) for v in y]
    q = len(cols)
    resid = [yi - sum(beta[j] * cols[j][i] for j in range(q)) for i, yi in enumerate(ys)]
    rss = sum(wi * r * r for wi, r in zip(ws, resid))
    n = sum(1 for wi in ws if wi != 0)
    dof = n - q
    sigma2 = rss / dof
    if fit_intercept:
        ybar = sum(wi * yi for wi, yi in zip(ws, ys)) / sum(ws)
        tss = sum(wi * (yi - ybar) ** 2 for wi, yi in zip(ws, ys))
    else:
        tss = sum(wi * yi * yi for wi, yi in zip(ws, ys))
    c = int(fit_intercept)
    r2 = 1 - rss / tss
    return {
        "beta": np.array([float(b) for b in beta]),
        "se": np.array([math.sqrt(sigma2 * inv[j][j]) for j in range(q)]),
        "dof": dof, "residual_sd": math.sqrt(sigma2), "r2": float(r2),
        "r2_adj": float(1 - (1 - r2) * (n - c) / dof), "f": float(((tss - rss) / (q - c)) / sigma2),
    }


def generated(m=17, p=3, k=2, seed=0, weighted=False):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(m, p)) * [2.0, 30.0, 0.5][:p] + [10.0, -200.0, 3.0][:p]
    Y = X @ rng.normal(size=(p, k)) + rng.normal(size=k) * 5 + rng.normal(size=(m, k))
    w = rng.uniform(0.2, 3.0, m) if weighted else None
    if weighted:
        w[:2] = 0.0  # rows of weight 0 do not count in n
    return X, Y, w


def fitted(X, Y, w=None, fit_intercept=True, trainer="exact", **options):
    batches = [(X, Y) if w is None else (X, Y, w)]
    return fit(batches, trainer=trainer, features=[f"x{j}" for j in range(X.shape[1])],
               targets=[f"y{j}" for j in range(Y.shape[1])],
               options=TrainOptions(fit_intercept=fit_intercept, **options))


@pytest.mark.parametrize("fit_intercept", [True, False])
@pytest.mark.parametrize("weighted", [False, True])
def test_statistics_match_exact_rational_formulas(fit_intercept, weighted):
    X, Y, w = generated(seed=3 + weighted, weighted=weighted)
    result = fitted(X, Y, w, fit_intercept)
    stats = result.stats
    q = X.shape[1] + fit_intercept
    terms = slice(0, q)  # features, then the intercept when there is one
    for j in range(Y.shape[1]):
        want = exact_statistics(X, Y[:, j], w, fit_intercept)
        params = np.append(result.model.coef_[j], result.model.intercept_[j])[terms]
        np.testing.assert_allclose(params, want["beta"], rtol=1e-12)
        np.testing.assert_allclose(stats.std_error[j, terms], want["se"], rtol=1e-12)
        t_want = want["beta"] / want["se"]
        np.testing.assert_allclose(stats.t_value[j, terms], t_want, rtol=1e-12)
        np.testing.assert_allclose(stats.p_value[j, terms], 2 * scipy.stats.t.sf(np.abs(t_want), want["dof"]),
                                   rtol=1e-10)
        half = scipy.stats.t.ppf(0.975, want["dof"]) * want["se"]
        np.testing.assert_allclose(stats.ci_low[j, terms], want["beta"] - half, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(stats.ci_high[j, terms], want["beta"] + half, rtol=1e-12, atol=1e-12)
        assert stats.dof == want["dof"] == (X.shape[0] - (2 if weighted else 0)) - q
        for name in ("residual_sd", "r2", "r2_adj"):
            assert getattr(stats, name)[j] == pytest.approx(want[name], rel=1e-12)
        assert stats.f_statistic[j] == pytest.approx(want["f"], rel=1e-11)
    if not fit_intercept:  # the intercept of a fit through the origin is not estimated
        assert np.isnan(stats.std_error[:, -1]).all() and np.isnan(stats.p_value[:, -1]).all()
    assert stats.design_rank == q


@pytest.mark.parametrize("fit_intercept", [True, False])
@pytest.mark.parametrize("weighted", [False, True])
def test_statistics_match_statsmodels(fit_intercept, weighted):
    X, Y, w = generated(m=60, seed=7, weighted=weighted)
    if weighted:
        w[:2] = 0.5  # statsmodels counts zero-weight rows in nobs; R and we do not
    stats = fitted(X, Y, w, fit_intercept, confidence=0.9).stats
    design = sm.add_constant(X, prepend=False) if fit_intercept else X
    q = design.shape[1]
    for j in range(Y.shape[1]):
        model = sm.WLS(Y[:, j], design, weights=w) if weighted else sm.OLS(Y[:, j], design)
        res = model.fit()
        np.testing.assert_allclose(stats.std_error[j, :q], res.bse, rtol=1e-11)
        np.testing.assert_allclose(stats.t_value[j, :q], res.tvalues, rtol=1e-11)
        np.testing.assert_allclose(stats.p_value[j, :q], res.pvalues, rtol=1e-9)
        np.testing.assert_allclose(stats.ci_low[j, :q], res.conf_int(alpha=0.1)[:, 0], rtol=1e-11)
        np.testing.assert_allclose(stats.ci_high[j, :q], res.conf_int(alpha=0.1)[:, 1], rtol=1e-11)
        assert stats.r2[j] == pytest.approx(res.rsquared, rel=1e-12)  # uncentred without a constant
        assert stats.r2_adj[j] == pytest.approx(res.rsquared_adj, rel=1e-12)
        assert stats.f_statistic[j] == pytest.approx(res.fvalue, rel=1e-10)
        assert stats.residual_sd[j] == pytest.approx(math.sqrt(res.scale), rel=1e-12)
        assert stats.dof == res.df_resid


def test_gradient_trainer_statistics_use_its_own_residuals():
    X, Y, w = generated(m=200, seed=9, weighted=True)
    result = fitted(X, Y, w, trainer="nn")
    model, stats = result.model, result.stats
    resid = Y - model.predict(X)
    rss = w @ resid**2
    n_pos = np.count_nonzero(w)
    np.testing.assert_allclose(result.exact.factor.rss(model.coef_, model.intercept_), rss, rtol=1e-10)
    np.testing.assert_allclose(stats.residual_sd, np.sqrt(rss / (n_pos - 4)), rtol=1e-10)
    exact = fitted(X, Y, w).stats
    # Same design factor: standard errors scale with the residual SD only.
    np.testing.assert_allclose(stats.std_error / stats.residual_sd[:, None],
                               exact.std_error / exact.residual_sd[:, None], rtol=1e-12)
    params = np.hstack([model.coef_, model.intercept_[:, None]])
    np.testing.assert_allclose(stats.t_value, params / stats.std_error, rtol=1e-12)


def test_rss_identity_matches_direct_sums_for_any_coefficients():
    X, Y, w = generated(m=80, seed=11, weighted=True)
    for fit_intercept in (True, False):
        factor = fitted(X, Y, w, fit_intercept).exact.factor
        rng = np.random.default_rng(12)
        coef = factor.ls_coef + rng.normal(size=factor.ls_coef.shape) * 1e-3
        intercept = factor.ls_intercept + (rng.normal(size=2) if fit_intercept else 0)
        direct = w @ (Y - X @ coef.T - intercept) ** 2
        np.testing.assert_allclose(factor.rss(coef, intercept), direct, rtol=1e-10)


# ---------------------------------------------------------------- singular designs

def collinear_problem(seed=20):
    rng = np.random.default_rng(seed)
    temp, rainfall, wind = rng.uniform(0, 30, (3, 60))
    humidity = 2 * temp - rainfall + 3
    X = np.column_stack([wind, temp, rainfall, humidity])
    Y = X[:, :3] @ rng.normal(size=(3, 2)) + rng.normal(size=(60, 2))
    return X, Y, ["wind", "temp", "rainfall", "humidity"]


def test_collinear_feature_is_an_error_naming_it_by_default():
    X, Y, names = collinear_problem()
    with pytest.raises(InputError, match=r"collinear .*'humidity'.*--singular min_norm") as info:
        fit([(X, Y)], trainer="exact", features=names, targets=["a", "b"])
    assert "'wind'" not in str(info.value)


def test_min_norm_option_warns_and_predicts_as_lstsq():
    X, Y, names = collinear_problem()
    with pytest.warns(SingularDesignWarning, match="minimum-norm"):
        result = fit([(X, Y)], trainer="exact", features=names, targets=["a", "b"],
                     options=TrainOptions(singular="min_norm"))
    A = np.hstack([X, np.ones((len(X), 1))])
    sol = np.linalg.lstsq(A, Y, rcond=None)[0]
    np.testing.assert_allclose(result.model.predict(X), A @ sol, rtol=1e-10)
    # New rows that keep the dependence (humidity = 2 temp - rainfall + 3) are predicted alike too.
    new = np.random.default_rng(1).uniform(0, 30, (5, 3))
    Xn = np.column_stack([new, 2 * new[:, 1] - new[:, 2] + 3])
    np.testing.assert_allclose(result.model.predict(Xn), np.hstack([Xn, np.ones((5, 1))]) @ sol, rtol=1e-10)
    # temp, rainfall, humidity and the intercept (which trades off with the constant 3) are aliased.
    aliased = result.exact.factor.aliased
    assert aliased.tolist() == [False, True, True, True, True]
    assert np.isnan(result.stats.std_error[:, 1:]).all() and np.isfinite(result.stats.std_error[:, 0]).all()
    assert result.stats.design_rank == 4 and result.stats.dof == 60 - 4


def test_min_norm_standard_errors_of_estimable_terms_equal_those_without_the_duplicate():
    X, Y, w = generated(m=40, seed=21, weighted=True)
    dup = np.column_stack([X, X[:, 1]])
    with pytest.warns(SingularDesignWarning):
        result = fitted(dup, Y, w, singular="min_norm")
    reference = fitted(X, Y, w)
    np.testing.assert_allclose(result.model.predict(dup), reference.model.predict(X), rtol=1e-10)
    # Minimum norm splits the duplicated coefficient equally.
    np.testing.assert_allclose(result.model.coef_[:, [1, 3]], reference.model.coef_[:, [1, 1]] / 2, rtol=1e-9)
    kept = [0, 2, 4]  # x0, x2, intercept (index 4 in dup, 3 in the reference)
    np.testing.assert_allclose(result.stats.std_error[:, kept], reference.stats.std_error[:, [0, 2, 3]], rtol=1e-9)
    assert np.isnan(result.stats.std_error[:, [1, 3]]).all()
    assert result.stats.dof == reference.stats.dof


def test_constant_feature_min_norm_has_zero_weight_and_aliases_the_intercept():
    X, Y, _ = generated(m=30, seed=22)
    X[:, 2] = 7.5
    with pytest.warns(SingularDesignWarning, match="'x2'"):
        result = fitted(X, Y, singular="min_norm")
    assert np.all(result.model.coef_[:, 2] == 0)
    assert result.exact.factor.aliased.tolist() == [False, False, True, True]


def test_ill_conditioned_polynomial_is_solved_with_statistics():
    x = np.linspace(1.0, 2.0, 40)
    X = np.column_stack([x**j for j in range(1, 8)])
    y = np.polyval(np.random.default_rng(2).uniform(-1, 1, 8), x) + 1e-3 * np.random.default_rng(3).normal(size=40)
    result = fitted(X, y[:, None])
    assert 1e7 < result.stats.condition_number < 1e13
    res = sm.OLS(y, sm.add_constant(X, prepend=False)).fit()
    np.testing.assert_allclose(result.stats.std_error[0], res.bse, rtol=1e-5)  # degrades gracefully


# ---------------------------------------------------------------- ridge

def ridge_closed_form(X, Y, alpha, w=None, fit_intercept=True):
    """argmin sum w r^2 / sum w + alpha * sum (beta * sd)^2 by its normal equations, in standardized units."""
    w = np.ones(len(X)) if w is None else w
    W = w.sum()
    mx = w @ X / W if fit_intercept else np.zeros(X.shape[1])
    my = w @ Y / W if fit_intercept else np.zeros(Y.shape[1])
    sd = np.sqrt(w @ (X - mx) ** 2 / W)  # root mean square through the origin
    Z = (X - mx) / sd
    b = np.linalg.solve(Z.T @ (Z * w[:, None]) / W + alpha * np.eye(X.shape[1]), Z.T @ ((Y - my) * w[:, None]) / W)
    coef = (b / sd[:, None]).T
    return coef, my - coef @ mx


def ridge_objective(coef, intercept, X, Y, alpha, w, fit_intercept=True):
    W = w.sum()
    mx = w @ X / W if fit_intercept else 0.0
    sd = np.sqrt(w @ (X - mx) ** 2 / W)
    return w @ (Y - X @ coef.T - intercept) ** 2 / W + alpha * ((coef * sd) ** 2).sum(axis=1)


@pytest.mark.parametrize("fit_intercept", [True, False])
@pytest.mark.parametrize("weighted", [False, True])
def test_exact_ridge_equals_closed_form(fit_intercept, weighted):
    X, Y, w = generated(m=300, seed=30, weighted=weighted)
    for alpha in (0.01, 1.0, 50.0):
        result = fitted(X, Y, w, fit_intercept, l2=alpha)
        coef, intercept = ridge_closed_form(X, Y, alpha, w, fit_intercept)
        np.testing.assert_allclose(result.model.coef_, coef, rtol=1e-10)
        np.testing.assert_allclose(result.model.intercept_, intercept if fit_intercept else 0, rtol=1e-10)
        wts = np.ones(len(X)) if w is None else w
        np.testing.assert_allclose(result.exact.rss, wts @ (Y - result.model.predict(X)) ** 2, rtol=1e-10)
        assert np.isnan(result.stats.std_error).all()  # no t statistics for a biased estimator


@pytest.mark.parametrize("trainer", ["manual", "nn"])
@pytest.mark.parametrize("weighted", [False, True])
def test_gradient_trainer_ridge_reaches_the_closed_form(trainer, weighted):
    X, Y, w = generated(m=2000, seed=31, weighted=weighted)
    wts = np.ones(len(X)) if w is None else w
    unregularized = fitted(X, Y, w).model.coef_
    for alpha in (0.1, 3.0):
        result = fitted(X, Y, w, trainer=trainer, l2=alpha)
        coef, intercept = ridge_closed_form(X, Y, alpha, w)
        best = ridge_objective(coef, intercept, X, Y, alpha, wts)
        got = ridge_objective(result.model.coef_, result.model.intercept_, X, Y, alpha, wts)
        assert np.all(got <= best * 1.001) and np.all(got >= best * (1 - 1e-12)), (got / best - 1)
        # Measured against the shrinkage itself (observed: manual 1e-6; nn 2.6e-2 when it stopped on the full
        # loss, 6.3e-2 since it stops on the mean of its batch losses, as scikit-learn's SGD), so a penalty
        # off by a factor (a wrong scaling: 50% and more) fails.
        off = np.linalg.norm(result.model.coef_ - coef) / np.linalg.norm(coef - unregularized)
        assert off <= (1e-4 if trainer == "manual" else 0.1), off


@pytest.mark.parametrize("trainer", ["exact", "manual", "nn"])
def test_l2_zero_is_the_unregularized_fit(trainer):
    X, Y, w = generated(m=500, seed=32, weighted=True)
    plain = fitted(X, Y, w, trainer=trainer)
    zero = fitted(X, Y, w, trainer=trainer, l2=0.0)
    np.testing.assert_array_equal(zero.model.coef_, plain.model.coef_)
    np.testing.assert_array_equal(zero.model.intercept_, plain.model.intercept_)
    assert np.isfinite(zero.stats.std_error).all()


def test_ridge_solves_a_collinear_design_without_error():
    X, Y, names = collinear_problem()
    result = fit([(X, Y)], trainer="exact", features=names, targets=["a", "b"], options=TrainOptions(l2=0.5))
    coef, intercept = ridge_closed_form(X, Y, 0.5)
    np.testing.assert_allclose(result.model.coef_, coef, rtol=1e-9)
    assert result.stats.design_rank == 4


# ---------------------------------------------------------------- sample weights

@pytest.mark.parametrize("trainer", ["manual", "nn"])
def test_integer_weights_reach_the_repeated_rows_optimum(trainer):
    X, Y, _ = generated(m=400, seed=40)
    counts = np.random.default_rng(41).integers(0, 4, len(X))
    weighted = fitted(X, Y, counts.astype(np.float64), trainer=trainer)
    repeated_exact = fitted(np.repeat(X, counts, axis=0), np.repeat(Y, counts, axis=0))
    rows_x, rows_y = np.repeat(X, counts, axis=0), np.repeat(Y, counts, axis=0)
    optimum = ((rows_y - repeated_exact.model.predict(rows_x)) ** 2).mean(axis=0)
    got = ((rows_y - weighted.model.predict(rows_x)) ** 2).mean(axis=0)
    assert np.all(got <= 1.01 * optimum), got / optimum
    np.testing.assert_allclose(weighted.exact.coef, repeated_exact.exact.coef, rtol=1e-10)


def test_weighted_standardization_moments():
    from linreg.models.standardize import Moments

    rng = np.random.default_rng(42)
    rows, w = rng.normal(size=(500, 3)) * [1, 5, 0.1] + [2, -3, 7], rng.uniform(0, 2, 500)
    whole, parts = Moments(3), Moments(3)
    whole.update(rows, w)
    for i in range(0, 500, 97):
        parts.update(rows[i:i + 97], w[i:i + 97])
    mean = np.average(rows, axis=0, weights=w)
    for m in (whole, parts):
        assert m.n == 500 and m.weight == pytest.approx(w.sum())
        np.testing.assert_allclose(m.mean, mean, rtol=1e-12)
        np.testing.assert_allclose(m.std, np.sqrt(np.average((rows - mean) ** 2, axis=0, weights=w)), rtol=1e-12)


def test_merged_weighted_accumulators_give_the_same_statistics():
    X, Y, w = generated(m=300, seed=43, weighted=True)
    whole = ExactAccumulator(3, 2)
    whole.update(X, Y, w)
    parts = [ExactAccumulator(3, 2) for _ in range(3)]
    for acc, rows in zip(parts, np.array_split(np.arange(300), 3)):
        acc.update(X[rows], Y[rows], w[rows])
    merged = ExactAccumulator.from_state(parts[0].state())
    for acc in parts[1:]:
        merged.merge(ExactAccumulator.from_state(acc.state()))
    a, b = whole.solve(l2=0.3), merged.solve(l2=0.3)
    np.testing.assert_allclose(b.coef, a.coef, rtol=1e-12)
    sa, sb = (statistics(s.factor, s.factor.ls_coef, s.factor.ls_intercept) for s in (a, b))
    np.testing.assert_allclose(sb.std_error, sa.std_error, rtol=1e-11)
    np.testing.assert_allclose(sb.r2_adj, sa.r2_adj, rtol=1e-12)


# ---------------------------------------------------------------- through the pipeline

def weighted_tables(tmp_path, weights):
    w, y, _, _ = linear_tables(tmp_path, rows=120, regions=12)
    table = pq.read_table(f"{y}/part-0.parquet")
    pq.write_table(table.append_column("wt", pa.array(weights)), f"{y}/part-0.parquet")
    return w, y


def test_outputs_carry_statistics_with_documented_types(tmp_path):
    counts = np.random.default_rng(50).integers(1, 4, 120).astype(np.int64)
    w, y = weighted_tables(tmp_path, counts)
    out = tmp_path / "out"
    steps.run(make_config(weather=w, yields=y, output=str(out), run_id="weighted", weight_column="wt"))
    steps.run(make_config(weather=w, yields=y, output=str(out), run_id="ridge", l2=0.1, trainer="manual"))
    con = duckdb.connect()
    rel = con.sql(f"SELECT * FROM read_parquet('{out}/weights/*/*.parquet', hive_partitioning=true)")
    types = dict(zip(rel.columns, map(str, rel.types)))
    for name in ("weight", "std_error", "t_value", "p_value", "ci_low", "ci_high"):
        assert types[name] == "DOUBLE"
    nulls = dict(con.sql(f"SELECT run_id, count(*) FILTER (WHERE std_error IS NULL) FROM read_parquet("
                         f"'{out}/weights/*/*.parquet', hive_partitioning=true) GROUP BY run_id").fetchall())
    assert nulls == {"weighted": 0, "ridge": 8}  # ridge: no t statistics

    # The statistics of the weighted run equal statsmodels' WLS on the training rows.
    preds = con.sql(f"SELECT * FROM read_parquet('{out}/predictions/run_id=weighted/*.parquet') "
                    "WHERE split = 'train' ORDER BY region, year").to_arrow_table()
    weather = con.sql(f"SELECT * FROM read_parquet('{w}/*.parquet') ORDER BY region, year").to_arrow_table()
    keys = set(zip(preds["region"].to_pylist(), preds["year"].to_pylist()))
    mask = np.array([k in keys for k in zip(weather["region"].to_pylist(), weather["year"].to_pylist())])
    X = np.column_stack([weather[c].to_numpy()[mask] for c in ("temp", "rainfall", "humidity")])
    res = sm.WLS(preds["apples"].to_numpy(), sm.add_constant(X, prepend=False), weights=preds["wt"].to_numpy()).fit()
    got = con.sql(f"SELECT std_error, p_value FROM read_parquet('{out}/weights/run_id=weighted/*.parquet') "
                  "WHERE target = 'apples'").fetchall()
    np.testing.assert_allclose([g[0] for g in got], res.bse, rtol=1e-9)
    np.testing.assert_allclose([g[1] for g in got], res.pvalues, rtol=1e-6, atol=1e-300)

    metrics = dict(((m, t), v) for m, t, v in con.sql(
        f"SELECT metric, target, value FROM read_parquet('{out}/metrics/run_id=weighted/*.parquet') "
        "WHERE split = 'train' AND region IS NULL").fetchall())
    assert metrics[("dof", "apples")] == res.df_resid
    assert metrics[("r2_adj", "apples")] == pytest.approx(res.rsquared_adj, rel=1e-10)
    assert metrics[("r2", "apples")] == pytest.approx(res.rsquared, rel=1e-10)
    assert metrics[("f_statistic", "apples")] == pytest.approx(res.fvalue, rel=1e-9)
    assert metrics[("residual_sd", "apples")] == pytest.approx(math.sqrt(res.scale), rel=1e-10)
    assert metrics[("design_rank", None)] == 4 and metrics[("condition_number", None)] >= 1
    resid = preds["apples"].to_numpy() - preds["apples_pred"].to_numpy()
    wt = preds["wt"].to_numpy()
    assert metrics[("mse", "apples")] == pytest.approx(wt @ resid**2 / wt.sum(), rel=1e-12)  # weighted MSE


def test_no_intercept_training_r2_is_uncentred(tmp_path):
    w, y, _, _ = linear_tables(tmp_path, rows=100, regions=10)
    out = tmp_path / "out"
    steps.run(make_config(weather=w, yields=y, output=str(out), run_id="origin", fit_intercept=False))
    con = duckdb.connect()
    preds = con.sql(f"SELECT apples, apples_pred FROM read_parquet('{out}/predictions/*/*.parquet') "
                    "WHERE split = 'train'").fetchnumpy()
    r2 = con.sql(f"SELECT value FROM read_parquet('{out}/metrics/*/*.parquet') WHERE split = 'train' "
                 "AND region IS NULL AND target = 'apples' AND metric = 'r2'").fetchall()[0][0]
    resid = preds["apples"] - preds["apples_pred"]
    assert r2 == pytest.approx(1 - resid @ resid / (preds["apples"] @ preds["apples"]), rel=1e-12)


@pytest.mark.parametrize("bad, message", [
    (-1.0, r"weight column 'wt' has 1 negative value\(s\) in file '.*part-0.parquet', in rows with keys \('R"),
    (None, r"column 'wt' has 1 null, NaN or infinite value\(s\) in file '.*part-0.parquet', in rows with keys"),
    (math.nan, r"column 'wt' has 1 null, NaN or infinite value"),
])
def test_bad_weights_are_clear_errors(tmp_path, bad, message):
    weights = [1.0] * 120
    weights[17] = bad
    w, y = weighted_tables(tmp_path, pa.array(weights, pa.float64()))
    with pytest.raises(InputError, match=message):
        steps.run(make_config(weather=w, yields=y, output=str(tmp_path / "out"), weight_column="wt"))
    assert not (tmp_path / "out" / "weights").exists()


def test_all_zero_weights_and_missing_weight_column_are_clear_errors(tmp_path):
    w, y = weighted_tables(tmp_path, np.zeros(120))
    with pytest.raises(InputError, match=r"every value of the weight column 'wt' is 0"):
        steps.run(make_config(weather=w, yields=y, output=str(tmp_path / "out"), weight_column="wt"))
    with pytest.raises(InputError, match=r"has no column 'mass'"):
        steps.run(make_config(weather=w, yields=y, output=str(tmp_path / "out"), weight_column="mass"))
    with pytest.raises(InputError, match=r"'apples' is both a target and a weight column"):
        make_config(weather=w, yields=y, weight_column="apples")
