"""The SQL of a run's features (`linreg.features`): the weather rows aggregated to the keys (`--aggregate`) and
the feature columns computed from them, each named by its canonical term. The training join and scoring use
the same SQL, so they compute the same numbers. Column names are quoted identifiers and everything else comes
from the parsed trees (`linreg.features.expression.to_sql`): the user's text never reaches SQL."""

from __future__ import annotations

from linreg.errors import InputError
from linreg.features.expression import Call, Column, canonical, column_names, to_sql
from linreg.features.spec import Features
from linreg.inputs.schema import Columns
from linreg.inputs.sql import quote


def weather_sql(columns: Columns, rows: str) -> str:
    """The query of `weather_view`: the weather rows of view (or table function) `rows`, aggregated to the keys
    when the run aggregates."""
    spec = columns.spec
    if not (spec and spec.aggregating):
        return f"SELECT * FROM {rows}"
    key_list = ", ".join(quote(k) for k in columns.keys)
    # an aggregate skips nulls: a key with a null input gets a null aggregate, which the join's check reports
    aggs = [f"{_unless_null(to_sql(Call(f, (Column(c),)), quote), [c], 'count')} AS {quote(c)}"
            for c, f in spec.aggregated_columns(columns.keys).items()]
    aggs += [f"{_unless_null(to_sql(tree, quote), column_names(tree), 'count')} AS {quote(name)}"
             for name, tree in spec.used_aggregates().items()]
    return f"SELECT {key_list}, {', '.join(aggs)} FROM {rows} GROUP BY {key_list}"


def _unless_null(sql: str, names: list[str], how: str, alias: str = "") -> str:
    """`sql`, or NULL where one of the columns `names` is null: in the row (how 'row'), or in any row of the
    group (how 'count'). least, greatest and aggregates skip nulls; a null input must reach the checks."""
    if not names:
        return sql
    prefix = f"{alias}." if alias else ""
    test = (" AND ".join(f"{prefix}{quote(n)} IS NOT NULL" for n in names) if how == "row"
            else " AND ".join(f"count({quote(n)}) = count(*)" for n in names))
    return f"CASE WHEN {test} THEN {sql} END"


def feature_sql(columns: Columns, alias: str) -> list[str]:
    """SELECT items of the features from weather view `alias`, each named by its canonical term: a plain
    column as it is stored, an expression computed in DOUBLE (`linreg.features.expression.to_sql`). A key used
    as a feature (a trend) has no item: the key column is it."""
    return [f"{sql} AS {quote(term)}" for term, sql in feature_expressions(columns, alias)
            if term not in columns.keys]


def feature_expressions(columns: Columns, alias: str) -> list[tuple[str, str]]:
    """(term, SQL) of every feature over weather view `alias` (a key used as a feature: the key column)."""
    trees = columns.spec.trees if columns.spec else [Column(f) for f in columns.features]
    found = []
    for term, tree in zip(columns.features, trees):
        if isinstance(tree, Column):
            found.append((term, f"{alias}.{quote(tree.name)}"))
        else:
            found.append((term, _unless_null(to_sql(tree, lambda n: f"{alias}.{quote(n)}"), column_names(tree),
                                             "row", alias)))
    return found


def domain_error(spec: Features, term: str, examples: str, where: str) -> InputError:
    """The error of a feature that is not finite though its inputs are: the expression `term`, what it is
    computed from (columns, named aggregates), example keys and `where` (the table, and its files if known)."""
    tree = spec.trees[spec.terms.index(term)]
    used = [f"{n}={canonical(spec.named[n])}" if n in spec.named else n for n in column_names(tree)]
    return InputError(
        f"Feature {term!r} (from {', '.join(used)}) is not a finite number in the rows with keys {examples} of "
        f"the {where}, though every input value there is finite: a value is outside the domain of a function or "
        "operator (log of a value <= 0, sqrt of a negative value, a division by zero, a negative number to a "
        "fractional power) or the result overflows. Change the expression (for example log(x + 1)) or leave those "
        "rows out of the input.")
