"""The corrupt-input matrix: every damaged or inconsistent input fails with an InputError that names the file,
the column and (where rows are at fault) a few keys, and writes nothing: an earlier run's outputs stay
byte-identical and no staging area is left. Files Spark and Hadoop write beside the data are ignored."""

import hashlib
import os
import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from linreg.config import make_config
from linreg.errors import InputError
from linreg.inputs.checks import MAX_KEY_CHARS
from linreg.pipeline import steps
from tests.helpers import write

REGIONS = [f"R{i}" for i in range(12)]


def columns(role, rows=slice(None)):
    """The good weather or yields columns (12 regions, one year), optionally a slice of the rows."""
    rng = np.random.default_rng(1)
    w = {"region": REGIONS, "year": [2020] * 12, "temp": rng.normal(70, 5, 12), "rainfall": rng.normal(90, 20, 12),
         "humidity": rng.normal(50, 10, 12)}
    y = {"region": REGIONS, "year": [2020] * 12, "apples": rng.normal(80, 10, 12), "oranges": rng.normal(90, 10, 12)}
    chosen = w if role == "weather" else y
    return {k: list(v)[rows] for k, v in chosen.items()}


def snapshot(root: Path) -> dict:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture
def env(tmp_path):
    """An output root holding one committed run, the good yields file, and `fails(weather, *patterns)`: run
    with that weather input, expect an InputError matching every pattern, and check nothing was written."""
    out = tmp_path / "out"
    good_w = write(tmp_path / "good" / "weather.parquet", **columns("weather"))
    good_y = write(tmp_path / "good" / "yields.parquet", **columns("yields"))
    steps.run(make_config(weather=good_w, yields=good_y, output=str(out), run_id="earlier"))
    before = snapshot(out)

    def fails(weather, *patterns, yields=good_y):
        with pytest.raises(InputError) as info:
            steps.run(make_config(weather=str(weather), yields=str(yields), output=str(out), run_id="bad"))
        message = str(info.value)
        for pattern in patterns:
            assert re.search(pattern, message), (pattern, message)
        assert "Traceback" not in message and len(message) < 2000, message
        assert snapshot(out) == before  # nothing written, the earlier run byte-identical
        assert not (out / "_staging").exists()
        return message

    return type("Env", (), {"dir": tmp_path, "fails": staticmethod(fails), "yields": good_y, "out": out})


