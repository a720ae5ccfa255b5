"""The holdout split: whole regions (an explicit list, or a seeded fraction), or later years.

No region is ever in both splits under the region split. The split is a small value (a list of regions or
a year) that any process can apply to any batch of rows, so streaming and sharded passes agree on it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from linreg.errors import InputError, format_examples
from linreg.inputs.folds import Folds


@dataclass(frozen=True)
class Split:
    """Which rows are holdout: those whose region is in `holdout_regions`, or whose time column >= `from_year`;
    with `folds` (--cv-folds), the cross-validation fold of each training region."""

    region_column: str
    holdout_regions: tuple = ()
    time_column: str | None = None
    from_year: int | None = None
    folds: Folds | None = None

    def columns(self, index_column: str | None = None) -> list[str]:
        """The columns `holdout_mask` (and the folds' lookup) reads (with a region lookup: the region index column)."""
        if self.folds is not None and index_column:
            return ([self.time_column] if self.from_year is not None else []) + [index_column]
        if self.from_year is not None:
            return [self.time_column]
        if not self.holdout_regions:
            return []
        return [index_column] if index_column else [self.region_column]

    def lookup(self, regions: pa.Array | pa.ChunkedArray) -> np.ndarray:
        """(len(regions),) bool: which of the numbered `regions` are held out, for `holdout_mask`."""
        if not self.holdout_regions:
            return np.zeros(len(regions), dtype=bool)
        value_set = pa.array(self.holdout_regions).cast(regions.type)
        return pc.is_in(regions, value_set=value_set).to_numpy(zero_copy_only=False)

    def holdout_mask(self, batch: pa.RecordBatch | pa.Table, lookup: np.ndarray | None = None,
                     index_column: str | None = None) -> np.ndarray:
        """(m,) bool: True for holdout rows of `batch`. With `lookup` (from `lookup()`), the rows' regions
        are read as numbers from `index_column` (an array lookup, not a hash of each row's region name)."""
        if self.from_year is not None:
            column = batch.column(self.time_column)
            if column.null_count == 0 and pa.types.is_integer(column.type):
                return column.to_numpy() >= self.from_year
            mask = pc.greater_equal(column, self.from_year)
        elif self.holdout_regions:
            if lookup is not None:
                return lookup[batch.column(index_column).to_numpy()]
            mask = pc.is_in(batch.column(self.region_column), value_set=pa.array(self.holdout_regions))
        else:
            return np.zeros(batch.num_rows, dtype=bool)
        return mask.to_numpy(zero_copy_only=False)

    def describe(self) -> str:
        folds = f"; {self.folds.k} cross-validation folds of {len(self.folds.regions)} region(s)" if self.folds else ""
        if self.from_year is not None:
            return f"holdout: rows with {self.time_column} >= {self.from_year}{folds}"
        return f"holdout: {len(self.holdout_regions)} region(s) {format_examples(self.holdout_regions)}{folds}"


def choose_split(regions: list, *, region_column: str, holdout_regions: list | None = None,
                 holdout_fraction: float = 0.0, seed: int = 0, time_column: str | None = None,
                 from_year: int | None = None) -> Split:
    """The split for the joined `regions` (distinct, sorted). Raises InputError when a split would be empty."""
    if from_year is not None:
        return Split(region_column=region_column, time_column=time_column, from_year=int(from_year))
    if holdout_regions:
        kind = type(regions[0]) if regions else str
        wanted = [_as_region(r, kind) for r in holdout_regions]
        present = set(regions)
        unknown = [r for r in wanted if r not in present]
        if unknown:
            raise InputError(f"--holdout-regions names region(s) {format_examples(unknown)} that have no joined "
                             f"rows; regions look like {format_examples(regions[:5])}.")
        chosen = sorted(set(wanted))
    elif holdout_fraction > 0:
        n_holdout = max(1, int(round(holdout_fraction * len(regions))))
        order = np.random.default_rng(seed).permutation(len(regions))
        chosen = sorted(regions[i] for i in order[:n_holdout])
    else:
        chosen = []
    if chosen and len(chosen) >= len(regions):
        raise InputError(f"The holdout would take all {len(regions)} region(s) and leave none to train on; "
                         "lower --holdout-fraction or name fewer --holdout-regions.")
    return Split(region_column=region_column, holdout_regions=tuple(chosen))


def _as_region(value: str, kind: type):
    """Command-line region names are text; convert them to the region column's Python type."""
    try:
        return kind(value)
    except (TypeError, ValueError):
        raise InputError(f"--holdout-regions: {value!r} is not a valid {kind.__name__} region.") from None
