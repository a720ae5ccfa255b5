"""Evaluation metrics as exact sums over all rows (float64), never averages of batch averages.

`SplitErrors` accumulates, per split, the row count, the squared errors per target and the targets'
moments, batch by batch. `metric_rows` turns them into the rows of the `metrics` dataset; per-region
MSEs come from `region_mse_rows`, an aggregate over the written predictions.
"""

from __future__ import annotations

import math

import duckdb
import numpy as np

from linreg.join import quote
from linreg.schema import pred_column
from linreg.standardize import Moments


class SplitErrors:
    """Sums for one split: rows, (weighted) sum of squared errors (k,), and target moments for R^2.

    With sample weights the MSE is sum w r^2 / sum w. centred=False gives R^2 the through-the-origin
    convention (uncentred total sum of squares), used on the training split of a fit without intercept.
    """

    def __init__(self, n_targets: int, *, centred: bool = True):
        self.sse = np.zeros(n_targets)
        self.y = Moments(n_targets)
        self.centred = centred

    @property
    def n(self) -> int:
        return self.y.n

    def update(self, y: np.ndarray, pred: np.ndarray, weight: np.ndarray | None = None) -> None:
        """y, pred: (m, k) float64; weight (m,) or None."""
        if len(y):
            diff = y - pred
            if weight is None:
                self.sse += np.einsum("ij,ij->j", diff, diff)
            else:
                self.sse += np.einsum("i,ij,ij->j", np.asarray(weight, dtype=np.float64), diff, diff)
            self.y.update(y, weight)

    @property
    def mse(self) -> np.ndarray:
        return self.sse / self.y.weight if self.y.weight > 0 else np.full(len(self.sse), np.nan)

    @property
    def r2(self) -> np.ndarray:
        ss_tot = np.diag(self.y.comoment)
        if not self.centred:
            ss_tot = ss_tot + self.y.weight * self.y.mean**2
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(ss_tot > 0, 1.0 - self.sse / ss_tot, np.nan)


def metric_rows(errors: dict[str, SplitErrors], targets: list[str], *, optimum_rss: np.ndarray | None,
                stats=None) -> list[dict]:
    """Rows (split, region='all', target, metric, value) per split and target, and over all targets.

    optimum_rss (k,): the exact least-squares residual sum of squares on the training rows, for the
    optimality gap (trained MSE / optimal MSE) and the excess over the optimum relative to the variance.
    stats: the model's `linreg.inference.FitStatistics`, for residual_sd, r2_adj, dof and f_statistic per
    target, and condition_number and design_rank (target 'all'), on the training split.
    """
    rows = []

    def add(split, target, metric, value):
        rows.append({"split": split, "region": "all", "target": target, "metric": metric, "value": float(value)})

    for split, acc in errors.items():
        if acc.n == 0:
            continue
        add(split, "all", "rows", acc.n)
        for j, target in enumerate(targets):
            add(split, target, "mse", acc.mse[j])
            add(split, target, "rmse", math.sqrt(acc.mse[j]))
            add(split, target, "r2", acc.r2[j])
        add(split, "all", "mse", acc.mse.mean())
        add(split, "all", "rmse", math.sqrt(acc.mse.mean()))
        add(split, "all", "r2", np.mean(acc.r2))
        if split == "train" and stats is not None:
            for j, target in enumerate(targets):
                add(split, target, "residual_sd", stats.residual_sd[j])
                add(split, target, "r2_adj", stats.r2_adj[j])
                add(split, target, "dof", stats.dof)
                add(split, target, "f_statistic", stats.f_statistic[j])
            add(split, "all", "condition_number", stats.condition_number)
            add(split, "all", "design_rank", stats.design_rank)
        if split == "train" and optimum_rss is not None:
            opt_mse = optimum_rss / acc.y.weight
            variance = np.diag(acc.y.comoment) / acc.y.weight
            for j, target in enumerate(targets):
                add(split, target, "optimal_mse", opt_mse[j])
                add(split, target, "optimality_gap", acc.mse[j] / opt_mse[j] if opt_mse[j] > 0 else math.nan)
                add(split, target, "excess_mse_ratio", (acc.mse[j] - opt_mse[j]) / variance[j] if variance[j] > 0 else math.nan)
            total_opt = opt_mse.sum()
            add(split, "all", "optimality_gap", acc.mse.sum() / total_opt if total_opt > 0 else math.nan)
    return rows


def region_mse_rows(con: duckdb.DuckDBPyConnection, predictions_path: str, region: str,
                    targets: list[str], weight_column: str | None = None) -> list[dict]:
    """Per split and region: MSE per target and over all targets, from the predictions file (exact sums);
    weighted (sum w r^2 / sum w) by the predictions' `weight_column` when given."""
    w = f"{quote(weight_column)} * " if weight_column else ""
    se = [f"fsum({w}({quote(t)} - {quote(pred_column(t))}) ** 2)" for t in targets]
    n = f"fsum({quote(weight_column)})" if weight_column else "count(*)"
    path = predictions_path.replace("'", "''")
    result = con.execute(
        f"SELECT split, CAST({quote(region)} AS VARCHAR) AS region, {n} AS n, {', '.join(se)} "
        f"FROM read_parquet('{path}') GROUP BY ALL ORDER BY split, region").fetchall()
    rows = []
    for split, name, n, *sums in result:
        if not n:  # every row of the region has weight 0
            n, sums = math.nan, [math.nan] * len(targets)
        for target, total in zip(targets, sums):
            rows.append({"split": split, "region": name, "target": target, "metric": "mse", "value": total / n})
        rows.append({"split": split, "region": name, "target": "all", "metric": "mse", "value": sum(sums) / (n * len(targets))})
    return rows
