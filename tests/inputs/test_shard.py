"""How ranks split the regions (`linreg.inputs.shard`): ranges of the region key from row-group statistics where
the files are sorted by region, else the md5 hash. Every region on exactly one rank, the same rank in Python
and in DuckDB, and each rank's join of its share together equal to the join of all rows in one process."""

from __future__ import annotations

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings, strategies as st

from linreg.errors import InputError
from linreg.inputs import shard
from linreg.inputs.join import connect, join_tables
from linreg.inputs.schema import resolve_columns
from linreg.inputs.shard import Sharding, plan_sharding, range_bounds
from linreg.inputs.tables import open_table

FEATURES, TARGETS = ["temp", "rainfall"], ["apples"]


def write_table(directory, regions, years, *, files, rows_per_group=None, seed=0, target=False):
    """Rows (region, year, values) in the given order, cut into `files` files of row groups of
    `rows_per_group` rows."""
    rng = np.random.default_rng(seed)
    n = len(regions)
    columns = {"region": regions, "year": years}
    if target:
        columns["apples"] = rng.normal(80, 10, n)
    else:
        columns |= {"temp": rng.normal(70, 5, n), "rainfall": rng.normal(90, 9, n)}
    table = pa.table(columns)
    directory.mkdir(parents=True)
    for i, part in enumerate(np.array_split(np.arange(n), files)):
        pq.write_table(table.take(part), directory / f"part-{i:03d}.parquet", row_group_size=rows_per_group)
    return open_table(str(directory), "yields" if target else "weather")


def region_years(n_regions, n_years, name=lambda r: f"R{r:04d}"):
    regions = [name(r) for r in range(n_regions) for _ in range(n_years)]
    years = [2000 + y for _ in range(n_regions) for y in range(n_years)]
    return regions, years


def shuffled(regions, years, seed=1):
    order = np.random.default_rng(seed).permutation(len(regions))
    return [regions[i] for i in order], [years[i] for i in order]


# ---------------------------------------------------------------------------------------------------------
# Choosing the cuts


def test_sorted_row_groups_are_cut_into_ranges_of_even_rows():
    groups = [(f"R{10 * i:03d}", f"R{10 * i + 9:03d}", 100) for i in range(12)]
    assert range_bounds(groups, 2) == ("R060",)
    assert range_bounds(groups, 3) == ("R040", "R080")
    assert range_bounds(list(reversed(groups)), 4) == ("R030", "R060", "R090")  # file order does not matter


def test_uneven_row_groups_balance_rows_not_groups():
    groups = [(0, 9, 600), (10, 19, 100), (20, 29, 100), (30, 39, 100), (40, 49, 100)]
    assert range_bounds(groups, 2) == (10,)  # rank 0 reads 600 rows: its share (500) and a tenth of all rows
    groups[0] = (0, 9, 700)  # 700 > 550 + 110: a rank would read too much more than its share
    assert range_bounds(groups, 2) is None


def test_overlapping_row_groups_fall_back_to_the_hash():
    every_region = [("R0000", "R0999", 1000)] * 8  # one file per year: each holds every region
    assert range_bounds(every_region, 2) is None
    half_overlap = [(f"R{100 * i:04d}", f"R{100 * i + 150:04d}", 50) for i in range(16)]
    # at best one rank reads 450 rows, within its share (400) and a tenth of all (cut at R0800 or R0900)
    assert range_bounds(half_overlap, 2) in (("R0800",), ("R0900",))
    assert range_bounds([(f"R{100 * i:04d}", f"R{100 * i + 250:04d}", 100) for i in range(8)], 2) is None
    assert range_bounds([("R0", "R9", 10)], 2) is None  # fewer row groups than ranks
    assert range_bounds([("R0", "R4", 10), ("R0", "R9", 10)], 2) is None  # every cut would leave rank 0 empty
    assert range_bounds([], 2) is None


# ---------------------------------------------------------------------------------------------------------
# One owner per region, the same in Python and DuckDB


