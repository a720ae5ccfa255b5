"""K-fold cross-validation and the ridge path from one factor per fold, without touching the rows again.

The training rows come in K folds (whole regions each), each summarized by its streaming QR factor
(`linreg.models.exact.ExactAccumulator`). Fold f's model is the solve of the merge of the other folds'
factors, which is the fit on exactly those rows (ridge standardized by their own standard deviations);
its residual sum of squares on fold f's rows is read off fold f's factor (`fold_rss`). Every l2 value is
scored from the same factors, so the whole path costs O(K) merges and K * L solves of (n, n) matrices,
n = p + 1 + k, whatever the number of rows.

Scores (float64, weighted when the rows are):

    mse[l, f, j]      = rss[l, f, j] / W_f                  fold f's rows under the model fitted without them
    pooled_mse[l, j]  = sum_f rss[l, f, j] / sum_f W_f      every training row predicted out of fold
    score[l]          = mean_j pooled_mse[l, j]             the chosen l2 minimizes it (ties: the smallest l2)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from linreg.errors import InputError
from linreg.models.exact import ExactAccumulator, GramAccumulator


def fold_rss(acc: ExactAccumulator, coef: np.ndarray, intercept: np.ndarray) -> np.ndarray:
    """(k,) (weighted) residual sum of squares of the rows accumulated in `acc` (a QR accumulator) under the
    model coef (k, p), intercept (k,), in the units of the inputs.

    The accumulator's factor R satisfies R^T R = A^T A for the rows' augmented design A = sqrt(w) [1, X - s_x,
    Y - s_y]; with v_j = [-(b0_j + s_x . b_j - s_y,j), -b_j, e_j], A v_j is sqrt(w) times the residuals of target
    j, so RSS_j = ||R v_j||^2 (without an intercept: no ones column, no shift, and the intercept must be 0).
    Any factor works, also one of a rank-deficient design, and an empty accumulator gives zeros.
    """
    if isinstance(acc, GramAccumulator):
        raise ValueError("fold_rss needs a QR accumulator; use GramAccumulator.factor() first.")
    p, k, c = acc.n_features, acc.n_targets, int(acc.fit_intercept)
    coef = np.asarray(coef, dtype=np.float64).reshape(k, p)
    intercept = np.asarray(intercept, dtype=np.float64).reshape(k)
    if not c and np.any(intercept != 0):
        raise ValueError("An accumulator without an intercept column cannot score a model with an intercept.")
    shift, R = _shift_and_factor(acc)
    V = np.zeros((c + p + k, k))  # column j is v_j
    if c:
        V[0] = -(intercept + coef @ shift[:p] - shift[p:])
    V[c:c + p] = -coef.T
    V[c + p:] = np.eye(k)
    RV = R @ V
    return np.einsum("ij,ij->j", RV, RV)


def _shift_and_factor(acc: ExactAccumulator) -> tuple[np.ndarray, np.ndarray]:
    """The accumulator's shift (p + k,) (zeros before any row) and its factor R (n, n), from its `state()`."""
    p, k = acc.n_features, acc.n_targets
    state = acc.state()  # [p, k, fit_intercept, n_rows, has_shift, shift (p + k), R (n * n)]
    n = p + k + int(acc.fit_intercept)
    return state[5:5 + p + k], state[5 + p + k:].reshape(n, n)


@dataclass(frozen=True)
class CrossValidation:
    """Scores of every l2 value over K folds and k targets, and the fold models at the chosen value.

    l2s (L,); rss (L, K, k): weighted RSS of fold f's rows under the model fitted on the other folds at l2s[l];
    weight_sum (K,): each fold's sum of weights (its rows when unweighted); rows (K,): each fold's rows of
    positive weight; chosen: the index into l2s of the lowest score; coef (K, k, p), intercept (K, k): fold f's
    model (fitted without fold f) at the chosen l2, for out-of-fold predictions X_f @ coef[f].T + intercept[f].
    """

    l2s: np.ndarray
    rss: np.ndarray
    weight_sum: np.ndarray
    rows: np.ndarray
    chosen: int
    coef: np.ndarray
    intercept: np.ndarray

    def mse(self) -> np.ndarray:
        """(L, K, k) each fold's (weighted) mean squared error under the model fitted without it."""
        return self.rss / self.weight_sum[None, :, None]

    def pooled_mse(self) -> np.ndarray:
        """(L, k) the (weighted) MSE of every training row predicted by the model fitted without its fold."""
        return self.rss.sum(axis=1) / self.weight_sum.sum()

    def score(self) -> np.ndarray:
        """(L,) the pooled MSE averaged over targets: what the chosen l2 minimizes."""
        return self.pooled_mse().mean(axis=1)

    @property
    def chosen_l2(self) -> float:
        return float(self.l2s[self.chosen])

    def table_rows(self, targets: list[str]) -> list[dict]:
        """The rows of the `cv` dataset: {l2, fold, target, mse, rows}. For every l2: per fold per target, per
        fold over all targets (fold's mean over targets), pooled per target (fold None), pooled over all targets
        (fold and target None). rows: the fold's rows; pooled: all training rows."""
        if len(targets) != self.rss.shape[2]:
            raise ValueError(f"Got {len(targets)} target names for {self.rss.shape[2]} targets.")
        mse, pooled, score = self.mse(), self.pooled_mse(), self.score()
        total = int(self.rows.sum())
        out = []
        for i, l2 in enumerate(self.l2s.tolist()):
            for f, rows in enumerate(self.rows.tolist()):
                out += [dict(l2=l2, fold=f, target=t, mse=float(mse[i, f, j]), rows=rows) for j, t in enumerate(targets)]
                out.append(dict(l2=l2, fold=f, target=None, mse=float(mse[i, f].mean()), rows=rows))
            out += [dict(l2=l2, fold=None, target=t, mse=float(pooled[i, j]), rows=total) for j, t in enumerate(targets)]
            out.append(dict(l2=l2, fold=None, target=None, mse=float(score[i]), rows=total))
        return out


