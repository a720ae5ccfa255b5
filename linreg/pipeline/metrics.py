"""Evaluation metrics as exact sums over all rows (float64), never averages of batch averages.

`SplitErrors` accumulates, per split, the row count, the squared errors per target and the targets'
moments, batch by batch. `metric_rows` turns them into the rows of the `metrics` dataset; per-region
MSEs come from `RegionErrors`, summed by region number in the same pass.

Totals are written as SQL's ROLLUP writes them: region null (over all regions) and target null (over all
targets), so that a region or a target may be called anything, `all` included.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from linreg.inputs.schema import metrics_schema
from linreg.models.standardize import Moments
from linreg.parallel.dist import Cluster


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

    def add_rows(self, y: np.ndarray, squared_errors: np.ndarray, weight: np.ndarray, n: int) -> None:
        """The `n` rows of a batch where `weight` (m,) is not 0 (a split's rows; weight 0 elsewhere): y (m, k)
        float64, squared_errors (m, k), their (unweighted) squared residuals. No row is copied."""
        if n:
            self.sse += weight @ squared_errors
            self.y.update(y, weight, n=n)

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


def add_splits(errors: dict[str, SplitErrors], y: np.ndarray, squared_errors: np.ndarray, holdout: np.ndarray,
               weight: np.ndarray | None = None) -> None:
    """Add one batch to the train and holdout sums: y (m, k) float64, squared_errors (m, k) unweighted,
    holdout (m,) bool, weight (m,) or None. Each split's sums weigh the other split's rows 0 instead of
    copying the split's rows out (256k rows, k = 2, the squared errors included: 11-13 ms against 19 ms)."""
    n_holdout = int(np.count_nonzero(holdout))
    in_holdout = holdout.astype(np.float64)
    if weight is not None:
        in_holdout *= weight
    in_train = (1.0 if weight is None else weight) - in_holdout
    errors["train"].add_rows(y, squared_errors, in_train, len(holdout) - n_holdout)
    errors["holdout"].add_rows(y, squared_errors, in_holdout, n_holdout)


def metric_rows(errors: dict[str, SplitErrors], targets: list[str], *, optimum_rss: np.ndarray | None,
                stats=None) -> list[dict]:
    """Rows (split, region=None, target, metric, value) per split and target, and over all targets
    (target None): the totals over all regions.

    optimum_rss (k,): the exact least-squares residual sum of squares on the training rows, for the
    optimality gap (trained MSE / optimal MSE) and the excess over the optimum relative to the variance.
    stats: the model's `linreg.models.statistics.FitStatistics`, for residual_sd, r2_adj, dof and f_statistic per
    target, and condition_number and design_rank (target None), on the training split.
    """
    rows = []

    def add(split, target, metric, value):
        rows.append({"split": split, "region": None, "target": target, "metric": metric, "value": float(value)})

    for split, acc in errors.items():
        if acc.n == 0:
            continue
        add(split, None, "rows", acc.n)
        for j, target in enumerate(targets):
            add(split, target, "mse", acc.mse[j])
            add(split, target, "rmse", math.sqrt(acc.mse[j]))
            add(split, target, "r2", acc.r2[j])
        add(split, None, "mse", acc.mse.mean())
        add(split, None, "rmse", math.sqrt(acc.mse.mean()))
        add(split, None, "r2", np.mean(acc.r2))
        if split == "train" and stats is not None:
            for j, target in enumerate(targets):
                add(split, target, "residual_sd", stats.residual_sd[j])
                add(split, target, "r2_adj", stats.r2_adj[j])
                add(split, target, "dof", stats.dof)
                add(split, target, "f_statistic", stats.f_statistic[j])
            add(split, None, "condition_number", stats.condition_number)
            add(split, None, "design_rank", stats.design_rank)
        if split == "train" and optimum_rss is not None:
            opt_mse = optimum_rss / acc.y.weight
            variance = np.diag(acc.y.comoment) / acc.y.weight
            for j, target in enumerate(targets):
                add(split, target, "optimal_mse", opt_mse[j])
                add(split, target, "optimality_gap", acc.mse[j] / opt_mse[j] if opt_mse[j] > 0 else math.nan)
                add(split, target, "excess_mse_ratio", (acc.mse[j] - opt_mse[j]) / variance[j] if variance[j] > 0 else math.nan)
            total_opt = opt_mse.sum()
            add(split, None, "optimality_gap", acc.mse.sum() / total_opt if total_opt > 0 else math.nan)
    return rows


class RegionErrors:
    """Per (split, region) sums for the per-region MSE, by region number (`linreg.inputs.join.REGION_INDEX`):
    rows, weight and squared errors (k,) in float64 arrays of length 2 * regions (O(regions) memory)."""

    def __init__(self, n_regions: int, n_targets: int):
        self.rows = np.zeros(2 * n_regions, dtype=np.int64)
        self.weight = np.zeros(2 * n_regions)
        self.sse = np.zeros((n_targets, 2 * n_regions))

    def update(self, region: np.ndarray, holdout: np.ndarray, squared_errors: np.ndarray,
               weight: np.ndarray | None = None) -> None:
        """region (m,) numbers, holdout (m,) bool, squared_errors (m, k) (unweighted), weight (m,) or None."""
        code = 2 * region.astype(np.int64) + holdout
        size = len(self.rows)
        counts = np.bincount(code, minlength=size)
        self.rows += counts
        self.weight += counts if weight is None else np.bincount(code, weights=weight, minlength=size)
        for j in range(self.sse.shape[0]):
            column = squared_errors[:, j] if weight is None else squared_errors[:, j] * weight
            self.sse[j] += np.bincount(code, weights=column, minlength=size)

    def holdout_mse(self) -> np.ndarray:
        """(regions,) each region's holdout MSE over all targets (as `batches` writes it), NaN where it has no
        holdout rows or they all weigh 0."""
        weight = self.weight[1::2]
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(weight > 0, self.sse[:, 1::2].sum(axis=0) / (weight * len(self.sse)), np.nan)

    def regions_per_split(self) -> dict[str, int]:
        """How many regions have rows in each split."""
        return {"train": int(np.count_nonzero(self.rows[0::2])), "holdout": int(np.count_nonzero(self.rows[1::2]))}

    def batches(self, regions: pa.Array | pa.ChunkedArray, targets: list[str],
                pairs: int = 1 << 16) -> Iterator[pa.RecordBatch]:
        """The `metrics` rows (split, region, target, metric='mse', value) of every (split, region) with rows,
        sorted by split and region name, one per target and one over all targets (target null); NaN where every
        row of the region has weight 0. Record batches of `pairs` (split, region) pairs, built column-wise
        from integer codes (dictionary arrays cast to text): millions of regions take a second, and the
        memory of one batch beyond 8 bytes a region."""
        codes = np.flatnonzero(self.rows)
        k, each = len(targets), len(targets) + 1
        names = pc.cast(pa.chunked_array([regions]) if isinstance(regions, pa.Array) else regions, pa.string())
        name_rank = np.empty(len(names), dtype=np.int64)  # each region's place in name order
        name_rank[pc.sort_indices(names).to_numpy()] = np.arange(len(names))
        # "holdout" sorts before "train"; a stable sort keeps regions with the same name in number order
        codes = codes[np.argsort((1 - codes % 2) * len(names) + name_rank[codes // 2], kind="stable")]
        del name_rank
        text = lambda indices, words, mask=None: pa.DictionaryArray.from_arrays(  # noqa: E731
            pa.array(indices, type=pa.int8(), mask=mask), pa.array(words)).cast(pa.string())
        for start in range(0, len(codes), pairs):
            part = codes[start:start + pairs]
            weight = np.where(self.weight[part] > 0, self.weight[part], np.nan)
            sse = self.sse[:, part]
            values = np.vstack([sse / weight, sse.sum(axis=0) / (weight * k)]).T  # (pairs, k + 1)
            target = np.tile(np.arange(each, dtype=np.int8), len(part))
            total = target == k  # the row over all targets: target null
            target[total] = 0
            yield pa.record_batch({
                "split": text(np.repeat((part % 2).astype(np.int8), each), ["train", "holdout"]),
                "region": names.take(pa.array(np.repeat(part // 2, each))).combine_chunks(),
                "target": text(target, list(targets), total),
                "metric": text(np.zeros(len(part) * each, dtype=np.int8), ["mse"]),
                "value": pa.array(values.ravel()),
            }, schema=metrics_schema())

    def table(self, regions: pa.Array | pa.ChunkedArray, targets: list[str]) -> pa.Table:
        """`batches` as one table."""
        return pa.Table.from_batches(list(self.batches(regions, targets)), schema=metrics_schema())


def region_metric_batches(cluster: Cluster, by_region: RegionErrors, regions: pa.Array | pa.ChunkedArray,
                          targets: list[str]) -> tuple[dict[str, int], Iterable[pa.RecordBatch]]:
    """The per-region `metrics` rows of every rank, sorted by split and region, and the regions with rows per
    split (splits without any left out). A region's rows are all on one rank, so its sums there are complete.

    With one process the rows are streamed from `by_region` (millions of regions are never one table); with
    several ranks each rank's rows are gathered (on every rank) and merged: that table is O(regions)."""
    k = len(targets)
    if not cluster.distributed:
        return ({s: n for s, n in by_region.regions_per_split().items() if n},
                by_region.batches(regions, targets))
    table = merge_sorted(cluster.all_gather_object(by_region.table(regions, targets)))
    counts = {c["values"]: c["counts"] // (k + 1) for c in pc.value_counts(table.column("split")).to_pylist()}
    return counts, table.to_batches()


def merge_sorted(parts: list[pa.Table]) -> pa.Table:
    """One table of `metrics` rows sorted by split and region from tables each so sorted (the ranks', whose
    regions are disjoint). When the ranks' regions are ranges in rank order (`linreg.inputs.shard`), each
    split's slices of the parts only need putting end to end, which comparing the slices' first and last
    regions shows; otherwise a stable sort (each region's targets keep their order). For 1.2M rows of 400,000
    regions on two ranks: 0.06 s end to end against 0.19 s for the sort."""
    table = pa.concat_tables(parts)
    if table.num_rows == 0:
        return table
    pieces = []
    for split in pc.unique(table.column("split")).sort().to_pylist():
        slices = [t.filter(pc.equal(t.column("split"), split)) for t in parts]
        slices = [t for t in slices if t.num_rows]
        if any(a.column("region")[-1].as_py() >= b.column("region")[0].as_py() for a, b in zip(slices, slices[1:])):
            return table.take(pc.sort_indices(table, sort_keys=[("split", "ascending"), ("region", "ascending")]))
        pieces += slices
    return pa.concat_tables(pieces)


def total_mse(metric_rows: list[dict]) -> tuple[dict[str, dict[str, float]], dict[str, float]]:
    """From `metrics` rows: the MSE over all regions per split and target, and per split over all targets
    (the totals: region null; target null for the mean over targets)."""
    mse, mean_mse = {}, {}
    for row in metric_rows:
        if row["metric"] == "mse" and row["region"] is None:
            if row["target"] is None:
                mean_mse[row["split"]] = row["value"]
            else:
                mse.setdefault(row["split"], {})[row["target"]] = row["value"]
    return mse, mean_mse


def region_mse(metric_rows: list[dict]) -> dict[str, list[tuple[object, float]]]:
    """From `metrics` rows: per split, (region, MSE over all targets) of each region with rows in the split,
    in the rows' order (`RegionErrors.batches`: by region name)."""
    found: dict[str, list[tuple[object, float]]] = {}
    for row in metric_rows:
        if row["metric"] == "mse" and row["region"] is not None and row["target"] is None:
            found.setdefault(row["split"], []).append((row["region"], row["value"]))
    return found
