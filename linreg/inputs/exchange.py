"""One machine's ranks share the scan of inputs that are neither sorted nor partitioned by region.

When neither ranges of regions nor region partitions tell a rank which files hold its regions (one file per
year, shuffled rows), every rank used to scan every file and keep its own regions' rows. Instead, each rank
reads a share of the files once (whole files, balanced by rows: `assign`) and sends every row to the rank that
owns its region (`send`): DuckDB computes the owner, the hash of the region's text modulo the number of ranks
(null regions to rank 0, whose key check names them), and the rows go into one uncompressed Arrow IPC file per
destination rank in a directory all ranks can read. Once every rank has sent (a collective of the caller's),
each rank joins the files sent to it, memory-mapped (`receive`): its regions' rows of both tables, from every
rank.

Each row is read once and written once, instead of being read by every rank. It needs a directory that all
ranks share, so it is used when every rank runs on this machine (rank 0's work directory), and when the files
split evenly enough (`assign`); otherwise each rank scans every file as before (`linreg.inputs.shard`). It
writes the needed columns of both tables once, uncompressed, to the local disk (the page cache, while memory
lasts).

Measured (docs/scaling.md): 20M rows in shuffled files, exact, two ranks on two cores: each rank's join took
13.35 s scanning every file and 11.65 s with the exchange (of which sending 3.1-3.7 s); the whole command 20.1 s
before and 15.8 s after (medians of 3), against 22.0-23.9 s for one process on one core.
"""

from __future__ import annotations

import glob
import os

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from linreg.inputs.sql import quote
from linreg.inputs.tables import Table

OWNER = "__linreg_owner"
# Files are assigned whole, largest first to the rank with the fewest rows; the exchange is used when no rank
# reads more than its even share plus this fraction of the table's rows (beyond it, a rank's extra reading
# costs more than the scan of every file's keys it saves).
SHARE_EXTRA = 0.1


def owner_sql(region: str, world_size: int) -> str:
    """DuckDB's rank (0..world_size-1) of a row's region: hash of its text (the same in every process of one
    machine's job: one DuckDB), a null region to rank 0."""
    column = quote(region)
    return (f"CAST(CASE WHEN {column} IS NULL THEN 0 ELSE hash(CAST({column} AS VARCHAR)) % {int(world_size)} END "
            f"AS UINTEGER) AS {OWNER}")


def file_rows(table: Table) -> list[tuple[str, int]]:
    """(path, rows) of each file of `table`, from the footers `open_table` read."""
    return [(fragment.path, sum(g.num_rows for g in fragment.row_groups)) for fragment in table.fragments()]


def assign(files: list[tuple[str, int]], world_size: int) -> list[list[str]] | None:
    """Each rank's files (largest first to the rank with the fewest rows so far), or None when a rank would read
    more than its even share plus SHARE_EXTRA of all rows (too few files, or one too large)."""
    shares, rows = [[] for _ in range(world_size)], [0] * world_size
    for path, n in sorted(files, key=lambda f: (-f[1], f[0])):
        least = rows.index(min(rows))
        shares[least].append(path)
        rows[least] += n
    total = sum(rows)
    if total and max(rows) > total / world_size + SHARE_EXTRA * total:
        return None
    return [sorted(share) for share in shares]


def inbound_path(directory: str, role: str, sender: int, receiver: int) -> str:
    return os.path.join(directory, f"{role}-from-{sender}-to-{receiver}.arrow")


