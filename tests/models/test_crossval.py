"""Cross-validation from one factor per fold (`linreg.models.crossval`, `fit(cv_folds=...)`): every fold's score
and model against refits computed here fold by fold on the rows (numpy lstsq; an independent ridge), the
chosen l2 against the test's own curve, the passes the fit makes, the errors, and two ranks against one."""

from __future__ import annotations

import numpy as np
import pytest

from linreg.errors import InputError
from linreg.inputs import shard
from linreg.models.crossval import CrossValidation, cross_validate, fold_rss
from linreg.models.exact import ExactAccumulator, GramAccumulator
from linreg.models.fit import TrainOptions, fit
from linreg.parallel import dist

RTOL = 1e-9
L2S = [0.0, 0.01, 0.1, 1.0, 10.0]


def region_rows(seed=0, regions=30, p=3, k=2, folds=4, weighted=False, collinear=False, noise=1.0, coef_scale=1.0):
    """Rows of `regions` regions (5 to 40 rows each), each region in one of `folds` folds (seeded).
    Returns region (n,), fold (n,), X (n, p), Y (n, k), w (n,) or None."""
    rng = np.random.default_rng(seed)
    counts = rng.integers(5, 40, size=regions)
    region = np.repeat(np.arange(regions), counts)
    fold = (rng.permutation(regions) % folds)[region]
    n = len(region)
    X = rng.normal(size=(n, p)) * rng.uniform(0.5, 3.0, size=p) + rng.uniform(-5, 5, size=p)
    if collinear:  # the second feature nearly the first: condition number of [1, X] in the thousands
        X[:, 1] = X[:, 0] + 1e-3 * rng.normal(size=n)
    B = coef_scale * rng.normal(size=(k, p))
    Y = X @ B.T + rng.normal(size=k) + noise * rng.normal(size=(n, k))
    w = rng.uniform(0.2, 3.0, size=n) if weighted else None
    return region, fold, X, Y, w


def refit(X, Y, w, l2, fit_intercept):
    """(coef (k, p), intercept (k,)) minimizing sum w r^2 + l2 * W * sum (beta_j s_j)^2, computed on the rows:
    s the (weighted, ddof=0) standard deviation with an intercept, the root mean square without one (the
    scale of the columns the solver standardizes by). l2 = 0: numpy lstsq of sqrt(w) [1, X] on sqrt(w) Y."""
    w = np.ones(len(X)) if w is None else w
    sw = np.sqrt(w)[:, None]
    k = Y.shape[1]
    if l2 == 0:
        A = np.hstack([np.ones((len(X), 1)), X]) if fit_intercept else X
        theta = np.linalg.lstsq(sw * A, sw * Y, rcond=None)[0]
        return (theta[1:].T, theta[0]) if fit_intercept else (theta.T, np.zeros(k))
    W = w.sum()
    x_mean = np.average(X, axis=0, weights=w) if fit_intercept else np.zeros(X.shape[1])
    y_mean = np.average(Y, axis=0, weights=w) if fit_intercept else np.zeros(k)
    Xc, Yc = X - x_mean, Y - y_mean
    s = np.sqrt(np.average(Xc**2, axis=0, weights=w))
    p = X.shape[1]
    A = np.vstack([sw * (Xc / s), np.sqrt(l2 * W) * np.eye(p)])
    B = np.vstack([sw * Yc, np.zeros((p, k))])
    beta = np.linalg.lstsq(A, B, rcond=None)[0] / s[:, None]  # (p, k)
    return beta.T, y_mean - x_mean @ beta


def reference_cv(X, Y, w, fold, K, l2s, fit_intercept):
    """The test's own cross-validation: rss (L, K, k), weight sums (K,), coef (L, K, k, p), intercept (L, K, k),
    and out-of-fold predictions (L, n, k), from refits on the rows of the other folds."""
    w1 = np.ones(len(X)) if w is None else w
    L, k, p = len(l2s), Y.shape[1], X.shape[1]
    rss, coef, intercept = np.empty((L, K, k)), np.empty((L, K, k, p)), np.empty((L, K, k))
    oof = np.empty((L,) + Y.shape)
    for i, l2 in enumerate(l2s):
        for f in range(K):
            out = fold == f
            coef[i, f], intercept[i, f] = refit(X[~out], Y[~out], None if w is None else w[~out], l2, fit_intercept)
            oof[i, out] = X[out] @ coef[i, f].T + intercept[i, f]
            rss[i, f] = np.sum(w1[out][:, None] * (Y[out] - oof[i, out]) ** 2, axis=0)
    weight_sum = np.array([w1[fold == f].sum() for f in range(K)])
    return rss, weight_sum, coef, intercept, oof


