"""Derived features through the whole pipeline: expressions and named aggregates against NumPy and pandas,
the terms in the outputs, the refusals, and scoring with the model's own expressions."""

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from linreg.config import build_parser, make_config
from linreg.errors import InputError
from linreg.pipeline import steps
from linreg.pipeline.scoring import ScoreConfig, score
from tests.helpers import write

EXPRESSIONS = "temp, temp^2, rainfall, temp*rainfall, log(rainfall + 1), year - 2000"
TERMS = ["temp", "temp^2", "rainfall", "temp*rainfall", "log(rainfall+1)", "year-2000"]


def _derived(temp, rainfall, year):
    """The six features of EXPRESSIONS, by hand in NumPy: (n, 6)."""
    return np.column_stack([temp, temp**2, rainfall, temp * rainfall, np.log(rainfall + 1), year - 2000.0])


@pytest.fixture(scope="module")
def yearly(tmp_path_factory):
    """Weather and yields over 40 regions x 12 years, yields a known function of the derived features plus noise."""
    out = tmp_path_factory.mktemp("yearly")
    rng = np.random.default_rng(3)
    region = np.repeat([f"R{i:02d}" for i in range(40)], 12)
    year = np.tile(np.arange(1995, 2007), 40)
    temp = rng.uniform(5, 30, region.size)
    rainfall = rng.uniform(0, 150, region.size)
    X = _derived(temp, rainfall, year)
    apples = X @ np.array([1.5, -0.04, 0.2, 0.003, 4.0, 0.7]) + 10 + rng.normal(0, 1, region.size)
    order = rng.permutation(region.size)
    for part, idx in enumerate(np.array_split(order, 2)):
        write(out / "weather" / f"part-{part}.parquet", region=region[idx], year=year[idx], temp=temp[idx],
              rainfall=rainfall[idx], humidity=rng.uniform(0, 1, idx.size))
    write(out / "yields.parquet", region=region, year=year, apples=apples)
    return out, X, apples


def _config(out, tmp_path, **options):
    return make_config(weather=str(out / "weather"), yields=str(out / "yields.parquet"), targets=["apples"],
                       output=str(tmp_path / "o"), holdout_fraction=0.0, **options)


def test_expressions_and_a_trend_fit_the_same_weights_as_numpy_on_the_derived_matrix(yearly, tmp_path):
    out, X, apples = yearly
    summary = steps.run(_config(out, tmp_path, features=EXPRESSIONS.split(", ")))
    design = np.column_stack([X, np.ones(len(X))])
    expected = np.linalg.lstsq(design, apples, rcond=None)[0]
    got = summary.weights["apples"]
    assert list(got) == TERMS + ["intercept"]  # the canonical forms name the terms
    np.testing.assert_allclose([got[t] for t in TERMS + ["intercept"]], expected, rtol=1e-9)
    weights = pq.read_table(str(tmp_path / "o" / "weights")).to_pandas()
    assert set(weights["term"]) == set(TERMS) | {"intercept"}


def test_the_command_line_splits_features_at_top_level_commas_only():
    args = build_parser().parse_args(["--features", 'temp, least(temp, 29), "max temp" * 2, pow(rainfall, 2)'])
    assert args.features == ["temp", "least(temp, 29)", '"max temp" * 2', "pow(rainfall, 2)"]


def test_a_key_may_be_a_feature_but_not_the_region(yearly, tmp_path):
    out, X, apples = yearly
    summary = steps.run(_config(out, tmp_path, features=["temp", "year"]))
    assert list(summary.weights["apples"]) == ["temp", "year", "intercept"]
    design = np.column_stack([X[:, 0], X[:, 5] + 2000, np.ones(len(X))])
    np.testing.assert_allclose(list(summary.weights["apples"].values()),
                               np.linalg.lstsq(design, apples, rcond=None)[0], rtol=1e-9)
    with pytest.raises(InputError, match=r"'region' uses the region key 'region', which cannot be a feature"):
        steps.run(_config(out, tmp_path, features=["temp", "region"]))


