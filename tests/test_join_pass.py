"""The one-pass join: duplicate keys found by sorting key hashes (in memory or range by range), values
checked on the joined rows, and per-region errors summed by region number (checked against pandas)."""

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from linreg import pipeline
from linreg.config import make_config
from linreg.errors import InputError
from linreg.join import duplicate_hashes
from linreg.metrics import RegionErrors
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
    summary = pipeline.run(make_config(weather=w, yields=y, output=str(tmp_path / "out"), run_id="r", **roles))
    assert summary.joined.weather_dropped == 1 and summary.joined.joined_rows == 12
    # the same NaN in a row that joins is an error naming the file and key
    y2 = write(tmp_path / "y2.parquet", region=regions + ["extra"], year=[2020] * 13,
               apples=list(rng.normal(80, 10, 13)))
    with pytest.raises(InputError, match=r"column 'temp' has 1 null, NaN or infinite value.*w\.parquet.*extra"):
        pipeline.run(make_config(weather=w, yields=y2, output=str(tmp_path / "out"), run_id="s", **roles))


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
    pipeline.run(make_config(weather=w, yields=y, output=str(out), run_id="r", holdout_from_year=2012,
                             weight_column="w" if weighted else None))
    pred = pd.read_parquet(out / "predictions")
    metrics = pd.read_parquet(out / "metrics")
    weight = pred["w"] if weighted else pd.Series(1.0, index=pred.index)
    for target in ("apples", "oranges"):
        pred[f"se_{target}"] = weight * (pred[target] - pred[f"{target}_pred"]) ** 2
    pred["weight"] = weight
    sums = pred.groupby(["split", "region"])[["se_apples", "se_oranges", "weight"]].sum()
    per_region = metrics[(metrics.region != "all") & (metrics.metric == "mse")]
    assert len(per_region) == 3 * len(sums)  # both targets and 'all', per (split, region) with rows
    assert list(per_region[per_region.target == "all"][["split", "region"]].itertuples(index=False, name=None)) \
        == sorted(sums.index)  # sorted by split, then region
    for (split, region), row in sums.iterrows():
        got = per_region[(per_region.split == split) & (per_region.region == region)].set_index("target").value
        if row.weight == 0:  # every row of the region has weight 0
            assert got.isna().all()
            continue
        np.testing.assert_allclose(got["apples"], row.se_apples / row.weight, rtol=1e-12)
        np.testing.assert_allclose(got["oranges"], row.se_oranges / row.weight, rtol=1e-12)
        np.testing.assert_allclose(got["all"], (row.se_apples + row.se_oranges) / (2 * row.weight), rtol=1e-12)
    assert set(sums.index.get_level_values("split")) == {"train", "holdout"}


def test_region_errors_of_integer_regions_are_named_as_text_and_sorted_by_name():
    errors = RegionErrors(3, 1)
    errors.update(np.array([2, 0, 2, 1]), np.array([False, False, False, True]), np.array([[1.0], [4.0], [3.0], [9.0]]))
    table = errors.table(pa.array([100, 7, 20]), ["y"]).to_pylist()
    assert [(r["split"], r["region"], r["target"], r["value"]) for r in table] == [
        ("holdout", "7", "y", 9.0), ("holdout", "7", "all", 9.0),
        ("train", "100", "y", 4.0), ("train", "100", "all", 4.0),
        ("train", "20", "y", 2.0), ("train", "20", "all", 2.0)]
    assert RegionErrors(3, 2).table(pa.array(["a", "b", "c"]), ["u", "v"]).num_rows == 0


def test_background_writer_writes_in_order_and_raises_a_failed_write():
    from linreg.pipeline import BackgroundWriter

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