def fold_accumulators(X, Y, w, fold, K, fit_intercept, kind=ExactAccumulator, batch=53):
    accs = [kind(X.shape[1], Y.shape[1], fit_intercept=fit_intercept) for _ in range(K)]
    for f in range(K):
        rows = np.flatnonzero(fold == f)
        for start in range(0, len(rows), batch):
            part = rows[start:start + batch]
            accs[f].update(X[part], Y[part], None if w is None else w[part])
    return accs


def batches_of(X, Y, w, fold, size=61):
    """A function returning a new iterable of (X, Y, w, fold) batches (fit's two-pass form)."""
    def passes():
        for start in range(0, len(X), size):
            part = slice(start, start + size)
            yield X[part], Y[part], None if w is None else w[part], fold[part]
    return passes


def assert_close(got, want, rtol=RTOL):
    got, want = np.asarray(got, dtype=float), np.asarray(want, dtype=float)
    assert got.shape == want.shape
    scale = np.max(np.abs(want))
    assert np.max(np.abs(got - want)) <= rtol * scale, (np.max(np.abs(got - want)) / scale, got, want)


# ---------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("fit_intercept", [True, False])
@pytest.mark.parametrize("weighted", [False, True])
def test_fold_rss_equals_the_residuals_of_the_rows(fit_intercept, weighted):
    _, _, X, Y, w = region_rows(seed=1, weighted=weighted)
    acc = fold_accumulators(X, Y, w, np.zeros(len(X), int), 1, fit_intercept)[0]
    rng = np.random.default_rng(5)
    w1 = np.ones(len(X)) if w is None else w
    for _ in range(3):  # any model, not only the fit
        coef, intercept = rng.normal(size=(2, 3)), rng.normal(size=2) * 3 * fit_intercept
        want = np.sum(w1[:, None] * (Y - X @ coef.T - intercept) ** 2, axis=0)
        assert_close(fold_rss(acc, coef, intercept), want)
    # at the fold's own least-squares optimum too (the smallest residuals: the most cancellation)
    coef, intercept = refit(X, Y, w, 0.0, fit_intercept)
    want = np.sum(w1[:, None] * (Y - X @ coef.T - intercept) ** 2, axis=0)
    assert_close(fold_rss(acc, coef, intercept), want)


@pytest.mark.parametrize("fit_intercept", [True, False])
def test_fold_rss_of_a_rank_deficient_fold(fit_intercept):
    _, _, X, Y, w = region_rows(seed=2, p=4)
    X, Y, w = X[:3], Y[:3], np.array([1.0, 0.0, 2.5])  # 3 rows (one of zero weight) for 4 features
    X = X.copy()
    X[:, 3] = 2 * X[:, 0]  # and collinear columns
    acc = ExactAccumulator(4, 2, fit_intercept=fit_intercept)
    acc.update(X, Y, w)
    coef, intercept = np.arange(8.0).reshape(2, 4) / 7 - 0.3, np.array([0.5, -4.0]) * fit_intercept
    want = np.sum(w[:, None] * (Y - X @ coef.T - intercept) ** 2, axis=0)
    assert_close(fold_rss(acc, coef, intercept), want)
    assert np.all(fold_rss(ExactAccumulator(4, 2, fit_intercept=fit_intercept), coef, intercept) == 0)  # no rows


@pytest.mark.parametrize("fit_intercept", [True, False])
@pytest.mark.parametrize("weighted", [False, True])
def test_cross_validate_equals_refits_fold_by_fold(fit_intercept, weighted):
    K = 4
    _, fold, X, Y, w = region_rows(seed=3, folds=K, weighted=weighted)
    accs = fold_accumulators(X, Y, w, fold, K, fit_intercept)
    before = [acc.state() for acc in accs]
    rss, weight_sum, coef, intercept, oof = reference_cv(X, Y, w, fold, K, L2S, fit_intercept)
    cv = cross_validate(accs, L2S, feature_names=["a", "b", "c"], rcond=1e-13, singular="error",
                        weight_sums=weight_sum if weighted and not fit_intercept else None)

    assert all(np.array_equal(a.state(), b) for a, b in zip(accs, before))  # the inputs are left as they are
    assert cv.rss.shape == (len(L2S), K, 2)
    assert_close(cv.rss, rss)
    assert_close(cv.weight_sum, weight_sum)
    assert cv.rows.tolist() == [int(np.sum(fold == f)) for f in range(K)]
    assert_close(cv.mse(), rss / weight_sum[None, :, None])
    pooled = rss.sum(axis=1) / weight_sum.sum()
    assert_close(cv.pooled_mse(), pooled)
    assert_close(cv.score(), pooled.mean(axis=1))
    # the chosen l2 is the argmin of the test's own curve, and the fold models there are the refits
    i = int(np.argmin(pooled.mean(axis=1)))
    assert cv.chosen == i and cv.chosen_l2 == L2S[i]
    assert_close(cv.coef, coef[i])
    assert_close(cv.intercept, intercept[i])
    predicted = np.empty_like(Y)
    for f in range(K):
        predicted[fold == f] = X[fold == f] @ cv.coef[f].T + cv.intercept[f]
    assert_close(predicted, oof[i])  # out-of-fold predictions, as cross_val_predict gives them