@pytest.mark.parametrize("features,match", [
    (["temp", "tmp^2"], r"--features: 'tmp\^2' uses 'tmp', which is neither a column of the weather table .* nor a join key"),
    (["temp", "foo(temp)"], r"unknown function 'foo'"),
    (["temp; DROP TABLE weather"], r"--features: unexpected ';' at character 5"),
    (["temp", "temp ^ 2", "temp^2"], r"'temp \^ 2' and 'temp\^2' are the same feature \(temp\^2\)"),
    (["temp", "log(region + 1)"], r"uses the region key 'region'"),
    (["temp", "sum(temp)"], r"unknown function 'sum'.*--aggregate"),
])
def test_bad_expressions_are_input_errors_that_point_at_the_fault(yearly, tmp_path, features, match):
    out, _, _ = yearly
    with pytest.raises(InputError, match=match):
        steps.run(_config(out, tmp_path, features=features))
    assert not (tmp_path / "o" / "weights").exists()


def test_a_value_outside_a_functions_domain_names_the_expression_its_columns_the_file_and_keys(tmp_path):
    w = write(tmp_path / "w" / "part-0.parquet", region=["a", "b", "c", "d"], year=[1, 1, 1, 1],
              temp=[1.0, 2.0, 3.0, 4.0], rainfall=[1.0, 0.0, 2.0, 3.0])
    y = write(tmp_path / "y.parquet", region=["a", "b", "c", "d"], year=[1, 1, 1, 1], apples=[1.0, 2.0, 3.0, 5.0])
    config = make_config(weather=str(tmp_path / "w"), yields=y, targets=["apples"], output=str(tmp_path / "o"),
                         holdout_fraction=0.0, features=["temp", "log(rainfall)"])
    with pytest.raises(InputError, match=r"Feature 'log\(rainfall\)' \(from rainfall\) is not a finite number in the "
                                         r"rows with keys \('b', 1\) of the weather table .*part-0\.parquet.*domain"):
        steps.run(config)
    assert w and not (tmp_path / "o" / "weights").exists()


@pytest.mark.parametrize("bad", [float("nan"), None])
def test_a_null_input_inside_least_or_greatest_is_named_not_swallowed(tmp_path, bad):
    """DuckDB's greatest(NULL, 0) is 0 and least(NaN, 29) is 29: an expression must not hide a bad input."""
    write(tmp_path / "w" / "part-0.parquet", region=["a", "b", "c", "d"], year=[1, 1, 1, 1],
          temp=[1.0, bad, 3.0, 4.0], rainfall=[1.0, 5.0, 2.0, 3.0])
    y = write(tmp_path / "y.parquet", region=["a", "b", "c", "d"], year=[1, 1, 1, 1], apples=[1.0, 2.0, 3.0, 5.0])
    config = make_config(weather=str(tmp_path / "w"), yields=y, targets=["apples"], output=str(tmp_path / "o"),
                         holdout_fraction=0.0, features=["rainfall", "least(temp, 29)"])
    with pytest.raises(InputError, match=r"column 'temp'.*part-0\.parquet"):
        steps.run(config)


@pytest.mark.parametrize("bad", [float("nan"), None])
def test_a_null_or_nan_day_inside_an_aggregate_is_named_not_skipped(tmp_path, bad):
    write(tmp_path / "w" / "part-0.parquet", region=["a", "a", "b", "b", "c", "c"], year=[1] * 6,
          temp=[1.0, 2.0, bad, 4.0, 5.0, 7.0])
    y = write(tmp_path / "y.parquet", region=["a", "b", "c"], year=[1, 1, 1], apples=[1.0, 2.0, 3.0])
    for aggregate, features in (("g=min(greatest(temp, 0))", ["g"]), ("min", ["temp"]), ("sum", ["least(temp, 3)"])):
        config = make_config(weather=str(tmp_path / "w"), yields=y, targets=["apples"], output=str(tmp_path / "o"),
                             holdout_fraction=0.0, features=features, aggregate=aggregate)
        with pytest.raises(InputError, match=r"column 'temp'.*part-0\.parquet"):
            steps.run(config)


