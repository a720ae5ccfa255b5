"""Every input problem is an InputError whose message names the file, column and example keys, and a failed
run leaves earlier outputs exactly as they were."""

import hashlib
import os
from pathlib import Path

import numpy as np
import pytest

from linreg.config import make_config
from linreg.errors import InputError
from linreg.pipeline import steps
from tests.helpers import write

REGIONS = [f"R{i}" for i in range(10)]


def tables(tmp_path, weather=None, yields=None):
    """Default 10-row weather and yields files, with columns overridden per test."""
    rng = np.random.default_rng(0)
    w = {"region": REGIONS, "year": [2020] * 10, "temp": rng.normal(70, 5, 10), "rainfall": rng.normal(90, 20, 10),
         "humidity": rng.normal(50, 10, 10)}
    y = {"region": REGIONS[::-1], "year": [2020] * 10, "apples": rng.normal(80, 10, 10),
         "oranges": rng.normal(90, 10, 10)}
    w.update(weather or {})
    y.update(yields or {})
    w = {k: v for k, v in w.items() if v is not None}
    y = {k: v for k, v in y.items() if v is not None}
    return write(tmp_path / "in" / "weather.parquet", **w), write(tmp_path / "in" / "yields.parquet", **y)


def run(tmp_path, weather, yields, **options):
    options.setdefault("holdout_fraction", 0.2)
    return steps.run(make_config(weather=weather, yields=yields, output=str(tmp_path / "out"), **options))


def test_missing_column_names_table_and_column(tmp_path):
    w, y = tables(tmp_path, weather={"humidity": None})
    with pytest.raises(InputError, match=r"weather table .*weather.parquet.* has no column 'humidity'"):
        run(tmp_path, w, y)


def test_column_missing_from_one_file_names_that_file(tmp_path):
    w, y = tables(tmp_path)
    write(tmp_path / "wdir" / "a.parquet", region=["R0"], year=[2020], temp=[1.0], rainfall=[2.0], humidity=[3.0])
    write(tmp_path / "wdir" / "b.parquet", region=["R1"], year=[2020], temp=[1.0], rainfall=[2.0])
    with pytest.raises(InputError, match=r"b\.parquet.* has no column 'humidity'"):
        run(tmp_path, str(tmp_path / "wdir"), y)


def test_non_numeric_feature_is_rejected(tmp_path):
    w, y = tables(tmp_path, weather={"temp": ["hot"] * 10})
    with pytest.raises(InputError, match=r"column 'temp' must be numeric, but it is string"):
        run(tmp_path, w, y)


def test_non_numeric_target_is_rejected(tmp_path):
    w, y = tables(tmp_path, yields={"apples": [True] * 10})
    with pytest.raises(InputError, match=r"yields table .*column 'apples' must be numeric"):
        run(tmp_path, w, y)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf, None])
def test_null_nan_or_inf_value_names_file_column_count_and_keys(tmp_path, bad):
    values = [70.0] * 10
    values[3] = bad
    values[7] = bad
    w, y = tables(tmp_path, weather={"temp": values})
    with pytest.raises(InputError, match=r"column 'temp' has 2 null, NaN or infinite value\(s\) in file "
                                         r"'.*weather.parquet', in rows with keys \('R3', 2020\), \('R7', 2020\)"):
        run(tmp_path, w, y)


def test_null_key_is_rejected(tmp_path):
    w, y = tables(tmp_path, yields={"region": REGIONS[:9] + [None]})
    with pytest.raises(InputError, match=r"yields table .*column 'region' has 1 null value"):
        run(tmp_path, w, y)


@pytest.mark.parametrize("table", ["weather", "yields"])
def test_duplicate_keys_name_count_keys_and_file(tmp_path, table):
    dup = {"region": REGIONS[:9] + ["R4"]}
    w, y = tables(tmp_path, **{table: dup})
    with pytest.raises(InputError, match=rf"{table} table .* has 1 duplicated key\(s\) on \(region, year\), for "
                                         rf"example \('R4', 2020\); the first appears 2 times, in file\(s\) .*{table}"):
        run(tmp_path, w, y)


def test_no_rows_after_join(tmp_path):
    w, y = tables(tmp_path, yields={"region": [f"X{i}" for i in range(10)]})
    with pytest.raises(InputError, match=r"No rows are left after joining .* Weather keys look like \('R0', 2020\)"):
        run(tmp_path, w, y)


