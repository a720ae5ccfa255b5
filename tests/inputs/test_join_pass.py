"""The one-pass join: duplicate keys found by sorting key hashes (in memory or range by range), values
checked on the joined rows, per-region errors summed by region number (checked against pandas), and the
bucket-by-bucket join of inputs too large to join at once (the same rows as one join)."""

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from linreg.config import make_config
from linreg.errors import InputError
from linreg.inputs.buckets import FixedBatches, MAX_BUCKETS, bucket_count, bucket_cuts
from linreg.inputs.join import connect, duplicate_hashes, join_tables
from linreg.inputs.schema import resolve_columns
from linreg.inputs.tables import open_table
from linreg.pipeline import steps
from linreg.pipeline.metrics import RegionErrors
from tests.helpers import linear_tables, write


@pytest.mark.parametrize("memory_limit", [1 << 30, 4096])  # all at once; ~25 ranges of hash values
def test_duplicate_hashes_in_memory_and_range_by_range(tmp_path, memory_limit):
    rng = np.random.default_rng(0)
    values = rng.integers(0, 2**64, 20_000, dtype=np.uint64, endpoint=False)
    values[:3] = [0, 2**64 - 1, 2**63]  # the edges of the ranges
    path = tmp_path / "hashes"
    values.tofile(path)
    assert not duplicate_hashes(str(path), len(values), memory_limit)
    for twin in (0, 1, 2, 12_345):  # a repeat at a range edge or anywhere
        repeated = np.append(values, values[twin])
        repeated.tofile(path)
        assert duplicate_hashes(str(path), len(repeated), memory_limit)
    np.empty(0, np.uint64).tofile(path)
    assert not duplicate_hashes(str(path), 0, memory_limit)


def test_a_bad_value_in_a_row_without_a_match_is_not_read(tmp_path):
    """Values are checked on the joined rows: a weather row whose key has no yields is dropped unread
    (and counted), however bad its values."""
    regions = [f"R{i}" for i in range(12)]
    rng = np.random.default_rng(1)
    w = write(tmp_path / "w.parquet", region=regions + ["extra"], year=[2020] * 13,
              temp=list(rng.normal(70, 5, 12)) + [float("nan")], rainfall=list(rng.normal(90, 9, 13)))
    y = write(tmp_path / "y.parquet", region=regions, year=[2020] * 12, apples=list(rng.normal(80, 10, 12)))
    roles = dict(features=["temp", "rainfall"], targets=["apples"], holdout_regions=["R0"])
    summary = steps.run(make_config(weather=w, yields=y, output=str(tmp_path / "out"), run_id="r", **roles))
    assert summary.joined.weather_dropped == 1 and summary.joined.joined_rows == 12
    # the same NaN in a row that joins is an error naming the file and key
    y2 = write(tmp_path / "y2.parquet", region=regions + ["extra"], year=[2020] * 13,
               apples=list(rng.normal(80, 10, 13)))
    with pytest.raises(InputError, match=r"column 'temp' has 1 null, NaN or infinite value.*w\.parquet.*extra"):
        steps.run(make_config(weather=w, yields=y2, output=str(tmp_path / "out"), run_id="s", **roles))


