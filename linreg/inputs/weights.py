"""Checks on the values of --weight-column, file by file, so that an error names the file, column and keys.

Nulls, NaN and infinities are caught by `validate.check_values` (the weight column is checked with the
targets); here: negative weights, and a table whose weights are all zero. One streaming pass over the
key and weight columns: memory is bounded by one record batch.
"""

from __future__ import annotations

import pyarrow.compute as pc

from linreg.errors import InputError, format_examples
from linreg.inputs.checks import MAX_EXAMPLES, example_keys
from linreg.inputs.tables import BATCH_ROWS, Table


def check_weights(table: Table, keys: list[str], column: str) -> None:
    """Raise InputError at the first file with a negative weight, or when every weight is zero."""
    positive = 0
    for fragment in table.fragments():
        count, examples = 0, []
        for batch in fragment.to_batches(schema=table.schema, columns=keys + [column], batch_size=BATCH_ROWS):
            values = batch.column(column)
            negative = pc.fill_null(pc.less(values, 0), False)
            count += int(pc.sum(negative).as_py() or 0)
            if len(examples) < MAX_EXAMPLES and count:
                examples += example_keys(batch.filter(negative), keys, MAX_EXAMPLES - len(examples))
            positive += int(pc.sum(pc.fill_null(pc.greater(values, 0), False)).as_py() or 0)
        if count:
            raise InputError(
                f"The {table.describe()}: the weight column {column!r} has {count} negative value(s) in file "
                f"{fragment.path!r}, in rows with keys {format_examples(examples)}. Sample weights are precision "
                "weights and must be >= 0 (0 leaves a row out of the fit).")
    if positive == 0:
        raise InputError(f"The {table.describe()}: every value of the weight column {column!r} is 0, so no row "
                         "would count in the fit. Check --weight-column.")
