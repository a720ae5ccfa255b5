"""Column roles of a run, checks on the input schemas, and the schemas of the output datasets.

Everything here needs only Parquet footers, never a scan of the data.
"""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa
import pyarrow.dataset as ds

from linreg.errors import InputError, format_examples
from linreg.features.spec import Features, check_names, parse_features
from linreg.inputs.tables import Table

# 2: totals have null region and target (were 'all'); the runs entry has no run_id column (its folder names it)
# 3: cross-validated runs add the cv dataset, and fold and <target>_cv_pred to their predictions (additions only:
#    a version 2 root takes version 3 runs without a migration, linreg.outputs.migrate)
SCHEMA_VERSION = "3"
RESERVED_WORDS = ("intercept", "split", "fold", "run_id", "model_run_id", "score_run_id")
SPLITS = ("train", "holdout")


@dataclass(frozen=True)
class Columns:
    """Who is who: `keys` join the tables (keys[0] is the region), features feed the model, targets are predicted.

    features are the canonical forms of the `--features` expressions (`spec`; None: plain weather columns)."""

    keys: list[str]
    features: list[str]
    targets: list[str]
    spec: Features | None = None

    @property
    def weather_columns(self) -> list[str]:
        """The weather table's columns the run reads besides the keys."""
        return self.spec.weather_columns(self.keys) if self.spec else list(self.features)

    @property
    def region(self) -> str:
        return self.keys[0]

    @property
    def predictions(self) -> list[str]:
        return [pred_column(t) for t in self.targets]


def pred_column(target: str) -> str:
    return f"{target}_pred"


def resolve_columns(weather: Table, yields: Table, *, features: list[str], targets: list[str],
                    keys: list[str] | None, aggregate: str | None = None) -> Columns:
    """Parse the features (expressions, `linreg.features.spec`), check both tables' schemas for the run and
    return its column roles; raise InputError on any problem."""
    if keys is None:
        keys = ["region", "year"] if all("year" in t.schema.names for t in (weather, yields)) else ["region"]
    spec = parse_features(list(features), aggregate, columns=weather.schema.names)
    columns = Columns(keys=list(keys), features=spec.terms, targets=list(targets), spec=spec)
    check_names(spec, weather.schema.names, columns.keys, columns.region, weather.describe())
    _check_names(columns)
    inputs = columns.weather_columns
    _check_present(weather, columns.keys + inputs)
    _check_present(yields, columns.keys + columns.targets)
    _check_not_null_typed(weather, columns.keys + inputs)
    _check_not_null_typed(yields, columns.keys + columns.targets)
    for table, names in ((weather, inputs), (yields, columns.targets)):
        for name in names:
            _check_numeric(table, name)
    for key in columns.keys:
        if key in spec.used_names():  # a trend: a key as a feature
            _check_numeric(weather, key)
        _check_key_types(weather, yields, key)
    _check_file_types(weather, columns.keys, inputs)
    _check_file_types(yields, columns.keys, columns.targets)
    for table in (weather, yields):
        _check_not_empty(table)
    return columns


def _check_file_types(table: Table, keys: list[str], values: list[str]) -> None:
    """Every file's own (footer) type of each column agrees with the table's: numeric values, keys of the
    same kind. Without this check a file whose 'year' is text, or whose 'temp' is text, would be cast
    silently (or fail deep in a scan) because the table's schema comes from its first file."""
    for fragment in table.fragments():
        physical = fragment.physical_schema
        for name in keys + values:
            if name not in physical.names:
                continue  # a hive partition column: typed by the partitioning
            kind = physical.field(name).type
            if name in values and not _is_numeric(kind):
                raise InputError(f"The {table.describe()}: column {name!r} must be numeric, but it is {kind} in file "
                                 f"{fragment.path!r} ({table.schema.field(name).type} in the table's first file).")
            if name in keys and key_kind(kind) != key_kind(table.schema.field(name).type):
                raise InputError(f"The {table.describe()}: key column {name!r} has type {kind} in file "
                                 f"{fragment.path!r} but {table.schema.field(name).type} in the table's first file. "
                                 "A column must have one type in every file.")


def _check_not_null_typed(table: Table, names: list[str]) -> None:
    """A column written from nothing but nulls has Parquet type null: say so, naming the file."""
    for fragment in table.fragments():
        physical = fragment.physical_schema
        for name in names:
            if name in physical.names and pa.types.is_null(physical.field(name).type):
                raise InputError(f"The {table.describe()}: column {name!r} holds only nulls in file {fragment.path!r} "
                                 "(its Parquet type is null). Fill it or drop the file.")


def _check_not_empty(table: Table) -> None:
    """A table with files but no rows (from the footers' row counts)."""
    if table.dataset.count_rows() == 0:
        raise InputError(f"The {table.describe()} holds no rows ({len(table.files)} file(s), all empty).")


def _is_numeric(kind: pa.DataType) -> bool:
    return pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_decimal(kind)


def _check_names(columns: Columns) -> None:
    taken = set(RESERVED_WORDS) | set(columns.keys) | set(columns.predictions) \
        | {cv_pred_column(t) for t in columns.targets}
    for role, names in (("feature", columns.features), ("target", columns.targets)):
        # a key other than the region may be a feature (a trend: `year`): the joined rows' key column is it
        clash = [n for n in names if n in taken and not (role == "feature" and n in columns.keys[1:])]
        if clash:
            raise InputError(f"The {role} name(s) {format_examples(clash)} would collide with the output columns "
                             f"or words ({', '.join(RESERVED_WORDS)}, the key columns, '<target>_pred', "
                             "'<target>_cv_pred'). "
                             "Rename the column(s) in the input.")
    if len(set(columns.keys)) != len(columns.keys):
        raise InputError(f"The key columns repeat: {columns.keys}.")