@pytest.mark.parametrize("weighted", [False, True])
def test_region_metrics_equal_a_pandas_group_by_of_the_predictions(tmp_path, weighted):
    w, y, _, _ = linear_tables(tmp_path, rows=600, regions=40, files=3)
    if weighted:  # add a weight column, zero for all rows of one region
        table = pq.read_table(f"{y}/part-0.parquet")
        weights = np.where(np.asarray(table["region"]) == "R003", 0.0,
                           np.random.default_rng(2).uniform(0.5, 2, table.num_rows))
        pq.write_table(table.append_column("w", [weights]), f"{y}/part-0.parquet")
        for part in ("part-1", "part-2"):
            t = pq.read_table(f"{y}/{part}.parquet")
            weights = np.where(np.asarray(t["region"]) == "R003", 0.0, 1.0)
            pq.write_table(t.append_column("w", [weights]), f"{y}/{part}.parquet")
    out = tmp_path / "out"
    steps.run(make_config(weather=w, yields=y, output=str(out), run_id="r", holdout_from_year=2012,
                             weight_column="w" if weighted else None))
    pred = pd.read_parquet(out / "predictions")
    metrics = pd.read_parquet(out / "metrics")
    weight = pred["w"] if weighted else pd.Series(1.0, index=pred.index)
    for target in ("apples", "oranges"):
        pred[f"se_{target}"] = weight * (pred[target] - pred[f"{target}_pred"]) ** 2
    pred["weight"] = weight
    sums = pred.groupby(["split", "region"])[["se_apples", "se_oranges", "weight"]].sum()
    per_region = metrics[metrics.region.notna() & (metrics.metric == "mse")]
    assert len(per_region) == 3 * len(sums)  # both targets and the mean over targets, per (split, region) with rows
    assert list(per_region[per_region.target.isna()][["split", "region"]].itertuples(index=False, name=None)) \
        == sorted(sums.index)  # sorted by split, then region
    for (split, region), row in sums.iterrows():
        got = per_region[(per_region.split == split) & (per_region.region == region)]
        got = got.set_index(got.target.fillna("(all targets)")).value
        if row.weight == 0:  # every row of the region has weight 0
            assert got.isna().all()
            continue
        np.testing.assert_allclose(got["apples"], row.se_apples / row.weight, rtol=1e-12)
        np.testing.assert_allclose(got["oranges"], row.se_oranges / row.weight, rtol=1e-12)
        np.testing.assert_allclose(got["(all targets)"], (row.se_apples + row.se_oranges) / (2 * row.weight),
                                   rtol=1e-12)
    assert set(sums.index.get_level_values("split")) == {"train", "holdout"}


def test_region_errors_of_integer_regions_are_named_as_text_and_sorted_by_name():
    errors = RegionErrors(3, 1)
    errors.update(np.array([2, 0, 2, 1]), np.array([False, False, False, True]), np.array([[1.0], [4.0], [3.0], [9.0]]))
    table = errors.table(pa.array([100, 7, 20]), ["y"]).to_pylist()
    assert [(r["split"], r["region"], r["target"], r["value"]) for r in table] == [
        ("holdout", "7", "y", 9.0), ("holdout", "7", None, 9.0),
        ("train", "100", "y", 4.0), ("train", "100", None, 4.0),
        ("train", "20", "y", 2.0), ("train", "20", None, 2.0)]
    assert RegionErrors(3, 2).table(pa.array(["a", "b", "c"]), ["u", "v"]).num_rows == 0


def test_background_writer_writes_in_order_and_raises_a_failed_write():
    from linreg.pipeline.steps import BackgroundWriter

    class Writer:
        def __init__(self, fail_at=None):
            self.written, self.fail_at = [], fail_at

        def write_table(self, table, row_group_size=None):
            if len(self.written) == self.fail_at:
                raise OSError("disk full")
            self.written.append(table.column("i").to_pylist())

    tables = [pa.table({"i": [n, n]}) for n in range(7)]
    ok = Writer()
    with BackgroundWriter(ok) as background:
        for table in tables:
            background.write(table)
    assert ok.written == [[n, n] for n in range(7)]
    with pytest.raises(OSError, match="disk full"):
        with BackgroundWriter(Writer(fail_at=3)) as background:
            for table in tables:
                background.write(table)


def test_bucket_cuts_balance_rows_and_never_split_a_region():
    rows = np.array([5, 1, 1, 1, 1, 1, 30, 1, 1, 1, 1, 1], dtype=np.int64)
    for count in range(1, 20):
        cuts = bucket_cuts(rows, count)
        assert cuts[-1] == len(rows) and cuts == sorted(set(cuts)) and len(cuts) <= count
        sizes = np.add.reduceat(rows, [0] + cuts[:-1])
        assert sizes.sum() == rows.sum() and sizes.max() <= rows.sum() / count + rows.max()
        assert (count == 1) == (len(cuts) == 1)
    assert bucket_cuts(np.ones(100, dtype=np.int64), 4) == [25, 50, 75, 100]
    assert bucket_cuts(np.array([], dtype=np.int64), 8) == [0]