def test_table_rows_hold_every_fold_target_and_pool():
    K, targets = 3, ["apples", "oranges"]
    _, fold, X, Y, w = region_rows(seed=4, folds=K, weighted=True)
    rss, weight_sum, *_ = reference_cv(X, Y, w, fold, K, [0.0, 1.0], True)
    cv = cross_validate(fold_accumulators(X, Y, w, fold, K, True), [0.0, 1.0], feature_names=["a", "b", "c"],
                        rcond=1e-13, singular="error")
    rows = cv.table_rows(targets)
    assert len(rows) == 2 * (K * (len(targets) + 1) + len(targets) + 1)
    assert all(set(r) == {"l2", "fold", "target", "mse", "rows"} for r in rows)
    by_key = {(r["l2"], r["fold"], r["target"]): r for r in rows}
    assert len(by_key) == len(rows)
    n_fold = [int(np.sum(fold == f)) for f in range(K)]
    for i, l2 in enumerate([0.0, 1.0]):
        mse = rss[i] / weight_sum[:, None]
        pooled = rss[i].sum(axis=0) / weight_sum.sum()
        for f in range(K):
            for j, t in enumerate(targets):
                assert by_key[(l2, f, t)]["rows"] == n_fold[f]
                assert by_key[(l2, f, t)]["mse"] == pytest.approx(mse[f, j], rel=RTOL)
            assert by_key[(l2, f, None)]["mse"] == pytest.approx(mse[f].mean(), rel=RTOL)
        for j, t in enumerate(targets):
            assert by_key[(l2, None, t)]["mse"] == pytest.approx(pooled[j], rel=RTOL)
            assert by_key[(l2, None, t)]["rows"] == len(X)
        assert by_key[(l2, None, None)]["mse"] == pytest.approx(pooled.mean(), rel=RTOL)
    assert all(isinstance(r["rows"], int) and isinstance(r["mse"], float) for r in rows)


def test_ties_choose_the_smallest_l2():
    cv = CrossValidation(l2s=np.array([1.0, 0.1, 0.5]), rss=np.ones((3, 2, 1)), weight_sum=np.ones(2),
                         rows=np.array([1, 1]), chosen=0, coef=np.zeros((2, 1, 1)), intercept=np.zeros((2, 1)))
    assert np.all(cv.score() == 1.0)
    # cross_validate with equal scores: a constant feature's coefficient is shrunk, nothing else changes
    _, fold, X, Y, _ = region_rows(seed=6, folds=2, p=1, k=1)
    X = np.zeros_like(X)  # every fit is the fold's mean whatever l2: equal scores
    got = cross_validate(fold_accumulators(X, Y, None, fold, 2, True), [1.0, 0.1, 0.5], feature_names=["a"],
                         rcond=1e-13, singular="min_norm")
    assert np.ptp(got.score()) == 0
    assert got.chosen_l2 == 0.1