def test_truncated_file(env):
    path = write(env.dir / "w" / "a.parquet", **columns("weather"))
    data = Path(path).read_bytes()
    Path(path).write_bytes(data[: len(data) // 2])
    env.fails(path, re.escape(path), "not a readable Parquet")


def test_truncated_file_among_good_ones_is_named(env):
    write(env.dir / "w" / "a.parquet", **columns("weather", slice(0, 6)))
    bad = write(env.dir / "w" / "b.parquet", **columns("weather", slice(6, 12)))
    Path(bad).write_bytes(Path(bad).read_bytes()[:-20])
    env.fails(env.dir / "w", re.escape(bad), "not a readable Parquet file")


def test_zero_byte_file_among_good_ones_is_named(env):
    write(env.dir / "w" / "a.parquet", **columns("weather"))
    (env.dir / "w" / "b.parquet").write_bytes(b"")
    env.fails(env.dir / "w", re.escape(str(env.dir / "w" / "b.parquet")), "0 bytes")


def test_zero_byte_single_file(env):
    (env.dir / "w.parquet").write_bytes(b"")
    env.fails(env.dir / "w.parquet", re.escape(str(env.dir / "w.parquet")), "not a readable Parquet")


def test_non_parquet_file_in_a_directory_is_named(env):
    write(env.dir / "w" / "a.parquet", **columns("weather"))
    (env.dir / "w" / "notes.csv").write_text("region,year\nR1,2020\n")
    env.fails(env.dir / "w", re.escape(str(env.dir / "w" / "notes.csv")), "not a readable Parquet file")


def test_stray_success_and_crc_files_are_ignored(env):
    write(env.dir / "w" / "part-0.parquet", **columns("weather"))
    (env.dir / "w" / "_SUCCESS").write_bytes(b"")
    (env.dir / "w" / ".part-0.parquet.crc").write_bytes(b"crc\x00\x01\x02")
    (env.dir / "w" / "_temporary").mkdir()
    (env.dir / "w" / "_temporary" / "junk").write_bytes(b"not parquet")
    summary = steps.run(make_config(weather=str(env.dir / "w"), yields=env.yields, output=str(env.out),
                                       run_id="with-markers"))
    assert summary.joined.joined_rows == 12


def test_int_key_in_one_file_and_string_in_another(env):
    write(env.dir / "w" / "a.parquet", **columns("weather", slice(0, 6)))
    other = columns("weather", slice(6, 12))
    other["year"] = [str(v) for v in other["year"]]
    bad = write(env.dir / "w" / "b.parquet", **other)
    env.fails(env.dir / "w", "key column 'year'", "string", re.escape(bad))


def test_numeric_feature_in_one_file_and_string_in_another(env):
    write(env.dir / "w" / "a.parquet", **columns("weather", slice(0, 6)))
    other = columns("weather", slice(6, 12))
    other["temp"] = [f"{v:.1f}" for v in other["temp"]]
    bad = write(env.dir / "w" / "b.parquet", **other)
    env.fails(env.dir / "w", "column 'temp' must be numeric", re.escape(bad))


def test_int_partition_and_string_partition(env):
    """Hive directories year=2020 and year=abc: the partition column is text, the yields' year an integer."""
    for year, rows in (("2020", slice(0, 6)), ("abc", slice(6, 12))):
        part = columns("weather", rows)
        del part["year"]
        write(env.dir / "w" / f"year={year}" / "a.parquet", **part)
    env.fails(env.dir / "w", "key column 'year'", "string", "int64")


def test_missing_column(env):
    part = columns("weather")
    del part["humidity"]
    path = write(env.dir / "w.parquet", **part)
    env.fails(path, re.escape(path), "no column 'humidity'")


def test_column_missing_from_one_file(env):
    write(env.dir / "w" / "a.parquet", **columns("weather", slice(0, 6)))
    part = columns("weather", slice(6, 12))
    del part["rainfall"]
    bad = write(env.dir / "w" / "b.parquet", **part)
    env.fails(env.dir / "w", re.escape(bad), "no column 'rainfall'")


def test_extra_columns_are_ignored(env):
    """Columns the run does not use (in some files only) neither fail nor reach the outputs."""
    write(env.dir / "w" / "a.parquet", **columns("weather", slice(0, 6)), notes=["x"] * 6)
    write(env.dir / "w" / "b.parquet", **columns("weather", slice(6, 12)))
    summary = steps.run(make_config(weather=str(env.dir / "w"), yields=env.yields, output=str(env.out),
                                       run_id="extra"))
    assert summary.joined.joined_rows == 12
    assert "notes" not in pa.parquet.read_schema(env.out / "predictions" / "run_id=extra" / "part-0.parquet").names


def test_all_null_float_column_names_keys(env):
    path = write(env.dir / "w.parquet", **{**columns("weather"), "rainfall": pa.array([None] * 12, pa.float64())})
    env.fails(path, "column 'rainfall' has 12 null", re.escape(path), r"\('R0', 2020\)")


def test_all_null_column_of_null_type(env):
    path = write(env.dir / "w.parquet", **{**columns("weather"), "temp": pa.array([None] * 12, pa.null())})
    env.fails(path, "column 'temp' holds only nulls", re.escape(path))


def test_all_null_key_column(env):
    path = write(env.dir / "w.parquet", **{**columns("weather"), "year": pa.array([None] * 12, pa.null())})
    env.fails(path, "column 'year' holds only nulls", re.escape(path))


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")], ids=["nan", "inf", "-inf"])
def test_nan_and_infinite_values_name_file_column_and_keys(env, bad):
    part = columns("weather")
    part["humidity"][4] = bad
    part["humidity"][9] = bad
    path = write(env.dir / "w.parquet", **part)
    env.fails(path, "column 'humidity' has 2 null, NaN or infinite", re.escape(path), r"\('R4', 2020\), \('R9', 2020\)")


def test_duplicate_keys_across_files(env):
    write(env.dir / "w" / "a.parquet", **columns("weather"))
    write(env.dir / "w" / "b.parquet", **columns("weather", slice(3, 5)))
    env.fails(env.dir / "w", "2 duplicated key", r"\('R3', 2020\)", "a.parquet", "b.parquet")


def test_very_long_key_is_rejected_and_shortened_in_the_message(env):
    part = columns("weather")
    part["region"][2] = "R" * 3_000_000
    path = write(env.dir / "w.parquet", **part)
    message = env.fails(path, "key column 'region'", f"longer than {MAX_KEY_CHARS}", re.escape(path),
                        r"3000000 characters")
    assert len(message) < 1000


def test_empty_table(env):
    empty = {"region": pa.array([], pa.string()), "year": pa.array([], pa.int64()),
             **{c: pa.array([], pa.float64()) for c in ("temp", "rainfall", "humidity")}}
    path = write(env.dir / "w.parquet", **empty)
    env.fails(path, re.escape(path), "holds no rows")


def test_empty_directory(env):
    (env.dir / "w").mkdir()
    (env.dir / "w" / "_SUCCESS").write_bytes(b"")
    env.fails(env.dir / "w", "holds no Parquet files")


def test_hive_partition_value_that_conflicts_with_a_column(env):
    """region=R0/ holding a file with a region column of other values: which one is meant is ambiguous."""
    path = write(env.dir / "w" / "region=R0" / "a.parquet", **columns("weather"))
    env.fails(env.dir / "w", re.escape(path), "column 'region'", "hive partition directory")


def test_hive_partition_of_another_type_than_the_column(env):
    """year=2021/ (read as int32) over files holding an int64 year column."""
    write(env.dir / "w" / "year=2021" / "a.parquet", **columns("weather"))
    env.fails(env.dir / "w", "'year'", "hive partition directories")


def test_bad_yields_input_is_named_as_such(env):
    part = columns("yields")
    part["apples"][0] = float("nan")
    path = write(env.dir / "y.parquet", **part)
    env.fails(env.out.parent / "good" / "weather.parquet", "yields table", "column 'apples'", r"\('R0', 2020\)",
              yields=path)


def test_missing_input(env):
    env.fails(env.dir / "nowhere", "does not exist")
    assert not os.path.exists(env.dir / "nowhere")


def _with_duplicate(path: Path, role: str, name: str) -> str:
    """A Parquet file of the good columns of `role` where column `name` appears twice."""
    import pyarrow.parquet as pq

    data = columns(role)
    names = list(data) + [name]
    arrays = [pa.array(v) for v in data.values()] + [pa.array(data[name])]
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_arrays(arrays, names=names), path)
    return str(path)


def test_duplicate_column_names_in_a_file_name_the_file_and_column(env):
    bad = _with_duplicate(env.dir / "dup.parquet", "weather", "temp")
    env.fails(bad, r"dup\.parquet", r"more than one column named 'temp'")


@pytest.mark.parametrize("position", ["first", "second"])
def test_duplicate_column_names_in_one_file_of_a_directory(env, position):
    folder = env.dir / "dupdir"
    good = write(folder / ("b.parquet" if position == "first" else "a.parquet"), **columns("weather"))
    bad = _with_duplicate(folder / ("a.parquet" if position == "first" else "b.parquet"), "weather", "rainfall")
    assert Path(good).exists()
    env.fails(folder, re.escape(bad), r"more than one column named 'rainfall'")


def test_duplicate_column_names_in_the_yields_table(env):
    bad = _with_duplicate(env.dir / "y-dup.parquet", "yields", "apples")
    env.fails(env.dir / "good" / "weather.parquet", r"yields table", r"y-dup\.parquet", r"'apples'", yields=bad)
