"""Join weather and yields on their keys with DuckDB, out of core, into one local Arrow IPC file of joined rows.

Why DuckDB: it scans local Parquet natively and other filesystems through pyarrow datasets (only the
needed columns), joins and sorts with a memory limit, spilling to disk beyond it, and hands back Arrow
record batches. Those are checked and appended to an uncompressed Arrow IPC file in the work directory,
which every later pass (fit, evaluation, streamed epochs) reads back at memory speed instead of joining
again. (Writing the joined rows as Parquet instead cost more than the join itself.) For the gradient
trainers rows come out sorted by the keys, so that a seeded run is reproducible whatever the order
DuckDB's threads produce rows in. Inputs too large to join at once within DuckDB's memory limit are
joined bucket by bucket of regions (`linreg.inputs.buckets`), into the same joined file.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from dataclasses import dataclass, field

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from linreg.config import usable_cpus
from linreg.errors import InputError, format_examples
from linreg.features.expression import Column
from linreg.inputs.buckets import FixedBatches, bucket_count, bucket_cuts, partition_inputs, value_bytes
from linreg.inputs.derive import domain_error, feature_expressions, feature_sql, weather_sql
from linreg.inputs.schema import Columns, key_kind
from linreg.inputs.spool import HeldRows, JoinedSink
from linreg.inputs.sql import MIN_DUCKDB_MEMORY, quote
from linreg.inputs.tables import Table, is_input_fault
from linreg.inputs.checks import (MAX_EXAMPLES, MAX_KEY_CHARS, bad_mask, check_values, example_keys, long_key_mask,
                                  longest_key_sql)

JOINED_BATCH_ROWS = 128 * 1024  # rows per record batch of the joined file
KEY_HASH = "__linreg_key_hash"
BAD_ROW = "__linreg_bad_row"  # true where a feature, target or weight is null, NaN or infinite (DuckDB computes it)
log = logging.getLogger(__name__)
REGION_INDEX = "__region_index"  # column of the joined rows: the row's region's number in JoinResult.regions_path


@dataclass(frozen=True)
class JoinResult:
    """Row counts of the join and where the joined rows (keys, features, targets; sorted by keys) are."""

    path: str  # the Arrow IPC file, or the name of the rows kept in memory (`held`)
    weather_rows: int
    yields_rows: int
    joined_rows: int
    weather_keys: int | None = None  # distinct weather keys after --aggregate (None: each row is a key)
    regions_path: str | None = None  # Parquet file of the regions in both tables: region, region_index
    held: HeldRows | None = field(default=None, repr=False, compare=False)  # the rows, when kept in memory

    @property
    def weather_dropped(self) -> int:
        """Weather rows (or, when aggregated, weather keys) that found no yields row."""
        return (self.weather_keys if self.weather_keys is not None else self.weather_rows) - self.joined_rows

    @property
    def yields_dropped(self) -> int:
        return self.yields_rows - self.joined_rows


def connect(work_dir: str, memory_limit_bytes: int, threads: int | None = None) -> duckdb.DuckDBPyConnection:
    """A DuckDB connection that spills to `work_dir` and stays within `memory_limit_bytes` (at least 128MB:
    below that DuckDB cannot join and sort even when spilling), on at most `threads` threads (default: the
    processors this process may use)."""
    spill = os.path.join(work_dir, "duckdb-spill")
    os.makedirs(spill, exist_ok=True)
    limit_mb = max(memory_limit_bytes, MIN_DUCKDB_MEMORY) // 2**20
    con = duckdb.connect(config={
        "memory_limit": f"{limit_mb}MB",
        "temp_directory": spill,
        # each thread of a sort or join pins its own blocks: at 128MB two threads ran out of memory sorting
        # 10M joined rows even when spilling, one did not
        "threads": max(1, min(threads or usable_cpus(), limit_mb // 128)),
        "preserve_insertion_order": False,  # the join orders its output explicitly; this lets DuckDB spill more
    })
    con.execute("SET enable_progress_bar = false")  # the passes log their own progress (linreg.pipeline.progress)
    return con


def check_unique_keys(con: duckdb.DuckDBPyConnection, table: Table, view: str, keys: list[str]) -> None:
    """Raise InputError naming example keys and files when a key appears more than once in the table."""
    key_list = ", ".join(quote(k) for k in keys)
    duplicated = con.sql(
        f"SELECT {key_list}, count(*) AS n FROM {view} GROUP BY ALL HAVING count(*) > 1 "
        f"ORDER BY n DESC, {key_list}").to_arrow_table()
    if duplicated.num_rows == 0:
        return
    examples = example_keys(duplicated, keys, MAX_EXAMPLES)
    first = duplicated.slice(0, 1).to_pylist()[0]
    files = _files_holding(table, keys, first)
    raise InputError(
        f"The {table.describe()} has {duplicated.num_rows} duplicated key(s) on ({', '.join(keys)}), for example "
        f"{format_examples(examples)}; the first appears {first['n']} times, in file(s) {format_examples(files, 3)}. "
        "Each key must appear once; if the table is at a finer grain (for example daily weather), pass "
        "--aggregate mean (or min, max, sum) to aggregate it to the keys first.")


def _files_holding(table: Table, keys: list[str], row: dict) -> list[str]:
    import pyarrow.dataset as ds

    expr = None
    for key in keys:
        term = ds.field(key) == row[key]
        expr = term if expr is None else expr & term
    return [frag.path for frag in table.dataset.get_fragments()
            if frag.to_table(schema=table.schema, columns=keys[:1], filter=expr).num_rows]


def register(con: duckdb.DuckDBPyConnection, view: str, table: Table, where: str | None = None) -> None:
    """Expose `table` to DuckDB as `view` (its rows where the condition `where` holds, if given): local files
    through DuckDB's own Parquet reader (its memory is within DuckDB's limit, and it is faster); other
    filesystems through the pyarrow dataset."""
    if isinstance(table.filesystem, pafs.LocalFileSystem):
        files = ", ".join("'" + f.replace("'", "''") + "'" for f in table.files)
        source = f"read_parquet([{files}], hive_partitioning = true, union_by_name = true)"
    else:
        source = f"linreg_dataset_{view}"
        con.register(source, table.dataset)
    con.execute(f"CREATE OR REPLACE TEMP VIEW {view} AS SELECT * FROM {source}" + (f" WHERE {where}" if where else ""))


def needed_columns(columns: Columns, weight_column: str | None) -> tuple[list[str], list[str]]:
    """The columns the join reads of the weather table and of the yields table."""
    return (columns.keys + columns.weather_columns,
            columns.keys + columns.targets + ([weight_column] if weight_column else []))


def join_tables(con: duckdb.DuckDBPyConnection, weather: Table, yields: Table, columns: Columns,
                out_path: str, **options) -> JoinResult:
    """`_join_tables`, with a damaged input file (one DuckDB's reader rejects, though pyarrow read its footer
    and values) reported as an InputError naming the table and file instead of a DuckDB traceback."""
    try:
        return _join_tables(con, weather, yields, columns, out_path, **options)
    except (duckdb.Error, pa.ArrowException, OSError) as exc:
        raise as_input_error(exc, weather, yields) from None


# DuckDB errors that are about the data it reads; others (out of memory, a full spill disk, a bug in our
# SQL) are re-raised as they are.
_DATA_SIGNS = ("TProtocolException", "Invalid data", "Parquet", "parquet", "Corrupt", "corrupt", "decompress",
               "Invalid Input Error", "Conversion Error", "magic bytes", "footer",
               "TType", "don't know what type")  # the last two: Thrift decoding a damaged page header


def as_input_error(exc: BaseException, weather: Table, yields: Table) -> BaseException:
    text = str(exc)
    environment = isinstance(exc, (duckdb.OutOfMemoryException, duckdb.BinderException, duckdb.ParserException,
                                   duckdb.CatalogException, duckdb.InternalException)) or "No space left" in text
    if isinstance(exc, (pa.ArrowException, OSError)) and not isinstance(exc, duckdb.Error):
        if not is_input_fault(exc):
            return exc
    elif environment or not (isinstance(exc, (duckdb.IOException, duckdb.InvalidInputException,
                                              duckdb.ConversionException)) or any(s in text for s in _DATA_SIGNS)):
        return exc
    detail = text.strip().splitlines()[0][:300] if text.strip() else type(exc).__name__
    for table in (weather, yields):
        named = [f for f in table.files if f in text]
        if named:
            return InputError(f"The {table.describe()}: file {named[0]!r} cannot be read ({detail}): it is damaged. "
                              "Write it again.")
    return InputError(f"The {weather.describe()} or the {yields.describe()} cannot be read ({detail}): a file is "
                      "damaged. Write it again.")


def _join_tables(con: duckdb.DuckDBPyConnection, weather: Table, yields: Table, columns: Columns,
                 out_path: str, *, max_drop_fraction: float, weight_column: str | None = None,
                 row_filter: str | None = None, check: bool = True,
                 ordered: bool = True, memory_limit: int = 256 * 2**20, buckets: int | None = None,
                 filter_rows: bool = False, threads: int | None = None,
                 exchanged: tuple[pa.Table, pa.Table] | None = None, hold_bytes: int = 0) -> JoinResult:
    """Check the keys, join, write the joined rows to `out_path` (Arrow IPC; or keep them in memory under
    that name while they fit in `hold_bytes`: `linreg.inputs.spool`), and check the drop rate.

    One pass: DuckDB joins (out of core) and hands back Arrow record batches, which are checked (null, NaN
    or infinite values name their file through `linreg.inputs.checks`) and appended to the joined file; a 64-bit
    hash of each row's key goes to a side file, whose sort finds duplicated keys (`duplicate_hashes`), and
    only then DuckDB's exact GROUP BY names them. Key columns are checked (nulls, overlong keys) by one
    GROUP BY region per table, which also gives the regions of both tables (`JoinResult.regions_path`).

    ordered: rows sorted by keys (what the gradient trainers need to be reproducible; the exact solver is
    independent of row order, so it skips the sort). row_filter: a DuckDB condition on the region column
    keeping one rank's regions of both tables (`linreg.inputs.shard.Sharding.predicate`), evaluated on every
    row when `filter_rows` (a range of regions, which DuckDB also checks against the row groups' statistics),
    else once per distinct region (`rank_regions`: the md5 hash); exchanged: this rank's rows of both
    tables as the ranks sent them (`linreg.inputs.exchange`), read instead of the tables' files (which still
    name the files of bad values and keys); check=False leaves the
    no-rows and drop-rate checks to the caller (`check_drops` on all ranks' totals). memory_limit (bytes): DuckDB's limit, for the
    duplicate check and the number of buckets.

    Inputs too large for DuckDB to join (and sort) within `memory_limit` are joined bucket by bucket: one
    pass partitions both tables by ranges of regions into local Parquet files (`partition_inputs`), then
    each bucket is joined on its own, in region order, so the joined file is the same as one join's
    (`bucket_count` says how many; `buckets` overrides it, for tests).

    Features are computed by DuckDB from their expressions (`columns.spec`, `linreg.features`). With --aggregate,
    weather rows at a finer grain (several per key, e.g. daily) are first aggregated to the keys, streaming in
    DuckDB; duplicate weather keys are then expected.
    """
    aggregate = bool(columns.spec and columns.spec.aggregating)
    if row_filter and not filter_rows and exchanged is None:  # one rank's regions by hash: this rank's counts
        register(con, "weather_input", weather)
        register(con, "yields_input", yields)
        weather_regions, yields_regions = rank_regions(con, columns, row_filter, weather, yields)
    else:
        if exchanged is not None:
            con.register("weather_rows", exchanged[0])
            con.register("yields", exchanged[1])
        else:
            register(con, "weather_rows", weather, row_filter)
            register(con, "yields", yields, row_filter)
        weather_regions, yields_regions = (check_key_values(con, table, view, columns.keys, columns.region)
                                           for table, view in ((weather, "weather_rows"), (yields, "yields")))
    regions, region_rows = region_index(weather_regions, yields_regions)
    region_names = regions.column("region").combine_chunks()  # by REGION_INDEX
    region_at = columns.keys.index(columns.region)  # where the ordered join puts the region's text back
    weather_view(con, "weather", "weather_rows", columns)
    values = columns.features + columns.targets + ([weight_column] if weight_column else [])
    needed = needed_columns(columns, weight_column)
    row_bytes = [sum(value_bytes(t.schema.field(c).type) for c in names) for t, names in zip((weather, yields), needed)]
    input_rows = [int(pc.sum(t.column("n_rows")).as_py() or 0) for t in (weather_regions, yields_regions)]
    count = buckets or bucket_count(input_rows[0] * row_bytes[0] + input_rows[1] * row_bytes[1], memory_limit, ordered)
    cuts = bucket_cuts(region_rows, count)
    if len(cuts) > 1:
        started = time.perf_counter()
        # rows DuckDB buffers per bucket: together an eighth of its memory
        flush_rows = max(2048, max(memory_limit, MIN_DUCKDB_MEMORY) // (8 * len(cuts) * max(row_bytes)))
        partitioned = partition_inputs(con, needed, regions, cuts,
                                       os.path.join(os.path.dirname(out_path), "join-buckets"), flush_rows)
        log.info("the inputs (%d + %d rows) are larger than DuckDB joins at once within %dMB: partitioned into %d "
                 "buckets of regions in %.1f s, joined bucket by bucket", input_rows[0], input_rows[1],
                 memory_limit // 2**20, len(cuts), time.perf_counter() - started)
        if not ordered:
            # the partition pass keeps `connect`'s threads; a bucket's unsorted hash join spills within the limit on
            # every core (no sort pins blocks per thread). 100M rows at 128MB: the whole join 156 s against 185 s.
            con.execute(f"SET threads = {threads or usable_cpus()}")
    else:
        partitioned = None
    hash_path = out_path + ".keyhash"
    joined_rows, weather_keys = 0, 0
    writer, rows_held = None, None
    try:
        with open(hash_path, "wb") as hashes:
            cut = FixedBatches(JOINED_BATCH_ROWS)
            for lo, hi in zip([0] + cuts[:-1], cuts):  # regions [lo, hi) of the sorted regions: one bucket
                if partitioned is None:
                    views = ("weather", "yields")
                else:  # this bucket's rows
                    bucket_rows = partitioned.views(con, cuts.index(hi))
                    weather_view(con, "linreg_weather", bucket_rows[0], columns)
                    views = ("linreg_weather", bucket_rows[1])
                con.register("linreg_regions", regions.slice(lo, hi - lo))
                if aggregate:
                    weather_keys += con.sql(f"SELECT count(*) FROM {views[0]}").fetchall()[0][0]
                reader = con.sql(join_query(columns, weight_column, views[0], views[1], ordered)
                                 ).to_arrow_reader(JOINED_BATCH_ROWS)
                if writer is None:
                    fields = [f for f in reader.schema if f.name not in (KEY_HASH, BAD_ROW)]
                    if ordered:  # the region's text, left out of the sort, goes back where the query had it
                        fields.insert(region_at, pa.field(columns.region, region_names.type))
                    schema = pa.schema(fields)
                    # kept in memory only when the whole join should fit: no rows held, then written, at the limit
                    expected = min(input_rows) * joined_row_bytes(schema, weather_regions.column("region"))
                    writer = JoinedSink(out_path, schema, hold_bytes if expected <= hold_bytes else 0)
                for batch in reader:
                    if ordered:
                        batch = batch.add_column(region_at, columns.region, region_names.take(batch.column(REGION_INDEX)))
                    batch.column(KEY_HASH).to_numpy().tofile(hashes)
                    if pc.any(batch.column(BAD_ROW)).as_py():  # only then is each column looked at
                        bad = first_bad_value(batch, values)
                        if bad is not None:
                            raise _bad_value_error(weather, yields, columns, weight_column, batch, bad)
                    batch = batch.drop_columns([KEY_HASH, BAD_ROW])
                    batch = batch.cast(schema) if batch.schema != schema else batch
                    for full in (cut.add(batch) if ordered or partitioned is not None else [batch]):
                        writer.write_batch(full)
                    joined_rows += batch.num_rows
            for rest in cut.flush():
                writer.write_batch(rest)
            rows_held = writer.close()
    except BaseException:
        if writer is not None:
            writer.abort()
        raise
    finally:  # (no DuckDB query here: an error leaves the reader's result open)
        if partitioned is not None:
            shutil.rmtree(partitioned.directory, ignore_errors=True)
    if not aggregate:
        weather_keys = None
    duplicated = duplicate_hashes(hash_path, joined_rows, memory_limit)
    os.remove(hash_path)
    if duplicated:  # some key appears twice among the joined rows (or two keys share a hash): name them
        if not aggregate:
            check_unique_keys(con, weather, "weather", columns.keys)
        check_unique_keys(con, yields, "yields", columns.keys)
    regions_path = out_path + ".regions.parquet"
    pq.write_table(regions, regions_path)
    result = JoinResult(path=out_path, weather_rows=input_rows[0], yields_rows=input_rows[1],
                        joined_rows=int(joined_rows), weather_keys=weather_keys, regions_path=regions_path,
                        held=rows_held)
    if check:
        check_joined(con, result, weather, yields, columns.keys, max_drop_fraction)
    return result


def check_joined(con: duckdb.DuckDBPyConnection, result: JoinResult, weather: Table, yields: Table, keys: list[str],
                 max_drop_fraction: float) -> None:
    """Raise InputError when the join (`result`: its counts, or every rank's totals) left no row, naming
    example keys of both tables (the views of `con`'s join), or dropped too many rows (`check_drops`)."""
    if result.joined_rows == 0:
        raise InputError(_no_rows_message(con, weather, yields, keys))
    check_drops(result, weather, yields, keys, max_drop_fraction)


def weather_view(con: duckdb.DuckDBPyConnection, name: str, rows: str, columns: Columns) -> None:
    """Create view `name` of the weather rows of view `rows`: with --aggregate (`columns.spec`), aggregated to
    the keys (streaming in DuckDB): each column the features use by its function, each named aggregate by its
    expression; else the rows as they are."""
    con.execute(f"CREATE OR REPLACE TEMP VIEW {name} AS {weather_sql(columns, rows)}")


def rank_regions(con: duckdb.DuckDBPyConnection, columns: Columns, row_filter: str, weather: Table,
                 yields: Table) -> tuple[pa.Table, pa.Table]:
    """One rank's share of both tables (views `weather_input`, `yields_input`) as views `weather_rows` and
    `yields`, and its regions with their row counts in each (`check_key_values`' tables). The key check runs
    on every row (each rank pays the scan of every file's keys, as it would to filter them), the condition
    `row_filter` once per distinct region (an md5 a row cost each rank more than one process's whole join),
    and the rows are kept by a hash semi-join with the rank's regions."""
    found = [check_key_values(con, table, view, columns.keys, columns.region)
             for table, view in ((weather, "weather_input"), (yields, "yields_input"))]
    region = quote(columns.region)
    both = pa.concat_tables([f.select(["region"]).cast(pa.schema([("region", found[0].schema.field("region").type)]))
                             for f in found])
    con.register("linreg_found_regions", both)
    mine = con.sql(f"SELECT DISTINCT {region} FROM (SELECT region AS {region} FROM linreg_found_regions) "
                   f"WHERE {row_filter}").to_arrow_table()
    con.unregister("linreg_found_regions")
    con.register("linreg_rank_regions", mine)
    for view, source in (("weather_rows", "weather_input"), ("yields", "yields_input")):
        con.execute(f"CREATE OR REPLACE TEMP VIEW {view} AS SELECT * FROM {source} "
                    f"WHERE {region} IN (SELECT {region} FROM linreg_rank_regions)")
    keep = mine.column(0).combine_chunks()
    return tuple(f.filter(pc.is_in(f.column("region"), value_set=keep.cast(f.schema.field("region").type)))
                 for f in found)


def check_key_values(con: duckdb.DuckDBPyConnection, table: Table, view: str, keys: list[str],
                     region: str) -> pa.Table:
    """One GROUP BY region over the table (the regions and their row counts, with the other keys' non-null
    counts and longest text, in characters) shows null keys and overlong text keys;
    `linreg.inputs.checks.check_values` then names the file and rows. Returns the distinct regions and their
    row counts (`region`, `n_rows`)."""
    others = [k for k in keys if k != region]
    texts = [k for k in others if key_kind(table.schema.field(k).type) == "string"]
    found = con.sql(", ".join([f"SELECT {quote(region)} AS region", "count(*) AS n_rows"]
                              + [f"count({quote(k)}) AS present_{i}" for i, k in enumerate(others)]
                              + [f"{longest_key_sql(quote(k))} AS length_{i}" for i, k in enumerate(texts)])
                    + f" FROM {view} GROUP BY ALL").to_arrow_table()
    rows = pc.sum(found.column("n_rows")).as_py() or 0
    bad = found.column("region").null_count or long_key_mask(found.column("region")) is not None \
        or any((pc.sum(found.column(f"present_{i}")).as_py() or 0) < rows for i in range(len(others))) \
        or any((pc.max(found.column(f"length_{i}")).as_py() or 0) > MAX_KEY_CHARS for i in range(len(texts)))
    if bad:
        check_values(table, keys, [])
    return found.select(["region", "n_rows"])


def region_index(weather_regions: pa.Table, yields_regions: pa.Table) -> tuple[pa.Table, np.ndarray]:
    """The regions in both tables (`check_key_values`' tables), sorted, numbered 0.. (`region`,
    REGION_INDEX int32; `n_rows`, for balancing folds), and each one's rows in both tables together (int64, for
    sizing buckets): every
    joined row carries its region's number, so later passes select holdout regions and sum per-region
    errors by array lookups instead of hashing region names again."""
    left = weather_regions.column("region")
    right = yields_regions.column("region").cast(left.type)
    both = pc.is_in(left, value_set=right.combine_chunks())
    kept = weather_regions.filter(both)
    kept = kept.take(pc.sort_indices(kept.column("region")))
    other = pc.index_in(kept.column("region"), value_set=right.combine_chunks())
    rows = kept.column("n_rows").to_numpy() + yields_regions.column("n_rows").to_numpy()[other.to_numpy()]
    table = pa.table({"region": kept.column("region"), REGION_INDEX: pa.array(np.arange(kept.num_rows, dtype=np.int32)),
                      "n_rows": pa.array(rows.astype(np.int64))})
    return table, rows.astype(np.int64)


def join_query(columns: Columns, weight_column: str | None, weather: str, yields: str, ordered: bool) -> str:
    """The join of views `weather` and `yields` with the regions (`linreg_regions`): keys, features, targets,
    weight, region number, a 64-bit hash of the keys and whether a value of the row is null, NaN or infinite
    (`BAD_ROW`: the threads of DuckDB compute it, and the loop over the batches looks at one column); for
    `ordered`, sorted by region number (the regions' sort order: an integer is cheaper to sort, and to spill,
    than the region's text), then the other keys, and without the region's text, which the caller takes from
    `linreg_regions` by number (the sort moves every row's payload, and a text column costs it most: at 9.8M
    rows, two ranks sorting at once, 4.7 s against 5.5-5.7 s) and the keys' hash over the region's number."""
    on = " AND ".join(f"w.{quote(k)} = y.{quote(k)}" for k in columns.keys)
    values = ([sql for _, sql in feature_expressions(columns, "w")] + [f"y.{quote(t)}" for t in columns.targets]
              + ([f"y.{quote(weight_column)}"] if weight_column else []))
    finite = " AND ".join(f"coalesce(isfinite(CAST({v} AS DOUBLE)), false)" for v in values)  # null: not finite
    keys = [f"r.{REGION_INDEX}" if ordered and k == columns.region else f"w.{quote(k)}" for k in columns.keys]
    select = ", ".join([f"w.{quote(k)}" for k in columns.keys if not (ordered and k == columns.region)]
                       + feature_sql(columns, "w") + [f"y.{quote(t)}" for t in columns.targets]
                       + ([f"y.{quote(weight_column)}"] if weight_column else [])  # --weight-column
                       + [f"r.{REGION_INDEX}", f"hash({', '.join(keys)}) AS {KEY_HASH}", f"NOT ({finite}) AS {BAD_ROW}"])
    order = " ORDER BY " + ", ".join([f"r.{REGION_INDEX}"] + [f"w.{quote(k)}" for k in columns.keys
                                                               if k != columns.region]) if ordered else ""
    return (f"SELECT {select} FROM {weather} w JOIN {yields} y ON {on} JOIN linreg_regions r "
            f"ON w.{quote(columns.region)} = r.region{order}")


def joined_row_bytes(schema: pa.Schema, regions: pa.ChunkedArray) -> int:
    """Arrow bytes of one joined row of `schema`: 8 a number, 4 an int32, a text's offset plus its mean length
    among `regions` (the keys' text is mostly the region's), 1 a bool."""
    text = 4 + (int(pc.mean(pc.utf8_length(regions.cast(pa.string()))).as_py() or 0) + 1 if len(regions) else 16)
    total = 0
    for f in schema:
        kind = f.type.value_type if pa.types.is_dictionary(f.type) else f.type
        total += text if key_kind(kind) == "string" or pa.types.is_binary(kind) \
            else 1 if pa.types.is_boolean(kind) else max(1, kind.bit_width // 8)
    return total


def first_bad_value(batch: pa.RecordBatch, columns: list[str]) -> str | None:
    """The first of `columns` with a null, NaN or infinite value in `batch`, or None."""
    return next((name for name in columns if bad_mask(batch.column(name), is_key=False) is not None), None)


def _bad_value_error(weather: Table, yields: Table, columns: Columns, weight_column: str | None,
                     batch: pa.RecordBatch, name: str) -> InputError:
    """An InputError naming the file, column and keys of a bad value found among the joined rows: the
    per-file check of the input tables names them; if the inputs are clean, an expression left its domain
    (or an aggregate overflowed) there, and the expression, its columns and the joined rows' keys are named."""
    check_values(weather, columns.keys, columns.weather_columns)
    check_values(yields, columns.keys, columns.targets + ([weight_column] if weight_column else []))
    bad = batch.filter(bad_mask(batch.column(name), is_key=False))
    examples = format_examples(example_keys(bad, columns.keys, MAX_EXAMPLES))
    spec = columns.spec
    tree = spec.trees[columns.features.index(name)] if spec and name in columns.features else None
    if tree is not None and not (isinstance(tree, Column) and tree.name not in spec.named):
        first = bad.slice(0, 1).select(columns.keys).to_pylist()[0]
        files = [] if spec.aggregating else _files_holding(weather, columns.keys, first)
        where = f" (file(s) {format_examples(files, 3)})" if files else ""
        return domain_error(spec, name, examples, weather.describe() + where)
    return InputError(f"Column {name!r} is null, NaN or infinite after the join (and --aggregate) in rows with keys "
                      f"{examples}, though every input value is finite: an aggregate overflowed. Rescale the column.")


def duplicate_hashes(path: str, n: int, memory_limit: int) -> bool:
    """Whether the n uint64 key hashes in the file at `path` hold a repeated value.

    Sorted in memory when they fit an eighth of `memory_limit`; otherwise range by range of hash values,
    one read of the file per range, each range sorted on its own: memory stays within the limit."""
    share = max(memory_limit // 8, 1 << 16)
    parts = max(1, -(-n * 8 // share))
    if parts == 1:
        values = np.fromfile(path, dtype=np.uint64, count=n)
        values.sort()
        return len(values) > 1 and bool((values[1:] == values[:-1]).any())
    chunk_rows = max(share // 64, 1 << 13)
    bounds = [i * 2**64 // parts for i in range(parts + 1)]
    for low, high in zip(bounds[:-1], bounds[1:]):
        chunks = []
        for start in range(0, n, chunk_rows):
            chunk = np.fromfile(path, dtype=np.uint64, count=min(chunk_rows, n - start), offset=start * 8)
            keep = chunk >= np.uint64(low)
            if high < 2**64:
                keep &= chunk < np.uint64(high)
            chunks.append(chunk[keep])
        values = np.concatenate(chunks)
        del chunks
        values.sort()
        if len(values) > 1 and (values[1:] == values[:-1]).any():
            return True
    return False


def check_drops(result: JoinResult, weather: Table, yields: Table, keys: list[str], max_drop_fraction: float) -> None:
    """Raise InputError when the join dropped more than `max_drop_fraction` of either table."""
    weather_total = result.weather_keys if result.weather_keys is not None else result.weather_rows
    for table, dropped, total in ((weather, result.weather_dropped, weather_total),
                                  (yields, result.yields_dropped, result.yields_rows)):
        if total and dropped / total > max_drop_fraction:
            raise InputError(
                f"The join dropped {dropped} of {total} rows ({dropped / total:.0%}) of the {table.describe()}, more "
                f"than --max-drop-fraction {max_drop_fraction:g}: their keys ({', '.join(keys)}) have no "
                "match in the other table. Check that both tables cover the same regions and years.")


def _no_rows_message(con, weather: Table, yields: Table, keys: list[str]) -> str:
    key_list = ", ".join(quote(k) for k in keys)
    samples = [example_keys(con.sql(f"SELECT {key_list} FROM {v} LIMIT 3").to_arrow_table(), keys, 3)
               for v in ("weather", "yields")]
    return (f"No rows are left after joining the {weather.describe()} with the {yields.describe()} on "
            f"({', '.join(keys)}): no key appears in both. Weather keys look like {format_examples(samples[0])}; "
            f"yields keys look like {format_examples(samples[1])}.")