@pytest.mark.parametrize("fit_intercept", [True, False])
@pytest.mark.parametrize("weighted", [False, True])
def test_fit_cross_validates_in_one_pass_and_fits_all_rows_at_the_chosen_l2(fit_intercept, weighted):
    K = 5
    # many features, few rows, small effects: ridge helps, so the curve has its minimum inside the path
    _, fold, X, Y, w = region_rows(seed=7, regions=25, p=10, k=2, folds=K, weighted=weighted, noise=3.0,
                                   coef_scale=0.15)
    l2s = [0.0, 0.01, 0.1, 0.3, 1.0, 3.0, 10.0, 100.0]
    features = [f"x{j}" for j in range(10)]
    rss, weight_sum, coef, intercept, _ = reference_cv(X, Y, w, fold, K, l2s, fit_intercept)
    curve = (rss.sum(axis=1) / weight_sum.sum()).mean(axis=1)
    best = int(np.argmin(curve))
    assert 0 < best < len(l2s) - 1  # the data make a choice that could go wrong either way

    result = fit(batches_of(X, Y, w, fold), trainer="exact", features=features, targets=["y0", "y1"],
                 options=TrainOptions(fit_intercept=fit_intercept), cv_folds=K, l2s=l2s)
    assert result.passes == 1  # well conditioned: the Gram matrices of every fold and the total are trusted
    cv = result.cv
    assert_close(cv.rss, rss)
    assert_close(cv.weight_sum, weight_sum)
    assert cv.chosen == best and cv.chosen_l2 == l2s[best]
    assert_close(cv.coef, coef[best])
    assert_close(cv.intercept, intercept[best])
    # the model: the ridge fit on every training row at the chosen value; its statistics know it is ridge
    want_coef, want_intercept = refit(X, Y, w, l2s[best], fit_intercept)
    assert_close(result.model.coef_, want_coef)
    assert_close(result.model.intercept_, want_intercept)
    assert result.exact.l2 == l2s[best] and result.train_rows == len(X)
    assert result.stats is not None

    # the one-pass (iterable) form: per-fold streaming QR, the same numbers
    once = fit(batches_of(X, Y, w, fold)(), trainer="exact", features=features, targets=["y0", "y1"],
               options=TrainOptions(fit_intercept=fit_intercept), cv_folds=K, l2s=l2s)
    assert once.passes == 1
    assert_close(once.cv.rss, rss)
    assert_close(once.model.coef_, want_coef)


def test_fit_without_l2s_cross_validates_options_l2():
    _, fold, X, Y, _ = region_rows(seed=8, folds=3)
    result = fit(batches_of(X, Y, None, fold), trainer="exact", features=["a", "b", "c"], targets=["y0", "y1"],
                 options=TrainOptions(l2=0.5), cv_folds=3)
    rss, *_ = reference_cv(X, Y, None, fold, 3, [0.5], True)
    assert result.cv.l2s.tolist() == [0.5] and result.cv.chosen == 0
    assert_close(result.cv.rss, rss)
    assert_close(result.model.coef_, refit(X, Y, None, 0.5, True)[0])


@pytest.mark.parametrize("weighted", [False, True])
def test_ill_conditioned_folds_make_one_qr_pass(weighted):
    K = 3
    _, fold, X, Y, w = region_rows(seed=9, folds=K, weighted=weighted, collinear=True)
    gram = fold_accumulators(X, Y, w, fold, K, True, kind=GramAccumulator)
    assert all(acc.factor() is None for acc in gram)  # the condition number exceeds 100: not trusted
    l2s = [0.0, 0.001, 1.0]
    rss, weight_sum, coef, intercept, _ = reference_cv(X, Y, w, fold, K, l2s, True)
    calls = []

    def passes():
        calls.append(1)
        return batches_of(X, Y, w, fold)()

    result = fit(passes, trainer="exact", features=["a", "b", "c"], targets=["y0", "y1"], cv_folds=K, l2s=l2s)
    assert result.passes == 2 and len(calls) == 2
    assert_close(result.cv.rss, rss, rtol=1e-8)  # lstsq's own error grows with the condition number (~1e4)
    best = int(np.argmin((rss.sum(axis=1) / weight_sum.sum()).mean(axis=1)))
    assert result.cv.chosen == best
    assert_close(result.model.coef_, refit(X, Y, w, l2s[best], True)[0], rtol=1e-8)


def test_one_untrusted_fold_makes_the_qr_pass():
    K = 3
    _, fold, X, Y, _ = region_rows(seed=10, folds=K)
    fold = fold.copy()
    fold[fold == 2] = 0
    fold[:3] = 2  # fold 2 holds 3 rows for 3 features and an intercept: its Gram matrix is singular
    total = GramAccumulator(3, 2)
    total.update(X, Y)
    assert total.factor() is not None
    result = fit(batches_of(X, Y, None, fold), trainer="exact", features=["a", "b", "c"], targets=["y0", "y1"],
                 cv_folds=K, l2s=[0.0, 1.0])
    assert result.passes == 2
    rss, *_ = reference_cv(X, Y, None, fold, K, [0.0, 1.0], True)
    assert_close(result.cv.rss, rss)


