"""One contract for every reader: each dataset we write reads whole, with its documented types and the run id
as text, through pandas, Polars, DuckDB and Spark (Spark where pyspark and Java are installed); totals are
null in region and target, so a region or a target called 'all' stays apart from them; an output root of
schema version 1 is refused with the migration command, and migrates in place; one of version 2 takes
version 3 runs as it is. Cross-validated runs (made here through the commit API, tests/outputs/cv_run.py):
their cv dataset and predictions read the same way, and beside other runs' predictions with each reader's
documented option for files that differ by columns."""

import importlib.util
import json
import shutil
from pathlib import Path

import duckdb
import pandas as pd
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

from flows import migrate as migrate_cli
from linreg.config import make_config
from linreg.errors import EXIT_BAD_INPUT, InputError
from linreg.inputs.schema import SCHEMA_VERSION
from linreg.outputs import migrate, runindex
from linreg.pipeline import report, reuse, steps
from linreg.pipeline.scoring import ScoreConfig, score
from tests.helpers import linear_tables
from tests.outputs.cv_run import make_cross_validated

TEXT, FLOAT, INT, UTC = "text", "float64", "int64", "timestamp UTC"
TARGETS = ("apples", "oranges")
# The README's schema table: column -> type, and the hive partition column of each dataset.
DOCUMENTED = {
    "weights": ({"target": TEXT, "term": TEXT, "weight": FLOAT, "std_error": FLOAT, "t_value": FLOAT,
                 "p_value": FLOAT, "ci_low": FLOAT, "ci_high": FLOAT}, "run_id"),
    "metrics": ({"split": TEXT, "region": TEXT, "target": TEXT, "metric": TEXT, "value": FLOAT}, "run_id"),
    "predictions": ({"region": TEXT, "year": INT, "split": TEXT,
                     **{c: FLOAT for t in TARGETS for c in (t, f"{t}_pred")}}, "run_id"),
    "runs": ({"trainer": TEXT, "config": TEXT, "input_fingerprint": TEXT,
              **{c: INT for c in ("weather_rows", "yields_rows", "joined_rows", "train_rows", "holdout_rows")},
              "started_at": UTC, "finished_at": UTC}, "run_id"),
    "scores": ({"region": TEXT, "year": INT, "model_run_id": TEXT, **{f"{t}_pred": FLOAT for t in TARGETS}},
               "score_run_id"),
}
# A cross-validated run's: its predictions gain fold and <target>_cv_pred, and it has a cv dataset.
CV_PREDICTIONS = ({"region": TEXT, "year": INT, "split": TEXT, "fold": INT,
                   **{c: FLOAT for t in TARGETS for c in (t, f"{t}_pred", f"{t}_cv_pred")}}, "run_id")
DOCUMENTED_CV = {**DOCUMENTED, "predictions": CV_PREDICTIONS,
                 "cv": ({"l2": FLOAT, "fold": INT, "target": TEXT, "mse": FLOAT, "rows": INT}, "run_id")}
NULLABLE_INTS = ("fold",)  # pandas reads an int64 column holding nulls as float64 (NaN for null), as documented
# Run ids of both forms a run id takes: a default one (a timestamp and a suffix) and a chosen one.
RUN_IDS = ("20261204T101500Z-3f9a", "nightly-1")


# ---------------------------------------------------------------------------------------------------------
# The four readers: each returns ({column: type}, {partition value: rows}) of a whole dataset directory.

def _pandas_kind(dtype) -> str:
    if isinstance(dtype, pd.CategoricalDtype):  # a hive partition column
        return TEXT if all(isinstance(c, str) for c in dtype.categories) else f"category of {dtype.categories.dtype}"
    if isinstance(dtype, pd.DatetimeTZDtype):
        return UTC if str(dtype.tz) == "UTC" else str(dtype)
    if pd.api.types.is_string_dtype(dtype):
        return TEXT
    return str(dtype)


def read_pandas(directory: Path, key: str):
    frame = pd.read_parquet(directory)
    counts = frame[key].astype(str).value_counts().to_dict()
    return {c: _pandas_kind(t) for c, t in frame.dtypes.items()}, counts


