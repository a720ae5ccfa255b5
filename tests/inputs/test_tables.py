"""Input forms (file, directory, hive partitions, URI) and the output datasets as analysts read them."""

import json
import re

import duckdb
import numpy as np
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from linreg.config import make_config
from linreg.inputs.schema import SCHEMA_VERSION
from linreg.pipeline import steps
from tests.helpers import linear_tables, write


def train(tmp_path, weather, yields, **options):
    return steps.run(make_config(weather=weather, yields=yields, output=str(tmp_path / "out"), **options))


def test_directory_of_files_equals_single_files(tmp_path):
    w1, y1, _, _ = linear_tables(tmp_path / "one", files=1)
    w3, y3, _, _ = linear_tables(tmp_path / "three", files=3)
    a = train(tmp_path, w1, y1, run_id="one")
    b = train(tmp_path, w3, y3, run_id="three")
    for target in a.weights:
        for term in a.weights[target]:
            assert a.weights[target][term] == pytest.approx(b.weights[target][term], rel=1e-12)


def test_hive_partitioned_input_with_key_as_partition_column(tmp_path):
    w, y, W, _ = linear_tables(tmp_path / "flat", rows=300, regions=30)
    table = ds.dataset(w).to_table()
    ds.write_dataset(table, tmp_path / "hive", format="parquet", partitioning=["region"], partitioning_flavor="hive")
    summary = train(tmp_path, str(tmp_path / "hive"), y, holdout_fraction=0.0)
    assert summary.joined.joined_rows == 300
    np.testing.assert_allclose([[summary.weights[t][f] for f in ("temp", "rainfall", "humidity")]
                                for t in ("apples", "oranges")], W, atol=0.1)


def test_file_uri_input(tmp_path):
    w, y, _, _ = linear_tables(tmp_path)
    summary = train(tmp_path, "file://" + str(tmp_path / "weather"), y)
    assert summary.joined.joined_rows == 200


def test_any_feature_and_target_names(tmp_path):
    w, y, W, _ = linear_tables(tmp_path, features=("sun hours", "frost-days"), targets=("wheat",), noise=0.1)
    summary = train(tmp_path, w, y, features=["sun hours", "frost-days"], targets=["wheat"], trainer="nn")
    np.testing.assert_allclose([summary.weights["wheat"]["sun hours"], summary.weights["wheat"]["frost-days"]],
                               W[0], atol=0.02)


def test_region_only_key_when_yields_have_no_year(tmp_path):
    w = write(tmp_path / "w.parquet", region=["a", "b", "c", "d"], year=[1, 1, 1, 1], temp=[1.0, 2.0, 3.0, 5.0])
    y = write(tmp_path / "y.parquet", region=["a", "b", "c", "d"], apples=[2.0, 4.1, 5.9, 10.0])
    summary = train(tmp_path, w, y, features=["temp"], targets=["apples"], holdout_fraction=0.0)
    assert summary.joined.joined_rows == 4


def test_outputs_read_by_duckdb_with_documented_columns_and_types(tmp_path):
    w, y, _, _ = linear_tables(tmp_path)
    train(tmp_path, w, y, run_id="first", trainer="exact")
    train(tmp_path, w, y, run_id="second", trainer="manual")
    out = tmp_path / "out"
    con = duckdb.connect()

    def describe(dataset):
        source = f"read_parquet('{out}/{dataset}/*/*.parquet', hive_partitioning=true)"
        rel = con.sql(f"SELECT * FROM {source}")
        count = con.sql(f"SELECT count(*) FROM {source}").fetchall()[0][0]
        return dict(zip(rel.columns, [str(t) for t in rel.types])), count

    types, count = describe("weights")
    assert types == {"target": "VARCHAR", "term": "VARCHAR", "weight": "DOUBLE", "std_error": "DOUBLE",
                     "t_value": "DOUBLE", "p_value": "DOUBLE", "ci_low": "DOUBLE", "ci_high": "DOUBLE",
                     "run_id": "VARCHAR"}
    assert count == 2 * 2 * 4  # runs x targets x (3 features + intercept)
    types, _ = describe("metrics")
    assert types == {"split": "VARCHAR", "region": "VARCHAR", "target": "VARCHAR", "metric": "VARCHAR",
                     "value": "DOUBLE", "run_id": "VARCHAR"}
    types, count = describe("predictions")
    assert types == {"region": "VARCHAR", "year": "BIGINT", "split": "VARCHAR", "apples": "DOUBLE",
                     "apples_pred": "DOUBLE", "oranges": "DOUBLE", "oranges_pred": "DOUBLE", "run_id": "VARCHAR"}
    assert count == 2 * 200
    runs = con.sql(f"SELECT run_id, trainer, joined_rows FROM read_parquet('{out}/runs/*/*.parquet', "
                   "hive_partitioning = true) ORDER BY run_id").fetchall()
    assert runs == [("first", "exact", 200), ("second", "manual", 200)]