def test_fit_passes_without_cross_validation():
    _, _, X, Y, _ = region_rows(seed=11)
    _, _, Xc, Yc, _ = region_rows(seed=11, collinear=True)
    two_pass = lambda X, Y: lambda: iter([(X, Y)])  # noqa: E731
    assert fit(two_pass(X, Y), trainer="exact", features=["a", "b", "c"], targets=["y0", "y1"]).passes == 1
    assert fit(two_pass(Xc, Yc), trainer="exact", features=["a", "b", "c"], targets=["y0", "y1"]).passes == 2
    assert fit(iter([(Xc, Yc)]), trainer="exact", features=["a", "b", "c"], targets=["y0", "y1"]).passes == 1


@pytest.mark.parametrize("trainer", ["nn", "manual"])
def test_gradient_trainers_refuse_cv_folds(trainer):
    _, fold, X, Y, _ = region_rows(seed=12)
    with pytest.raises(InputError, match="--cv-folds needs --trainer exact"):
        fit(batches_of(X, Y, None, fold), trainer=trainer, features=["a", "b", "c"], targets=["y0", "y1"],
            cv_folds=4)


def test_l2_list_needs_cv_folds_and_cv_folds_at_least_two():
    _, fold, X, Y, _ = region_rows(seed=13)
    with pytest.raises(InputError, match="needs --cv-folds"):
        fit(iter([(X, Y)]), trainer="exact", features=["a", "b", "c"], targets=["y0", "y1"], l2s=[0.0, 1.0])
    with pytest.raises(InputError, match="at least 2"):
        fit(batches_of(X, Y, None, np.zeros_like(fold)), trainer="exact", features=["a", "b", "c"],
            targets=["y0", "y1"], cv_folds=1)


def test_a_fold_without_rows_is_an_input_error():
    _, fold, X, Y, w = region_rows(seed=14, folds=3, weighted=True)
    with pytest.raises(InputError, match="fewer training regions than folds.*Lower --cv-folds"):
        fit(batches_of(X, Y, None, fold), trainer="exact", features=["a", "b", "c"], targets=["y0", "y1"],
            cv_folds=4)  # the regions fill folds 0..2 only
    w = w.copy()
    w[fold == 1] = 0.0  # rows of zero weight are no rows
    with pytest.raises(InputError, match="fold\\(s\\) 1 of 3"):
        fit(batches_of(X, Y, w, fold), trainer="exact", features=["a", "b", "c"], targets=["y0", "y1"], cv_folds=3)
    with pytest.raises(InputError, match="Lower --cv-folds"):
        cross_validate(fold_accumulators(X, Y, None, fold, 4, True), [0.0], feature_names=["a", "b", "c"],
                       rcond=1e-13, singular="error")


# ---------------------------------------------------------------------------------------------------------
# Two ranks (gloo on CPU), rows split by region as the pipeline splits them

def _cv_on_shard(cluster, region, fold, X, Y, w, K, l2s, collinear):
    mine = np.array([shard.rank_of(f"R{r}", cluster.world_size) == cluster.rank for r in region])
    result = fit(batches_of(X[mine], Y[mine], None if w is None else w[mine], fold[mine]), trainer="exact",
                 features=["a", "b", "c"], targets=["y0", "y1"], cluster=cluster, cv_folds=K, l2s=l2s)
    cv = result.cv
    return (int(mine.sum()), result.passes, cv.rss, cv.weight_sum, cv.rows, cv.chosen, cv.coef, cv.intercept,
            result.model.coef_, result.model.intercept_)


@pytest.mark.parametrize("collinear", [False, True])
def test_two_ranks_give_the_one_process_numbers(tmp_path, collinear):
    from tests.launch.test_torchrun import ok, run_ranks

    K, l2s = 3, [0.0, 0.1, 1.0]
    region, fold, X, Y, w = region_rows(seed=15, folds=K, weighted=True, collinear=collinear)
    one = _cv_on_shard(dist.single_process("cpu"), region, fold, X, Y, w, K, l2s, collinear)
    two = ok(run_ranks(tmp_path, 2, _cv_on_shard, region, fold, X, Y, w, K, l2s, collinear))
    assert sum(r[0] for r in two) == len(X) and min(r[0] for r in two) > 0
    for rank in two:
        assert rank[1] == one[1] == (2 if collinear else 1)
        for got, want in zip(rank[2:], one[2:]):
            assert_close(got, want, rtol=1e-10)

