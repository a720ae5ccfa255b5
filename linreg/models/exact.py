"""Exact least squares by streaming Householder QR (TSQR), in float64.

Rows of X (m, p) and Y (m, k) arrive in batches; only the (n, n) triangular
factor R of the augmented design [1, X - x_shift, Y - y_shift] is kept, with
n = p + 1 + k (n = p + k without an intercept). `solve` returns coefficients in
the units of the inputs: coef (k, p), intercept (k,), and the residual sum of
squares (k,) read off R, without a second pass over the data. Memory is
O(n^2 + 8192 * n) whatever the number of rows.
"""

import warnings
from dataclasses import dataclass

import numpy as np

from linreg.config import config_default
from linreg.errors import InputError, format_examples

BLOCK_ROWS = 8192


class SingularDesignWarning(UserWarning):
    """A rank-deficient design was solved by its minimum-norm solution (singular="min_norm")."""


@dataclass(frozen=True)
class DesignFactor:
    """The training design as inference needs it, from the triangular factor (float64, weighted).

    Rxx is the factor of the weighted design without its ones column, centred at the weighted means when
    there is an intercept: Rxx^T Rxx = (X - 1 x_mean^T)^T W (X - 1 x_mean^T). `ls_*` is the least-squares
    solution (the minimum-norm one if the design is rank-deficient), whatever was asked (ridge or not);
    `rss` gives the residual sum of squares of any other coefficients without touching the data again.
    """

    fit_intercept: bool
    n_rows: int  # rows with positive weight
    weight_sum: float  # W, the sum of the weights (n_rows when unweighted)
    x_mean: np.ndarray  # (p,) weighted means; zeros without an intercept
    y_mean: np.ndarray  # (k,)
    Rxx: np.ndarray  # (p, p)
    tss: np.ndarray  # (k,) total sum of squares: centred with an intercept, uncentred without
    ls_coef: np.ndarray  # (k, p)
    ls_intercept: np.ndarray  # (k,)
    ls_rss: np.ndarray  # (k,)
    rank: int  # rank of the feature block (centred with an intercept); the design's rank adds the intercept
    condition_number: float  # 2-norm condition number of the standardized design
    unscaled_variance: np.ndarray  # (p + 1,) diag of (X'WX)^-1 for features then intercept; NaN if not estimable
    aliased: np.ndarray  # (p + 1,) bool: the term's coefficient differs between least-squares solutions

    def rss(self, coef: np.ndarray, intercept: np.ndarray) -> np.ndarray:
        """(k,) weighted residual sum of squares on the training rows of coef (k, p), intercept (k,).

        RSS(a, b) = RSS_ls + ||Rxx (b_ls - b)||^2 + W (a_ls - a + x_mean . (b_ls - b))^2: the least-squares
        residual is orthogonal to every column, and the differences are computed from the coefficients
        directly, so a model close to the optimum loses no digits to cancellation.
        """
        d_beta = self.ls_coef - np.asarray(coef, dtype=np.float64)
        top = d_beta @ self.Rxx.T
        rss = self.ls_rss + np.einsum("ij,ij->i", top, top)
        if self.fit_intercept:
            gap = (self.ls_intercept - np.asarray(intercept, dtype=np.float64)) + d_beta @ self.x_mean
            rss = rss + self.weight_sum * gap * gap
        return rss