def test_bucket_count_follows_the_input_and_the_memory_limit():
    mb = 2**20
    assert bucket_count(100 * mb, 128 * mb, ordered=True) == 1
    assert bucket_count(600 * mb, 128 * mb, ordered=True) == 2
    assert bucket_count(600 * mb, 128 * mb, ordered=False) == 1  # an unsorted join needs less memory
    assert bucket_count(10 * 2**30, 1 * 2**30, ordered=True) == 3
    assert bucket_count(10 * 2**30, 1 * mb, ordered=True) == bucket_count(10 * 2**30, 128 * mb, ordered=True)
    assert bucket_count(2**50, 128 * mb, ordered=False) == MAX_BUCKETS


def _join(tmp_path, name, w, y, buckets, aggregate=None, **options):
    weather, yields = open_table(w, "weather"), open_table(y, "yields")
    columns = resolve_columns(weather, yields, features=["temp", "rainfall"], targets=["apples"], keys=None,
                              aggregate=aggregate)
    con = connect(str(tmp_path), 128 * 2**20)
    try:
        result = join_tables(con, weather, yields, columns, str(tmp_path / f"{name}.arrow"), max_drop_fraction=1.0,
                             buckets=buckets, **options)
    finally:
        con.close()
    with pa.memory_map(result.path) as source:
        return result, pa.ipc.open_file(source).read_all()


def _weather_and_yields(tmp_path, regions, years, integer_regions=False, seed=0):
    """Weather over `regions` x `years` in 3 files (rows in random order, 10% of them without yields, and
    two regions only in weather); yields in 2 files (and one region only in yields)."""
    rng = np.random.default_rng(seed)
    names = list(range(100, 100 + regions + 3)) if integer_regions else [f"R{i:04d}" for i in range(regions + 3)]
    w_keys = [(r, t) for r in names[:regions + 2] for t in years]
    y_keys = [(r, t) for r in names[:regions] + names[-1:] for t in sorted(set(years)) if rng.random() > 0.1]
    w_order, y_order = rng.permutation(len(w_keys)), rng.permutation(len(y_keys))
    for part, idx in enumerate(np.array_split(w_order, 3)):
        write(tmp_path / "w" / f"part-{part}.parquet", region=[w_keys[i][0] for i in idx], year=[w_keys[i][1] for i in idx],
              temp=rng.normal(20, 5, len(idx)), rainfall=rng.normal(80, 10, len(idx)))
    for part, idx in enumerate(np.array_split(y_order, 2)):
        write(tmp_path / "y" / f"part-{part}.parquet", region=[y_keys[i][0] for i in idx], year=[y_keys[i][1] for i in idx],
              apples=rng.normal(50, 5, len(idx)), weight=rng.uniform(0.5, 2, len(idx)))
    return str(tmp_path / "w"), str(tmp_path / "y")


@pytest.mark.parametrize("integer_regions", [False, True])
def test_a_join_bucket_by_bucket_writes_the_same_rows_as_one_join(tmp_path, integer_regions):
    w, y = _weather_and_yields(tmp_path, regions=37, years=range(1990, 2010), integer_regions=integer_regions)
    one, rows = _join(tmp_path, "one", w, y, buckets=1, ordered=True, weight_column="weight")
    assert one.joined_rows == rows.num_rows > 0
    for buckets in (2, 5, 64):  # 64 > 37 regions: a bucket a region, some empty on one side
        many, bucketed = _join(tmp_path, f"b{buckets}", w, y, buckets=buckets, ordered=True, weight_column="weight")
        assert bucketed.equals(rows)  # same rows in the same order (region number, then year)
        assert (many.joined_rows, many.weather_rows, many.yields_rows) == (one.joined_rows, one.weather_rows,
                                                                         one.yields_rows)
        assert not (tmp_path / "join-buckets").exists()  # the bucket files are removed
    _, unordered = _join(tmp_path, "u", w, y, buckets=3, ordered=False, weight_column="weight")
    order = ["__region_index", "year"]
    assert unordered.sort_by([(c, "ascending") for c in order]).equals(rows)


