"""--aggregate: weather at a finer grain than yields (daily rows per region and year)."""

import numpy as np
import pytest

from linreg.config import make_config
from linreg.errors import InputError
from linreg.features.spec import parse_features
from linreg.pipeline import steps
from datagen.synth import generate
from tests.helpers import write


@pytest.fixture(scope="module")
def daily(tmp_path_factory):
    out = tmp_path_factory.mktemp("daily")
    truth = generate(out, rows=3000, regions=100, days_per_year=7, seed=1)
    return out, truth


def test_daily_weather_without_aggregate_is_a_duplicate_key_error(daily, tmp_path):
    out, _ = daily
    with pytest.raises(InputError, match=r"weather table .* duplicated key\(s\) .* appears 7 times.*--aggregate mean"):
        steps.run(make_config(weather=str(out / "weather"), yields=str(out / "yields"), output=str(tmp_path)))


def test_mean_aggregate_recovers_the_ground_truth_of_yearly_means(daily, tmp_path):
    out, truth = daily
    summary = steps.run(make_config(weather=str(out / "weather"), yields=str(out / "yields"),
                                       output=str(tmp_path), aggregate="mean", holdout_fraction=0.0))
    assert summary.joined.weather_rows == 3000 * 7
    assert summary.joined.joined_rows == 3000 and summary.joined.weather_dropped == 0
    coef = np.array([[summary.weights[t][f] for f in truth["features"]] for t in truth["targets"]])
    np.testing.assert_allclose(coef, np.array(truth["coef"]), atol=0.05)


def test_per_feature_aggregates_match_a_pandas_groupby(tmp_path):
    w = write(tmp_path / "w.parquet", region=["a"] * 3 + ["b"] * 3 + ["c"] * 3 + ["d"] * 3, year=[1] * 12,
              temp=[1.0, 2.0, 6.0, 3.0, 3.0, 3.0, 0.0, 5.0, 1.0, 2.0, 9.0, 4.0],
              rainfall=[1.0, 1.0, 1.0, 2.0, 0.0, 2.0, 5.0, 5.0, 0.0, 7.0, 1.0, 1.0])
    sums = {"a": 3.0, "b": 4.0, "c": 10.0, "d": 9.0}
    maxes = {"a": 6.0, "b": 3.0, "c": 5.0, "d": 9.0}
    apples = {r: 2 * maxes[r] - 0.5 * sums[r] + 1 for r in "abcd"}
    y = write(tmp_path / "y.parquet", region=list("abcd"), year=[1] * 4, apples=[apples[r] for r in "abcd"])
    summary = steps.run(make_config(weather=w, yields=y, output=str(tmp_path / "o"), features=["temp", "rainfall"],
                                       targets=["apples"], aggregate="temp:max,rainfall:sum", holdout_fraction=0.0))
    assert summary.weights["apples"] == pytest.approx({"temp": 2.0, "rainfall": -0.5, "intercept": 1.0}, abs=1e-9)


@pytest.mark.parametrize("spec,match", [("median", "unknown function 'median'"),
                                        ("wind:mean", "names 'wind', which no feature uses"),
                                        ("sum, max", "two default functions")])
def test_bad_aggregate_spec(spec, match):
    with pytest.raises(InputError, match=match):
        parse_features(["temp", "rainfall"], spec)


def test_aggregate_spec_forms():
    assert parse_features(["a", "b"], "sum").aggregated_columns([]) == {"a": "sum", "b": "sum"}
    assert parse_features(["a", "b"], "b:max").aggregated_columns([]) == {"a": "mean", "b": "max"}
    assert not parse_features(["a"], None).aggregating
    both = parse_features(["g", "a", "year"], "g=sum(greatest(a - 10, 0)), a:min")
    assert both.aggregated_columns(["region", "year"]) == {"a": "min"}  # keys are not aggregated
    assert list(both.used_aggregates()) == ["g"] and both.weather_columns(["region", "year"]) == ["a"]
