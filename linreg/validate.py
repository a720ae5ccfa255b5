"""Value checks on the input tables, file by file, so that an error names the file, column and example keys.

One streaming pass per table over the key and value columns: memory is bounded by one record batch.
"""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc

from linreg.errors import InputError, format_examples
from linreg.io import BATCH_ROWS, Table

MAX_EXAMPLES = 5


def check_values(table: Table, keys: list[str], values: list[str]) -> int:
    """Raise InputError at the first file with a null key, or a null, NaN or infinite value; return the row count."""
    rows = 0
    for fragment in table.fragments():
        problem: dict | None = None
        for batch in fragment.to_batches(schema=table.schema, columns=keys + values, batch_size=BATCH_ROWS,
                                          batch_readahead=1):
            rows += batch.num_rows
            for name in keys + values:
                if problem and problem["column"] != name:
                    continue
                bad = _bad_mask(batch.column(name), is_key=name in keys)
                if bad is None:
                    continue
                problem = problem or {"column": name, "count": 0, "examples": [], "key": name in keys}
                problem["count"] += int(pc.sum(bad).as_py() or 0)
                wanted = MAX_EXAMPLES - len(problem["examples"])
                if wanted > 0:
                    problem["examples"] += example_keys(batch.filter(bad), keys, wanted)
        if problem:
            what = "null" if problem["key"] else "null, NaN or infinite"
            raise InputError(
                f"The {table.describe()}: column {problem['column']!r} has {problem['count']} {what} value(s) "
                f"in file {fragment.path!r}, in rows with keys {format_examples(problem['examples'])}. "
                "Fix or drop those rows before training.")
    return rows


def _bad_mask(column: pa.Array, *, is_key: bool) -> pa.Array | None:
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
    columns = [head.column(k).to_pylist() for k in keys]
    rows = list(zip(*columns))
    return [r[0] if len(keys) == 1 else r for r in rows]