POLARS_KINDS = {pl.String: TEXT, pl.Float64: FLOAT, pl.Int64: INT}


def read_polars(directory: Path, key: str):
    frame = pl.scan_parquet(directory, hive_partitioning=True).collect()
    kinds = {c: UTC if t == pl.Datetime("us", "UTC") else POLARS_KINDS.get(t, str(t)) for c, t in frame.schema.items()}
    counts = dict(frame.group_by(key).len().iter_rows())
    return kinds, counts


DUCKDB_KINDS = {"VARCHAR": TEXT, "DOUBLE": FLOAT, "BIGINT": INT, "TIMESTAMP WITH TIME ZONE": UTC}


def read_duckdb(directory: Path, key: str):
    con = duckdb.connect()
    source = f"read_parquet('{directory}/*/*.parquet', hive_partitioning = true)"
    relation = con.sql(f"SELECT * FROM {source}")
    kinds = {c: DUCKDB_KINDS.get(str(t), str(t)) for c, t in zip(relation.columns, relation.types)}
    counts = dict(con.sql(f"SELECT {key}, count(*) FROM {source} GROUP BY ALL").fetchall())
    return kinds, counts


SPARK_KINDS = {"string": TEXT, "double": FLOAT, "bigint": INT, "timestamp": UTC}


@pytest.fixture(scope="module")
def spark():
    """A local Spark session (one core, no UI, UTC), or a skip where pyspark or Java is missing."""
    if importlib.util.find_spec("pyspark") is None or shutil.which("java") is None:
        pytest.skip("pyspark and Java are needed for the Spark reader (pip install pyspark; a JDK 17)")
    from pyspark.sql import SparkSession

    session = (SparkSession.builder.master("local[1]").appName("linreg-readers")
               .config("spark.ui.enabled", "false").config("spark.sql.session.timeZone", "UTC")
               .config("spark.driver.bindAddress", "127.0.0.1").config("spark.sql.shuffle.partitions", "1")
               .getOrCreate())
    yield session
    session.stop()


def spark_reader(session):
    def read_spark(directory: Path, key: str):
        frame = session.read.parquet(str(directory))
        counts = {row[key]: row["count"] for row in frame.groupBy(key).count().collect()}
        return {c: SPARK_KINDS.get(t, t) for c, t in frame.dtypes}, counts
    return read_spark


def footer_rows(directory: Path, key: str) -> dict[str, int]:
    """partition value -> rows of its files, from the Parquet footers: what every reader must see."""
    return {p.name.split("=", 1)[1]: sum(pq.ParquetFile(f).metadata.num_rows for f in sorted(p.glob("*.parquet")))
            for p in sorted(directory.glob(f"{key}=*"))}


def check_every_reader_reads_every_dataset(out: Path, readers: dict, runs: set[str], scorings: set[str],
                                           documented: dict = DOCUMENTED) -> None:
    for dataset, (columns, key) in documented.items():
        expected = footer_rows(out / dataset, key)
        assert set(expected) == (scorings if dataset == "scores" else runs), dataset
        for name, read in readers.items():
            kinds, counts = read(out / dataset, key)
            assert kinds == documented_kinds(name, columns, key), (name, dataset)
            assert counts == expected, (name, dataset)


def documented_kinds(reader: str, columns: dict, key: str) -> dict:
    """The documented types as `reader` gives them, the partition column as text."""
    if reader.startswith("pandas"):
        columns = {c: FLOAT if c in NULLABLE_INTS else kind for c, kind in columns.items()}
    return {**columns, key: TEXT}


# ---------------------------------------------------------------------------------------------------------
# A root with two training runs (different trainers, one region called 'all') and two scorings.

def _data(directory: Path) -> tuple[str, str]:
    """Generated weather and yields in which region R000 is called 'all'."""
    w, y, _, _ = linear_tables(directory, rows=200, regions=20)
    for path in (f"{w}/part-0.parquet", f"{y}/part-0.parquet"):
        table = pq.read_table(path)
        region = pc.replace_substring_regex(table["region"], "^R000$", "all")
        pq.write_table(table.set_column(table.schema.get_field_index("region"), "region", region), path)
    return w, y


