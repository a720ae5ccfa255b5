"""The scikit-learn style model API: fit, predict, coef_, intercept_, score, and loading committed runs."""

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from linreg.config import make_config
from linreg.errors import InputError
from linreg.models.estimator import LinearRegression
from linreg.pipeline import steps
from tests.exact_reference import exact_lstsq
from tests.helpers import SEED_X, SEED_Y, linear_tables


def test_exact_fit_on_the_seed_data_matches_exact_rational_least_squares():
    model = LinearRegression().fit(SEED_X, SEED_Y[:, 0])
    coef, intercept = exact_lstsq(SEED_X, SEED_Y[:, 0])
    assert model.coef_.shape == (3,) and isinstance(model.intercept_, float)
    np.testing.assert_allclose(model.coef_, coef[0], rtol=1e-9)
    assert model.intercept_ == pytest.approx(float(intercept[0]), rel=1e-9)


def test_two_targets_give_sklearn_shapes_and_score_is_mean_r2():
    model = LinearRegression().fit(SEED_X, SEED_Y)
    assert model.coef_.shape == (2, 3) and model.intercept_.shape == (2,)
    pred = model.predict(SEED_X)
    np.testing.assert_allclose(pred, SEED_X @ model.coef_.T + model.intercept_, rtol=1e-12)
    r2 = [1 - ((SEED_Y[:, j] - pred[:, j]) ** 2).sum() / ((SEED_Y[:, j] - SEED_Y[:, j].mean()) ** 2).sum()
          for j in range(2)]
    assert model.score(SEED_X, SEED_Y) == pytest.approx(np.mean(r2), rel=1e-12)


def test_gradient_trainers_reach_the_exact_optimum():
    rng = np.random.default_rng(3)
    X = rng.normal(size=(500, 4)) * [1, 10, 100, 0.1]
    y = X @ np.array([1.5, -0.2, 0.03, 7.0]) + 4 + rng.normal(size=500)
    exact = LinearRegression().fit(X, y)
    optimum = np.mean((exact.predict(X) - y) ** 2)
    for trainer in ("nn", "manual"):
        model = LinearRegression(trainer=trainer, seed=1).fit(X, y)
        assert np.mean((model.predict(X) - y) ** 2) <= optimum * 1.01
        assert model.n_iter_ == len(model.losses_) > 0


def test_dataframes_keep_feature_names_and_reject_renamed_columns():
    frame = pd.DataFrame(SEED_X, columns=["temp", "rainfall", "humidity"])
    model = LinearRegression().fit(frame, pd.Series(SEED_Y[:, 1], name="oranges"))
    assert list(model.feature_names_in_) == ["temp", "rainfall", "humidity"] and model.targets_ == ["oranges"]
    reordered = frame[["humidity", "temp", "rainfall"]]
    np.testing.assert_allclose(model.predict(reordered), model.predict(SEED_X), rtol=1e-12)
    with pytest.raises(InputError, match=r"Unseen at fit time: \['temperature'\].*missing: \['temp'\]"):
        model.predict(frame.rename(columns={"temp": "temperature"}))
    with pytest.raises(InputError, match="X has 2 features, but LinearRegression is expecting 3"):
        model.predict(SEED_X[:, :2])


def test_bad_inputs_and_unfitted_use_fail_clearly():
    with pytest.raises(InputError, match="contains NaN"):
        LinearRegression().fit(np.array([[1.0], [np.nan]]), np.array([1.0, 2.0]))
    with pytest.raises(InputError, match="different numbers of rows: 3 and 2"):
        LinearRegression().fit(np.ones((3, 1)), np.ones(2))
    with pytest.raises(AttributeError, match="not fitted yet"):
        LinearRegression().predict(np.ones((2, 1)))
    with pytest.raises(ValueError, match="Invalid parameter 'alpha'"):
        LinearRegression().set_params(alpha=1.0)
    assert LinearRegression().set_params(trainer="nn").get_params()["trainer"] == "nn"


def test_from_run_loads_the_committed_weights(tmp_path):
    w, y, _, _ = linear_tables(tmp_path)
    out = str(tmp_path / "out")
    first = steps.run(make_config(weather=w, yields=y, output=out, run_id="first"))
    second = steps.run(make_config(weather=w, yields=y, output=out, run_id="second", holdout_fraction=0.5))
    newest = LinearRegression.from_run(out)
    chosen = LinearRegression.from_run(f"{out}/weights/run_id=first")
    assert newest.run_id_ == "second" and chosen.run_id_ == "first"
    for estimator, summary in ((newest, second), (chosen, first)):
        for j, target in enumerate(estimator.targets_):
            for i, feature in enumerate(estimator.feature_names_in_):
                assert estimator.coef_[j, i] == summary.weights[target][feature]
            assert estimator.intercept_[j] == summary.weights[target]["intercept"]
    weights = pq.read_table(tmp_path / "out" / "weights" / "run_id=first").to_pylist()
    assert len(weights) == chosen.coef_.size + chosen.intercept_.size
    with pytest.raises(InputError, match="'missing' is not a committed run"):
        LinearRegression.from_run(f"{out}/weights/run_id=missing")
    with pytest.raises(InputError, match="holds no committed run"):
        LinearRegression.from_run(str(tmp_path / "empty"))