def test_dropping_more_than_max_drop_fraction_fails(tmp_path):
    w, y = tables(tmp_path, yields={"region": REGIONS[:4] + [f"X{i}" for i in range(6)]})
    with pytest.raises(InputError, match=r"dropped 6 of 10 rows \(60%\) of the weather table"):
        run(tmp_path, w, y)
    summary = run(tmp_path, w, y, max_drop_fraction=0.7, holdout_fraction=0.0)
    assert summary.joined.joined_rows == 4
    assert summary.joined.weather_dropped == 6 and summary.joined.yields_dropped == 6


def test_key_types_must_match(tmp_path):
    w, y = tables(tmp_path, yields={"year": ["2020"] * 10})
    with pytest.raises(InputError, match=r"key column 'year' has type int64 in the weather table .* but string"):
        run(tmp_path, w, y)


def test_integer_keys_of_different_widths_join(tmp_path):
    w, y = tables(tmp_path, yields={"year": np.array([2020] * 10, dtype=np.int32)})
    assert run(tmp_path, w, y).joined.joined_rows == 10


@pytest.mark.parametrize("name", ["intercept", "split", "run_id", "apples_pred"])
def test_names_that_collide_with_outputs_are_rejected(tmp_path, name):
    w, y = tables(tmp_path, weather={name: [1.0] * 10})
    with pytest.raises(InputError, match="would collide"):
        run(tmp_path, w, y, features=["temp", name])


def test_missing_input_path(tmp_path):
    w, y = tables(tmp_path)
    with pytest.raises(InputError, match=r"weather table .*nope.parquet' does not exist"):
        run(tmp_path, str(tmp_path / "nope.parquet"), y)


def test_not_parquet(tmp_path):
    w, y = tables(tmp_path)
    bad = tmp_path / "bad.parquet"
    bad.write_text("region,year\nR1,2020\n")
    with pytest.raises(InputError, match=r"weather table .*bad.parquet' is not a readable Parquet dataset"):
        run(tmp_path, str(bad), y)


def test_unknown_holdout_region(tmp_path):
    w, y = tables(tmp_path)
    with pytest.raises(InputError, match=r"--holdout-regions names region\(s\) 'Atlantis'"):
        run(tmp_path, w, y, holdout_regions=["Atlantis"])


def test_holdout_of_every_region_is_rejected(tmp_path):
    w, y = tables(tmp_path)
    with pytest.raises(InputError, match="leave none to train on"):
        run(tmp_path, w, y, holdout_regions=REGIONS)


def test_collinear_features_are_a_clear_error(tmp_path):
    w, y = tables(tmp_path, weather={"humidity": list(np.arange(10) * 2.0), "rainfall": list(np.arange(10) * 4.0 + 1)})
    with pytest.raises(InputError, match=r"collinear.*'(rainfall|humidity)'"):
        run(tmp_path, w, y, holdout_fraction=0.0)


@pytest.mark.parametrize("options,match", [({"run_id": "2020-01-01"}, "not a valid run id"),
                                           ({"lr": -1.0}, "--lr"),
                                           ({"trainer": "sgd"}, "--trainer"),
                                           ({"colour": "red"}, "colour")])
def test_bad_configuration_is_an_input_error(options, match):
    with pytest.raises(InputError, match=match):
        make_config(**options)


def _tree_digest(root: Path) -> dict:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_failed_run_leaves_earlier_outputs_untouched(tmp_path):
    w, y = tables(tmp_path)
    run(tmp_path, w, y, run_id="good")
    before = _tree_digest(tmp_path / "out")
    bad_w, _ = tables(tmp_path / "bad", weather={"temp": [np.nan] * 10})
    for run_id in ("good", "other"):  # a failing rerun of the same id, and a new id
        with pytest.raises(InputError):
            run(tmp_path, bad_w, y, run_id=run_id)
    assert _tree_digest(tmp_path / "out") == before
    assert sorted(os.listdir(tmp_path / "out")) == ["metrics", "predictions", "runs", "weights"]


def test_failure_after_training_leaves_no_partial_run(tmp_path, monkeypatch):
    w, y = tables(tmp_path)
    run(tmp_path, w, y, run_id="good")
    before = _tree_digest(tmp_path / "out")

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(steps.commit, "write_table", broken)
    with pytest.raises(OSError, match="disk full"):
        run(tmp_path, w, y, run_id="late-failure")
    assert _tree_digest(tmp_path / "out") == before
