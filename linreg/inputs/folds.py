"""Cross-validation folds of the training regions (`--cv-folds K`): every region's training rows in one fold.

Rows of one region are not independent (one weather history, one soil), so folds group whole regions, as
scikit-learn's GroupKFold does. The folds are balanced by rows and seeded: regions are shuffled with the seed,
then, largest first, each goes to the fold with the fewest rows so far. Like the holdout split, the folds are a
small value (the regions' fold numbers) that any process applies to any batch of joined rows.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from linreg.errors import InputError

NO_FOLD = -1  # a region without training rows in any fold (a holdout region)


@dataclass(frozen=True)
class Folds:
    """`k` folds: `regions` (the training regions, sorted) and the fold of each, `fold` (same order, 0..k-1)."""

    k: int
    regions: tuple
    fold: tuple

    def lookup(self, regions: pa.Array | pa.ChunkedArray) -> np.ndarray:
        """(len(regions),) int64: the fold of each of the numbered `regions` (NO_FOLD for the others), so that
        a batch's folds are one array lookup by its region numbers (`of_rows`)."""
        out = np.full(len(regions), NO_FOLD, dtype=np.int64)
        if not self.regions:
            return out
        value_set = pa.array(list(self.regions)).cast(regions.type)
        position = pc.index_in(regions, value_set=value_set)
        known = pc.is_valid(position).to_numpy(zero_copy_only=False)
        found = pc.fill_null(position, 0).to_numpy(zero_copy_only=False)
        out[known] = np.asarray(self.fold, dtype=np.int64)[found[known]]
        return out

    def of_rows(self, batch: pa.RecordBatch | pa.Table, lookup: np.ndarray, index_column: str) -> np.ndarray:
        """(m,) int64: the fold of each row of `batch` (NO_FOLD for rows of regions in no fold)."""
        return lookup[batch.column(index_column).to_numpy()]

    def rows(self, region_rows: dict) -> list[int]:
        """Rows per fold, from rows per region (the balance `choose_folds` reached)."""
        totals = [0] * self.k
        for region, fold in zip(self.regions, self.fold):
            totals[fold] += int(region_rows.get(region, 0))
        return totals


def choose_folds(regions: list, rows: list[int], k: int, seed: int) -> Folds:
    """K folds of `regions` (the training regions, distinct) with `rows` (each region's rows, for balance).
    Raises InputError when there are fewer regions than folds."""
    if len(regions) < k:
        raise InputError(f"--cv-folds {k} needs at least {k} training regions; there are {len(regions)}. Lower "
                         "--cv-folds, or hold out fewer regions.")
    order = np.random.default_rng(seed).permutation(len(regions))
    sizes = np.asarray(rows, dtype=np.int64)[order]
    order = order[np.argsort(-sizes, kind="stable")]  # largest first; ties in the seeded order
    load = np.zeros(k, dtype=np.int64)
    fold = np.empty(len(regions), dtype=np.int64)
    for i in order:
        f = int(np.argmin(load))  # the fold with the fewest rows so far (the first of equals)
        fold[i] = f
        load[f] += rows[i]
    ranked = sorted(range(len(regions)), key=lambda i: regions[i])
    return Folds(k=k, regions=tuple(regions[i] for i in ranked), fold=tuple(int(fold[i]) for i in ranked))