@pytest.fixture(scope="module")
def daily(tmp_path_factory):
    """Daily weather (10 days a year) over 30 regions x 6 years, and yields from the yearly aggregates."""
    out = tmp_path_factory.mktemp("daily")
    rng = np.random.default_rng(5)
    frame = pd.DataFrame({"region": np.repeat([f"R{i:02d}" for i in range(30)], 60),
                          "year": np.tile(np.repeat(np.arange(2000, 2006), 10), 30),
                          "temp": rng.uniform(0, 40, 1800), "rainfall": rng.uniform(0, 20, 1800)})
    frame["degree"] = np.maximum(np.minimum(frame["temp"], 29) - 10, 0)
    yearly = frame.groupby(["region", "year"]).agg(gdd=("degree", "sum"), rain=("rainfall", "sum"),
                                                   temp=("temp", "max")).reset_index()
    yearly["apples"] = (0.05 * yearly["gdd"] + 0.3 * yearly["rain"] - 0.001 * yearly["rain"] ** 2
                        + 0.2 * yearly["temp"] + 0.5 * (yearly["year"] - 2000) + rng.normal(0, 1, len(yearly)))
    for part, rows in enumerate(np.array_split(rng.permutation(len(frame)), 3)):
        chunk = frame.iloc[rows]
        write(out / "weather" / f"part-{part}.parquet", region=chunk["region"].to_numpy(),
              year=chunk["year"].to_numpy(), temp=chunk["temp"].to_numpy(), rainfall=chunk["rainfall"].to_numpy())
    write(out / "yields.parquet", region=yearly["region"].to_numpy(), year=yearly["year"].to_numpy(),
          apples=yearly["apples"].to_numpy())
    return out, yearly


AGGREGATE = "gdd=sum(greatest(least(temp, 29) - 10, 0)), rain=sum(rainfall), temp:max"
DAILY_FEATURES = ["gdd", "rain", "rain^2", "temp", "year - 2000"]


def test_named_aggregates_equal_a_pandas_groupby_and_scoring_applies_them(daily, tmp_path):
    out, yearly = daily
    config = make_config(weather=str(out / "weather"), yields=str(out / "yields.parquet"), targets=["apples"],
                         output=str(tmp_path / "o"), holdout_fraction=0.0, features=DAILY_FEATURES,
                         aggregate=AGGREGATE, run_id="daily")
    summary = steps.run(config)
    X = np.column_stack([yearly["gdd"], yearly["rain"], yearly["rain"] ** 2, yearly["temp"], yearly["year"] - 2000,
                         np.ones(len(yearly))])
    expected = np.linalg.lstsq(X, yearly["apples"].to_numpy(), rcond=None)[0]
    got = summary.weights["apples"]
    assert list(got) == ["gdd", "rain", "rain^2", "temp", "year-2000", "intercept"]
    np.testing.assert_allclose(list(got.values()), expected, rtol=1e-9)
    assert summary.joined.weather_rows == 1800 and summary.joined.joined_rows == 180
    # scoring the same daily weather aggregates it the same way: its scores are the run's own predictions
    scored = score(ScoreConfig(model=str(tmp_path / "o"), weather=str(out / "weather"), output=str(tmp_path / "s")))
    assert scored.rows == 180
    scores = pq.read_table(scored.output).to_pandas().sort_values(["region", "year"]).reset_index(drop=True)
    predictions = pq.read_table(str(tmp_path / "o" / "predictions")).to_pandas()
    predictions = predictions.sort_values(["region", "year"]).reset_index(drop=True)
    np.testing.assert_allclose(scores["apples_pred"], predictions["apples_pred"], rtol=1e-12)