def _train(w: str, y: str, out: Path, run_id: str, **options):
    return steps.run(make_config(weather=w, yields=y, output=str(out), run_id=run_id, **options))


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    base = tmp_path_factory.mktemp("readers")
    w, y = _data(base / "data")
    out = base / "out"
    summaries = [_train(w, y, out, RUN_IDS[0], trainer="exact", holdout_regions=["all", "R001"]),
                 _train(w, y, out, RUN_IDS[1], trainer="manual", holdout_fraction=0.3)]
    for scoring in ("score-a", "score-b"):
        score(ScoreConfig(model=str(out), weather=w, output=str(out), score_run_id=scoring))
    return out, w, y, summaries


def test_pandas_polars_and_duckdb_read_every_dataset_whole_with_documented_types(root):
    out, *_ = root
    check_every_reader_reads_every_dataset(out, {"pandas": read_pandas, "polars": read_polars, "duckdb": read_duckdb},
                                           set(RUN_IDS), {"score-a", "score-b"})


def test_spark_reads_every_dataset_whole_with_documented_types(root, spark):
    out, *_ = root
    check_every_reader_reads_every_dataset(out, {"spark": spark_reader(spark)}, set(RUN_IDS), {"score-a", "score-b"})


def test_the_runs_entry_holds_no_run_id_and_the_project_still_reads_it(root):
    out, *_ = root
    for run_id in RUN_IDS:
        entry = pq.read_schema(out / "runs" / f"run_id={run_id}" / "part-0.parquet")
        assert "run_id" not in entry.names and entry.metadata[b"linreg.schema_version"] == SCHEMA_VERSION.encode()
    assert [r["run_id"] for r in runindex.read_runs(str(out))] == list(RUN_IDS)  # finished in that order
    assert runindex.newest_run(str(out))["trainer"] == "manual"


@pytest.mark.parametrize("run_id", ["nan", "NaN", "inf", "Infinity", "true", "False", "epoch"])
def test_run_ids_some_reader_takes_for_a_number_a_boolean_or_a_date_are_refused(run_id):
    with pytest.raises(InputError, match="not a valid run id"):
        make_config(run_id=run_id)


def test_a_region_called_all_and_the_totals_are_distinct_rows(root):
    out, *_ = root
    con = duckdb.connect()
    metrics = f"read_parquet('{out}/metrics/*/*.parquet', hive_partitioning = true)"
    predictions = f"read_parquet('{out}/predictions/*/*.parquet', hive_partitioning = true)"
    duplicates = con.sql(f"SELECT run_id, split, region, target, metric, count(*) FROM {metrics} "
                         "GROUP BY ALL HAVING count(*) > 1").fetchall()
    assert duplicates == []  # every row has its own key: no query confuses two of them
    run = RUN_IDS[0]  # region 'all' is held out in this run

    def mse(where):  # the mean over targets of the MSE of the holdout predictions `where`
        return con.sql(f"SELECT (avg((apples - apples_pred) ^ 2) + avg((oranges - oranges_pred) ^ 2)) / 2 "
                       f"FROM {predictions} WHERE run_id = '{run}' AND split = 'holdout' AND {where}").fetchall()[0][0]

    def value(region):
        return con.sql(f"SELECT value FROM {metrics} WHERE run_id = '{run}' AND split = 'holdout' AND {region} "
                       "AND target IS NULL AND metric = 'mse'").fetchall()

    region_all, total = value("region = 'all'"), value("region IS NULL")
    assert len(region_all) == 1 and len(total) == 1
    assert region_all[0][0] == pytest.approx(mse("region = 'all'"), rel=1e-12)
    assert total[0][0] == pytest.approx(mse("true"), rel=1e-12)
    assert region_all[0][0] != pytest.approx(total[0][0], rel=1e-3)  # two regions held out: not the same number
    assert con.sql(f"SELECT count(*) FROM {metrics} WHERE region = 'all' AND metric <> 'mse'").fetchall() == [(0,)]


