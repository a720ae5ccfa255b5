"""The feature expressions (`linreg.features.expression`) computed with NumPy, row by row in float64: the
reference the SQL of the join (`to_sql`) is tested against, for callers holding the columns in memory."""

from __future__ import annotations

from typing import Mapping

import numpy as np

from linreg.errors import InputError
from linreg.features.expression import (AGGREGATES, Binary, Column, Negate, Node, Number, canonical, column_names,
                                        has_aggregate)


def evaluate(node: Node, values: Mapping[str, np.ndarray]) -> np.ndarray:
    """The expression over 1-D columns `values` (name -> array, cast to float64), as a float64 array of their
    common length (numbers broadcast): NaN and +-inf exactly where `to_sql` gives them. Raises InputError for
    a column missing from `values` and for aggregates (computed in SQL only)."""
    arrays = {}
    for name in column_names(node):
        if name not in values:
            raise InputError(f"The feature {canonical(node)} uses column {name!r}, which is not among the "
                             f"columns {', '.join(map(repr, values))}.")
        arrays[name] = np.asarray(values[name], dtype=np.float64)
    if has_aggregate(node):
        raise InputError(f"The expression {canonical(node)} has an aggregate ({', '.join(AGGREGATES)}): "
                         "aggregates are computed in SQL (--aggregate), not row by row.")
    shapes = [a.shape for a in arrays.values()] or [np.shape(v) for v in values.values()]
    with np.errstate(all="ignore"):
        result = _evaluate(node, arrays)
    return np.array(np.broadcast_to(result, np.broadcast_shapes(*shapes)), dtype=np.float64)


def _power(base, exponent):
    return np.where((base == 0) & (exponent < 0), np.nan, np.power(base, exponent))


def _evaluate(node: Node, arrays: Mapping[str, np.ndarray]):
    if isinstance(node, Number):
        return np.float64(node.value)
    if isinstance(node, Column):
        return arrays[node.name]
    if isinstance(node, Negate):
        return np.negative(_evaluate(node.operand, arrays))
    if isinstance(node, Binary):
        a, b = _evaluate(node.left, arrays), _evaluate(node.right, arrays)
        if node.op == "+":
            return np.add(a, b)
        if node.op == "-":
            return np.subtract(a, b)
        if node.op == "*":
            return np.multiply(a, b)
        if node.op == "/":
            return np.where(b == 0, np.nan, np.divide(a, b))
        return _power(a, b)
    args = [_evaluate(a, arrays) for a in node.args]
    f = node.function
    if f == "log":
        return np.where(args[0] > 0, np.log(args[0]), np.nan)
    if f == "log10":
        return np.where(args[0] > 0, np.log10(args[0]), np.nan)
    if f == "exp":
        return np.exp(args[0])
    if f == "sqrt":
        return np.sqrt(args[0])
    if f == "abs":
        return np.abs(args[0])
    if f == "pow":
        return _power(args[0], args[1])
    if f == "least":
        return np.minimum.reduce(np.broadcast_arrays(*args))
    return np.maximum.reduce(np.broadcast_arrays(*args))  # greatest
