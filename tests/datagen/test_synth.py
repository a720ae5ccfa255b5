"""datagen.synth (synthetic datasets with a known ground truth) and datagen.sample (the seed notebook's data)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from datagen import synth
from linreg.errors import InputError
from datagen.sample import write_sample

REPO = Path(__file__).resolve().parents[2]
SAMPLE = REPO / "data" / "sample"
SEED_INPUTS = np.array([[73, 67, 43], [91, 88, 64], [87, 134, 58], [102, 43, 37], [69, 96, 70], [74, 66, 43],
                        [91, 87, 65], [88, 134, 59], [101, 44, 37], [68, 96, 71], [73, 66, 44], [92, 87, 64],
                        [87, 135, 57], [103, 43, 36], [68, 97, 70]], dtype=np.float64)
SEED_TARGETS = np.array([[56, 70], [81, 101], [119, 133], [22, 37], [103, 119], [57, 69], [80, 102], [118, 132],
                         [21, 38], [104, 118], [57, 69], [82, 100], [118, 134], [20, 38], [102, 120]],
                        dtype=np.float64)


def read(directory, table: str) -> pd.DataFrame:
    return ds.dataset(Path(directory) / table, format="parquet").to_table().to_pandas()


def files_of(directory, table: str) -> list[Path]:
    return sorted((Path(directory) / table).rglob("*.parquet"))


def joined(directory) -> pd.DataFrame:
    return read(directory, "yields").merge(read(directory, "weather"), on=["region", "year"], how="inner")


def ols(x: np.ndarray, y: np.ndarray, noise_sd: float):
    """Least-squares coefficients (k x p), intercepts (k) and their standard errors given the noise sd."""
    design = np.column_stack([x, np.ones(len(x))])
    solution = np.linalg.lstsq(design, y, rcond=None)[0]
    se = noise_sd * np.sqrt(np.diag(np.linalg.inv(design.T @ design)))
    return solution[:-1].T, solution[-1], se[:-1], se[-1]


def test_exact_rows_columns_and_types(tmp_path):
    truth = synth.generate(tmp_path, rows=1000, regions=7, files=3, start_year=2000)
    assert sorted(p.name for p in (tmp_path / "yields").iterdir()) == [f"part-0000{i}.parquet" for i in range(3)]
    assert len(files_of(tmp_path, "weather")) == 3
    yields, weather = read(tmp_path, "yields"), read(tmp_path, "weather")
    assert len(yields) == 1000 and len(weather) == 1000
    assert pq.read_schema(files_of(tmp_path, "yields")[0]) == pa.schema(
        [("region", pa.string()), ("year", pa.int64()), ("apples", pa.float64()), ("oranges", pa.float64())])
    assert pq.read_schema(files_of(tmp_path, "weather")[0]) == pa.schema(
        [("region", pa.string()), ("year", pa.int64()), ("temp", pa.float64()), ("rainfall", pa.float64()),
         ("humidity", pa.float64())])
    # ceil(1000 / 7) = 143 years for the first six regions, 142 for the last; consecutive from start_year.
    spans = yields.groupby("region")["year"].agg(["min", "max", "count"])
    assert list(spans.index) == [f"R{i:06d}" for i in range(7)]
    assert list(spans["count"]) == [143] * 6 + [142]
    assert (spans["min"] == 2000).all() and (spans["max"] - spans["min"] + 1 == spans["count"]).all()
    assert not yields.duplicated(["region", "year"]).any()
    assert truth["rows"] == 1000 and truth["regions"] == 7 and truth["files"] == 3
    assert truth["unmatched"] == {"yields": 0, "weather": 0} and truth["weather_rows"] == 1000
    assert json.loads((tmp_path / "truth.json").read_text()) == truth
    # Realistic ranges.
    assert weather["temp"].between(50, 100).all() and 65 < weather["temp"].mean() < 85
    assert weather["rainfall"].between(30, 140).all() and weather["humidity"].between(20, 90).all()
    # File i of both tables holds the same regions; every region lives in one file.
    for w_file, y_file in zip(files_of(tmp_path, "weather"), files_of(tmp_path, "yields")):
        assert set(pq.read_table(w_file)["region"].to_pylist()) == set(pq.read_table(y_file)["region"].to_pylist())


def test_default_file_count_and_row_groups(tmp_path):
    truth = synth.generate(tmp_path, rows=3000, regions=30, chunk_rows=1000)
    assert truth["files"] == 2
    for path in files_of(tmp_path, "yields") + files_of(tmp_path, "weather"):
        meta = pq.ParquetFile(path).metadata
        assert max(meta.row_group(i).num_rows for i in range(meta.num_row_groups)) <= 1000
        columns = {meta.row_group(0).column(j).path_in_schema: meta.row_group(0).column(j)
                   for j in range(meta.num_columns)}
        assert all(c.compression == "SNAPPY" for c in columns.values())
        assert "RLE_DICTIONARY" in columns["region"].encodings
        assert all("RLE_DICTIONARY" not in c.encodings for name, c in columns.items() if name not in ("region", "year"))


def test_weather_needs_a_join(tmp_path):
    synth.generate(tmp_path, rows=2000, regions=20)
    for w_file, y_file in zip(files_of(tmp_path, "weather"), files_of(tmp_path, "yields")):
        y_keys = pq.read_table(y_file).select(["region", "year"]).to_pandas()
        w_keys = pq.read_table(w_file).select(["region", "year"]).to_pandas()
        assert y_keys.equals(y_keys.sort_values(["region", "year"], ignore_index=True))
        assert (w_keys.to_numpy() != y_keys.to_numpy()).any(axis=1).mean() > 0.9


def test_same_seed_same_data_whatever_the_chunk_size(tmp_path):
    args = dict(rows=150_000, regions=1000, files=3, seed=7, unmatched_fraction=0.02)
    first = synth.generate(tmp_path / "a", **args)
    second = synth.generate(tmp_path / "b", **args, chunk_rows=7_000)
    other = synth.generate(tmp_path / "c", **{**args, "seed": 8})
    assert first == second
    assert first["coef"] == other["coef"]   # default features and targets: fixed coefficients
    for table in ("weather", "yields"):
        for a, b, c in zip(files_of(tmp_path / "a", table), files_of(tmp_path / "b", table),
                           files_of(tmp_path / "c", table)):
            assert pq.read_table(a).equals(pq.read_table(b))
            assert not pq.read_table(a).equals(pq.read_table(c))
        groups = [pq.ParquetFile(p).metadata.num_row_groups for p in files_of(tmp_path / "b", table)]
        assert min(groups) > 1   # the small chunk really wrote in more pieces


def test_ground_truth_is_recovered(tmp_path):
    """OLS on the joined data lands within 6 standard errors (noise_sd * sqrt(diag((A'A)^-1))) of the truth."""
    truth = synth.generate(tmp_path, rows=20_000, regions=200, noise_sd=1.0)
    assert truth["coef"] == [[-0.4, 0.85, 0.7], [-0.25, 0.8, 0.9]] and truth["intercept"] == [2.0, -5.0]
    data = joined(tmp_path)
    coef, intercept, coef_se, intercept_se = ols(data[truth["features"]].to_numpy(),
                                                 data[truth["targets"]].to_numpy(), truth["noise_sd"])
    assert np.all(np.abs(coef - np.array(truth["coef"])) < 6 * coef_se)
    assert np.all(np.abs(intercept - np.array(truth["intercept"])) < 6 * intercept_se)
    assert coef_se.max() < 0.01   # the tolerance is tight: these are real checks
    residuals = data[truth["targets"]].to_numpy() - data[truth["features"]].to_numpy() @ coef.T - intercept
    assert residuals.std(axis=0) == pytest.approx([1.0, 1.0], rel=0.05)


def test_any_features_and_targets(tmp_path):
    features, targets = ["temp", "wind", "sunshine", "soil_ph"], ["apples", "pears", "plums"]
    truth = synth.generate(tmp_path, rows=20_000, regions=100, features=features, targets=targets,
                           noise_sd=2.0, seed=3)
    assert np.array(truth["coef"]).shape == (3, 4) and len(truth["intercept"]) == 3
    assert truth["coef"][0][0] == -0.4
    again, _ = synth.ground_truth(features, targets, 3)
    assert np.array_equal(again, truth["coef"])
    assert not np.array_equal(synth.ground_truth(features, targets, 4)[0][:, 1:], again[:, 1:])
    data = joined(tmp_path)
    x = data[features].to_numpy()
    scales = x.std(axis=0)
    assert scales.max() / scales.min() > 10   # extra features have varied scales
    assert (x[:, 1:] >= 0).all() and (data[targets].mean() > 20).all()
    coef, intercept, coef_se, intercept_se = ols(x, data[targets].to_numpy(), 2.0)
    assert np.all(np.abs(coef - np.array(truth["coef"])) < 6 * coef_se)
    assert np.all(np.abs(intercept - np.array(truth["intercept"])) < 6 * intercept_se)


def test_unmatched_rows_match_the_recorded_counts(tmp_path):
    truth = synth.generate(tmp_path, rows=20_000, regions=100, unmatched_fraction=0.05)
    yields, weather = read(tmp_path, "yields"), read(tmp_path, "weather")
    both = yields.merge(weather, on=["region", "year"], how="outer", indicator=True)
    counts = both["_merge"].value_counts()
    assert counts["left_only"] == truth["unmatched"]["yields"]
    assert counts["right_only"] == truth["unmatched"]["weather"]
    assert counts["both"] == truth["matched_rows"] == 20_000 - truth["unmatched"]["yields"]
    assert len(weather) == truth["weather_rows"] == counts["both"] + counts["right_only"]
    for count in truth["unmatched"].values():   # Binomial(20000, 0.05): mean 1000, sd ~31
        assert abs(count - 1000) < 5 * 31
    last_year = yields.groupby("region")["year"].max()
    extra = both[both["_merge"] == "right_only"]
    assert (extra["year"].to_numpy() > last_year[extra["region"]].to_numpy()).all()
    assert not weather.duplicated(["region", "year"]).any()


def test_days_per_year_means_reproduce_the_truth(tmp_path):
    args = dict(rows=3000, regions=30, seed=5, unmatched_fraction=0.02)
    yearly = synth.generate(tmp_path / "yearly", **args)
    daily = synth.generate(tmp_path / "daily", **args, days_per_year=12)
    assert daily["weather_rows"] == 12 * yearly["weather_rows"]
    assert daily["unmatched"]["weather"] == 12 * yearly["unmatched"]["weather"]
    assert pq.read_schema(files_of(tmp_path / "daily", "weather")[0]).field("day").type == pa.int16()
    weather = read(tmp_path / "daily", "weather")
    assert sorted(weather["day"].unique()) == list(range(1, 13))
    assert (weather.groupby(["region", "year"]).size() == 12).all()
    assert weather["temp"].std() > 1.25 * read(tmp_path / "yearly", "weather")["temp"].std()
    assert (weather["rainfall"] > 0).all()
    means = weather.groupby(["region", "year"], as_index=False)[daily["features"]].mean()
    expected = read(tmp_path / "yearly", "weather").merge(means, on=["region", "year"], suffixes=("", "_mean"))
    assert len(expected) == len(means)
    for name in daily["features"]:
        np.testing.assert_allclose(expected[f"{name}_mean"], expected[name], rtol=1e-12)
    pd.testing.assert_frame_equal(read(tmp_path / "daily", "yields"), read(tmp_path / "yearly", "yields"))
    data = read(tmp_path / "daily", "yields").merge(means, on=["region", "year"])
    coef, _, coef_se, _ = ols(data[daily["features"]].to_numpy(), data[daily["targets"]].to_numpy(), 1.0)
    assert np.all(np.abs(coef - np.array(daily["coef"])) < 6 * coef_se)


def test_partition_by_region(tmp_path):
    synth.generate(tmp_path, rows=2000, regions=40, files=4, partition_by_region=True)
    assert sorted(p.name for p in (tmp_path / "weather").iterdir()) == [f"bucket={i:02d}" for i in range(4)]
    for table in ("weather", "yields"):
        data = ds.dataset(tmp_path / table, format="parquet", partitioning="hive").to_table().to_pandas()
        assert len(data) == 2000
        region_number = data["region"].str[1:].astype(int)
        assert (data["bucket"] == region_number // 10).all()


def test_bad_arguments_and_existing_output(tmp_path):
    with pytest.raises(InputError, match="rows >= regions"):
        synth.generate(tmp_path / "x", rows=5, regions=10)
    with pytest.raises(InputError, match="identifiers"):
        synth.generate(tmp_path / "x", rows=10, regions=2, features="temp,,rain")
    synth.generate(tmp_path / "y", rows=10, regions=2)
    with pytest.raises(InputError, match="overwrite"):
        synth.generate(tmp_path / "y", rows=10, regions=2)
    assert synth.generate(tmp_path / "y", rows=12, regions=2, overwrite=True)["rows"] == 12
    assert synth.main(["--rows", "1", "--regions", "2", "--out", str(tmp_path / "z")]) == 2


def _peak_rss_kib(out: Path, rows: int) -> int:
    """Peak RSS of `python -m datagen.synth` run as the child of a wrapper that reports RUSAGE_CHILDREN."""
    wrapper = ("import resource, subprocess, sys; subprocess.run(sys.argv[1:], check=True); "
               "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr)")
    command = [sys.executable, "-c", wrapper, sys.executable, "-m", "datagen.synth", "--rows", str(rows),
               "--regions", str(rows // 100), "--out", str(out), "--chunk-rows", "200000"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
    assert "yield rows/s" in done.stdout
    return int(done.stderr.strip().splitlines()[-1])


def test_memory_is_bounded_by_the_chunk_not_the_rows(tmp_path):
    """2M rows (~170 MB as whole tables) must peak below 1.5x the 200k-row run with the same 200k chunk."""
    small = _peak_rss_kib(tmp_path / "small", 200_000)
    large = _peak_rss_kib(tmp_path / "large", 2_000_000)
    assert sum(pq.read_metadata(p).num_rows for p in files_of(tmp_path / "large", "yields")) == 2_000_000
    assert large < 1.5 * small, f"peak RSS {large} KiB for 2M rows vs {small} KiB for 200k rows"


def test_sample_files_hold_the_seed_observations(tmp_path):
    for directory in (SAMPLE, tmp_path):
        if directory == tmp_path:
            write_sample(tmp_path)
        weather = pq.read_table(directory / "weather.parquet")
        yields = pq.read_table(directory / "yields.parquet")
        assert weather.schema == pa.schema([("region", pa.string()), ("year", pa.int64()), ("temp", pa.float64()),
                                            ("rainfall", pa.float64()), ("humidity", pa.float64())])
        assert yields.schema == pa.schema([("region", pa.string()), ("year", pa.int64()),
                                           ("apples", pa.float64()), ("oranges", pa.float64())])
        w, y = weather.to_pandas(), yields.to_pandas()
        assert len(w) == len(y) == 15 and w["region"].nunique() == y["region"].nunique() == 15
        assert (w["year"] == 2020).all() and (y["year"] == 2020).all()
        assert list(w["region"]) != list(y["region"])   # stored in another order: the join matters
        data = y.merge(w, on=["region", "year"])
        assert len(data) == 15
        np.testing.assert_array_equal(data[["temp", "rainfall", "humidity"]].to_numpy(), SEED_INPUTS)
        np.testing.assert_array_equal(data[["apples", "oranges"]].to_numpy(), SEED_TARGETS)