def test_aggregate_names_must_not_collide_and_must_be_aggregates(daily, tmp_path):
    out, _ = daily

    def run(aggregate, features):
        steps.run(make_config(weather=str(out / "weather"), yields=str(out / "yields.parquet"), targets=["apples"],
                              output=str(tmp_path / "o"), holdout_fraction=0.0, features=features,
                              aggregate=aggregate))

    with pytest.raises(InputError, match=r"--aggregate: the name\(s\) 'rainfall' collide with columns"):
        run("rainfall=sum(rainfall)", ["rainfall"])
    with pytest.raises(InputError, match=r"'temp' must be inside an aggregate"):
        run("t=temp + 1", ["t"])
    with pytest.raises(InputError, match=r"--aggregate: the name 'g' is defined twice"):
        run("g=sum(temp), g=max(temp)", ["g"])
    with pytest.raises(InputError, match=r"unknown function 'median'"):
        run("median", ["temp"])


def test_two_ranks_compute_the_same_features_and_weights_as_one_process(daily, tmp_path):
    """The command a user runs with --nproc-per-node 2: each rank aggregates and derives its regions' features;
    the weights equal one process's."""
    import os
    import subprocess
    import sys

    from tests.conftest import REPO

    out, _ = daily
    options = ["--weather", str(out / "weather"), "--yields", str(out / "yields.parquet"), "--targets", "apples",
               "--features", ",".join(DAILY_FEATURES), "--aggregate", AGGREGATE, "--holdout-fraction", "0.2"]
    single = steps.run(make_config(weather=str(out / "weather"), yields=str(out / "yields.parquet"),
                                   targets=["apples"], output=str(tmp_path / "one"), features=DAILY_FEATURES,
                                   aggregate=AGGREGATE, holdout_fraction=0.2))
    result = subprocess.run([sys.executable, "-m", "flows.train", *options, "--output", str(tmp_path / "two"),
                             "--nproc-per-node", "2", "--run-id", "two"], cwd=REPO, capture_output=True, text=True,
                            env=dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1"), timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    weights = pq.read_table(str(tmp_path / "two" / "weights")).to_pandas().set_index("term")["weight"]
    expected = single.weights["apples"]
    np.testing.assert_allclose([weights[t] for t in expected], list(expected.values()), rtol=1e-10)


def test_collinear_expressions_are_named_by_their_terms(yearly, tmp_path):
    out, _, _ = yearly
    with pytest.raises(InputError, match=r"2\*temp"):
        steps.run(_config(out, tmp_path, features=["temp", "2 * temp", "rainfall"]))


def test_the_gradient_trainers_fit_expressions_too(yearly, tmp_path):
    out, X, apples = yearly
    summary = steps.run(_config(out, tmp_path, features=["temp", "log(rainfall + 1)"], trainer="nn", epochs=300,
                                seed=1))
    design = np.column_stack([X[:, 0], X[:, 4], np.ones(len(X))])
    expected = np.linalg.lstsq(design, apples, rcond=None)[0]
    np.testing.assert_allclose(list(summary.weights["apples"].values()), expected, rtol=0.05)


def test_scoring_names_an_expression_outside_its_domain_as_training_does(yearly, tmp_path):
    out, _, _ = yearly
    steps.run(_config(out, tmp_path, features=["temp", "log(rainfall)"], run_id="logs"))
    w = write(tmp_path / "new.parquet", region=["N1", "N2"], year=[2010, 2010], temp=[10.0, 12.0],
              rainfall=[5.0, 0.0], humidity=[0.5, 0.5])
    with pytest.raises(InputError, match=r"Feature 'log\(rainfall\)' \(from rainfall\) is not a finite number in the "
                                         r"rows with keys \('N2', 2010\) of the weather table .*domain"):
        score(ScoreConfig(model=str(tmp_path / "o"), weather=w, output=str(tmp_path / "s"),
                          allow_extra_columns=True))
    assert not (tmp_path / "s" / "scores").exists()