def test_a_target_called_all_is_allowed_and_apart_from_the_mean_over_targets(tmp_path):
    w, y, _, _ = linear_tables(tmp_path / "data", rows=100, regions=10, targets=("all", "oranges"))
    summary = _train(w, y, tmp_path / "out", "target-all", targets=["all", "oranges"], holdout_fraction=0.3)
    rows = pq.read_table(tmp_path / "out" / "metrics" / "run_id=target-all").to_pylist()
    by_key = {(r["split"], r["region"], r["target"], r["metric"]): r["value"] for r in rows}
    assert len(by_key) == len(rows)  # no two rows share a key
    for split in ("train", "holdout"):
        named, mean = by_key[split, None, "all", "mse"], by_key[split, None, None, "mse"]
        assert summary.mse[split] == {"all": named, "oranges": by_key[split, None, "oranges", "mse"]}
        assert summary.mean_mse[split] == mean == pytest.approx((named + summary.mse[split]["oranges"]) / 2)
    assert "mean over targets" in summary.text()
    table = report.metric_table(rows)
    assert [(e["split"], e["target"]) for e in table] == [("train", "all"), ("train", "oranges"), ("train", None),
                                                         ("holdout", "all"), ("holdout", "oranges"), ("holdout", None)]
    assert report.target_label(None) != report.target_label("all")


def test_skip_if_unchanged_rebuilds_the_summary_from_null_totals(root):
    out, w, y, summaries = root
    config = make_config(weather=w, yields=y, output=str(out), run_id=RUN_IDS[1], trainer="manual",
                         holdout_fraction=0.3)
    row = reuse.find_unchanged_run(config)
    assert row is not None and row["run_id"] == RUN_IDS[1]
    rebuilt = reuse.committed_summary(str(out), row)
    assert rebuilt.mse == summaries[1].mse and rebuilt.mean_mse == summaries[1].mean_mse
    assert rebuilt.regions == summaries[1].regions


# ---------------------------------------------------------------------------------------------------------
# Cross-validated runs: the cv dataset, and the predictions' fold and <target>_cv_pred.

@pytest.fixture(scope="module")
def cv_root(root, tmp_path_factory):
    """The root's two runs recommitted as cross-validated runs, and their chosen l2 values."""
    out = tmp_path_factory.mktemp("cv") / "out"
    shutil.copytree(root[0], out)
    chosen = {run_id: make_cross_validated(str(out), run_id)[1] for run_id in RUN_IDS}
    return out, chosen


def test_every_reader_reads_the_cv_dataset_and_the_cross_validated_predictions(cv_root):
    out, _ = cv_root
    check_every_reader_reads_every_dataset(out, {"pandas": read_pandas, "polars": read_polars, "duckdb": read_duckdb},
                                           set(RUN_IDS), {"score-a", "score-b"}, DOCUMENTED_CV)
    for dataset in ("predictions", "cv"):  # pandas keeps fold an integer with its nullable types
        assert str(pd.read_parquet(out / dataset, dtype_backend="numpy_nullable")["fold"].dtype) == "Int64"


def test_spark_reads_the_cv_dataset_and_the_cross_validated_predictions(cv_root, spark):
    out, _ = cv_root
    check_every_reader_reads_every_dataset(out, {"spark": spark_reader(spark)}, set(RUN_IDS), {"score-a", "score-b"},
                                           DOCUMENTED_CV)