def test_predictions_and_metrics_agree_with_the_weights(tmp_path):
    w, y, _, _ = linear_tables(tmp_path)
    summary = train(tmp_path, w, y, run_id="r1", holdout_fraction=0.25)
    pred = pq.read_table(tmp_path / "out" / "predictions" / "run_id=r1").to_pandas()
    weather = ds.dataset(w).to_table().to_pandas()
    merged = pred.merge(weather, on=["region", "year"])
    for target in ("apples", "oranges"):
        wt = summary.weights[target]
        expected = merged[["temp", "rainfall", "humidity"]].to_numpy() @ np.array(
            [wt["temp"], wt["rainfall"], wt["humidity"]]) + wt["intercept"]
        np.testing.assert_allclose(merged[f"{target}_pred"], expected, rtol=1e-12)
    metrics = pq.read_table(tmp_path / "out" / "metrics" / "run_id=r1").to_pandas()
    for split in ("train", "holdout"):
        rows = pred[pred.split == split]
        mse = ((rows.apples - rows.apples_pred) ** 2).mean()
        got = metrics[(metrics.split == split) & metrics.region.isna() & (metrics.target == "apples")
                      & (metrics.metric == "mse")]
        assert got.value.item() == pytest.approx(mse, rel=1e-12)
    # Per-region MSE rows, and no region in both splits.
    assert set(pred[pred.split == "train"].region).isdisjoint(pred[pred.split == "holdout"].region)
    per_region = metrics[metrics.region.notna() & (metrics.metric == "mse") & (metrics.target == "apples")]
    assert len(per_region) == pred.region.nunique()
    gap = metrics[(metrics.split == "train") & metrics.target.isna() & (metrics.metric == "optimality_gap")]
    gap = gap.value.item()
    assert gap == pytest.approx(1.0, abs=1e-9)  # the exact trainer is the optimum


def test_every_output_file_records_run_metadata(tmp_path):
    w, y, _, _ = linear_tables(tmp_path)
    train(tmp_path, w, y, run_id="meta", trainer="nn", seed=3)
    for dataset in ("weights", "metrics", "predictions", "runs"):
        meta = pq.read_schema(tmp_path / "out" / dataset / "run_id=meta" / "part-0.parquet").metadata
        assert meta[b"linreg.run_id"] == b"meta"
        assert meta[b"linreg.trainer"] == b"nn"
        assert meta[b"linreg.schema_version"] == SCHEMA_VERSION.encode() == b"3"
        assert json.loads(meta[b"linreg.config"])["seed"] == 3
        fingerprint = json.loads(meta[b"linreg.input_fingerprint"])
        files = [f for t in fingerprint["tables"] for f in t["files"]]
        assert len(files) == 2 and all(f["size"] > 0 and f["mtime"] for f in files)
        assert set(json.loads(meta[b"linreg.versions"])) == {"linreg", "torch", "pyarrow", "prefect"}


def test_rerun_with_same_id_replaces_the_run(tmp_path):
    w, y, _, _ = linear_tables(tmp_path)
    train(tmp_path, w, y, run_id="same", trainer="exact")
    train(tmp_path, w, y, run_id="same", trainer="manual")
    out = tmp_path / "out"
    for dataset in ("weights", "metrics", "predictions", "runs"):
        files = list((out / dataset).rglob("*.parquet"))
        assert len(files) == 1
        assert pq.read_schema(files[0]).metadata[b"linreg.trainer"] == b"manual"
    assert not (out / "_staging").exists()


def test_default_run_id_is_text_no_reader_mistakes_for_a_number_or_date(tmp_path):
    w, y, _, _ = linear_tables(tmp_path)
    summary = train(tmp_path, w, y)
    assert re.fullmatch(r"\d{8}T\d{6}Z-[0-9a-f]{4}", summary.run_id)
    kind = duckdb.sql(f"SELECT typeof(run_id) FROM read_parquet('{tmp_path}/out/weights/*/*.parquet', "
                      "hive_partitioning=true) LIMIT 1").fetchall()[0][0]
    assert kind == "VARCHAR"


def test_time_split_holds_out_later_years(tmp_path):
    w, y, _, _ = linear_tables(tmp_path, rows=200, regions=20)  # years 2000..2009
    train(tmp_path, w, y, run_id="t", holdout_from_year=2008)
    pred = pq.read_table(tmp_path / "out" / "predictions" / "run_id=t").to_pandas()
    assert (pred[pred.split == "holdout"].year >= 2008).all()
    assert (pred[pred.split == "train"].year < 2008).all()
    assert (pred.split == "holdout").sum() == 40


def test_holdout_fraction_is_deterministic_from_seed(tmp_path):
    w, y, _, _ = linear_tables(tmp_path)
    regions = []
    for run_id, seed in (("a", 1), ("b", 1), ("c", 2)):
        train(tmp_path, w, y, run_id=run_id, seed=seed, holdout_fraction=0.3)
        pred = pq.read_table(tmp_path / "out" / "predictions" / f"run_id={run_id}").to_pandas()
        regions.append(sorted(set(pred[pred.split == "holdout"].region)))
    assert regions[0] == regions[1] and len(regions[0]) == 6
    assert regions[0] != regions[2]


def test_holdout_fraction_zero_trains_on_every_row(tmp_path):
    w, y, _, _ = linear_tables(tmp_path)
    summary = train(tmp_path, w, y, holdout_fraction=0.0)
    assert summary.rows == {"train": 200, "holdout": 0}
