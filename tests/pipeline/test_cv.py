"""Cross-validation by region through the whole pipeline (--cv-folds, a list of --l2): the cv dataset, the
out-of-fold predictions and the chosen l2 against refits computed here, fold by fold."""

import os
import subprocess
import sys

import numpy as np
import pyarrow.parquet as pq
import pytest

from linreg.config import make_config
from linreg.errors import InputError
from linreg.pipeline import inprocess, steps
from tests.conftest import REPO
from tests.helpers import write

L2S = [0.0, 0.01, 0.3, 3.0]
FEATURES = ["temp", "rainfall", "humidity"]


@pytest.fixture(scope="module")
def regional(tmp_path_factory):
    """60 regions x 8 years, regions of uneven size, a region effect (so folds matter), two targets, weights."""
    out = tmp_path_factory.mktemp("cv")
    rng = np.random.default_rng(11)
    region, year = [], []
    for r in range(60):
        years = rng.choice(np.arange(2000, 2012), size=int(rng.integers(3, 12)), replace=False)
        region += [f"R{r:02d}"] * len(years)
        year += sorted(int(y) for y in years)
    region, year = np.array(region), np.array(year)
    n = len(region)
    X = rng.normal(size=(n, 3)) * [5, 30, 0.2] + [20, 80, 0.5]
    X[:, 2] += 0.01 * X[:, 0]  # a little collinearity: ridge helps somewhat
    effect = {r: rng.normal(0, 3) for r in set(region)}
    noise = np.array([effect[r] for r in region])[:, None] + rng.normal(0, 2, (n, 2))
    Y = X @ np.array([[1.0, 0.1, 5.0], [-0.5, 0.2, 2.0]]).T + [3, 1] + noise
    write(out / "weather.parquet", region=region, year=year, temp=X[:, 0], rainfall=X[:, 1], humidity=X[:, 2])
    write(out / "yields.parquet", region=region, year=year, apples=Y[:, 0], oranges=Y[:, 1],
          w=rng.uniform(0.5, 2.0, n))
    return out


def _config(out, tmp_path, **options):
    values = dict(weather=str(out / "weather.parquet"), yields=str(out / "yields.parquet"), features=FEATURES,
                  output=str(tmp_path / "o"), cv_folds=4, l2=L2S, holdout_fraction=0.2, run_id="cv", seed=3)
    values.update(options)
    return make_config(**values)


def ridge(X, Y, w, l2):
    """The ridge fit scikit-learn's Ridge gives with standardized features, computed independently: weighted
    (ddof 0) standardization by the fitted rows, centred, augmented least squares; (coef (k, p), intercept (k,))."""
    W = w.sum()
    x_mean, y_mean = w @ X / W, w @ Y / W
    sd = np.sqrt(w @ (X - x_mean) ** 2 / W)
    Z = (X - x_mean) / sd * np.sqrt(w)[:, None]
    T = (Y - y_mean) * np.sqrt(w)[:, None]
    A = np.vstack([Z, np.sqrt(l2 * W) * np.eye(X.shape[1])])
    B = np.vstack([T, np.zeros((X.shape[1], Y.shape[1]))])
    beta = np.linalg.lstsq(A, B, rcond=None)[0] / sd[:, None]
    return beta.T, y_mean - x_mean @ beta


def _mse(table, target) -> float:
    """The one mse of `table` (cv rows) for `target` (None: over all targets)."""
    (value,) = table.loc[table["target"].isna() if target is None else table["target"] == target, "mse"]
    return value


def _rows(tmp_path, run_id="cv"):
    p = pq.read_table(str(tmp_path / "o" / "predictions" / f"run_id={run_id}")).to_pandas()
    return p.sort_values(["region", "year"]).reset_index(drop=True)


@pytest.mark.parametrize("weighted", [False, True])
def test_cross_validation_equals_refits_fold_by_fold(regional, tmp_path, weighted):
    out = regional
    summary = steps.run(_config(out, tmp_path, **({"weight_column": "w"} if weighted else {})))
    weather = pq.read_table(str(out / "weather.parquet")).to_pandas()
    rows = _rows(tmp_path).merge(weather, on=["region", "year"])
    train = rows[rows["split"] == "train"]
    assert rows.loc[rows["split"] == "holdout", "fold"].isna().all()
    assert rows.loc[rows["split"] == "holdout", "apples_cv_pred"].isna().all()
    assert (train.groupby("region")["fold"].nunique() == 1).all()  # whole regions in a fold
    sizes = train.groupby("fold").size()
    assert len(sizes) == 4 and sizes.max() - sizes.min() <= 11  # balanced: within one region's rows
    X, Y = train[FEATURES].to_numpy(), train[["apples", "oranges"]].to_numpy()
    w = train["w"].to_numpy() if weighted else np.ones(len(train))
    fold = train["fold"].to_numpy().astype(int)
    cv = pq.read_table(str(tmp_path / "o" / "cv" / "run_id=cv")).to_pandas()
    curve = {}
    for l2 in L2S:
        sse, total = np.zeros(2), 0.0
        for f in range(4):
            coef, intercept = ridge(X[fold != f], Y[fold != f], w[fold != f], l2)
            err = w[fold == f] @ (Y[fold == f] - X[fold == f] @ coef.T - intercept) ** 2
            got = cv[(cv["l2"] == l2) & (cv["fold"] == f)]
            np.testing.assert_allclose([_mse(got, t) for t in ("apples", "oranges")], err / w[fold == f].sum(),
                                       rtol=1e-9)
            assert got["rows"].tolist() == [int((fold == f).sum())] * 3
            sse, total = sse + err, total + w[fold == f].sum()
        pooled = cv[(cv["l2"] == l2) & cv["fold"].isna()]
        np.testing.assert_allclose([_mse(pooled, t) for t in ("apples", "oranges")], sse / total, rtol=1e-9)
        curve[l2] = (sse / total).mean()
        np.testing.assert_allclose(_mse(pooled, None), curve[l2], rtol=1e-9)
    chosen = min(curve, key=lambda v: (curve[v], v))
    metrics = pq.read_table(str(tmp_path / "o" / "metrics" / "run_id=cv")).to_pandas()
    assert metrics.loc[metrics["metric"] == "l2", "value"].tolist() == [chosen]
    coef, intercept = ridge(X, Y, w, chosen)  # the model: all training rows at the chosen l2
    for j, target in enumerate(["apples", "oranges"]):
        got = summary.weights[target]
        np.testing.assert_allclose([got[f] for f in FEATURES] + [got["intercept"]], [*coef[j], intercept[j]],
                                   rtol=1e-9)
        expected = np.empty(len(train))
        for f in range(4):  # out-of-fold predictions: each row by the refit without its fold
            c, b = ridge(X[fold != f], Y[fold != f], w[fold != f], chosen)
            expected[fold == f] = X[fold == f] @ c[j] + b[j]
        np.testing.assert_allclose(train[f"{target}_cv_pred"], expected, rtol=1e-9)