def check_documented_cv_queries(out: Path, chosen: dict[str, float], *, rel: float) -> None:
    """docs/outputs.md's queries: the chosen l2 (metric l2) is the lowest pooled CV MSE over all targets of the
    cv dataset (ties: the smallest l2), and the pooled and per-fold MSEs are those of the out-of-fold predictions."""
    con = duckdb.connect()
    cv = f"read_parquet('{out}/cv/*/*.parquet', hive_partitioning = true)"
    metrics = f"read_parquet('{out}/metrics/*/*.parquet', hive_partitioning = true)"
    predictions = f"read_parquet('{out}/predictions/*/*.parquet', hive_partitioning = true, union_by_name = true)"
    recorded = dict(con.sql(f"SELECT run_id, value FROM {metrics} WHERE metric = 'l2'").fetchall())
    lowest = dict(con.sql(f"SELECT run_id, arg_min(l2, (mse, l2)) FROM {cv} WHERE fold IS NULL AND target IS NULL "
                          "GROUP BY run_id").fetchall())
    assert recorded == lowest == chosen
    for target in TARGETS:
        from_predictions = con.sql(
            f"SELECT run_id, coalesce(fold, -1), avg(({target} - {target}_cv_pred) ^ 2), count(*) FROM {predictions} "
            "WHERE split = 'train' AND fold IS NOT NULL GROUP BY ROLLUP (run_id, fold) HAVING run_id IS NOT NULL"
        ).fetchall()
        stored = {(r, f, n): m for r, f, m, n in con.sql(
            f"SELECT run_id, coalesce(fold, -1), mse, rows FROM {cv} JOIN (SELECT run_id, value AS l2 FROM {metrics} "
            f"WHERE metric = 'l2') USING (run_id, l2) WHERE target = '{target}'").fetchall()}
        assert len(from_predictions) == len(stored) == len(chosen) * 4  # 3 folds and the pooled value, per run
        for run_id, fold, mse, rows in from_predictions:
            assert mse == pytest.approx(stored[run_id, fold, rows], rel=rel), (run_id, fold, target)
    null_folds = con.sql(f"SELECT count(*) FROM {predictions} WHERE (fold IS NULL) <> (split = 'holdout') "
                         f"OR ({TARGETS[0]}_cv_pred IS NULL) <> (split = 'holdout')").fetchall()
    assert null_folds == [(0,)]  # fold and the out-of-fold predictions: null exactly for holdout rows


def test_the_documented_queries_of_cross_validated_runs(cv_root):
    out, chosen = cv_root
    check_documented_cv_queries(out, chosen, rel=1e-12)


def test_a_cross_validated_run_of_the_pipeline_reads_and_queries_as_documented(tmp_path):
    """A real run with --cv-folds 3 and three l2 values: every reader reads its five datasets with the documented
    types; its cv dataset's MSEs are those of its out-of-fold predictions, and its l2 the lowest pooled one."""
    w, y = _data(tmp_path / "data")
    out = tmp_path / "out"
    _train(w, y, out, "cv-run", trainer="exact", holdout_fraction=0.3, cv_folds=3, l2=[0.0, 0.1, 10.0])
    documented = {d: v for d, v in DOCUMENTED_CV.items() if d != "scores"}
    check_every_reader_reads_every_dataset(out, {"pandas": read_pandas, "polars": read_polars, "duckdb": read_duckdb},
                                           {"cv-run"}, set(), documented)
    l2 = duckdb.sql(f"SELECT value FROM read_parquet('{out}/metrics/*/*.parquet') WHERE metric = 'l2'").fetchall()
    check_documented_cv_queries(out, {"cv-run": l2[0][0]}, rel=1e-9)  # the cv MSEs come from the fold factors


def _union_pandas(directory: Path, key: str, like: Path):
    frame = pd.read_parquet(directory, schema=pq.read_schema(like).append(pa.field(key, pa.string())))
    return {c: _pandas_kind(t) for c, t in frame.dtypes.items()}, frame[key].astype(str).value_counts().to_dict()


def _union_polars(directory: Path, key: str, like: Path):
    frame = pl.scan_parquet(directory, hive_partitioning=True, missing_columns="insert",
                            schema=pl.read_parquet_schema(like)).collect()
    kinds = {c: POLARS_KINDS.get(t, str(t)) for c, t in frame.schema.items()}
    return kinds, dict(frame.group_by(key).len().iter_rows())


def _union_duckdb(directory: Path, key: str, like: Path):
    source = f"read_parquet('{directory}/*/*.parquet', hive_partitioning = true, union_by_name = true)"
    relation = duckdb.sql(f"SELECT * FROM {source}")
    kinds = {c: DUCKDB_KINDS.get(str(t), str(t)) for c, t in zip(relation.columns, relation.types)}
    return kinds, dict(duckdb.sql(f"SELECT {key}, count(*) FROM {source} GROUP BY ALL").fetchall())


