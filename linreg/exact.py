"""Exact least squares by streaming Householder QR (TSQR), in float64.

Rows of X (m, p) and Y (m, k) arrive in batches; only the (n, n) triangular
factor R of the augmented design [1, X - x_shift, Y - y_shift] is kept, with
n = p + 1 + k (n = p + k without an intercept). `solve` returns coefficients in
the units of the inputs: coef (k, p), intercept (k,), and the residual sum of
squares (k,) read off R, without a second pass over the data. Memory is
O(n^2 + 8192 * n) whatever the number of rows.
"""

from dataclasses import dataclass

import numpy as np

from linreg.errors import InputError, format_examples

BLOCK_ROWS = 8192


@dataclass(frozen=True)
class ExactSolution:
    """Least-squares fit. Arrays are float64 in the units of X and Y."""

    coef: np.ndarray  # (k, p)
    intercept: np.ndarray  # (k,); zeros when fit_intercept=False
    rss: np.ndarray  # (k,) residual sum of squares per target (weighted if weights were given)
    n_rows: int  # rows with positive weight
    condition_number: float  # 2-norm condition number of the standardized design


class ExactAccumulator:
    """Streaming TSQR of the augmented design [X, 1, Y] in float64.

    Columns are stored in the order [1, X, Y]: with the ones column first, the
    X block of R is the factor of the centred X, which gives the condition
    number of the standardized design directly.

    With an intercept, every row is shifted by the float64 (weighted) mean of
    the first non-empty block (up to 8192 rows) before the QR: any shift gives
    the same fit, and a central one keeps the shifted values, hence rounding,
    small. The shift is fixed for the accumulator's lifetime; `merge` converts the other
    accumulator's R to this accumulator's shift exactly, so partial results
    with different shifts combine correctly.
    """

    def __init__(self, n_features: int, n_targets: int, *, fit_intercept: bool = True):
        self.n_features = int(n_features)
        self.n_targets = int(n_targets)
        self.fit_intercept = bool(fit_intercept)
        n = self.n_features + self.n_targets + self.fit_intercept
        self._R = np.zeros((n, n))
        self._shift = None  # (p + k,) from the first non-empty block (intercept only)
        self._n_rows = 0

    @property
    def n_rows(self) -> int:
        """Rows seen so far with positive weight."""
        return self._n_rows

    def update(self, X: np.ndarray, Y: np.ndarray, sample_weight: np.ndarray | None = None) -> None:
        """Add rows: X (m, p), Y (m, k) or (m,) when k == 1, sample_weight (m,) >= 0 or None."""
        X = np.asarray(X)
        Y = np.asarray(Y)
        if Y.ndim == 1 and self.n_targets == 1:
            Y = Y[:, None]
        m = X.shape[0]
        if X.shape != (m, self.n_features) or Y.shape != (m, self.n_targets):
            raise ValueError(
                f"Expected X (m, {self.n_features}) and Y (m, {self.n_targets}); got {X.shape} and {Y.shape}."
            )
        w = None
        if sample_weight is not None:
            w = np.asarray(sample_weight, dtype=np.float64)
            if w.shape != (m,):
                raise ValueError(f"Expected sample_weight of shape ({m},); got {w.shape}.")
            bad = np.flatnonzero(~(np.isfinite(w) & (w >= 0)))
            if bad.size:
                raise InputError(
                    f"sample_weight must be finite and non-negative; rows {format_examples(bad)} "
                    f"of this batch are not ({format_examples(w[bad])})."
                )
        if m == 0:
            return

        for start in range(0, m, BLOCK_ROWS):
            stop = min(start + BLOCK_ROWS, m)
            A = np.hstack([X[start:stop], Y[start:stop]]).astype(np.float64)
            if not np.isfinite(A).all():
                bad = start + np.flatnonzero(~np.isfinite(A).all(axis=1))
                raise InputError(f"X or Y contains NaN or infinity in rows {format_examples(bad)} of this batch.")
            wb = None if w is None else w[start:stop]
            if wb is not None and not wb.any():
                continue  # zero-weight rows contribute nothing, not even to the shift
            if self.fit_intercept:
                if self._shift is None:
                    self._shift = np.average(A, axis=0, weights=wb)
                A = np.hstack([np.ones((stop - start, 1)), A - self._shift])
            if wb is None:
                self._n_rows += stop - start
            else:
                A *= np.sqrt(wb)[:, None]
                self._n_rows += int(np.count_nonzero(wb))
            self._R = np.linalg.qr(np.vstack([self._R, A]), mode="r")

    def merge(self, other: "ExactAccumulator") -> None:
        """Add the rows seen by `other` (same n_features, n_targets, fit_intercept)."""
        if (other.n_features, other.n_targets, other.fit_intercept) != (
            self.n_features,
            self.n_targets,
            self.fit_intercept,
        ):
            raise ValueError("Cannot merge accumulators with different n_features, n_targets or fit_intercept.")
        if other._n_rows == 0:
            return
        R_other = other._R
        if self.fit_intercept:
            if self._shift is None:
                self._shift = other._shift.copy()
            else:
                # Other's rows are [1, Z - s_other] * sqrt(w). Shifting by s instead adds
                # (s_other - s) times the ones column, i.e. R_other @ (I + e_0 d^T).
                R_other = R_other.copy()
                R_other[:, 1:] += np.outer(R_other[:, 0], other._shift - self._shift)
        self._R = np.linalg.qr(np.vstack([self._R, R_other]), mode="r")
        self._n_rows += other._n_rows

    def state(self) -> np.ndarray:
        """Flat float64 array [p, k, fit_intercept, n_rows, has_shift, shift (p+k), R (n*n)].

        Its length depends only on p, k and fit_intercept, so it can be all-gathered.
        """
        has_shift = self._shift is not None
        shift = self._shift if has_shift else np.zeros(self.n_features + self.n_targets)
        head = [self.n_features, self.n_targets, self.fit_intercept, self._n_rows, has_shift]
        return np.concatenate([np.array(head, dtype=np.float64), shift, self._R.ravel()])

    @classmethod
    def from_state(cls, state: np.ndarray) -> "ExactAccumulator":
        """Rebuild an accumulator from `state()`."""
        state = np.asarray(state, dtype=np.float64)
        p, k, fit_intercept, n_rows, has_shift = (int(v) for v in state[:5])
        acc = cls(p, k, fit_intercept=bool(fit_intercept))
        n = acc._R.shape[0]
        if state.shape != (5 + p + k + n * n,):
            raise ValueError(f"state has {state.size} values; expected {5 + p + k + n * n}.")
        if has_shift:
            acc._shift = state[5 : 5 + p + k].copy()
        acc._R = state[5 + p + k :].reshape(n, n).copy()
        acc._n_rows = n_rows
        return acc

    def solve(self, feature_names: list[str] | None = None, rcond: float = 1e-13) -> ExactSolution:
        """Least-squares coefficients. Raises InputError if too few rows or collinear features."""
        p, k, c = self.n_features, self.n_targets, int(self.fit_intercept)
        names = list(feature_names) if feature_names is not None else [f"x{j}" for j in range(p)]
        if len(names) != p:
            raise ValueError(f"Got {len(names)} feature names for {p} features.")
        need = p + c
        if self._n_rows < need:
            with_intercept = " with an intercept" if c else ""
            raise InputError(f"Need at least {need} rows to fit {p} features{with_intercept}; got {self._n_rows}.")

        R = self._R
        Rxx, Rxy, Ryy = R[c : c + p, c : c + p], R[c : c + p, c + p :], R[c + p :, c + p :]
        # Column norms of R equal those of the (centred, weighted) design columns.
        norms = np.linalg.norm(Rxx, axis=0)
        cond, v = _condition(Rxx / np.where(norms > 0, norms, 1.0)) if p else (1.0, None)
        if not cond <= 1.0 / rcond:  # also catches NaN
            raise InputError(_collinearity_message(cond, rcond, v, norms, names, self.fit_intercept))

        # Back substitution is invariant to column scaling, so R need not be equilibrated for it.
        beta = _back_substitute(Rxx, Rxy)  # (p, k)
        rss = np.einsum("ij,ij->j", Ryy, Ryy)
        if c:
            b0 = (R[0, 1 + p :] - R[0, 1 : 1 + p] @ beta) / R[0, 0]
            x_shift, y_shift = self._shift[:p], self._shift[p:]
            intercept = y_shift + b0 - x_shift @ beta
        else:
            intercept = np.zeros(k)
        return ExactSolution(
            coef=np.ascontiguousarray(beta.T),
            intercept=intercept,
            rss=rss,
            n_rows=self._n_rows,
            condition_number=float(cond),
        )


