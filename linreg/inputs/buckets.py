"""Joining inputs too large for DuckDB's memory limit bucket by bucket of regions (a grace join by region
ranges): how many buckets (`bucket_count`), where they cut the sorted regions (`bucket_cuts`), one pass
writing both tables into local files per bucket (`partition_inputs`), and re-cutting the joined batches
to one size (`FixedBatches`), so that the joined file is the same however many buckets it took."""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from linreg.inputs.schema import key_kind
from linreg.inputs.sql import MIN_DUCKDB_MEMORY, quote

# How many bytes of input (estimated by `value_bytes`) DuckDB joins at once per byte of its memory limit.
# Measured on the 100M-row benchmark tables (~52 bytes a row): the sorted join of 12.5M input rows (650MB)
# passed at 128MB, 5x; of 200M rows (10.4GB) it failed at 256MB (40x) and passed at 1GB (10x). The
# unsorted join of 200M rows passed at 256MB (40x) and failed at 128MB (81x). Margins of 1.25-2.5x.
SORTED_JOIN_INPUT_PER_LIMIT = 4
JOIN_INPUT_PER_LIMIT = 16
MAX_BUCKETS = 256


def value_bytes(kind: pa.DataType) -> int:
    """DuckDB's in-memory bytes of one value: 16 for a string's header plus ~8 of text, 8 for numbers."""
    if pa.types.is_dictionary(kind):
        kind = kind.value_type
    return 24 if key_kind(kind) == "string" or pa.types.is_binary(kind) else 8


def bucket_count(input_bytes: int, memory_limit: int, ordered: bool) -> int:
    """Buckets to join the inputs in, so that each bucket's input fits what DuckDB joins within its limit."""
    per_limit = SORTED_JOIN_INPUT_PER_LIMIT if ordered else JOIN_INPUT_PER_LIMIT
    return int(min(MAX_BUCKETS, max(1, -(-input_bytes // (per_limit * max(memory_limit, MIN_DUCKDB_MEMORY))))))


def bucket_cuts(region_rows: np.ndarray, count: int) -> list[int]:
    """Ends (exclusive region numbers) of up to `count` ranges of consecutive regions with about equal rows;
    the last is the number of regions. A region is never split, so a bucket holds at least one region."""
    total = len(region_rows)
    if count <= 1 or total <= 1:
        return [total]
    cumulative = np.cumsum(region_rows)
    targets = cumulative[-1] * np.arange(1, count) / count
    cuts = np.unique(np.searchsorted(cumulative, targets, side="right"))
    return [int(c) for c in cuts if 0 < c < total] + [total]


@dataclass
class Partitioned:
    """Both tables' needed columns, written once into local Parquet files per bucket of regions, under
    `directory`."""

    directory: str

    def views(self, con: duckdb.DuckDBPyConnection, bucket: int) -> tuple[str, str]:
        """Views over one bucket's weather and yields rows."""
        for name in ("weather", "yields"):
            path = os.path.join(self.directory, name, f"linreg_bucket={bucket}", "*.parquet").replace("'", "''")
            con.execute(f"CREATE OR REPLACE TEMP VIEW linreg_bucket_{name} AS SELECT * FROM read_parquet('{path}', "
                        "hive_partitioning = false)")
        return "linreg_bucket_weather", "linreg_bucket_yields"


def partition_inputs(con: duckdb.DuckDBPyConnection, needed: tuple[list[str], list[str]], regions: pa.Table,
                     cuts: list[int], directory: str, flush_rows: int) -> Partitioned:
    """One pass over each table (views `weather_rows` and `yields`) writing its `needed` columns to
    `directory/<table>/linreg_bucket=<k>/` by the region's bucket (regions below region number cuts[0] in bucket
    0, and so on), with DuckDB's partitioned COPY, uncompressed. The bucket comes from comparisons with the
    boundary regions (a binary tree of CASEs: log2(buckets) comparisons a row), not a join, so the pass
    needs no memory per region. `flush_rows` bounds the rows DuckDB buffers per bucket."""
    shutil.rmtree(directory, ignore_errors=True)
    con.register("linreg_bounds", regions.take(pa.array(cuts[:-1], type=pa.int64())))
    bounds = [r[0] for r in con.sql("SELECT CAST(region AS VARCHAR) FROM linreg_bounds").fetchall()]
    region_type = con.sql("SELECT typeof(region) FROM linreg_bounds LIMIT 1").fetchall()[0][0]
    con.unregister("linreg_bounds")
    con.execute(f"SET partitioned_write_flush_threshold = {int(flush_rows)}")

    def bucket_of(column: str, lo: int, hi: int) -> str:  # buckets lo..hi-1
        if hi - lo == 1:
            return str(lo)
        mid = (lo + hi) // 2
        bound = "'" + bounds[mid - 1].replace("'", "''") + "'"
        return (f"CASE WHEN {column} < CAST({bound} AS {region_type}) THEN {bucket_of(column, lo, mid)} "
                f"ELSE {bucket_of(column, mid, hi)} END")

    region = needed[0][0]
    for name, view, columns in (("weather", "weather_rows", needed[0]), ("yields", "yields", needed[1])):
        target = os.path.join(directory, name)
        os.makedirs(target)
        select = ", ".join(quote(c) for c in columns)
        con.execute(f"COPY (SELECT {select}, {bucket_of(quote(region), 0, len(cuts))} AS linreg_bucket FROM {view}) "
                    f"TO '{target.replace(chr(39), chr(39) * 2)}' (FORMAT parquet, PARTITION_BY (linreg_bucket), "
                    "COMPRESSION uncompressed)")
        empty = con.sql(f"SELECT {select} FROM {view} LIMIT 0").to_arrow_table()
        for bucket in range(len(cuts)):  # a bucket with no rows on one side still needs a file to read
            folder = os.path.join(target, f"linreg_bucket={bucket}")
            if not os.path.isdir(folder):
                os.makedirs(folder)
                pq.write_table(empty, os.path.join(folder, "empty.parquet"))
    return Partitioned(directory)


class FixedBatches:
    """Record batches of exactly `rows` rows (the last may be shorter) out of batches of any size, so that the
    joined file is cut the same however many buckets the join ran in (and float64 sums over its batches
    come out the same to the bit)."""

    def __init__(self, rows: int):
        self.rows, self.pending, self.count = rows, [], 0

    def add(self, batch: pa.RecordBatch) -> list[pa.RecordBatch]:
        if not self.pending and batch.num_rows == self.rows:
            return [batch]
        self.pending.append(batch)
        self.count += batch.num_rows
        if self.count < self.rows:
            return []
        table, out = pa.Table.from_batches(self.pending), []
        while table.num_rows >= self.rows:
            out.append(table.slice(0, self.rows).combine_chunks().to_batches()[0])
            table = table.slice(self.rows)
        self.pending, self.count = table.to_batches(), table.num_rows
        return out

    def flush(self) -> list[pa.RecordBatch]:
        rest = pa.Table.from_batches(self.pending).combine_chunks().to_batches() if self.count else []
        self.pending, self.count = [], 0
        return rest
