"""A run's features: `--features` expressions and `--aggregate` over the weather table, parsed and checked.

    --features "temp, temp^2, rainfall, temp*rainfall, log(rainfall + 1), year - 2000"
    --aggregate "gdd=sum(greatest(least(temp, 29) - 10, 0)), rain=sum(rainfall), temp:max, mean"

A feature is an expression (`linreg.features.expression`) over weather columns, the join keys other than the
region (a trend), and named aggregates. Its canonical form (`temp^2`) is its name everywhere: the model's
terms, the weights' `term` column, error messages; a feature that is one column is named by the column's own
name, even where an expression would quote it (`sun hours`). `--aggregate` aggregates finer-grained weather (e.g. daily)
to the keys before the join: `name=<aggregate expression>` defines a name the features may use,
`column:function` aggregates one column, a bare function every other column the features use (default mean).
The same `Features` drive the join's SQL (training) and scoring, so both compute the same numbers.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Collection

from linreg.errors import InputError, format_examples
from linreg.features.expression import (Column, Node, canonical, column_names, has_aggregate, parse,
                                        split_top_level)

AGGREGATES = {"mean": "avg", "min": "min", "max": "max", "sum": "sum"}  # --aggregate's functions -> DuckDB's
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


@dataclass(frozen=True)
class Features:
    """The parsed `--features` (trees and their canonical terms) and `--aggregate` (None: no aggregation)."""

    terms: list[str]
    trees: list[Node]
    aggregating: bool = False
    default_aggregate: str = "mean"                      # for columns without their own function
    column_aggregates: dict[str, str] = field(default_factory=dict)  # column -> mean|min|max|sum, as given
    named: dict[str, Node] = field(default_factory=dict)             # name -> aggregate expression, as given

    @property
    def plain(self) -> bool:
        """Every feature is a weather column as it is (no expression, no aggregation)."""
        return not self.aggregating and all(isinstance(t, Column) for t in self.trees)

    def used_names(self) -> list[str]:
        """Names the features refer to (columns, keys, aggregate names), in order of first use."""
        return list(dict.fromkeys(n for tree in self.trees for n in column_names(tree)))

    def weather_columns(self, keys: list[str]) -> list[str]:
        """The weather columns the run reads besides the keys: those the features use directly and those the
        named aggregates they use are computed from."""
        names = []
        for name in self.used_names():
            names += column_names(self.named[name]) if name in self.named else [name]
        return [n for n in dict.fromkeys(names) if n not in keys]

    def aggregated_columns(self, keys: list[str]) -> dict[str, str]:
        """Each weather column the features use directly (not a key or an aggregate name) -> its aggregate."""
        return {n: self.column_aggregates.get(n, self.default_aggregate) for n in self.used_names()
                if n not in keys and n not in self.named}

    def used_aggregates(self) -> dict[str, Node]:
        """The named aggregates that some feature uses, in the order given."""
        used = set(self.used_names())
        return {name: tree for name, tree in self.named.items() if name in used}


def parse_features(features: list[str], aggregate: str | None = None, columns: Collection[str] = ()) -> Features:
    """Parse `--features` (a list of expressions) and `--aggregate`; raise InputError pointing at a bad part.

    A feature that is exactly the name of one of `columns` (the weather table's) is that column, whatever
    characters it holds (`sun hours`, `frost-days`), and its term is that name; any other feature is an
    expression, named by its canonical form."""
    trees = [Column(text.strip()) if text.strip() in columns else parse(text, "--features") for text in features]
    terms = [feature_term(t) for t in trees]
    seen: dict[str, str] = {}
    for text, term in zip(features, terms):
        if term in seen:
            raise InputError(f"--features: {seen[term]!r} and {text!r} are the same feature ({term}).")
        seen[term] = text
    if not aggregate or not aggregate.strip():
        return Features(terms=terms, trees=trees)
    default, per_column, named = None, {}, {}
    for part in split_top_level(aggregate):
        name, equals, expression = part.partition("=")
        if equals:
            name = _aggregate_name(name.strip(), part)
            if name in named:
                raise InputError(f"--aggregate: the name {name!r} is defined twice.")
            named[name] = parse(expression.strip(), "--aggregate", aggregates=True)
            if not has_aggregate(named[name]):
                raise InputError(f"--aggregate: {part!r} aggregates nothing: use sum, mean, min or max, as in "
                                 f"{name}=mean(<expression>).")
        elif ":" in part:
            column, _, function = (s.strip() for s in part.partition(":"))
            if column in per_column:
                raise InputError(f"--aggregate: column {column!r} is given two functions.")
            per_column[column] = _function(function, part)
        elif default is not None:
            raise InputError(f"--aggregate: two default functions ({default!r} and {part!r}); give one, or "
                             "name each column as column:function.")
        else:
            default = _function(part, part)
    result = Features(terms=terms, trees=trees, aggregating=True, default_aggregate=default or "mean",
                      column_aggregates=per_column, named=named)
    used = set(result.used_names())
    unused = [c for c in per_column if c not in used or c in named]
    if unused:
        raise InputError(f"--aggregate names {format_examples(unused)}, which no feature uses as a column "
                         f"(features: {', '.join(terms)}).")
    clash = [n for n in named if n in per_column]
    if clash:
        raise InputError(f"--aggregate: {format_examples(clash)} is both a named aggregate and a column:function.")
    return result


def feature_term(tree: Node) -> str:
    """A feature's name in the model and the outputs: a column's own name, else the canonical form."""
    return tree.name if isinstance(tree, Column) else canonical(tree)


def _aggregate_name(name: str, part: str) -> str:
    if len(name) >= 2 and name[0] == name[-1] == '"':
        name = name[1:-1].replace('""', '"')
    elif not _NAME.fullmatch(name):
        raise InputError(f"--aggregate: {name!r} in {part!r} is not a name: use letters, digits and _ (not first), "
                         'or double-quote it ("max temp").')
    if not name:
        raise InputError(f"--aggregate: an empty name in {part!r}.")
    return name


def _function(text: str, part: str) -> str:
    function = text.strip().lower()
    if function not in AGGREGATES:
        raise InputError(f"--aggregate: unknown function {text.strip()!r} in {part!r}; use {', '.join(AGGREGATES)} "
                         "(or name=sum(<expression>)).")
    return function


def check_names(spec: Features, weather_names: list[str], keys: list[str], region: str, describe: str) -> None:
    """Every name a feature expression or aggregate uses exists: a weather column, a key other than the region
    (a trend) or an aggregate name; aggregate names collide with no column or key. (A feature that is a plain
    name missing from the table is left to the schema check, which names the file.)"""
    known = set(weather_names)
    clash = [n for n in spec.named if n in known or n in keys]
    if clash:
        raise InputError(f"--aggregate: the name(s) {format_examples(clash)} collide with columns of the {describe}; "
                         "choose another name.")
    for text, tree in zip(spec.terms, spec.trees):
        for name in column_names(tree):
            if name == region:
                raise InputError(f"--features: {text!r} uses the region key {region!r}, which cannot be a feature "
                                 "(a held-out region's value was never seen in training).")
            if name not in known and name not in keys and name not in spec.named and not isinstance(tree, Column):
                nor = " nor an --aggregate name" if spec.named else ""
                raise InputError(f"--features: {text!r} uses {name!r}, which is neither a column of the {describe} "
                                 f"nor a join key{nor}. The weather columns are: {', '.join(weather_names)}.")
    for name, tree in spec.used_aggregates().items():
        missing = [n for n in column_names(tree) if n not in known]
        if missing:
            raise InputError(f"--aggregate: {name}={canonical(tree)} uses {format_examples(missing)}, which is not a "
                             f"column of the {describe}. Its columns are: {', '.join(weather_names)}.")