@dataclass(frozen=True)
class ExactSolution:
    """Exact solution of the configured problem (least squares, or ridge with l2 > 0), float64 in the
    units of X and Y."""

    coef: np.ndarray  # (k, p)
    intercept: np.ndarray  # (k,); zeros when fit_intercept=False
    rss: np.ndarray  # (k,) residual sum of squares per target (weighted if weights were given)
    n_rows: int  # rows with positive weight
    condition_number: float  # 2-norm condition number of the standardized design
    factor: DesignFactor | None = None  # what inference needs
    l2: float = 0.0

    @property
    def rank(self) -> int:
        """Rank of the design counting the intercept (R's lm$rank)."""
        return self.factor.rank + int(self.factor.fit_intercept)


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
        X, Y, w = self._checked(X, Y, sample_weight)
        m = X.shape[0]
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

    def _checked(self, X, Y, sample_weight):
        """X (m, p), Y (m, k) and w (m,) or None as arrays, checked for shape and valid weights."""
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
        return X, Y, w

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
        summary = other._R
        if self.fit_intercept:
            if self._shift is None:
                self._shift = other._shift.copy()
            else:
                summary = self._reshift(summary, other._shift - self._shift)
        self._add(summary)
        self._n_rows += other._n_rows

    @staticmethod
    def _reshift(R: np.ndarray, d: np.ndarray) -> np.ndarray:
        """The factor of rows [1, Z - s_other] * sqrt(w) shifted by s = s_other - d instead: that adds d times
        the ones column, i.e. R @ (I + e_0 d^T)."""
        R = R.copy()
        R[:, 1:] += np.outer(R[:, 0], d)
        return R

    def _add(self, R_other: np.ndarray) -> None:
        """Stack another factor (at this shift) under this one."""
        self._R = np.linalg.qr(np.vstack([self._R, R_other]), mode="r")

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

    def solve(self, feature_names: list[str] | None = None, rcond: float = config_default("rcond"), *,
              l2: float = config_default("l2"), singular: str = config_default("singular")) -> ExactSolution:
        """Least squares, or ridge with l2 > 0 (mean squared error + l2 * sum of squared standardized coefficients,
        intercept unpenalized). The design is singular when the condition number of the standardized
        design exceeds 1 / rcond: singular="error" raises an InputError naming the columns; "min_norm"
        warns (SingularDesignWarning) and returns the minimum-norm solution in standardized units.
        Ridge (l2 > 0) is well posed whatever the design. Raises InputError if there are too few rows.
        """
        if singular not in ("error", "min_norm"):
            raise ValueError(f"singular must be 'error' or 'min_norm', not {singular!r}.")
        p, k, c = self.n_features, self.n_targets, int(self.fit_intercept)
        names = list(feature_names) if feature_names is not None else [f"x{j}" for j in range(p)]
        if len(names) != p:
            raise ValueError(f"Got {len(names)} feature names for {p} features.")
        need = p + c if l2 == 0 and singular == "error" else 1
        if self._n_rows < need:
            with_intercept = " with an intercept" if c else ""
            raise InputError(f"Need at least {need} rows to fit {p} features{with_intercept}; got {self._n_rows}.")

        R = self._R
        Rxx, Rxy, Ryy = R[c : c + p, c : c + p], R[c : c + p, c + p :], R[c + p :, c + p :]
        # Column norms of R equal those of the (centred, weighted) design columns.
        norms = np.linalg.norm(Rxx, axis=0)
        scale = np.where(norms > 0, norms, 1.0)
        U, sv, Vt = np.linalg.svd(Rxx / scale) if p else (None, np.ones(0), None)
        cond = (sv[0] / sv[-1] if sv[-1] > 0 else np.inf) if p else 1.0
        rank = int(np.sum(sv >= sv[0] * rcond)) if p and sv[0] > 0 else 0
        full_rank = bool(cond <= 1.0 / rcond)  # also False for NaN
        if not full_rank and l2 == 0 and singular == "error":
            raise InputError(_collinearity_message(cond, rcond, Vt[-1], norms, names, self.fit_intercept)
                             + " (Or pass --singular min_norm for the minimum-norm solution, or --l2 for ridge.)")

        if c:
            weight_sum = float(R[0, 0] ** 2)  # the ones column, weighted by sqrt(w): its squared norm is W
            x_mean = R[0, 1 : 1 + p] / R[0, 0] + self._shift[:p]
            y_mean = R[0, 1 + p :] / R[0, 0] + self._shift[p:]
            tss = np.einsum("ij,ij->j", R[1:, 1 + p :], R[1:, 1 + p :])
        else:
            weight_sum = float(np.nan)  # not needed without an intercept
            x_mean, y_mean = np.zeros(p), np.zeros(k)
            tss = np.einsum("ij,ij->j", R[:, p:], R[:, p:])

        if full_rank:
            # Back substitution is invariant to column scaling, so R need not be equilibrated for it.
            beta = _back_substitute(Rxx, Rxy)  # (p, k)
            ls_rss = np.einsum("ij,ij->j", Ryy, Ryy)
            inverse = _back_substitute(Rxx, np.eye(p))  # Rxx^-1: (X'WX)^-1 = Rxx^-1 Rxx^-T
            variance = np.einsum("ij,ij->i", inverse, inverse)
            intercept_variance = 1.0 / weight_sum + np.sum((inverse.T @ x_mean) ** 2) if c else np.nan
            aliased = np.zeros(p + 1, dtype=bool)
        else:
            # Minimum norm in standardized units (the limit of ridge as l2 -> 0): pseudo-inverse of Rxx / scale.
            pinv = Vt[:rank].T / sv[:rank]  # (p, rank)
            beta = (pinv @ (U[:, :rank].T @ Rxy)) / scale[:, None]
            top = Rxy - Rxx @ beta
            ls_rss = np.einsum("ij,ij->j", Ryy, Ryy) + np.einsum("ij,ij->j", top, top)
            variance = np.einsum("ij,ij->i", pinv, pinv) / scale**2
            intercept_variance = 1.0 / weight_sum + np.sum((pinv.T @ (x_mean / scale)) ** 2) if c else np.nan
            aliased = _aliased(Vt[rank:].T / scale[:, None], norms, x_mean, weight_sum, self.fit_intercept)
            if l2 == 0:
                warnings.warn(_collinearity_message(cond, rcond, Vt[-1], norms, names, self.fit_intercept)
                              + " Returning the minimum-norm solution (in standardized units); the aliased terms "
                              f"{format_examples([(names + ['intercept'])[j] for j in np.flatnonzero(aliased)])} "
                              "have no standard errors.", SingularDesignWarning, stacklevel=2)
        unscaled_variance = np.append(variance, intercept_variance)
        unscaled_variance[aliased] = np.nan
        ls_intercept = self._intercept(beta) if c else np.zeros(k)
        factor = DesignFactor(fit_intercept=self.fit_intercept, n_rows=self._n_rows, weight_sum=weight_sum,
                              x_mean=x_mean, y_mean=y_mean, Rxx=Rxx.copy(), tss=tss,
                              ls_coef=np.ascontiguousarray(beta.T), ls_intercept=ls_intercept, ls_rss=ls_rss,
                              rank=rank, condition_number=float(cond), unscaled_variance=unscaled_variance,
                              aliased=aliased)
        if l2 > 0:
            beta = _ridge(Rxx / scale, Rxy, l2) / scale[:, None]
            intercept = self._intercept(beta) if c else np.zeros(k)
            coef = np.ascontiguousarray(beta.T)
            rss = factor.rss(coef, intercept)
        else:
            coef, intercept, rss = factor.ls_coef, ls_intercept, ls_rss
        return ExactSolution(coef=coef, intercept=intercept, rss=rss, n_rows=self._n_rows,
                             condition_number=float(cond), factor=factor, l2=float(l2))

    def _intercept(self, beta: np.ndarray) -> np.ndarray:
        """(k,) intercepts in original units for feature coefficients beta (p, k): the optimum given beta."""
        p, R = self.n_features, self._R
        b0 = (R[0, 1 + p :] - R[0, 1 : 1 + p] @ beta) / R[0, 0]
        return self._shift[p:] + b0 - self._shift[:p] @ beta