def check_folds(rows: Sequence[int]) -> None:
    """An InputError when a fold has no training rows (rows (K,): each fold's rows of positive weight)."""
    empty = [f for f, n in enumerate(rows) if n == 0]
    if empty:
        raise InputError(
            f"Cross-validation fold(s) {', '.join(map(str, empty))} of {len(rows)} have no training rows (with a "
            "positive weight): there are fewer training regions than folds, or too few rows. Lower --cv-folds."
        )


def cross_validate(folds: list[ExactAccumulator], l2s: Sequence[float], *, feature_names: list[str], rcond: float,
                   singular: str, weight_sums: Sequence[float] | None = None) -> CrossValidation:
    """Score every l2 in l2s by K-fold cross-validation over `folds` (K >= 2 QR accumulators of the same shape,
    each fold's rows of every rank) and choose the lowest score (ties: the smallest l2).

    Fold f's model is the solve (`ExactAccumulator.solve`, with rcond and singular) of the merge of the other
    folds, made from copies: the inputs are not changed. O(K) merges, by prefix and suffix merges.
    weight_sums (K,): each fold's sum of weights; without it, read off the ones column of the factor with an
    intercept, and each fold's row count without one (so a weighted fit without an intercept must pass it).
    Raises InputError when a fold has no rows.
    """
    K = len(folds)
    l2_values = np.asarray(l2s, dtype=np.float64).reshape(-1)
    if K < 2:
        raise ValueError(f"Cross-validation needs at least 2 folds; got {K}.")
    if l2_values.size == 0 or not np.all(np.isfinite(l2_values) & (l2_values >= 0)):
        raise InputError(f"--l2 values must be finite and >= 0; got {l2_values.tolist()}.")
    if any(isinstance(f, GramAccumulator) for f in folds):
        raise ValueError("cross_validate needs QR accumulators; use GramAccumulator.factor() first.")
    rows = np.array([f.n_rows for f in folds], dtype=np.int64)
    check_folds(rows.tolist())
    weight_sum = _weight_sums(folds, weight_sums)

    p, k = folds[0].n_features, folds[0].n_targets
    rss = np.empty((l2_values.size, K, k))
    coef = np.empty((l2_values.size, K, k, p))
    intercept = np.empty((l2_values.size, K, k))
    for f, others in enumerate(_leave_one_out(folds)):
        for i, l2 in enumerate(l2_values):
            solution = others.solve(feature_names, rcond, l2=float(l2), singular=singular)
            coef[i, f], intercept[i, f] = solution.coef, solution.intercept
            rss[i, f] = fold_rss(folds[f], solution.coef, solution.intercept)

    score = (rss.sum(axis=1) / weight_sum.sum()).mean(axis=1)
    score = np.where(np.isnan(score), np.inf, score)
    best = np.flatnonzero(score == score.min())
    chosen = int(best[np.argmin(l2_values[best])])
    return CrossValidation(l2s=l2_values, rss=rss, weight_sum=weight_sum, rows=rows, chosen=chosen,
                           coef=coef[chosen], intercept=intercept[chosen])


def _weight_sums(folds: list[ExactAccumulator], given: Sequence[float] | None) -> np.ndarray:
    """(K,) each fold's sum of weights: `given`, or the squared norm of the ones column (R[0, 0]^2) with an
    intercept, or the row count without one."""
    if given is not None:
        weight_sum = np.asarray(given, dtype=np.float64).reshape(-1)
        if weight_sum.shape != (len(folds),):
            raise ValueError(f"Got {weight_sum.size} weight sums for {len(folds)} folds.")
        return weight_sum
    if folds[0].fit_intercept:
        return np.array([_shift_and_factor(f)[1][0, 0] ** 2 for f in folds])
    return np.array([f.n_rows for f in folds], dtype=np.float64)


def _leave_one_out(folds: list[ExactAccumulator]):
    """For f = 0..K-1, a new accumulator of every fold but f (prefix[f] merged with suffix[f + 1])."""
    def copy(acc):
        return type(acc).from_state(acc.state())

    p, k, intercept = folds[0].n_features, folds[0].n_targets, folds[0].fit_intercept
    empty = ExactAccumulator(p, k, fit_intercept=intercept)
    suffix = [copy(empty)]  # suffix[i]: folds K-i..K-1, built from the end
    for acc in reversed(folds[1:]):
        merged = copy(suffix[-1])
        merged.merge(acc)
        suffix.append(merged)
    suffix.reverse()  # now suffix[f]: folds f+1..K-1
    prefix = copy(empty)  # folds 0..f-1
    for f, acc in enumerate(folds):
        others = copy(prefix)
        others.merge(suffix[f])
        yield others
        prefix.merge(acc)