def ranks_in_duckdb(values, sharding, sql_type):
    """For each value, the ranks whose predicate holds in DuckDB."""
    con = duckdb.connect()
    con.register("t", pa.table({"i": list(range(len(values))), "region": pa.array(values, type=sql_type)}))
    found = [[] for _ in values]
    for rank in range(sharding.world_size):
        for (i,) in con.sql(f"SELECT i FROM t WHERE {sharding.predicate('region', rank)}").fetchall():
            found[i].append(rank)
    return found


texts = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=6)


@settings(max_examples=60, deadline=None)
@given(st.lists(texts, min_size=1, max_size=40), st.lists(texts, min_size=1, max_size=4, unique=True))
def test_every_text_region_has_one_owner_and_duckdb_agrees(values, cuts):
    bounds = tuple(sorted(cuts))
    sharding = Sharding(len(bounds) + 1, bounds)
    values = values + [None, *bounds]
    assert ranks_in_duckdb(values, sharding, pa.string()) == [[sharding.owner(v)] for v in values]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(-2**62, 2**62), min_size=1, max_size=40),
       st.lists(st.integers(-2**62, 2**62), min_size=1, max_size=4, unique=True))
def test_every_integer_region_has_one_owner_and_duckdb_agrees(values, cuts):
    bounds = tuple(sorted(cuts))
    sharding = Sharding(len(bounds) + 1, bounds)
    values = values + [None, *bounds]
    assert ranks_in_duckdb(values, sharding, pa.int64()) == [[sharding.owner(v)] for v in values]


def test_range_owner_is_by_byte_order_as_duckdb_compares():
    sharding = Sharding(2, ("Z",))
    assert [sharding.owner(v) for v in ["A", "Y", "Z", "a", "Ä", "", None]] == [0, 0, 1, 1, 1, 0, 0]


def test_the_hash_is_the_same_in_python_and_duckdb_and_fixed():
    values = [f"R{i}" for i in range(300)] + ["Ashford", "Zürich", "a'b", ""]
    for world in (2, 3, 7):
        sharding = Sharding(world)
        assert ranks_in_duckdb(values, sharding, pa.string()) == [[shard.rank_of(v, world)] for v in values]
        ints = list(range(200))
        assert ranks_in_duckdb(ints, sharding, pa.int64()) == [[shard.rank_of(v, world)] for v in ints]
    import hashlib  # md5: fixed across versions and processes (a known value, computed independently)
    assert shard.rank_of("R001", 7) == int(hashlib.md5(b"R001").hexdigest()[:15], 16) % 7


# ---------------------------------------------------------------------------------------------------------
# The layouts


def test_the_layout_decides_ranges_or_hash(tmp_path):
    regions, years = region_years(40, 5)
    sorted_w = write_table(tmp_path / "sw", regions, years, files=4)
    sorted_y = write_table(tmp_path / "sy", regions, years, files=3, target=True)
    sharding = plan_sharding(sorted_w, sorted_y, "region", 2)
    assert sharding.by_range and sharding.bounds == ("R0020",)
    assert plan_sharding(sorted_w, sorted_y, "region", 1) == Sharding(1)

    mixed_w = write_table(tmp_path / "mw", *shuffled(regions, years), files=4)
    assert plan_sharding(mixed_w, sorted_y, "region", 2) == Sharding(2)  # one shuffled table: the hash

    ints = write_table(tmp_path / "iw", [int(r[1:]) for r in regions], years, files=4)
    ints_y = write_table(tmp_path / "iy", [int(r[1:]) for r in regions], years, files=2, target=True)
    assert plan_sharding(ints, ints_y, "region", 2).bounds == (20,)
    assert plan_sharding(ints, sorted_y, "region", 2) == Sharding(2)  # integer and text regions: the hash

    parted = tmp_path / "pw"
    pq.write_to_dataset(pa.table({"region": regions, "year": years, "temp": np.ones(200), "rainfall": np.ones(200)}),
                        parted, partition_cols=["region"])
    assert plan_sharding(open_table(str(parted), "weather"), sorted_y, "region", 2) == Sharding(2)