def test_predictions_of_cross_validated_and_other_runs_read_together_with_each_readers_option(root, tmp_path):
    """The documented options for files that differ by columns: every row of both runs, with the cross-validated
    columns (null for the other run's rows)."""
    out = tmp_path / "out"
    shutil.copytree(root[0], out)
    make_cross_validated(str(out), RUN_IDS[1])
    like = out / "predictions" / f"run_id={RUN_IDS[1]}" / "part-0.parquet"
    directory, expected = out / "predictions", footer_rows(out / "predictions", "run_id")
    columns, key = CV_PREDICTIONS
    for name, read in (("pandas", _union_pandas), ("polars", _union_polars), ("duckdb", _union_duckdb)):
        kinds, counts = read(directory, key, like)
        assert kinds == documented_kinds(name, columns, key) and counts == expected, name
    plain = pl.scan_parquet(directory, hive_partitioning=True, missing_columns="insert",
                            schema=pl.read_parquet_schema(like)).filter(pl.col("run_id") == RUN_IDS[0]).collect()
    assert plain.height == expected[RUN_IDS[0]] and plain["fold"].null_count() == plain.height


def test_spark_reads_predictions_of_cross_validated_and_other_runs_with_merge_schema(root, tmp_path, spark):
    out = tmp_path / "out"
    shutil.copytree(root[0], out)
    make_cross_validated(str(out), RUN_IDS[1])
    frame = spark.read.option("mergeSchema", "true").parquet(str(out / "predictions"))
    columns, key = CV_PREDICTIONS
    assert {c: SPARK_KINDS.get(t, t) for c, t in frame.dtypes} == documented_kinds("spark", columns, key)
    counts = {row[key]: row["count"] for row in frame.groupBy(key).count().collect()}
    assert counts == footer_rows(out / "predictions", key)


# ---------------------------------------------------------------------------------------------------------
# An output root of schema version 2 takes version 3 runs as it is.

def test_a_version_2_root_takes_a_version_3_run_without_a_migration(root, tmp_path):
    """Version 3 only added: a root whose runs say version 2 is neither refused nor rewritten by a run (a
    cross-validated one included), and every reader reads it whole."""
    out = tmp_path / "out"
    shutil.copytree(root[0], out)
    for path in (p for p in out.rglob("*.parquet") if "_staging" not in p.parts):
        table = pq.read_table(path, partitioning=None)
        pq.write_table(table.replace_schema_metadata({**table.schema.metadata, b"linreg.schema_version": b"2"}), path)
    assert migrate.run_versions(str(out)) == {r: "2" for r in RUN_IDS}
    before = _snapshot(out)
    _, w, y, _ = root
    _train(w, y, out, "after", trainer="exact")
    make_cross_validated(str(out), "after")
    assert {p: b for p, b in _snapshot(out).items() if p in before} == before  # nothing of version 2 rewritten
    assert migrate.run_versions(str(out)) == {**{r: "2" for r in RUN_IDS}, "after": SCHEMA_VERSION}
    migrate.check_schema_version(str(out))
    assert migrate.migrate(str(out)).runs == []
    for dataset in ("weights", "metrics", "runs", "scores"):  # the predictions: the test above
        readers = {"pandas": read_pandas, "polars": read_polars, "duckdb": read_duckdb}
        columns, key = DOCUMENTED[dataset]
        runs = {"score-a", "score-b"} if dataset == "scores" else {*RUN_IDS, "after"}
        assert set(footer_rows(out / dataset, key)) == runs
        for name, read in readers.items():
            kinds, counts = read(out / dataset, key)
            assert kinds == documented_kinds(name, columns, key) and counts == footer_rows(out / dataset, key)


# ---------------------------------------------------------------------------------------------------------
# An output root of schema version 1: refused, migrated, then read by every reader.

def write_as_version_1(out: Path, run_id: str) -> None:
    """Rewrite a committed run as schema version 1 wrote it: 'all' for the totals' region and target, the runs
    entry with a run_id column first, and schema_version 1 in every file's metadata."""
    def put(path: Path, table: pa.Table) -> None:
        metadata = dict(pq.read_schema(path).metadata)
        metadata[b"linreg.schema_version"] = b"1"
        pq.write_table(table.replace_schema_metadata(metadata), path, compression="snappy")

    for dataset in ("weights", "predictions"):
        path = out / dataset / f"run_id={run_id}" / "part-0.parquet"
        put(path, pq.read_table(path))
    path = out / "metrics" / f"run_id={run_id}" / "part-0.parquet"
    metrics = pq.read_table(path)
    for name in ("region", "target"):
        metrics = metrics.set_column(metrics.schema.get_field_index(name), name, pc.fill_null(metrics[name], "all"))
    put(path, metrics)
    path = out / "runs" / f"run_id={run_id}" / "part-0.parquet"
    put(path, pq.read_table(path).add_column(0, "run_id", pa.array([run_id])))


