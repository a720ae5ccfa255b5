"""What the report draws, gathered by the evaluation pass itself: the report never reads the outputs back.

`HoldoutSample` keeps a uniform random sample of at most MAX_POINTS holdout rows (actual and predicted per
target) by bottom-k sampling: every holdout row gets a random key and the rows with the smallest keys are
kept, so the samples of several ranks merge into the sample of their union. `worst_regions` picks the
regions with the largest holdout MSE from the per-region sums. `Picture` carries both from the evaluate
step to the report (a few hundred KB at most).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from linreg.parallel.dist import Cluster

MAX_POINTS = 4000      # scatter points per target: enough to see the cloud, small enough to draw fast
MAX_REGIONS = 25       # bars in the per-region chart: the worst regions, the rest counted in the title


@dataclass
class Picture:
    """worst: (region, holdout MSE over all targets), worst first, at most MAX_REGIONS; holdout_regions:
    regions with holdout rows; sample: target and pred_<target> -> (n,) float64 values of the sampled
    holdout rows (n <= MAX_POINTS)."""

    worst: list[tuple[str, float]] = field(default_factory=list)
    holdout_regions: int = 0
    sample: dict[str, np.ndarray] = field(default_factory=dict)


class HoldoutSample:
    """A uniform sample of at most `size` holdout rows, drawn with keys from a generator seeded by
    (seed, rank): the same run draws the same rows."""

    def __init__(self, n_targets: int, *, seed: int, rank: int = 0, size: int = MAX_POINTS):
        self.size = size
        self.keys = np.empty(0)
        self.rows = np.empty((0, 2 * n_targets))  # actual (k), then predicted (k)
        self._rng = np.random.default_rng([seed, rank])

    def add(self, actual: np.ndarray, predicted: np.ndarray, holdout: np.ndarray | None = None) -> None:
        """actual, predicted: (m, k); holdout (m,) bool, the rows to sample from (None: all). Every such row
        draws its key; only rows whose key could still be among the smallest are copied."""
        rows_at = np.flatnonzero(holdout) if holdout is not None else np.arange(len(actual))
        if not len(rows_at):
            return
        keys = self._rng.random(len(rows_at))
        if len(self.keys) >= self.size:  # full: a key above the largest kept one never enters
            entering = keys < self.keys.max()
            keys, rows_at = keys[entering], rows_at[entering]
        keys = np.concatenate([self.keys, keys])
        rows = np.concatenate([self.rows, np.hstack([actual[rows_at], predicted[rows_at]])])
        self.keys, self.rows = _smallest(keys, rows, self.size)

    def merged(self, cluster: Cluster) -> "HoldoutSample":
        """The sample of all ranks' holdout rows (on every rank); with one process, itself."""
        if not cluster.distributed:
            return self
        parts = cluster.all_gather_object((self.keys, self.rows))
        self.keys, self.rows = _smallest(np.concatenate([p[0] for p in parts]),
                                         np.concatenate([p[1] for p in parts]), self.size)
        return self

    def columns(self, targets: list[str], pred_column) -> dict[str, np.ndarray]:
        """target -> actual values, pred_column(target) -> predicted values, in key order."""
        k = len(targets)
        order = np.argsort(self.keys, kind="stable")
        out = {}
        for j, target in enumerate(targets):
            out[target] = self.rows[order, j]
            out[pred_column(target)] = self.rows[order, k + j]
        return out


def _smallest(keys: np.ndarray, rows: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    if len(keys) <= size:
        return keys, rows
    keep = np.argpartition(keys, size - 1)[:size]
    return keys[keep], rows[keep]


def worst_regions(cluster: Cluster, holdout_mse: np.ndarray, regions: pa.ChunkedArray | pa.Array,
                  size: int = MAX_REGIONS) -> list[tuple[str, float]]:
    """(region name, MSE) of the `size` regions with the largest holdout MSE over all ranks, worst first.
    holdout_mse: (regions,) this rank's holdout MSE per region number, NaN where it has no holdout rows."""
    present = np.flatnonzero(~np.isnan(holdout_mse))
    top = present[np.argsort(-holdout_mse[present], kind="stable")[:size]]
    names = regions.take(pa.array(top, type=pa.int64())).to_pylist()
    found = [(str(name), float(value)) for name, value in zip(names, holdout_mse[top])]
    if cluster.distributed:
        found = [pair for part in cluster.all_gather_object(found) for pair in part]
    return sorted(found, key=lambda pair: (-pair[1], pair[0]))[:size]