def test_ranks_read_only_the_files_of_their_range(tmp_path):
    regions, years = region_years(40, 5)
    w = write_table(tmp_path / "w", regions, years, files=8)
    y = write_table(tmp_path / "y", regions, years, files=8, target=True)
    sharding = plan_sharding(w, y, "region", 4)
    shares = [shard.rank_share(w, "region", rank, sharding)[0].files for rank in range(4)]
    assert [len(files) for files in shares] == [2, 2, 2, 2]
    assert sorted(f for files in shares for f in files) == w.files


# ---------------------------------------------------------------------------------------------------------
# Each rank's join of its share, together, is the join of all rows


def join_rows(tmp_path, w, y, sharding, rank, name):
    columns = resolve_columns(w, y, features=FEATURES, targets=TARGETS, keys=None)
    mine_w, _ = shard.rank_share(w, "region", rank, sharding)
    mine_y, _ = shard.rank_share(y, "region", rank, sharding)
    con = connect(str(tmp_path), 256 * 2**20, threads=1)
    path = str(tmp_path / f"{name}-{rank}.arrow")
    try:
        join_tables(con, mine_w, mine_y, columns, path, max_drop_fraction=1.0, check=False, ordered=False,
                    row_filter=sharding.predicate("region", rank), filter_rows=sharding.by_range)
    finally:
        con.close()
    with pa.memory_map(path) as source:
        return pa.ipc.open_file(source).read_all().to_pandas()


def assert_together_equal(parts, whole) -> None:
    """The ranks' joined rows (pandas), put together, are the rows of the one-process join `whole`."""
    together = (np.concatenate([p[["temp", "rainfall", "apples"]].to_numpy() for p in parts]),
                [(r, yr) for p in parts for r, yr in zip(p["region"], p["year"])])
    order = sorted(range(len(together[1])), key=together[1].__getitem__)
    expected = whole.sort_values(["region", "year"])
    assert [together[1][i] for i in order] == list(zip(expected["region"], expected["year"]))
    np.testing.assert_array_equal(together[0][order], expected[["temp", "rainfall", "apples"]].to_numpy())


@pytest.mark.parametrize("layout", ["sorted", "straddling row groups", "shuffled"])
@pytest.mark.parametrize("world", [2, 3])
def test_the_ranks_joins_together_equal_the_join_of_all_rows(tmp_path, layout, world):
    regions, years = region_years(60, 7)
    w_regions, w_years = (shuffled(regions, years) if layout == "shuffled" else (regions, years))
    # straddling: row groups of 10 rows over regions of 7 rows, so cuts fall inside regions' row groups
    group = 10 if layout == "straddling row groups" else None
    w = write_table(tmp_path / "w", w_regions[:-3], w_years[:-3], files=20, rows_per_group=group)  # 3 rows unmatched
    y = write_table(tmp_path / "y", regions[2:], years[2:], files=16, rows_per_group=group, target=True)
    sharding = plan_sharding(w, y, "region", world)
    assert sharding.by_range == (layout != "shuffled")
    whole = join_rows(tmp_path, w, y, Sharding(1), 0, "whole")
    parts = [join_rows(tmp_path, w, y, sharding, rank, "part") for rank in range(world)]
    for rank, part in enumerate(parts):
        assert {sharding.owner(r) for r in part["region"]} <= {rank}
    assert_together_equal(parts, whole)


def test_a_null_region_is_rank_zeros_and_named_by_its_check(tmp_path):
    regions, years = region_years(20, 5)
    regions[3] = None
    w = write_table(tmp_path / "w", regions, years, files=4)
    y = write_table(tmp_path / "y", region_years(20, 5)[0], years, files=4, target=True)
    sharding = plan_sharding(w, y, "region", 2)
    assert sharding.by_range
    with pytest.raises(InputError, match=r"weather table .* column 'region' has 1 null value\(s\) in file '.*part-000"):
        join_rows(tmp_path, w, y, sharding, 0, "null")
    assert len(join_rows(tmp_path, w, y, sharding, 1, "null")) == 50