def test_aggregated_weather_joins_bucket_by_bucket_to_the_same_rows(tmp_path):
    w, y = _weather_and_yields(tmp_path, regions=23, years=[2001, 2002, 2003, 2001, 2002])  # 2 rows a key
    one, rows = _join(tmp_path, "one", w, y, buckets=1, ordered=True, aggregate="temp:mean,rainfall:sum")
    many, bucketed = _join(tmp_path, "many", w, y, buckets=4, ordered=True, aggregate="temp:mean,rainfall:sum")
    assert bucketed.equals(rows) and many.weather_keys == one.weather_keys == 25 * 3


def test_a_duplicate_key_is_named_when_joined_bucket_by_bucket(tmp_path):
    w, y = _weather_and_yields(tmp_path, regions=12, years=range(2000, 2004))
    write(tmp_path / "w" / "part-9.parquet", region=["R0007"], year=[2001], temp=[1.0], rainfall=[2.0])
    with pytest.raises(InputError, match=r"weather.*1 duplicated key.*R0007.*2001.*part-9\.parquet"):
        _join(tmp_path, "dup", w, y, buckets=3, ordered=True)


def test_a_run_joined_bucket_by_bucket_equals_a_run_joined_at_once(tmp_path, monkeypatch, caplog):
    """The whole pipeline, nn trainer (rows in the joined file's order, cut into the same record batches):
    the same weights and statistics, bit for bit."""
    from linreg.inputs import join

    caplog.set_level("INFO", logger="linreg.inputs.join")
    w, y, _, _ = linear_tables(tmp_path, rows=600, regions=30)
    monkeypatch.setattr(join, "JOINED_BATCH_ROWS", 64)  # buckets end inside batches
    weights = {}
    for buckets in (1, 4):
        monkeypatch.setattr(join, "bucket_count", lambda *args, n=buckets: n)
        out = tmp_path / f"out{buckets}"
        steps.run(make_config(weather=w, yields=y, output=str(out), run_id="r", trainer="nn", epochs=3, seed=5))
        weights[buckets] = pq.read_table(out / "weights" / "run_id=r").to_pydict()
    assert weights[1] == weights[4]
    assert any("partitioned into 4 buckets of regions" in r.getMessage() for r in caplog.records)


def test_fixed_batches_cut_any_batches_into_batches_of_one_size():
    cut, out = FixedBatches(10), []
    sizes = [3, 10, 0, 25, 1, 10, 4]
    start = 0
    for size in sizes:
        out += cut.add(pa.record_batch({"i": pa.array(np.arange(start, start + size))}))
        start += size
    out += cut.flush()
    assert [b.num_rows for b in out] == [10] * 5 + [3]
    assert np.concatenate([b.column(0).to_numpy() for b in out]).tolist() == list(range(start))
    assert cut.flush() == []


@pytest.mark.parametrize("table", ["weather", "yields"])
@pytest.mark.parametrize("fault", ["null", "long"])
def test_a_bad_value_in_a_second_key_column_names_the_file(tmp_path, table, fault):
    """The key check is one GROUP BY region per table: a null or overlong value in another key column still
    names the file and column."""
    regions = [f"R{i}" for i in range(8)]
    fields = [f"f{i}" for i in range(8)]
    bad = list(fields)
    bad[3] = None if fault == "null" else "x" * 5000
    rng = np.random.default_rng(1)
    w = write(tmp_path / "w.parquet", region=regions, field=bad if table == "weather" else fields,
              temp=rng.normal(size=8), rainfall=rng.normal(size=8))
    y = write(tmp_path / "y.parquet", region=regions, field=bad if table == "yields" else fields,
              apples=rng.normal(size=8))
    message = r"null value" if fault == "null" else r"longer than"
    with pytest.raises(InputError, match=rf"{table} table.*'field'.*{message}|{table} table.*{message}.*'field'"):
        steps.run(make_config(weather=w, yields=y, output=str(tmp_path / "out"), run_id="r",
                                 join_keys=["region", "field"], features=["temp", "rainfall"], targets=["apples"],
                                 holdout_fraction=0.0))
    assert not (tmp_path / "out" / "runs").exists()