def _check_present(table: Table, names: list[str]) -> None:
    missing = [n for n in names if n not in table.schema.names]
    if missing:
        raise InputError(f"The {table.describe()} has no column {format_examples(missing)}. "
                         f"Its columns are: {', '.join(table.schema.names)}.")
    for fragment in table.fragments():
        physical = fragment.physical_schema.names
        partition_values = ds.get_partition_keys(fragment.partition_expression)
        absent = [n for n in names if n not in physical and n not in partition_values]
        if absent:
            raise InputError(f"The {table.describe()}: file {fragment.path!r} has no column "
                             f"{format_examples(absent)} (other files have it). Its columns are: {', '.join(physical)}.")


def _check_numeric(table: Table, name: str) -> None:
    kind = table.schema.field(name).type
    if not _is_numeric(kind):
        raise InputError(f"The {table.describe()}: column {name!r} must be numeric, but it is {kind}.")


def key_kind(kind: pa.DataType) -> str:
    """Types that join with each other: all strings, all integers, or otherwise the exact type."""
    if pa.types.is_dictionary(kind):
        kind = kind.value_type
    if pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_string_view(kind):
        return "string"
    if pa.types.is_integer(kind):
        return "integer"
    return str(kind)


def _check_key_types(weather: Table, yields: Table, key: str) -> None:
    left, right = weather.schema.field(key).type, yields.schema.field(key).type
    if key_kind(left) != key_kind(right):
        raise InputError(f"The key column {key!r} has type {left} in the {weather.describe()} but {right} in the "
                         f"{yields.describe()}. Key columns must have the same type in both tables.")


STAT_COLUMNS = ("std_error", "t_value", "p_value", "ci_low", "ci_high")


def weights_schema() -> pa.Schema:
    return pa.schema([("target", pa.string()), ("term", pa.string()), ("weight", pa.float64())]
                     + [(name, pa.float64()) for name in STAT_COLUMNS])


def check_weight_column(yields: Table, column: str, columns: Columns) -> None:
    """--weight-column: present in every file of the yields table, numeric, and not an output column name."""
    if column in RESERVED_WORDS or column in columns.predictions:
        raise InputError(f"The weight column {column!r} would collide with the output columns or words "
                         f"({', '.join(RESERVED_WORDS)}, '<target>_pred', '<target>_cv_pred'). Rename the column in "
                         "the input.")
    _check_present(yields, [column])
    _check_not_null_typed(yields, [column])
    _check_numeric(yields, column)
    _check_file_types(yields, [], [column])


def metrics_schema() -> pa.Schema:
    """region null: over all regions; target null: over all targets (as SQL's ROLLUP writes totals)."""
    return pa.schema([("split", pa.string()), ("region", pa.string()), ("target", pa.string()),
                      ("metric", pa.string()), ("value", pa.float64())])


RUN_COUNTS = ("weather_rows", "yields_rows", "joined_rows", "train_rows", "holdout_rows")


def runs_schema() -> pa.Schema:
    """A runs-index entry: one row, without run_id (the hive folder `run_id=<id>` holds it, so that every
    reader of the dataset gets one run_id column, text, from the partitioning)."""
    return pa.schema([("trainer", pa.string()), ("config", pa.string()), ("input_fingerprint", pa.string())]
                     + [(name, pa.int64()) for name in RUN_COUNTS]
                     + [("started_at", pa.timestamp("us", tz="UTC")), ("finished_at", pa.timestamp("us", tz="UTC"))])


FOLD = "fold"  # the predictions' column of a cross-validated run: the fold of a training row (null: holdout)


def cv_pred_column(target: str) -> str:
    """The out-of-fold prediction of `target` in a cross-validated run's predictions."""
    return f"{target}_cv_pred"


def predictions_schema(key_fields: list[pa.Field], targets: list[str], weight_column: str | None = None,
                       cv: bool = False) -> pa.Schema:
    """One row per joined row: the keys, `split`, per target the actual value and `<target>_pred` (float64);
    with the weight column, its value. cv (a cross-validated run): `fold` (int64, null for holdout rows) after
    `split`, and `<target>_cv_pred` (float64: the prediction of the model fitted without the row's fold, at the
    chosen l2; null for holdout rows) after each `<target>_pred`."""
    fields = list(key_fields) + [pa.field("split", pa.string())]
    if cv:
        fields.append(pa.field(FOLD, pa.int64()))
    for target in targets:
        fields += [pa.field(target, pa.float64()), pa.field(pred_column(target), pa.float64())]
        if cv:
            fields.append(pa.field(cv_pred_column(target), pa.float64()))
    if weight_column:
        fields.append(pa.field(weight_column, pa.float64()))  # the sample weight of the row
    return pa.schema(fields)


def cv_schema() -> pa.Schema:
    """A cross-validated run's scores, one row per l2 value, fold (null: pooled over all folds) and target
    (null: the mean over targets): `mse` (weighted runs: sum w r^2 / sum w) of the fold's rows predicted by the
    model fitted without them, and the `rows` it is taken over."""
    return pa.schema([("l2", pa.float64()), (FOLD, pa.int64()), ("target", pa.string()), ("mse", pa.float64()),
                      ("rows", pa.int64())])