def _condition(Rs: np.ndarray) -> tuple[float, np.ndarray]:
    """2-norm condition number of Rs and its right singular vector for the smallest singular value."""
    _, s, Vt = np.linalg.svd(Rs)
    cond = s[0] / s[-1] if s[-1] > 0 else np.inf
    return cond, Vt[-1]


def _back_substitute(U: np.ndarray, B: np.ndarray) -> np.ndarray:
    """Solve U Z = B for upper-triangular U (p, p), B (p, k)."""
    Z = np.zeros_like(B)
    for i in range(U.shape[0] - 1, -1, -1):
        Z[i] = (B[i] - U[i, i + 1 :] @ Z[i + 1 :]) / U[i, i]
    return Z


def _collinearity_message(cond, rcond, v, norms, names, fit_intercept) -> str:
    """Name the columns with large components in the (scaled) null vector."""
    limit = f"{1.0 / rcond:.0e}".replace("e+", "e")
    head = f"The features are collinear (condition number {cond:.2g} > {limit}): "
    weight = np.abs(v)
    weight[norms == 0] = np.inf  # a zero column is the whole null space on its own
    involved = np.flatnonzero(weight >= 0.1 * weight.max())
    involved = involved[np.argsort(-weight[involved], kind="stable")]
    first, rest = names[involved[0]], [names[j] for j in involved[1:]]
    if rest and np.isfinite(weight.max()):
        what = (
            f"{first!r} is (nearly) a linear combination of {format_examples(rest)}. "
            "Remove or combine these columns."
        )
    else:
        zeros = [names[j] for j in np.flatnonzero(norms == 0)] or [first]
        kind = "constant, which duplicates the intercept" if fit_intercept else "all zeros"
        what = f"{format_examples(zeros)} {'is' if len(zeros) == 1 else 'are'} {kind}. Remove these columns."
    return head + what
