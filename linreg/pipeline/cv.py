"""The pipeline's side of cross-validation (`--cv-folds`): the folds of a run's training regions, the
out-of-fold predictions of the evaluation pass, and the `cv` dataset. The arithmetic (one factor per fold, the
ridge path scored from them) is `linreg.models.crossval`'s."""

from __future__ import annotations

import dataclasses
import logging

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from linreg.inputs.folds import NO_FOLD, choose_folds
from linreg.inputs.holdout import Split
from linreg.inputs.schema import cv_schema
from linreg.outputs import commit
from linreg.parallel.dist import Cluster

log = logging.getLogger(__name__)
CV = "cv"


def with_folds(split: Split, regions_path: str, k: int, seed: int, cluster: Cluster) -> Split:
    """`split` with K folds of its training regions, balanced by their rows (every rank's regions: each
    region is on one rank, so the union of the ranks' regions files is the single-process set)."""
    table = pq.read_table(regions_path, columns=["region", "n_rows"])
    parts = cluster.all_gather_object(list(zip(table.column("region").to_pylist(), table.column("n_rows").to_pylist())))
    rows = dict(pair for part in parts for pair in part)
    held = set(split.holdout_regions)
    regions = sorted(r for r in rows if r not in held)
    folds = choose_folds(regions, [rows[r] for r in regions], k, seed)
    totals = folds.rows(rows)
    log.info("%d cross-validation folds of %d training region(s), %s input rows each", k, len(regions),
             "/".join(str(t) for t in totals))
    return dataclasses.replace(split, folds=folds)


def out_of_fold(cv, X: np.ndarray, fold: np.ndarray) -> np.ndarray:
    """(m, k) float64 out-of-fold predictions of rows X (m, p) in folds `fold` (m,): each row by the model fitted
    without its fold at the chosen l2 (`linreg.models.crossval.CrossValidation`); NaN for rows in no fold."""
    out = np.full((X.shape[0], cv.coef.shape[1]), np.nan)
    for f in range(cv.coef.shape[0]):
        mask = fold == f
        if mask.any():
            out[mask] = X[mask] @ cv.coef[f].T + cv.intercept[f]
    return out


def fold_column(fold: np.ndarray) -> pa.Array:
    """The predictions' `fold` column: int64, null for rows in no fold (holdout rows)."""
    return pa.array(fold, type=pa.int64(), mask=fold == NO_FOLD)


def write_cv(staging: commit.Staging, cv, targets: list[str], metadata: dict) -> None:
    """The run's `cv` dataset file (`linreg.inputs.schema.cv_schema`) in staging."""
    table = pa.Table.from_pylist(cv.table_rows(targets), schema=cv_schema())
    commit.write_table(staging.file(CV), table, metadata)
