"""One machine's ranks share the scan of shuffled inputs (`linreg.inputs.exchange`): each rank reads its files
once and sends every row to its region's rank. Every row reaches exactly one rank, both tables' rows of a
region reach the same one, and the ranks' joins together equal the join of all rows in one process."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from linreg.errors import InputError
from linreg.inputs import exchange
from linreg.inputs.join import connect, join_tables, needed_columns
from linreg.inputs.schema import resolve_columns
from linreg.inputs.shard import Sharding
from tests.conftest import REPO
from tests.inputs.test_shard import (FEATURES, TARGETS, assert_together_equal, join_rows, region_years, shuffled,
                                     write_table)


def test_files_are_assigned_whole_balanced_by_rows_or_not_at_all():
    files = [(f"f{i}", n) for i, n in enumerate([50, 40, 30, 30, 20, 20, 10])]
    shares = exchange.assign(files, 2)
    assert sorted(f for share in shares for f in share) == sorted(f for f, _ in files)  # each file once
    rows = dict(files)
    assert [sum(rows[f] for f in share) for share in shares] == [100, 100]
    assert exchange.assign([("big", 90), ("small", 10)], 2) is None  # one rank would read 90% of the rows
    assert exchange.assign([("only", 100)], 2) is None
    assert exchange.assign([], 3) == [[], [], []]


def exchanged_joins(tmp_path, w, y, world, ordered=False):
    """Every rank sends its files' rows (in turn, one connection each), then each joins what it received:
    the joined rows of each rank (pandas)."""
    columns = resolve_columns(w, y, features=FEATURES, targets=TARGETS, keys=None)
    shares = exchange.plan_shares(w, y, world)
    assert shares is not None
    directory = str(tmp_path / "exchange")
    sent = 0
    for rank in range(world):
        con = connect(str(tmp_path), 256 * 2**20, threads=1)
        try:
            sent += exchange.send_tables(con, (w, y), needed_columns(columns, None), "region", shares, directory,
                                         rank, world)
        finally:
            con.close()
    assert sent == sum(pq.read_metadata(f).num_rows for f in w.files + y.files)  # every row read once
    parts = []
    for rank in range(world):
        received = exchange.receive_tables(directory, rank, world)
        con = connect(str(tmp_path), 256 * 2**20, threads=1)
        path = str(tmp_path / f"exchanged-{rank}.arrow")
        try:
            join_tables(con, w, y, columns, path, max_drop_fraction=1.0, check=False, ordered=ordered,
                        exchanged=received)
        finally:
            con.close()
        exchange.discard(directory, rank)
        with pa.memory_map(path) as source:
            parts.append(pa.ipc.open_file(source).read_all().to_pandas())
    assert os.listdir(directory) == []  # each rank removed the files sent to it
    return parts


@pytest.mark.parametrize("ordered", [False, True])  # exact's join, and the gradient trainers' sorted one
@pytest.mark.parametrize("world", [2, 3])
def test_the_ranks_joins_of_exchanged_rows_together_equal_the_join_of_all_rows(tmp_path, world, ordered):
    regions, years = region_years(60, 7)
    w_regions, w_years = shuffled(regions, years)
    y_regions, y_years = shuffled(regions[2:], years[2:], seed=2)
    w = write_table(tmp_path / "w", w_regions[:-3], w_years[:-3], files=9)  # 3 rows unmatched
    y = write_table(tmp_path / "y", y_regions, y_years, files=7, target=True)
    whole = join_rows(tmp_path, w, y, Sharding(1), 0, "whole")
    parts = exchanged_joins(tmp_path, w, y, world, ordered)
    if ordered:
        assert all(list(zip(p["region"], p["year"])) == sorted(zip(p["region"], p["year"])) for p in parts)
    owners = [set(p["region"]) for p in parts]
    assert all(not (a & b) for i, a in enumerate(owners) for b in owners[i + 1:])  # a region on one rank
    assert all(len(p) for p in parts)  # the hash spreads 60 regions over every rank
    assert_together_equal(parts, whole)


def test_a_rank_without_files_still_sends_and_joins_what_it_receives(tmp_path):
    """Four ranks, three files a table of equal rows (each rank within its share plus a tenth): one rank reads
    nothing, writes empty files, and joins the rows of its regions that the others sent."""
    regions, years = region_years(80, 3)
    w = write_table(tmp_path / "w", *shuffled(regions, years), files=3)
    y = write_table(tmp_path / "y", *shuffled(regions, years, seed=2), files=3, target=True)
    assert [] in exchange.plan_shares(w, y, 4)[0]
    whole = join_rows(tmp_path, w, y, Sharding(1), 0, "whole")
    parts = exchanged_joins(tmp_path, w, y, 4)
    assert all(len(p) for p in parts)
    assert_together_equal(parts, whole)


def test_integer_regions_of_different_widths_reach_the_same_rank(tmp_path):
    """The owner is the hash of the region's text: an int32 region in one table and an int64 one in the other
    meet on one rank."""
    regions, years = region_years(30, 4, name=lambda r: r * 7919)
    w = write_table(tmp_path / "w", *shuffled(regions, years), files=4)
    y_dir = tmp_path / "y"
    y_dir.mkdir()
    rng = np.random.default_rng(3)
    for i, part in enumerate(np.array_split(np.random.default_rng(4).permutation(len(regions)), 4)):
        pq.write_table(pa.table({"region": pa.array([regions[j] for j in part], pa.int32()),
                                 "year": [years[j] for j in part], "apples": rng.normal(size=len(part))}),
                       y_dir / f"part-{i}.parquet")
    from linreg.inputs.tables import open_table

    parts = exchanged_joins(tmp_path, w, open_table(str(y_dir), "yields"), 2)
    assert sum(len(p) for p in parts) == len(regions)  # every weather row met its yields row


def test_a_null_region_goes_to_rank_zero_whose_check_names_its_file(tmp_path):
    regions, years = region_years(20, 5)
    regions[3] = None
    w_regions, w_years = shuffled(regions, years)
    w = write_table(tmp_path / "w", w_regions, w_years, files=4)
    y = write_table(tmp_path / "y", *shuffled(*region_years(20, 5)), files=4, target=True)
    with pytest.raises(InputError, match=r"weather table .* column 'region' has 1 null value\(s\) in file '.*part-00"):
        exchanged_joins(tmp_path, w, y, 2)
    received = [exchange.receive(str(tmp_path / "exchange"), "weather", rank, 2) for rank in range(2)]
    assert [r.column("region").null_count for r in received] == [1, 0]
    assert sum(r.num_rows for r in received) == 100


def test_a_damaged_file_is_an_input_error_naming_the_table(tmp_path):
    regions, years = region_years(20, 5)
    w = write_table(tmp_path / "w", *shuffled(regions, years), files=4)
    y = write_table(tmp_path / "y", *shuffled(regions, years), files=4, target=True)
    victim = w.files[0]
    data = bytearray(open(victim, "rb").read())
    data[8:200] = os.urandom(192)  # the first data pages, after the magic bytes; the footer stays readable
    open(victim, "wb").write(bytes(data))
    columns = resolve_columns(w, y, features=FEATURES, targets=TARGETS, keys=None)
    shares = exchange.plan_shares(w, y, 2)
    owner = next(rank for rank in range(2) if victim in shares[0][rank])
    con = connect(str(tmp_path), 256 * 2**20, threads=1)
    try:
        with pytest.raises(InputError, match="weather table .* damaged"):
            exchange.send_tables(con, (w, y), needed_columns(columns, None), "region", shares,
                                 str(tmp_path / "exchange"), owner, 2)
    finally:
        con.close()


def test_a_two_rank_run_on_shuffled_files_exchanges_rows_and_equals_one_process(tmp_path):
    """The one-machine launcher's ranks take the exchange on shuffled files (its log line), the weights equal
    one process's, and no exchange file is left behind."""
    regions, years = region_years(300, 6)
    write_table(tmp_path / "w", *shuffled(regions, years), files=6)
    rng = np.random.default_rng(5)
    y_dir = tmp_path / "y"
    y_dir.mkdir()
    order = np.random.default_rng(6).permutation(len(regions))
    for i, part in enumerate(np.array_split(order, 5)):
        pq.write_table(pa.table({"region": [regions[j] for j in part], "year": [years[j] for j in part],
                                 "apples": rng.normal(size=len(part)), "oranges": rng.normal(size=len(part))}),
                       y_dir / f"part-{i}.parquet")
    temp = tmp_path / "tmp"
    temp.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PREFECT_API_URL", "RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env.update(PYTHONPATH=str(REPO), TMPDIR=str(temp))
    weights = {}
    for name, extra in (("one", []), ("two", ["--nproc-per-node", "2"])):
        done = subprocess.run([sys.executable, "-m", "flows.train", "--weather", str(tmp_path / "w"), "--yields",
                               str(y_dir), "--features", "temp,rainfall", "--output", str(tmp_path / name),
                               "--run-id", name, *extra], cwd=REPO, env=env, capture_output=True, text=True,
                              timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
        weights[name] = pq.read_table(tmp_path / name / "weights" / f"run_id={name}").sort_by(
            [("target", "ascending"), ("term", "ascending")])
    assert "sending each row to its region's rank" in done.stdout + done.stderr
    np.testing.assert_allclose(weights["two"].column("weight").to_numpy(), weights["one"].column("weight").to_numpy(),
                               rtol=1e-10)
    assert not [p for p in temp.rglob("*") if "exchange" in p.name]
