"""Which rank reads which rows: whole regions, by ranges of the region key where the files are sorted by region,
else by a stable hash of the region key.

No region is split across ranks, so the join needs no exchange between ranks, each rank's per-region metrics
are complete, and a region's holdout membership does not depend on the ranks. `plan_sharding` chooses, once
per job (rank 0, broadcast), among three ways; all three give whole regions to ranks:

- Hive-partitioned by region (either table): each rank reads only the files of its regions (`restrict`),
  a region's rank being md5(str(region)) (its first 60 bits) mod world_size: the same in every process,
  Python version and DuckDB version (DuckDB's own `hash()` may change between versions; md5 does not),
  computable in Python (`rank_of`) and inside DuckDB (`Sharding.predicate`), which agree (tested).
- Files sorted (or clustered) by region, as the row groups' min/max statistics of the region column show:
  ranges of regions, cut at row-group boundaries so that ranks read about the same rows
  (`range_bounds`). Rank r owns the regions v with bounds[r-1] <= v < bounds[r] (rank 0 also null
  regions, which the key check then names). A rank reads only the files and row groups whose ranges meet
  its own (DuckDB skips the others by the same statistics): the rows a rank reads shrink with the ranks.
- Otherwise (e.g. one file per year, each holding every region): the md5 hash. Every rank then scans the
  key columns of every file, and DuckDB evaluates the hash once per distinct region (`linreg.inputs.join`).

Balance is by rows for ranges (from the statistics), statistical for the hash: with many more regions than
ranks, shares are close to 1/world_size of the regions (not of the rows; a few huge regions make one rank
slower).
"""

from __future__ import annotations

import bisect
import dataclasses
import hashlib
import logging

import pyarrow as pa
import pyarrow.dataset as ds

from linreg.inputs.sql import quote
from linreg.inputs.tables import Table

log = logging.getLogger(__name__)

# Ranges are used when no rank would read more than its even share of the rows plus this fraction of all rows
# (by row-group statistics, counting each row group a rank's range meets as read whole); else the hash, which
# costs each rank about that much beyond its share (the scan of every file's keys: bench/scaling_bench.py).
RANGE_EXTRA = 0.1


@dataclasses.dataclass(frozen=True)
class Sharding:
    """How `world_size` ranks split the regions: bounds None, by md5 (`rank_of`); else by ranges, the
    world_size - 1 ascending cuts (region values: str or int) with rank r owning [bounds[r-1], bounds[r])."""

    world_size: int
    bounds: tuple | None = None

    @property
    def by_range(self) -> bool:
        return self.bounds is not None

    def owner(self, region) -> int:
        """The rank (0..world_size-1) that owns `region` (None: a null region, rank 0 under ranges)."""
        if self.bounds is None:
            return rank_of(region, self.world_size)
        return 0 if region is None else bisect.bisect_right(self.bounds, region)

    def predicate(self, region_column: str, rank: int) -> str | None:
        """A DuckDB condition true for the rows of `rank`'s regions (None with one rank: every row)."""
        if self.world_size <= 1:
            return None
        column = quote(region_column)
        if self.bounds is None:
            digest = f"md5(CAST({column} AS VARCHAR))"
            return f"(('0x' || left({digest}, 15))::BIGINT % {int(self.world_size)}) = {int(rank)}"
        conditions = []
        if rank > 0:
            conditions.append(f"{column} >= {_literal(self.bounds[rank - 1])}")
        if rank < self.world_size - 1:
            below = f"{column} < {_literal(self.bounds[rank])}"
            conditions.append(f"({column} IS NULL OR {below})" if rank == 0 else below)
        return "(" + " AND ".join(conditions) + ")"

    def describe(self) -> str:
        if self.bounds is None:
            return "by a hash of the region"
        return f"by ranges of the region (row-group statistics), cut at {', '.join(map(repr, self.bounds))}"


def _literal(value) -> str:
    """A SQL literal of a range bound (str or int: what `region_groups` admits)."""
    if isinstance(value, str):
        return "'" + value.replace("'", "''") + "'"
    return str(int(value))


