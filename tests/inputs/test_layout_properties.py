"""Property-based tests (hypothesis): how the inputs are laid out never changes the result.

- Permuting rows, splitting a table into more files, or re-partitioning it as a hive dataset by region leaves
  the exact weights unchanged to 1e-10 relative, and the predictions accordingly.
- The join never duplicates or loses a row: it holds exactly the keys present in both tables, once each.

CI runs a bounded number of examples; LINREG_LONG_TESTS=1 runs many more.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from linreg.config import make_config
from linreg.inputs.batches import read_joined
from linreg.inputs.join import connect, join_tables
from linreg.inputs.schema import resolve_columns
from linreg.inputs.tables import open_table
from linreg.pipeline import steps

LONG = os.environ.get("LINREG_LONG_TESTS") == "1"
RUNS = settings(max_examples=300 if LONG else 25, deadline=None, derandomize=not LONG,
                suppress_health_check=[HealthCheck.too_slow])  # two training runs per example
JOINS = settings(RUNS, max_examples=2000 if LONG else 100)


def layout(table: pa.Table, directory: Path, *, order: np.ndarray, files: int, hive: bool) -> str:
    """Write `table` with its rows in `order` as `files` files, or as a hive dataset partitioned by region."""
    table = table.take(pa.array(order))
    if hive:
        ds.write_dataset(table, directory, format="parquet", partitioning=["region"], partitioning_flavor="hive",
                         max_rows_per_file=max(1, table.num_rows // files),
                         max_rows_per_group=max(1, table.num_rows // files))
        return str(directory)
    directory.mkdir(parents=True)
    bounds = np.linspace(0, table.num_rows, files + 1).astype(int)
    for i in range(files):
        pq.write_table(table.slice(bounds[i], bounds[i + 1] - bounds[i]), directory / f"part-{i}.parquet")
    return str(directory)


@st.composite
def problems(draw):
    """Weather and yields tables of 12-40 rows over 4-8 regions and a few years, 1-3 features, 1-2 targets."""
    regions = draw(st.integers(4, 8))
    years = draw(st.integers(3, 5))
    p, k = draw(st.integers(1, 3)), draw(st.integers(1, 2))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    keys = [(f"R{r}", 2000 + y) for r in range(regions) for y in range(years)]
    X = rng.normal(size=(len(keys), p)) * rng.uniform(0.1, 100, size=p) + rng.uniform(-50, 50, size=p)
    Y = X @ rng.normal(size=(k, p)).T + rng.normal(size=(len(keys), k))
    region = [r for r, _ in keys]
    year = [y for _, y in keys]
    weather = pa.table({"region": region, "year": year, **{f"f{j}": X[:, j] for j in range(p)}})
    yields = pa.table({"region": region, "year": year, **{f"t{j}": Y[:, j] for j in range(k)}})
    return weather, yields, [f"f{j}" for j in range(p)], [f"t{j}" for j in range(k)], rng


def train(weather: str, yields: str, features, targets, output: str):
    config = make_config(weather=weather, yields=yields, output=output, run_id="prop", trainer="exact",
                         features=features, targets=targets, holdout_fraction=0.25, seed=3)
    summary = steps.run(config)
    predictions = pq.read_table(Path(output) / "predictions" / "run_id=prop").sort_by([("region", "ascending"),
                                                                                       ("year", "ascending")])
    return summary, predictions


@RUNS
@given(problem=problems(), files=st.integers(1, 4), hive=st.booleans(), data=st.data())
def test_row_order_files_and_partitioning_do_not_change_the_result(problem, files, hive, data):
    weather, yields, features, targets, rng = problem
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        base = train(layout(weather, tmp / "w0", order=np.arange(weather.num_rows), files=1, hive=False),
                     layout(yields, tmp / "y0", order=np.arange(yields.num_rows), files=1, hive=False),
                     features, targets, str(tmp / "out0"))
        permute = data.draw(st.permutations(range(weather.num_rows)))
        other = train(layout(weather, tmp / "w1", order=np.array(permute), files=files, hive=hive),
                      layout(yields, tmp / "y1", order=rng.permutation(yields.num_rows), files=files, hive=hive),
                      features, targets, str(tmp / "out1"))
    (s0, p0), (s1, p1) = base, other
    assert s1.joined.joined_rows == s0.joined.joined_rows == weather.num_rows
    assert s1.rows == s0.rows
    for target in targets:
        for term, value in s0.weights[target].items():
            assert abs(s1.weights[target][term] - value) <= 1e-10 * max(abs(value), 1e-300), (target, term)
    assert p1.column("region").to_pylist() == p0.column("region").to_pylist()
    assert p1.column("split").to_pylist() == p0.column("split").to_pylist()
    for target in targets:
        np.testing.assert_allclose(p1.column(f"{target}_pred").to_numpy(), p0.column(f"{target}_pred").to_numpy(),
                                   rtol=1e-10, atol=1e-10 * float(np.abs(p0.column(target).to_numpy()).max()))


@st.composite
def key_sets(draw):
    """Two tables' key sets over a small universe (unique within each table), overlapping anyhow."""
    universe = [(f"R{r}", 2000 + y) for r in range(draw(st.integers(1, 6))) for y in range(draw(st.integers(1, 4)))]
    left = draw(st.lists(st.sampled_from(universe), unique=True, max_size=len(universe)))
    right = draw(st.lists(st.sampled_from(universe), unique=True, max_size=len(universe)))
    return left, right, draw(st.integers(1, 3))


@JOINS
@given(keys=key_sets())
def test_the_join_never_duplicates_or_loses_a_row(keys):
    left, right, files = keys
    both = set(left) & set(right)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        paths = []
        for name, rows, column in (("weather", left, "temp"), ("yields", right, "apples")):
            table = pa.table({"region": pa.array([r for r, _ in rows], pa.string()),
                              "year": pa.array([y for _, y in rows], pa.int64()),
                              column: pa.array([float(i) for i in range(len(rows))], pa.float64())})
            # an empty table is rejected earlier, by resolve_columns; keep at least one file of rows
            paths.append(layout(table, tmp / name, order=np.arange(len(rows)), files=files, hive=False)
                         if rows else None)
        if not all(paths):
            return
        weather, yields = open_table(paths[0], "weather"), open_table(paths[1], "yields")
        columns = resolve_columns(weather, yields, features=["temp"], targets=["apples"], keys=None)
        con = connect(str(tmp), 256 * 2**20)
        result = join_tables(con, weather, yields, columns, str(tmp / "joined.arrow"), max_drop_fraction=1.0,
                             check=False)
        joined = read_joined(str(tmp / "joined.arrow"))
    got = list(zip(joined.column("region").to_pylist(), joined.column("year").to_pylist()))
    assert len(got) == len(set(got)) == len(both) == result.joined_rows  # no duplicate, no loss
    assert set(got) == both
    assert got == sorted(got)  # sorted by keys
    # every joined row carries its own tables' values (no row paired with another key's)
    assert joined.column("temp").to_pylist() == [float(left.index(key)) for key in got]
    assert joined.column("apples").to_pylist() == [float(right.index(key)) for key in got]