def test_a_list_of_l2_needs_folds_and_folds_need_the_exact_trainer(regional, tmp_path):
    with pytest.raises(InputError, match="--l2 with several values needs --cv-folds"):
        _config(regional, tmp_path, cv_folds=None)
    with pytest.raises(InputError, match="--cv-folds needs --trainer exact"):
        _config(regional, tmp_path, trainer="nn")
    with pytest.raises(InputError, match="--cv-folds 61 needs at least 61 training regions"):
        steps.run(_config(regional, tmp_path, cv_folds=61, holdout_fraction=0.0))
    assert not (tmp_path / "o" / "cv").exists()


def test_a_run_without_folds_writes_no_cv_dataset_and_the_same_predictions_columns(regional, tmp_path):
    steps.run(_config(regional, tmp_path, cv_folds=None, l2=0.1))
    assert not (tmp_path / "o" / "cv").exists()
    assert "fold" not in _rows(tmp_path).columns


def test_the_report_draws_the_ridge_path(regional, tmp_path):
    inprocess.run(_config(regional, tmp_path))
    png = tmp_path / "o" / "reports" / "run_id=cv" / "report.png"
    assert png.stat().st_size > 10_000


def test_two_ranks_cross_validate_to_the_same_numbers_as_one_process(regional, tmp_path):
    steps.run(_config(regional, tmp_path))
    command = [sys.executable, "-m", "flows.train", "--weather", str(regional / "weather.parquet"),
               "--yields", str(regional / "yields.parquet"), "--features", ",".join(FEATURES), "--cv-folds", "4",
               "--l2", ",".join(map(str, L2S)), "--holdout-fraction", "0.2", "--seed", "3",
               "--output", str(tmp_path / "two"), "--run-id", "two", "--nproc-per-node", "2"]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300,
                            env=dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1"))
    assert result.returncode == 0, result.stdout + result.stderr
    one = pq.read_table(str(tmp_path / "o" / "cv" / "run_id=cv")).to_pandas()
    two = pq.read_table(str(tmp_path / "two" / "cv" / "run_id=two")).to_pandas()
    key = ["l2", "fold", "target"]
    one, two = (t.sort_values(key, na_position="first").reset_index(drop=True) for t in (one, two))
    np.testing.assert_allclose(two["mse"], one["mse"], rtol=1e-10)
    assert two["rows"].tolist() == one["rows"].tolist()


def test_an_unchanged_cross_validated_run_is_reused_with_its_cv_dataset(regional, tmp_path):
    first = inprocess.run(_config(regional, tmp_path, skip_if_unchanged=True, run_id="first"))
    again = inprocess.run(_config(regional, tmp_path, skip_if_unchanged=True, run_id="again"))
    assert again.run_id == "first" and again.output["cv"] == first.output["cv"]
    assert again.weights == first.weights


def test_the_ridge_path_is_drawn_on_a_symmetric_log_axis_with_the_chosen_value_marked():
    from matplotlib.figure import Figure

    from linreg.models.crossval import CrossValidation
    from linreg.pipeline.report import _cv_curve

    cv = CrossValidation(l2s=np.array([0.0, 0.1, 1.0]), rss=np.ones((3, 2, 1)) * [[[4.0]], [[2.0]], [[3.0]]],
                         weight_sum=np.array([2.0, 2.0]), rows=np.array([2, 2]), chosen=1,
                         coef=np.zeros((2, 1, 1)), intercept=np.zeros((2, 1)))
    ax = Figure().add_subplot()
    _cv_curve(ax, cv)
    assert ax.get_xscale() == "symlog"
    curve, chosen = ax.get_lines()
    assert list(curve.get_xdata()) == [0.0, 0.1, 1.0] and list(curve.get_ydata()) == [2.0, 1.0, 1.5]
    assert list(chosen.get_xdata()) == [0.1] and list(chosen.get_ydata()) == [1.0]