def _snapshot(out: Path) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()
            and p.relative_to(out).parts[0] != "_locks"}


@pytest.fixture
def version_1_root(tmp_path):
    """Two runs (the first with region 'all' held out) and a scoring, rewritten as schema version 1; and
    the version 2 tables of metrics and runs entries to compare the migration with."""
    w, y = _data(tmp_path / "data")
    out = tmp_path / "out"
    _train(w, y, out, RUN_IDS[0], trainer="exact", holdout_regions=["all", "R001"])
    _train(w, y, out, RUN_IDS[1], trainer="manual", holdout_fraction=0.3)
    score(ScoreConfig(model=str(out), weather=w, output=str(out), score_run_id="score-a"))
    current = {(d, r): pq.read_table(out / d / f"run_id={r}") for d in ("metrics", "runs") for r in RUN_IDS}
    for run_id in RUN_IDS:
        write_as_version_1(out, run_id)
    return out, w, y, current


def test_a_version_1_root_is_refused_with_the_migration_command_then_migrated(version_1_root, capsys):
    out, w, y, current = version_1_root
    with pytest.raises(Exception, match="run_id"):
        pd.read_parquet(out / "runs")  # the failure: run_id both in the files and in the folders
    with pytest.raises(InputError) as refused:
        _train(w, y, out, "after", trainer="exact")
    message = str(refused.value)
    assert refused.value.exit_code == EXIT_BAD_INPUT
    assert f"python -m flows.migrate --output {out}" in message and "schema version 1" in message
    assert all(run_id in message for run_id in RUN_IDS)
    with pytest.raises(InputError, match="flows.migrate"):
        score(ScoreConfig(model=str(out), weather=w, output=str(out), score_run_id="score-b"))
    assert not (out / "runs" / "run_id=after").exists() and not (out / "scores" / "score_run_id=score-b").exists()

    before = _snapshot(out)
    assert migrate_cli.main(["--output", str(out), "--dry-run"]) == 0
    assert "would migrate 2 run(s)" in capsys.readouterr().out and _snapshot(out) == before

    assert migrate_cli.main(["--output", str(out)]) == 0
    assert "migrated 2 run(s)" in capsys.readouterr().out
    for (dataset, run_id), table in current.items():  # exactly what version 2 wrote, region 'all' kept apart
        path = out / dataset / f"run_id={run_id}" / "part-0.parquet"
        assert pq.read_table(path).equals(table), (dataset, run_id)
        metadata = pq.read_schema(path).metadata
        assert metadata[b"linreg.schema_version"] == SCHEMA_VERSION.encode()  # the layout of versions 2 and 3
        assert metadata[b"linreg.migrated_from"] == b"1"
        assert json.loads(metadata[b"linreg.config"])["run_id"] == run_id  # the rest of the metadata is kept
    assert not [p for p in out.rglob("*.tmp")]

    migrated = _snapshot(out)
    assert migrate.migrate(str(out)).runs == [] and _snapshot(out) == migrated  # idempotent
    readers = {"pandas": read_pandas, "polars": read_polars, "duckdb": read_duckdb}
    check_every_reader_reads_every_dataset(out, readers, set(RUN_IDS), {"score-a"})
    _train(w, y, out, "after", trainer="exact")
    check_every_reader_reads_every_dataset(out, readers, {*RUN_IDS, "after"}, {"score-a"})


