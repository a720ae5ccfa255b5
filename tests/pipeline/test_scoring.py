"""Scoring new regions with a committed model: expected values from the weights, clear feature errors,
committed like the training outputs and never mixed into predictions."""

from fractions import Fraction
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from prefect.testing.utilities import prefect_test_harness

from flows.score import main as score_main
from linreg.config import make_config
from linreg.errors import EXIT_BAD_INPUT, InputError
from linreg.pipeline import steps
from linreg.pipeline.scoring import ScoreConfig, score
from tests.helpers import linear_tables, write

FEATURES = ("temp", "rainfall", "humidity")


@pytest.fixture(scope="module")
def prefect_server():
    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Two committed exact runs on generated data (the second is the newest)."""
    root = tmp_path_factory.mktemp("trained")
    w, y, _, _ = linear_tables(root / "data")
    out = str(root / "out")
    steps.run(make_config(weather=w, yields=y, output=out, run_id="older", holdout_fraction=0.5))
    steps.run(make_config(weather=w, yields=y, output=out, run_id="newer"))
    return out


def _new_regions(path, rows=30, files=3, seed=7, **rename):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(rows, 3)) * 10 + 50
    region = np.array([f"NEW{i:02d}" for i in range(rows)])
    year = np.full(rows, 2031, dtype=np.int64)
    for f, chunk in enumerate(np.array_split(np.arange(rows), files)):
        columns = {"region": region[chunk], "year": year[chunk]}
        columns.update({rename.get(name, name): X[chunk, j] for j, name in enumerate(FEATURES)})
        write(path / f"part-{f}.parquet", **columns)
    return str(path)


def _weights(out, run_id):
    rows = pq.read_table(f"{out}/weights/run_id={run_id}").to_pylist()
    return {(r["target"], r["term"]): r["weight"] for r in rows}


@pytest.mark.parametrize("model_arg, run_id", [("{out}", "newer"), ("{out}/weights/run_id=older", "older")])
def test_new_regions_are_scored_with_the_weights_of_the_chosen_run(trained, tmp_path, model_arg, run_id):
    weather = _new_regions(tmp_path / "weather")
    summary = score(ScoreConfig(model=model_arg.format(out=trained), weather=weather, output=str(tmp_path / "s"),
                                score_run_id="s1"))
    assert summary.model_run_id == run_id and summary.rows == 30
    table = pq.read_table(tmp_path / "s" / "scores" / "score_run_id=s1")
    assert table.column_names == ["region", "year", "model_run_id", "apples_pred", "oranges_pred"]
    assert set(table.column("model_run_id").to_pylist()) == {run_id}
    inputs = pq.read_table(weather).to_pandas().set_index("region")  # the three files, read independently
    weights = _weights(trained, run_id)
    for row in table.to_pylist():
        x = inputs.loc[row["region"]]
        for target in ("apples", "oranges"):
            exact = sum(Fraction(weights[target, f]) * Fraction(float(x[f])) for f in FEATURES) \
                + Fraction(weights[target, "intercept"])
            assert row[f"{target}_pred"] == pytest.approx(float(exact), rel=1e-12, abs=1e-9)
    assert row["year"] == 2031


def test_scores_default_to_the_model_output_and_never_touch_predictions(trained, tmp_path):
    predictions = {p: p.read_bytes() for p in Path(trained, "predictions").rglob("*.parquet")}
    summary = score(ScoreConfig(model=trained, weather=_new_regions(tmp_path / "w"), score_run_id="into-model-root"))
    assert summary.output.endswith("scores/score_run_id=into-model-root")
    assert pq.read_table(summary.output).num_rows == 30
    assert {p: p.read_bytes() for p in Path(trained, "predictions").rglob("*.parquet")} == predictions
    assert not Path(trained, "_staging").exists()


@pytest.mark.parametrize("rename, drop, extra, message", [
    ({}, "humidity", None, r"missing 'humidity'\. The model was trained on temp, rainfall, humidity"),
    ({"temp": "temperature"}, None, None, r"missing 'temp'; not model features: 'temperature'.*renamed column"),
    ({}, None, "wind", r"not model features: 'wind'.*--allow-extra-columns"),
])
def test_a_feature_set_that_does_not_match_the_model_is_a_clear_error(trained, tmp_path, rename, drop, extra,
                                                                      message):
    columns = {"region": ["A", "B"], "year": [2031, 2031]}
    for name in FEATURES:
        if name != drop:
            columns[rename.get(name, name)] = [1.0, 2.0]
    if extra:
        columns[extra] = [3.0, 4.0]
    weather = write(tmp_path / "w.parquet", **columns)
    with pytest.raises(InputError, match=message):
        score(ScoreConfig(model=trained, weather=weather, output=str(tmp_path / "s")))
    assert not (tmp_path / "s").exists() or not any((tmp_path / "s").rglob("*.parquet"))
    if extra:  # allowed on request
        summary = score(ScoreConfig(model=trained, weather=weather, output=str(tmp_path / "s"),
                                    allow_extra_columns=True))
        assert summary.rows == 2


def test_bad_values_and_missing_keys_fail_before_anything_is_written(trained, tmp_path):
    weather = write(tmp_path / "nan.parquet", region=["A", "B"], year=[1, 1], temp=[1.0, float("nan")],
                    rainfall=[1.0, 2.0], humidity=[1.0, 2.0])
    with pytest.raises(InputError, match=r"column 'temp' has 1 null, NaN or infinite value\(s\).*\('B', 1\)"):
        score(ScoreConfig(model=trained, weather=weather, output=str(tmp_path / "s")))
    no_year = write(tmp_path / "noyear.parquet", region=["A"], temp=[1.0], rainfall=[1.0], humidity=[1.0])
    with pytest.raises(InputError, match="has no key column 'year'"):
        score(ScoreConfig(model=trained, weather=no_year, output=str(tmp_path / "s")))
    assert not (tmp_path / "s").exists() or not any((tmp_path / "s").rglob("*.parquet"))


def test_cli_scores_and_exits_2_on_a_mismatch(prefect_server, trained, tmp_path, capsys):
    weather = _new_regions(tmp_path / "w", rows=4, files=1)
    assert score_main(["--model", trained, "--weather", weather, "--output", str(tmp_path / "s"),
                       "--score-run-id", "cli-1"]) == 0
    assert "scoring cli-1 committed: 4 row(s) scored with the model of run newer" in capsys.readouterr().out
    renamed = _new_regions(tmp_path / "r", rows=4, files=1, temp="temperature")
    assert score_main(["--model", trained, "--weather", renamed]) == EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert err.startswith("error: The weather table") and "renamed" in err and "Traceback" not in err


def test_cli_without_a_prefect_server_scores_in_process(trained, tmp_path):
    """No server configured: scored in this process, nothing recorded in Prefect, one line saying so."""
    import os
    import subprocess
    import sys

    from flows import cli
    from tests.conftest import REPO

    weather = _new_regions(tmp_path / "w", rows=4, files=1)
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env.update(PYTHONPATH=str(REPO), PREFECT_HOME=str(tmp_path / "prefect-home"))
    result = subprocess.run([sys.executable, "-m", "flows.score", "--model", trained, "--weather", weather,
                             "--output", str(tmp_path / "s"), "--score-run-id", "adhoc"], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    assert "scoring adhoc committed: 4 row(s) scored with the model of run newer" in result.stdout
    assert cli.NOT_RECORDED in result.stderr.splitlines()
    assert (tmp_path / "s" / "scores" / "score_run_id=adhoc").is_dir()
    assert not list((tmp_path / "prefect-home").rglob("*.db"))
