"""Streaming column statistics in float64 and the standardization of gradient trainers.

`Moments` keeps count, weight sum, (weighted) mean and the centred cross-product matrix of d columns, updated batch by batch with
Chan's parallel formula (exact enough to merge across batches and processes). `Standardizer` maps
features and targets to unit scale for training and maps fitted weights back to original units.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


class Moments:
    """Row count, weight sum, (weighted) mean (d,) and centred cross products (d, d) of streamed rows, in float64.

    Without weights every row weighs 1 (weight == n). With weights (precision weights, >= 0) the mean and
    cross products are weighted: comoment = sum w (x - mean)(x - mean)^T.
    """

    def __init__(self, d: int):
        self.n = 0
        self.weight = 0.0
        self.mean = np.zeros(d)
        self.comoment = np.zeros((d, d))

    def update(self, rows: np.ndarray, weights: np.ndarray | None = None, *, n: int | None = None) -> None:
        """Add rows (m, d) of any float dtype, with optional weights (m,). n: how many rows to count (default
        m; a split's rows given as all rows with weight 0 elsewhere count only the split's)."""
        if len(rows) == 0:
            return
        columns = np.ascontiguousarray(np.asarray(rows).T, dtype=np.float64)  # (d, m): sums along memory
        other = Moments(columns.shape[0])
        other.n = len(rows) if n is None else n
        if weights is None:
            other.weight = float(len(rows))
            other.mean = columns.sum(axis=1) / len(rows)
            centred = columns - other.mean[:, None]
            other.comoment = centred @ centred.T
        else:
            weights = np.asarray(weights, dtype=np.float64)
            other.weight = float(weights.sum())
            if other.weight > 0:
                other.mean = columns @ weights / other.weight
                centred = columns - other.mean[:, None]
                other.comoment = (centred * weights) @ centred.T
        self.merge(other)

    def state(self) -> tuple:
        """(n, weight, mean (d,), comoment (d, d)): picklable, for merging across ranks."""
        return (self.n, self.weight, self.mean, self.comoment)

    @classmethod
    def from_state(cls, state: tuple) -> "Moments":
        n, weight, mean, comoment = state
        moments = cls(len(mean))
        moments.n, moments.weight, moments.mean, moments.comoment = n, weight, np.asarray(mean), np.asarray(comoment)
        return moments

    def merge(self, other: "Moments") -> None:
        """Add another batch's (or rank's) moments (Chan's parallel formula)."""
        if other.n == 0:
            return
        self.n += other.n
        if other.weight == 0:
            return
        weight = self.weight + other.weight
        delta = other.mean - self.mean
        self.comoment = self.comoment + other.comoment + np.outer(delta, delta) * (self.weight * other.weight / weight)
        self.mean = self.mean + delta * (other.weight / weight)
        self.weight = weight

    @property
    def std(self) -> np.ndarray:
        """(d,) population (weighted) standard deviation."""
        return np.sqrt(np.maximum(np.diag(self.comoment) / (self.weight or 1.0), 0.0))

    @property
    def second_moment(self) -> np.ndarray:
        """(d, d) mean of x x^T (uncentred)."""
        return self.comoment / (self.weight or 1.0) + np.outer(self.mean, self.mean)


@dataclass(frozen=True)
class Standardizer:
    """x_s = (x - x_mean) / x_scale and y_s = (y - y_mean) / y_scale; identity when disabled.

    Without an intercept nothing is centred (centring would add one); scales are then root mean squares.
    A constant column gets scale 1, as in scikit-learn.
    """

    x_mean: np.ndarray  # (p,)
    x_scale: np.ndarray  # (p,)
    y_mean: np.ndarray  # (k,)
    y_scale: np.ndarray  # (k,)

    @classmethod
    def fit(cls, x: Moments, y: Moments, *, fit_intercept: bool, enabled: bool) -> "Standardizer":
        if not enabled:
            return cls(np.zeros(len(x.mean)), np.ones(len(x.mean)), np.zeros(len(y.mean)), np.ones(len(y.mean)))
        if fit_intercept:
            x_mean, x_scale, y_mean, y_scale = x.mean, x.std, y.mean, y.std
        else:
            x_mean, y_mean = np.zeros_like(x.mean), np.zeros_like(y.mean)
            x_scale = np.sqrt(np.diag(x.second_moment))
            y_scale = np.sqrt(np.diag(y.second_moment))
        return cls(x_mean, _safe(x_scale), y_mean, _safe(y_scale))

    def to_original(self, coef: np.ndarray, intercept: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Weights (k, p) and intercepts (k,) fitted on standardized data, in original units (float64)."""
        coef = np.asarray(coef, dtype=np.float64)
        intercept = np.asarray(intercept, dtype=np.float64)
        coef_orig = self.y_scale[:, None] * coef / self.x_scale[None, :]
        intercept_orig = self.y_mean + self.y_scale * intercept - coef_orig @ self.x_mean
        return coef_orig, intercept_orig

    def second_moment(self, x: Moments, fit_intercept: bool) -> np.ndarray:
        """(p', p') second-moment matrix of the standardized design the trainer sees (with the ones column)."""
        m = (x.second_moment - np.outer(x.mean, self.x_mean) - np.outer(self.x_mean, x.mean)
             + np.outer(self.x_mean, self.x_mean)) / np.outer(self.x_scale, self.x_scale)
        if not fit_intercept:
            return m
        first = (x.mean - self.x_mean) / self.x_scale
        return np.block([[m, first[:, None]], [first[None, :], np.ones((1, 1))]])


def _safe(scale: np.ndarray) -> np.ndarray:
    scale = np.asarray(scale, dtype=np.float64).copy()
    scale[~(scale > 0)] = 1.0
    return scale