GRAM_MAX_CONDITION = 100.0  # above this condition number of [1, X] the Gram pass gives way to a QR pass
GRAM_MIN_RESIDUAL = 1e-6  # below this share of a target's sum of squares left as residual, likewise


class GramAccumulator(ExactAccumulator):
    """The same augmented, shifted, weighted design as `ExactAccumulator`, summed as a float64 Gram matrix
    G = A^T A with one dot product per pair of columns per batch: about half the work of the streaming QR.

    The normal equations lose digits as the square of the design's condition number, and the residual
    sum of squares read off the Cholesky factor loses as many digits as the fit leaves little residual.
    So `factor()` hands back an equivalent QR accumulator (R = the Cholesky factor of G: the same R up to
    rounding and signs) only when the equilibrated design [1, X] has a condition number of at most
    GRAM_MAX_CONDITION (coefficients then keep about 12 significant digits: cond^2 * eps ~ 1e-12) and
    every target keeps at least GRAM_MIN_RESIDUAL of its (shifted) sum of squares as residual (RSS to
    about 10 digits). Otherwise it returns None and the caller makes a QR pass over the rows.
    `state`/`from_state`/`merge` work as for the QR accumulator, with G in place of R.
    """

    def update(self, X: np.ndarray, Y: np.ndarray, sample_weight: np.ndarray | None = None) -> None:
        X, Y, w = self._checked(X, Y, sample_weight)
        m = X.shape[0]
        if m == 0:
            return
        c, p = int(self.fit_intercept), self.n_features
        # Columns as contiguous rows (n, m): each Gram entry is then one dot product of two contiguous
        # rows, faster on one core than a GEMM of the (m, n) block (and X.T is contiguous as
        # `linreg.inputs.batches.matrix` builds X).
        At = np.empty((c + p + self.n_targets, m))
        At[c:c + p] = X.T
        At[c + p:] = Y.T
        if not np.isfinite(At[c:]).all():
            bad = np.flatnonzero(~np.isfinite(At[c:]).all(axis=0))
            raise InputError(f"X or Y contains NaN or infinity in rows {format_examples(bad)} of this batch.")
        if w is not None:
            keep = w > 0  # zero-weight rows contribute nothing, not even to the shift
            if not keep.all():
                At, w = At[:, keep], w[keep]
            if len(w) == 0:
                return
        if self.fit_intercept:
            if self._shift is None:
                head = slice(0, min(At.shape[1], BLOCK_ROWS))
                self._shift = np.average(At[1:, head], axis=1, weights=None if w is None else w[head])
            At[0] = 1.0
            At[1:] -= self._shift[:, None]
        if w is not None:
            At *= np.sqrt(w)[None, :]
        self._n_rows += At.shape[1]
        n = len(At)
        G = np.empty((n, n))
        for i in range(n):
            for j in range(i, n):
                G[i, j] = G[j, i] = At[i] @ At[j]
        self._R += G  # the Gram matrix, kept where the QR accumulator keeps R

    @staticmethod
    def _reshift(G: np.ndarray, d: np.ndarray) -> np.ndarray:
        """The Gram matrix of rows [1, Z - s_other] * sqrt(w) shifted by s = s_other - d instead:
        T^T G T with T = I + e_0 d^T."""
        T = np.eye(len(G))
        T[0, 1:] = d
        return T.T @ G @ T

    def _add(self, G_other: np.ndarray) -> None:
        self._R = self._R + G_other

    def factor(self) -> ExactAccumulator | None:
        """The equivalent QR accumulator when the normal equations are accurate enough, else None."""
        G = self._R
        norms = np.sqrt(np.diag(G))
        if self._n_rows == 0 or not np.all(norms > 0) or not np.isfinite(G).all():
            return None
        try:
            R = np.linalg.cholesky(G / np.outer(norms, norms)).T  # equilibrated: unit column norms
        except np.linalg.LinAlgError:
            return None
        q = int(self.fit_intercept) + self.n_features
        singular_values = np.linalg.svd(R[:q, :q], compute_uv=False)
        residual_share = np.einsum("ij,ij->j", R[q:, q:], R[q:, q:])  # RSS / sum of squares, per target
        if not singular_values[-1] > 0 or singular_values[0] / singular_values[-1] > GRAM_MAX_CONDITION \
                or not np.all(residual_share >= GRAM_MIN_RESIDUAL):
            return None
        qr = ExactAccumulator(self.n_features, self.n_targets, fit_intercept=self.fit_intercept)
        qr._R = R * norms  # R^T R = G
        qr._shift = None if self._shift is None else self._shift.copy()
        qr._n_rows = self._n_rows
        return qr

    def solve(self, *args, **kwargs) -> ExactSolution:
        """Solve by the Cholesky factor; a ValueError when `factor()` does not trust it (make a QR pass)."""
        qr = self.factor()
        if qr is None:
            raise ValueError("The Gram matrix is too ill-conditioned to solve accurately: accumulate a QR instead.")
        return qr.solve(*args, **kwargs)