def rank_of(region, world_size: int) -> int:
    """The rank (0..world_size-1) that owns `region` under the hash (any value; compared as its text, as DuckDB
    casts it)."""
    return int(hashlib.md5(str(region).encode()).hexdigest()[:15], 16) % world_size


def plan_sharding(weather: Table, yields: Table, region_column: str, world_size: int) -> Sharding:
    """How `world_size` ranks split the regions of both tables (see the module's docstring); from the files'
    footers, which `open_table` has read."""
    if world_size <= 1:
        return Sharding(1)
    tables = (weather, yields)
    if any(partition_regions(t, region_column) is not None for t in tables):
        return Sharding(world_size)
    groups = [region_groups(t, region_column) for t in tables]
    if any(g is None for g in groups) or len({_kind(t.schema.field(region_column).type) for t in tables}) != 1:
        return Sharding(world_size)
    bounds = range_bounds(groups[0] + groups[1], world_size)
    return Sharding(world_size, bounds)


def _kind(t: pa.DataType) -> str | None:
    if pa.types.is_dictionary(t):
        t = t.value_type
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        return "string"
    return "integer" if pa.types.is_integer(t) else None


def region_groups(table: Table, region_column: str) -> list[tuple] | None:
    """(min, max, rows) of the region column in every row group of `table` with rows, from the footers; None
    when the column is not a string or integer column in every file, or a row group has no statistics."""
    if _kind(table.schema.field(region_column).type) is None:
        return None
    groups = []
    for fragment in table.fragments():
        for group in fragment.row_groups:
            if group.num_rows == 0:
                continue
            found = _group_range(group, region_column)
            if found is None or not isinstance(found[0], (str, int)) or type(found[0]) is not type(found[1]):
                return None
            groups.append((*found, group.num_rows))
    return groups if len({type(g[0]) for g in groups}) <= 1 else None


