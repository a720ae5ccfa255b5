"""Which rank reads which rows: whole regions, by a stable hash of the region key.

A region's rank is md5(str(region)) (its first 60 bits) mod world_size: the same in every process,
Python version and DuckDB version (DuckDB's own `hash()` may change between versions; md5 does not),
and computable both in Python (`rank_of`) and inside DuckDB's scan (`sql_predicate`), which gives the
same answer (tested). So no region is split across ranks: the join needs no exchange between ranks, each
rank's per-region metrics are complete, and a region's holdout membership does not depend on the ranks.

When a table is hive-partitioned by region, `restrict` keeps only the rank's files (no row is read twice
across ranks). Otherwise every rank scans the key column and filters rows with `sql_predicate` during the
join: each rank reads the region column of every file, plus the other columns of its own rows' row
groups as DuckDB decodes them (the cost is measured in bench/scaling_bench.py and stated in the README).
Balance is statistical: with many more regions than ranks, shares are close to 1/world_size of the
regions (not of the rows; a few huge regions make one rank slower).
"""

from __future__ import annotations

import hashlib
import logging

import pyarrow.dataset as ds

from linreg.inputs.sql import quote
from linreg.inputs.tables import Table

log = logging.getLogger(__name__)


def rank_of(region, world_size: int) -> int:
    """The rank (0..world_size-1) that owns `region` (any value; compared as its text, as DuckDB casts it)."""
    return int(hashlib.md5(str(region).encode()).hexdigest()[:15], 16) % world_size


def sql_predicate(region_column: str, rank: int, world_size: int) -> str | None:
    """A DuckDB condition true for the rows of `rank`'s regions (None with one rank: every row)."""
    if world_size <= 1:
        return None
    digest = f"md5(CAST({quote(region_column)} AS VARCHAR))"
    return f"(('0x' || left({digest}, 15))::BIGINT % {int(world_size)}) = {int(rank)}"


def partition_regions(table: Table, region_column: str) -> list | None:
    """The region of each file when the table is hive-partitioned by region, else None."""
    regions = []
    for fragment in table.dataset.get_fragments():
        keys = ds.get_partition_keys(fragment.partition_expression)
        if region_column not in keys:
            return None
        regions.append(keys[region_column])
    return regions


def restrict(table: Table, region_column: str, rank: int, world_size: int) -> tuple[Table, bool]:
    """(the table as `rank` reads it, whether files were skipped): only the rank's files when the table is
    hive-partitioned by region; otherwise the whole table (its rows are then filtered in the join)."""
    if world_size <= 1:
        return table, False
    fragments = list(table.dataset.get_fragments())
    regions = partition_regions(table, region_column)
    if regions is None:
        return table, False
    mine = [f for f, region in zip(fragments, regions) if rank_of(region, world_size) == rank]
    # A rank that owns no region still joins (an empty result): it keeps one file, whose rows the
    # join's row filter then drops, so every rank runs the same steps.
    return subset(table, mine or fragments[:1]), True


def rank_share(table: Table, region_column: str, rank: int, world_size: int) -> tuple[Table, Table]:
    """(the table as `rank` reads it, the table whose files `rank` checks values of): its files when the table
    is partitioned by region (`restrict`), else every file read (its rows filtered in the join) and every
    world_size-th file checked (`files_to_validate`). With one rank: (table, table)."""
    if world_size <= 1:
        return table, table
    mine, partitioned = restrict(table, region_column, rank, world_size)
    log.info("shard %d of %d: reads %s %d of %d file(s)%s", rank, world_size, table.role, len(mine.files),
             len(table.files), " (partitioned by region)" if partitioned else ", filtered by region")
    return mine, mine if partitioned else files_to_validate(table, rank, world_size)


def files_to_validate(table: Table, rank: int, world_size: int) -> Table:
    """Every world_size-th file of the table, from the rank-th: value checks are per file, so ranks split
    the files of a table that is not partitioned by region instead of each checking all of them."""
    return subset(table, list(table.dataset.get_fragments())[rank::world_size])


def subset(table: Table, fragments: list) -> Table:
    """The table restricted to `fragments` (its schema and partition columns unchanged)."""
    dataset = ds.FileSystemDataset(fragments, table.dataset.schema, table.dataset.format, table.dataset.filesystem)
    return Table(role=table.role, path=table.path, dataset=dataset, filesystem=table.filesystem,
                 files=sorted(f.path for f in fragments))