def test_an_interrupted_migration_is_finished_by_the_next(version_1_root, monkeypatch):
    out, w, y, current = version_1_root
    def crash_on_runs_entry(batch):
        raise OSError("disk went away")

    monkeypatch.setattr(migrate, "runs_v2", crash_on_runs_entry)
    with pytest.raises(OSError, match="disk went away"):
        migrate.migrate(str(out))
    first = RUN_IDS[0]
    metrics = str(out / "metrics" / f"run_id={first}" / "part-0.parquet")
    assert migrate.file_version(pafs.LocalFileSystem(), metrics) == SCHEMA_VERSION  # metrics rewritten, entry not yet
    assert migrate.run_versions(str(out))[first] == "1" and not list(out.rglob("*.tmp"))
    with pytest.raises(InputError, match="flows.migrate"):
        migrate.check_schema_version(str(out))
    monkeypatch.undo()
    assert migrate.migrate(str(out)).runs == list(RUN_IDS)
    for (dataset, run_id), table in current.items():
        assert pq.read_table(out / dataset / f"run_id={run_id}").equals(table), (dataset, run_id)
    migrate.check_schema_version(str(out))


def test_migrated_root_reads_in_spark(version_1_root, spark):
    out, *_ = version_1_root
    migrate.migrate(str(out))
    check_every_reader_reads_every_dataset(out, {"spark": spark_reader(spark)}, set(RUN_IDS), {"score-a"})


def test_a_root_of_a_newer_schema_version_is_refused_and_not_migrated(version_1_root, capsys):
    out, *_ = version_1_root
    migrate.migrate(str(out))
    path = out / "runs" / f"run_id={RUN_IDS[0]}" / "part-0.parquet"
    table = pq.read_table(path)
    newer = str(int(SCHEMA_VERSION) + 1)
    pq.write_table(table.replace_schema_metadata({**table.schema.metadata, b"linreg.schema_version": newer.encode()}),
                   path)
    with pytest.raises(InputError, match=rf"newer version .*schema version {newer}"):
        migrate.check_schema_version(str(out))
    before = _snapshot(out)
    assert migrate_cli.main(["--output", str(out)]) == EXIT_BAD_INPUT
    assert f"newer than this version's {SCHEMA_VERSION}" in capsys.readouterr().err and _snapshot(out) == before


def test_metrics_of_version_1_take_the_first_all_row_of_a_key_as_the_total():
    seen: set = set()
    first = pa.record_batch({"split": ["train", "train"], "region": ["all", "all"], "target": ["y", "all"],
                             "metric": ["mse", "mse"], "value": [1.0, 2.0]})
    later = pa.record_batch({"split": ["train", "train", "train"], "region": ["R1", "all", "all"],
                             "target": ["all", "y", "all"], "metric": ["mse", "mse", "mse"], "value": [3.0, 4.0, 5.0]})
    rows = migrate.metrics_v2(first, seen).to_pylist() + migrate.metrics_v2(later, seen).to_pylist()
    assert [(r["region"], r["target"], r["value"]) for r in rows] == [
        (None, "y", 1.0), (None, None, 2.0), ("R1", None, 3.0), ("all", "y", 4.0), ("all", None, 5.0)]


def test_a_version_1_root_on_object_storage_is_refused_then_migrated(version_1_root, s3_bucket):
    out, w, y, current = version_1_root
    fs, root = pafs.FileSystem.from_uri(f"s3://{s3_bucket}/out")
    pafs.copy_files(str(out), root, source_filesystem=pafs.LocalFileSystem(), destination_filesystem=fs)
    output = f"s3://{s3_bucket}/out"
    with pytest.raises(InputError, match=f"python -m flows.migrate --output {output}"):
        migrate.check_schema_version(output)
    assert migrate.migrate(output).runs == list(RUN_IDS)
    migrate.check_schema_version(output)
    for (dataset, run_id), table in current.items():
        path = f"{root}/{dataset}/run_id={run_id}/part-0.parquet"
        assert pq.read_table(path, filesystem=fs).equals(table), (dataset, run_id)
    assert [r["run_id"] for r in runindex.read_runs(output)] == list(RUN_IDS)


def test_migrating_a_missing_output_is_a_clear_error(tmp_path, capsys):
    assert migrate_cli.main(["--output", str(tmp_path / "nope")]) == EXIT_BAD_INPUT
    assert f"The output '{tmp_path / 'nope'}' does not exist" in capsys.readouterr().err