def range_bounds(groups: list[tuple], world_size: int) -> tuple | None:
    """The world_size - 1 cuts of the region range (each a row group's min) that split `groups` ((min, max,
    rows) of row groups) so that the most rows any rank reads is least, a rank reading every row group its
    range meets; None when that is more than the even share plus RANGE_EXTRA of all rows (the row groups'
    ranges overlap, as with one file per year) or fewer row groups than ranks.

    Found by bisection on that most-read M: ranks are filled in order, each up to the last cut that keeps its
    reading within M. A range's reading is the rows of row groups with min < hi less those with max < lo."""
    total = sum(g[2] for g in groups)
    if total == 0 or len(groups) < world_size:
        return None
    mins, maxes = sorted(groups, key=lambda g: g[0]), sorted(groups, key=lambda g: g[1])
    min_keys, max_keys = [g[0] for g in mins], [g[1] for g in maxes]
    min_rows, max_rows = _prefix(g[2] for g in mins), _prefix(g[2] for g in maxes)
    cuts = sorted(set(min_keys))[1:]  # a cut at the smallest min would leave rank 0 nothing

    def read(lo, hi) -> int:  # rows of the row groups that meet [lo, hi) (None: unbounded)
        upto = total if hi is None else min_rows[bisect.bisect_left(min_keys, hi)]
        below = 0 if lo is None else max_rows[bisect.bisect_left(max_keys, lo)]
        return upto - below

    def fill(most: int) -> tuple | None:  # the cuts when no rank reads more than `most`, else None
        bounds, lo, first = [], None, 0
        for _ in range(world_size - 1):
            # the last cut (from `first` on) that keeps this rank's reading within `most` (reading grows with hi)
            low, high = first, len(cuts)
            while low < high:
                mid = (low + high) // 2
                if read(lo, cuts[mid]) <= most:
                    low = mid + 1
                else:
                    high = mid
            if low == first:
                return None
            lo, first = cuts[low - 1], low
            bounds.append(lo)
        return tuple(bounds) if read(lo, None) <= most else None

    low, high = -(-total // world_size), int(total / world_size + RANGE_EXTRA * total)
    if fill(high) is None:
        return None
    while low < high:  # the least `most` that can be filled
        mid = (low + high) // 2
        if fill(mid) is None:
            low = mid + 1
        else:
            high = mid
    return fill(low)


def _prefix(values) -> list[int]:
    """[0, v0, v0 + v1, ...]."""
    sums = [0]
    for v in values:
        sums.append(sums[-1] + v)
    return sums


def partition_regions(table: Table, region_column: str) -> list | None:
    """The region of each file when the table is hive-partitioned by region, else None."""
    regions = []
    for fragment in table.dataset.get_fragments():
        keys = ds.get_partition_keys(fragment.partition_expression)
        if region_column not in keys:
            return None
        regions.append(keys[region_column])
    return regions


def restrict(table: Table, region_column: str, rank: int, sharding: Sharding) -> tuple[Table, bool]:
    """(the table as `rank` reads it, whether files were skipped): only the rank's files when the table is
    hive-partitioned by region (hash), or the files with a row group in the rank's range (ranges); otherwise
    the whole table (its rows are then filtered in the join)."""
    if sharding.world_size <= 1:
        return table, False
    fragments = list(table.dataset.get_fragments())
    if sharding.by_range:
        lo = sharding.bounds[rank - 1] if rank > 0 else None
        hi = sharding.bounds[rank] if rank < sharding.world_size - 1 else None
        mine = [f for f in fragments if any(_meets(g, region_column, lo, hi) for g in f.row_groups)]
    else:
        regions = partition_regions(table, region_column)
        if regions is None:
            return table, False
        mine = [f for f, region in zip(fragments, regions) if rank_of(region, sharding.world_size) == rank]
    # A rank that owns no region still joins (an empty result): it keeps one file, whose rows the
    # join's row filter then drops, so every rank runs the same steps.
    return subset(table, mine or fragments[:1]), True


def _meets(group, region_column: str, lo, hi) -> bool:
    """Whether a row group (with rows) may hold regions in [lo, hi) (None: unbounded), by its statistics."""
    if group.num_rows == 0:
        return False
    found = _group_range(group, region_column)
    if found is None:
        return True
    low, high = found
    return (lo is None or high >= lo) and (hi is None or low < hi)


def _group_range(group, region_column: str) -> tuple | None:
    """(min, max) of the region column in a row group, from its statistics; None where they are missing."""
    stats = (group.statistics or {}).get(region_column) or {}
    low, high = stats.get("min"), stats.get("max")
    return None if low is None or high is None else (low, high)


def rank_share(table: Table, region_column: str, rank: int, sharding: Sharding) -> tuple[Table, Table]:
    """(the table as `rank` reads it, the table whose files `rank` checks values of): its files when the table
    is partitioned by region or sharded by ranges (`restrict`), else every file read (its rows filtered in the
    join) and every world_size-th file checked (`files_to_validate`). With one rank: (table, table)."""
    if sharding.world_size <= 1:
        return table, table
    mine, skipped = restrict(table, region_column, rank, sharding)
    how = (" (a range of regions)" if sharding.by_range else " (partitioned by region)" if skipped
           else ", filtered by region")
    log.info("shard %d of %d: reads %s %d of %d file(s)%s", rank, sharding.world_size, table.role,
             len(mine.files), len(table.files), how)
    return mine, mine if skipped else files_to_validate(table, rank, sharding.world_size)


def files_to_validate(table: Table, rank: int, world_size: int) -> Table:
    """Every world_size-th file of the table, from the rank-th: value checks are per file, so ranks split
    the files of a table that is not partitioned by region instead of each checking all of them."""
    return subset(table, list(table.dataset.get_fragments())[rank::world_size])


def subset(table: Table, fragments: list) -> Table:
    """The table restricted to `fragments` (its schema and partition columns unchanged)."""
    dataset = ds.FileSystemDataset(fragments, table.dataset.schema, table.dataset.format, table.dataset.filesystem)
    return Table(role=table.role, path=table.path, dataset=dataset, filesystem=table.filesystem,
                 files=sorted(f.path for f in fragments))