def _ridge(Rs: np.ndarray, Rxy: np.ndarray, l2: float) -> np.ndarray:
    """argmin ||Rs z - Rxy||^2 + l2 ||z||^2, (p, k), by a QR of the factor stacked on sqrt(l2) I.

    With Rs the factor scaled to unit column norms (z = beta * column norm = beta * sd * sqrt(W)), this is
    W times [weighted MSE + l2 * sum (beta * sd)^2]: the ridge objective, without normal equations.
    """
    p, k = Rxy.shape
    stacked = np.block([[Rs, Rxy], [np.sqrt(l2) * np.eye(p), np.zeros((p, k))]])
    R2 = np.linalg.qr(stacked, mode="r")
    return _back_substitute(R2[:p, :p], R2[:p, p:])


def _aliased(null: np.ndarray, norms: np.ndarray, x_mean: np.ndarray, weight_sum: float,
             fit_intercept: bool, tol: float = 1e-8) -> np.ndarray:
    """(p + 1,) bool: terms with a component in the null space of the design [X, 1].

    null (p, d): a basis of the null space of the (centred) feature block; with an intercept, each null
    vector v of the centred block is (v, -x_mean . v) for the design with its ones column. Components are
    compared in units where every design column has norm 1, so the tolerance is scale-free.
    """
    p = len(norms)
    if fit_intercept:
        column_norms = np.sqrt(norms**2 + weight_sum * x_mean**2)  # uncentred column norms
        full = np.vstack([null * np.where(column_norms > 0, column_norms, 1.0)[:, None],
                          -np.sqrt(weight_sum) * (x_mean @ null)[None, :]])
    else:
        full = np.vstack([null * np.where(norms > 0, norms, 1.0)[:, None], np.zeros((1, null.shape[1]))])
    basis = np.linalg.qr(full)[0]
    aliased = np.linalg.norm(basis, axis=1) > tol
    aliased[p] &= fit_intercept
    return aliased


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
