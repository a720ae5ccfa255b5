"""Value checks on the input tables, file by file, so that an error names the file, column and example keys.

One streaming pass per table over the key and value columns: memory is bounded by one record batch.
"""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from linreg.errors import InputError, first_line, format_examples
from linreg.inputs.tables import BATCH_ROWS, Table, is_input_fault

MAX_EXAMPLES = 5
MAX_KEY_CHARS = 1000  # a longer key is a column mix-up or a damaged file, and would flood every output row
EXAMPLE_CHARS = 40  # longer key values are shortened in messages


def check_values(table: Table, keys: list[str], values: list[str]) -> int:
    """Raise InputError at the first file with a null key, or a null, NaN or infinite value; return the row count."""
    rows = 0
    for fragment in table.fragments():
        try:
            problem, rows = _check_file(table, fragment, keys, values, rows)
        except (pa.ArrowException, OSError) as exc:  # damaged data pages: the footer read fine in open_table
            if not is_input_fault(exc):
                raise
            raise InputError(f"The {table.describe()}: file {fragment.path!r} cannot be read "
                             f"({first_line(exc, limit=300)}): it is damaged. Write it again.") from None
        if problem and problem.get("long"):
            raise InputError(
                f"The {table.describe()}: key column {problem['column']!r} has {problem['count']} value(s) longer than "
                f"{MAX_KEY_CHARS} characters in file {fragment.path!r}, in rows with keys "
                f"{format_examples(problem['examples'])}. Keys are short names or codes; check that the right "
                "column is used as the key.")
        if problem:
            what = "null" if problem["key"] else "null, NaN or infinite"
            raise InputError(
                f"The {table.describe()}: column {problem['column']!r} has {problem['count']} {what} value(s) "
                f"in file {fragment.path!r}, in rows with keys {format_examples(problem['examples'])}. "
                "Fix or drop those rows before training.")
    return rows


def _file_batches(table: Table, fragment, columns: list[str]):
    """Record batches of `columns` of one file, row group by row group (the least memory pyarrow needs);
    hive partition columns, which the file does not hold, are filled in from its path."""
    partition = ds.get_partition_keys(fragment.partition_expression)
    stored = [c for c in columns if c not in partition]
    with pq.ParquetFile(fragment.path, filesystem=table.filesystem) as f:
        for batch in f.iter_batches(batch_size=BATCH_ROWS, columns=stored, use_threads=False):
            arrays = [batch.column(c) if c in stored else
                      pa.array([partition[c]] * batch.num_rows, type=table.schema.field(c).type) for c in columns]
            yield pa.RecordBatch.from_arrays(arrays, names=columns)


def _check_file(table: Table, fragment, keys: list[str], values: list[str], rows: int) -> tuple[dict | None, int]:
    """Scan one file batch by batch; return the first column at fault (count and example keys) and the rows."""
    problem: dict | None = None
    for batch in _file_batches(table, fragment, keys + values):
        rows += batch.num_rows
        for name in keys + values:
            if problem and problem["column"] != name:
                continue
            bad = bad_mask(batch.column(name), is_key=name in keys)
            long = False
            if bad is None and name in keys:
                bad = long_key_mask(batch.column(name))
                long = bad is not None
            if bad is None:
                continue
            problem = problem or {"column": name, "count": 0, "examples": [], "key": name in keys, "long": long}
            problem["count"] += int(pc.sum(bad).as_py() or 0)
            wanted = MAX_EXAMPLES - len(problem["examples"])
            if wanted > 0:
                problem["examples"] += example_keys(batch.filter(bad), keys, wanted)
    return problem, rows


def long_key_mask(column: pa.Array | pa.ChunkedArray) -> pa.Array | pa.ChunkedArray | None:
    """Rows whose text key is longer than MAX_KEY_CHARS characters (Unicode code points, not bytes: "é" is
    one), or None when there is none (or the column is not text)."""
    if pa.types.is_dictionary(column.type):
        column = column.cast(column.type.value_type)
    if not (pa.types.is_string(column.type) or pa.types.is_large_string(column.type)
            or pa.types.is_string_view(column.type)):
        return None
    long = pc.greater(pc.utf8_length(column), MAX_KEY_CHARS)
    return long if pc.any(long).as_py() else None


def longest_key_sql(column: str) -> str:
    """A DuckDB aggregate: the length of the longest value of the (quoted) text `column`, in characters as
    `long_key_mask` counts them (DuckDB's `length` counts code points; `strlen` would count bytes)."""
    return f"max(length({column}))"



def bad_mask(column: pa.Array, *, is_key: bool) -> pa.Array | None:
    """Boolean mask of rows at fault, or None when the column is clean."""
    nulls = column.null_count > 0
    if is_key or not pa.types.is_floating(column.type):
        return pc.is_null(column) if nulls else None
    finite = pc.is_finite(column)  # null where the value is null
    bad = pc.invert(pc.fill_null(finite, False))
    return bad if pc.any(bad).as_py() else None


def example_keys(batch: pa.RecordBatch | pa.Table, keys: list[str], limit: int) -> list:
    """Up to `limit` key tuples (or scalars for a single key) of the rows in `batch`."""
    head = batch.slice(0, limit)
    columns = [[_short(v) for v in head.column(k).to_pylist()] for k in keys]
    rows = list(zip(*columns))
    return [r[0] if len(keys) == 1 else r for r in rows]



def _short(value):
    """A key value for a message: long text cut to EXAMPLE_CHARS characters, with its length."""
    if isinstance(value, str) and len(value) > EXAMPLE_CHARS:
        return f"{value[:EXAMPLE_CHARS]}... ({len(value)} characters)"
    return value