def send(con: duckdb.DuckDBPyConnection, view: str | None, columns: list[str], region: str, directory: str,
         role: str, rank: int, world_size: int, schema: pa.Schema, batch_rows: int = 128 * 1024) -> int:
    """Read `columns` of the DuckDB view `view` (this rank's files of one table; None: it has none) once and
    write each row to the Arrow IPC file of its region's owner (`inbound_path`), cast to `schema` (the same on
    every rank, so that the files a rank receives concatenate). Every destination gets a file, empty or not.
    Returns the rows."""
    select = ", ".join(quote(c) for c in columns)
    reader = [] if view is None else con.sql(f"SELECT {select}, {owner_sql(region, world_size)} FROM {view}"
                                             ).to_arrow_reader(batch_rows)
    sinks = [pa.OSFile(inbound_path(directory, role, rank, d), "wb") for d in range(world_size)]
    sent = 0
    try:
        writers = [pa.ipc.new_file(sink, schema) for sink in sinks]
        for batch in reader:
            owner = batch.column(OWNER)
            rows = batch.drop_columns([OWNER]).cast(schema)
            if world_size == 2:  # two passes of a filter cost less than ordering the rows
                first = pc.equal(owner, 0)
                parts = [rows.filter(first), rows.filter(pc.invert(first))]
            else:
                order = pc.sort_indices(owner)
                rows = rows.take(order)
                ends = np.cumsum(np.bincount(owner.to_numpy(zero_copy_only=False), minlength=world_size))
                parts = [rows.slice(lo, hi - lo) for lo, hi in zip(np.concatenate([[0], ends[:-1]]), ends)]
            for writer, part in zip(writers, parts):
                if part.num_rows:
                    writer.write_batch(part)
            sent += batch.num_rows
        for writer in writers:
            writer.close()
    finally:
        for sink in sinks:
            sink.close()
    return sent


def plan_shares(weather: Table, yields: Table, world_size: int) -> tuple[list[list[str]], list[list[str]]] | None:
    """Each rank's files of each table (`assign`), or None when either table does not split evenly enough."""
    shares = tuple(assign(file_rows(t), world_size) for t in (weather, yields))
    return None if any(s is None for s in shares) else shares


def send_tables(con: duckdb.DuckDBPyConnection, tables: tuple[Table, Table], needed: tuple[list[str], list[str]],
                region: str, shares: tuple[list[list[str]], list[list[str]]], directory: str, rank: int,
                world_size: int) -> int:
    """`send` this rank's share of both tables (weather, yields): their `needed` columns. A file DuckDB cannot
    read is an InputError naming the table and file (`join.as_input_error`). Returns the rows sent."""
    from linreg.inputs.join import as_input_error, register
    from linreg.inputs.shard import subset

    os.makedirs(directory, exist_ok=True)
    sent = 0
    try:
        for table, columns, share in zip(tables, needed, shares):
            register(con, "linreg_whole", table)  # the schema every rank casts to: read from all files' footers
            select = ", ".join(quote(c) for c in columns)
            schema = con.sql(f"SELECT {select} FROM linreg_whole LIMIT 0").to_arrow_table().schema
            mine = set(share[rank])
            if mine:  # more ranks than files: a rank may have none, and still writes (empty) files
                register(con, "linreg_send", subset(table, [f for f in table.fragments() if f.path in mine]))
            sent += send(con, "linreg_send" if mine else None, columns, region, directory, table.role, rank,
                         world_size, schema)
    except (duckdb.Error, pa.ArrowException) as exc:
        raise as_input_error(exc, *tables) from None
    return sent


def receive(directory: str, role: str, rank: int, world_size: int) -> pa.Table:
    """The rows of one table sent to `rank` by every rank, memory-mapped (no copy: the pages are read as the
    join reads them)."""
    tables = [pa.ipc.open_file(pa.memory_map(inbound_path(directory, role, sender, rank))).read_all()
              for sender in range(world_size)]
    return pa.concat_tables(tables)


def receive_tables(directory: str, rank: int, world_size: int) -> tuple[pa.Table, pa.Table]:
    """The weather and yields rows sent to `rank` (`receive` of each table, by the roles `send_tables` wrote)."""
    return receive(directory, "weather", rank, world_size), receive(directory, "yields", rank, world_size)


def discard(directory: str, rank: int) -> None:
    """Remove the files sent to `rank` (after its join has read them)."""
    for path in glob.glob(os.path.join(directory, f"*-to-{rank}.arrow")):
        os.remove(path)
